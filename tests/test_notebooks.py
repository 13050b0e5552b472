"""Committed notebooks must have been executed top to bottom without errors, so readers see real figures."""
import json

import pytest

from conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS and NOTEBOOKS[0].name.startswith("00_")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_ran_in_order_without_errors(path):
    nb = json.loads(path.read_text())
    counts = [c.get("execution_count") for c in nb["cells"] if c["cell_type"] == "code"]
    assert counts and None not in counts, f"{path.name}: some cells were never run"
    assert counts == list(range(1, len(counts) + 1)), f"{path.name}: cells ran out of order {counts}"
    errors = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: error output {errors[0].get('ename')}"
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
               for c in nb["cells"] for o in c.get("outputs", [])), f"{path.name}: no figure"
    assert "exercise" in path.read_text().lower(), f"{path.name}: no exercise"
