"""The rows of a comparison: each mode's default recipe, its tuned recipe, and named recipes from the papers.

A row is (name, mode, overrides), trained and evaluated exactly like a mode: the same budget in FLOPs (its own
steps for its own cost per step), the same seeds, data order and prompts, in runs/<comparison>/<row>/seed<s>/.
The default rows are (mode, mode, {}): today's comparison, kept under `modes[<mode>]` in results.json, which
notebook 06 and `claims` read. Every other row is added under `variants[<row>]`, with its mode and overrides:

- `<mode>-tuned`: the recipe `tune` chose on the validation split (its best.json; `compare --recipes`). A mode
  whose tuning kept the default recipe gets no tuned row: its default row is its tuned row (results.json
  "recipes" says so), and training it twice would only repeat the same numbers.
- VARIANTS, added with --recipes: recipes from the papers themselves. `diffusion-ddpm` is Transfusion's own
  objective, DDPM ε-prediction with a cosine noise schedule (Transfusion §2.2), beside our default diffusion
  row's rectified flow.

Which rows a paired test compares (`pairs`): every two default rows (as before), every other row against its own
mode's default (did tuning help? is DDPM different from flow?), and every two modes at their best (tuned where
tuned, else default): the comparison of paradigms each at its best recipe.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import NamedTuple

from minimfm.config import Config, ConfigError, shorten

VARIANTS: dict[str, tuple[str, dict, str]] = {  # row name: (mode, overrides, what it is)
    "diffusion-ddpm": ("diffusion", {"objective": "ddpm"},
                       "Transfusion's own objective: DDPM ε-prediction, cosine noise schedule"),
}
# settings a recipe may not change: what is compared (mode, data, preset), the comparison's own seed and length,
# and where or how fast it runs
FIXED = ("mode", "dataset", "preset", "run_name", "seed", "max_steps", "holdout_validation", "runs_dir", "data_root",
         "threads", "device")


class Row(NamedTuple):
    name: str        # results.json key and run folder: the mode for a default row
    mode: str
    overrides: dict  # Config settings on top of the comparison's; {} for a default row


def check_recipe(base: Config, mode: str, overrides, where: str) -> Config:
    """base with a recipe applied, or one line naming `where`: a recipe is a JSON object of Config settings,
    each with a value the setting accepts, none of FIXED."""
    allowed = {f.name for f in dataclasses.fields(Config)} - set(FIXED)
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where}: a recipe is a JSON object of settings, got {shorten(json.dumps(overrides))}")
    bad = next((k for k in overrides if k not in allowed), None)
    if bad is not None:
        raise ConfigError(f"{where}: '{shorten(bad)}' is not a setting a recipe may change")
    try:
        return dataclasses.replace(base, mode=mode, **overrides)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def read_recipes(path: str | Path, base: Config) -> dict[str, dict]:
    """{mode: {"overrides", "source", "trial"}} from a `tune` best.json, or from a folder holding one
    (DIR/best.json) or several (DIR/*/best.json, e.g. --recipes runs); a folder's recipes tuned on another
    dataset or preset are passed over, a file's are refused."""
    path = Path(path)
    if path.is_dir():
        files = sorted([*path.glob("best.json"), *path.glob("*/best.json")])
        if not files:
            raise ConfigError(f"--recipes {shorten(path)}: holds no best.json (`tune` writes "
                              f"runs/tune-<dataset>-<preset>-<mode>/best.json)")
    elif path.is_file():
        files = [path]
    else:
        raise ConfigError(f"--recipes {shorten(path)}: not found (give a best.json from `tune`, or a folder of them)")
    recipes: dict[str, dict] = {}
    for f in files:
        try:
            state = json.loads(f.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ConfigError(f"--recipes {shorten(f)}: not a best.json written by `tune` (not JSON)") from None
        if not isinstance(state, dict) or not {"setting", "mode", "best"} <= state.keys() \
                or not isinstance(state["setting"], dict):
            raise ConfigError(f"--recipes {shorten(f)}: not a best.json written by `tune` (no setting, mode and best)")
        tuned_on = (state["setting"].get("dataset"), state["setting"].get("preset"))
        if tuned_on != (base.dataset, base.preset):
            if path.is_file():
                raise ConfigError(f"--recipes {shorten(f)}: tuned on {tuned_on[0]} with preset {tuned_on[1]}; this "
                                  f"comparison is {base.dataset} with preset {base.preset}")
            continue
        mode = state["mode"]
        if mode in recipes:
            raise ConfigError(f"--recipes {shorten(path)}: two recipes for {mode} ({recipes[mode]['source']} and {f})")
        check_recipe(base, mode, state["best"], f"--recipes {shorten(f)}")
        recipes[mode] = {"overrides": state["best"], "source": str(f), "trial": state.get("best_trial")}
    if not recipes:
        raise ConfigError(f"--recipes {shorten(path)}: no recipe tuned on {base.dataset} with preset {base.preset}")
    return recipes


def kept_default(base: Config, overrides: dict) -> bool:
    """Whether a recipe only restates base's own values (tuning kept the default)."""
    return all(getattr(base, k) == v for k, v in overrides.items())


def comparison_rows(base: Config, modes: tuple[str, ...], recipes: dict | None = None) -> list[Row]:
    """The default row of every mode; with recipes, each mode's tuned row (unless tuning kept its default) and
    the VARIANTS of the modes compared."""
    rows = [Row(m, m, {}) for m in modes]
    if recipes is None:
        return rows
    rows += [Row(f"{m}-tuned", m, recipes[m]["overrides"]) for m in modes
             if m in recipes and not kept_default(base, recipes[m]["overrides"])]
    rows += [Row(name, mode, overrides) for name, (mode, overrides, _) in VARIANTS.items() if mode in modes]
    return rows


def row_config(base: Config, row: Row) -> Config:
    return check_recipe(base, row.mode, row.overrides, f"row {row.name}")


def pairs(rows: list[Row]) -> list[tuple[str, str]]:
    """The (a, b) rows a paired test compares: see the module docstring."""
    defaults = [r.name for r in rows if r.name == r.mode]
    out = list(itertools.combinations(defaults, 2))
    out += [(r.name, r.mode) for r in rows if r.name != r.mode and r.mode in defaults]
    best = {r.mode: r.name for r in rows if r.name == r.mode}
    best.update({r.mode: r.name for r in rows if r.name == f"{r.mode}-tuned"})
    out += [p for p in itertools.combinations(best.values(), 2) if p not in out]
    return out


# --------------------------------------------------------------------------- rows in a comparison's results.json

def entries(state: dict) -> dict[str, dict]:
    """Every row's entry of a results.json: the default rows (`modes`), then the others (`variants`)."""
    return {**state["modes"], **state.get("variants", {})}


def all_rows(state: dict) -> list[Row]:
    """The rows a results.json holds, including those added by an earlier call with other rows."""
    return [Row(m, m, {}) for m in state["modes"]] + [Row(name, v["mode"], v["overrides"])
                                                      for name, v in state.get("variants", {}).items()]


def check_rows(state: dict, rows: list[Row], out: Path) -> None:
    """A row already in the comparison must be asked for with the recipe it was trained with."""
    from minimfm.checkpoint import CheckpointError
    done = state.get("variants", {}) if state else {}
    for row in rows:
        was = done.get(row.name, {}).get("overrides", row.overrides)
        if was != row.overrides:
            raise CheckpointError(f"{out}: row {row.name} was trained with {shorten(json.dumps(was))}, now "
                                  f"{shorten(json.dumps(row.overrides))} (its recipe changed): pass --overwrite to "
                                  f"start again, or --name to keep both")


def merge_plan(old: dict, new: dict) -> bool:
    """Add the new rows' steps and FLOPs to a comparison's plan; False (nothing changed) when a row it already
    has would now get other steps (another budget or setting)."""
    if any(old["steps"][k] != v for k, v in new["steps"].items() if k in old["steps"]):
        return False
    for key in ("steps", "flops_per_step", "flops"):
        old[key] = {**old[key], **{k: v for k, v in new[key].items() if k not in old[key]}}
    return True


def same_setting(old: dict, new: dict) -> bool:
    """The settings of a comparison and of its resumption agree; a Config field added since the comparison
    started (absent from `old`) counts as agreeing while it keeps its default."""
    defaults = Config().to_dict()
    return old == {k: v for k, v in new.items() if k in old or v != defaults.get(k)}


def recipe_notes(state: dict) -> list[str]:
    """Lines of results.md under the table: what each row other than a default changes, and which modes' tuning
    kept the default recipe."""
    setting, lines = state["setting"], []
    for name, v in state.get("variants", {}).items():
        changed = {k: x for k, x in v["overrides"].items() if setting.get(k) != x}
        source = next((f" (`tune` trial {r['trial']}, {r['source']}: chosen on the validation split)"
                       for m, r in state.get("recipes", {}).items() if name == f"{m}-tuned"),
                      f" ({VARIANTS[name][2]})" if name in VARIANTS else "")
        lines.append(f"- {name}: " + (", ".join(f"{k} {x}" for k, x in changed.items()) or "the default") + source)
    lines += [f"- {m}: tuning kept the default recipe ({r['source']}): its default row is its tuned row"
              for m, r in state.get("recipes", {}).items() if r["kept_default"]]
    return ["", "Rows other than the defaults:", ""] + lines if lines else []
