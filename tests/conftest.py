import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"

torch.set_num_threads(min(2, torch.get_num_threads()))
os.environ.setdefault("MPLBACKEND", "Agg")


def mnist_staged() -> bool:
    return (DATA / "MNIST" / "raw" / "t10k-images-idx3-ubyte").exists() or (DATA / "mnist-test.pt").exists()


needs_mnist = pytest.mark.skipif(not mnist_staged(), reason="MNIST not staged in data/ (run scripts/stage_data.sh)")
