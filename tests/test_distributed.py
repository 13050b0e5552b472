"""torchrun + DDP on CPU (gloo): two processes equal one process with the same global batch, only rank 0
writes, and a 2-process checkpoint resumes in 1 process. The masked mode is used because it draws random
masks, so the test also covers the per-micro-batch generators (minimfm/distributed.py)."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from conftest import DATA, ROOT, needs_mnist
from helpers import install_random_vq, tiny_config

WORKER = str(ROOT / "tests" / "ddp_worker.py")
# float sums run in a different order (all-reduce vs one process accumulating): equal to ~1e-7 per step
ATOL = 1e-5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cfg, stop_after: int = 0, processes: int = 1) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, WORKER, json.dumps(cfg.to_dict()), str(stop_after)]
    if processes > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port())] + cmd[1:]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def params(tmp_path, name, rank=0):
    return torch.load(tmp_path / name / f"params-rank{rank}.pt", weights_only=True)


def config(tmp_path, name, **kw):
    return tiny_config("masked", runs_dir=str(tmp_path), data_root=str(DATA), limit_train=64, batch_size=8,
                       micro_batch_size=4, max_steps=4, warmup_steps=1, log_every=1, ckpt_every=100,
                       sample_every=0, threads=1, run_name=name, **kw)


@needs_mnist
def test_two_processes_match_one_and_only_rank0_writes(tmp_path):
    install_random_vq(config(tmp_path, "x"))
    launch(config(tmp_path, "ddp"), processes=2)
    launch(config(tmp_path, "single"))
    rank0, rank1, single = params(tmp_path, "ddp", 0), params(tmp_path, "ddp", 1), params(tmp_path, "single")
    for name, value in rank0.items():
        assert torch.equal(value, rank1[name]), name  # DDP keeps the replicas bit-identical
        assert torch.allclose(value, single[name], atol=ATOL, rtol=0), (name, (value - single[name]).abs().max())
    assert (tmp_path / "ddp" / "saved-by-rank0").read_text().split() == ["4"]
    assert not (tmp_path / "ddp" / "saved-by-rank1").exists()
    steps = [json.loads(line)["step"] for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # one log line per step, from rank 0 only


@needs_mnist
def test_a_two_process_checkpoint_resumes_in_one_process(tmp_path):
    install_random_vq(config(tmp_path, "x"))
    launch(config(tmp_path, "straight"))
    launch(config(tmp_path, "switch"), stop_after=2, processes=2)
    launch(config(tmp_path, "switch"))  # resume=True in the worker: steps 3 and 4 on one process
    assert (tmp_path / "switch" / "saved-by-rank0").read_text().split() == ["2", "4"]
    straight, switched = params(tmp_path, "straight"), params(tmp_path, "switch")
    for name, value in straight.items():
        assert torch.allclose(value, switched[name], atol=ATOL, rtol=0), name


def test_micro_batches_split_the_global_batch_over_processes():
    from minimfm.distributed import Context, micro_batches
    assert micro_batches(8, 4, Context(0, 2)) == ([(0, 4)], 2)
    assert micro_batches(8, 4, Context(1, 2)) == ([(4, 8)], 2)
    assert micro_batches(8, 2, Context(1, 2)) == ([(2, 4), (6, 8)], 4)
    assert micro_batches(8, 0, Context(0, 1)) == ([(0, 8)], 1)
    with pytest.raises(ValueError, match="micro-batch"):
        micro_batches(8, 3, Context(0, 1))
    with pytest.raises(ValueError, match="equally over 2"):
        micro_batches(8, 8, Context(0, 2))
