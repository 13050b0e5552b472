import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from conftest import DATA, ROOT, needs_mnist
from helpers import install_random_vq, tiny_config, tiny_model
from minimfm.checkpoint import CheckpointError, load_checkpoint, save_atomic
from minimfm.train import batch_indices, lr_at, train


def config(tmp_path, **kw):
    base = dict(runs_dir=str(tmp_path), data_root=str(DATA), limit_train=64, batch_size=8, max_steps=6,
                ckpt_every=100, log_every=2, warmup_steps=2, sample_every=0)
    return tiny_config("ar", **{**base, **kw})


def test_lr_schedule_shape():
    cfg = tiny_config(max_steps=100, warmup_steps=10, lr=1e-3, min_lr=1e-4)
    assert lr_at(0, cfg) == pytest.approx(1e-4) and lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(100, cfg) == pytest.approx(1e-4) and lr_at(55, cfg) == pytest.approx(5.5e-4)


def test_batch_order_depends_on_step_only():
    cfg = tiny_config(batch_size=8)
    assert torch.equal(batch_indices(5, cfg, 20), batch_indices(5, cfg, 20))
    first_epoch = torch.cat([batch_indices(s, cfg, 16) for s in range(2)])
    assert sorted(first_epoch.tolist()) == list(range(16))  # an epoch visits every example once


@needs_mnist
def test_resume_is_bit_exact(tmp_path):
    cfg = config(tmp_path, run_name="straight", ema=0.9)
    install_random_vq(cfg)
    straight = load_checkpoint(train(cfg, verbose=False) / "ckpt.pt")
    cfg2 = config(tmp_path, run_name="resumed", ema=0.9)
    train(cfg2, verbose=False, stop_after=3)
    assert load_checkpoint(tmp_path / "resumed" / "ckpt.pt")["step"] == 3
    resumed = load_checkpoint(train(cfg2, resume=True, verbose=False) / "ckpt.pt")
    assert resumed["step"] == straight["step"] == 6
    for key in ("model", "ema"):
        for name, value in straight[key].items():
            assert torch.equal(value, resumed[key][name]), (key, name)


@needs_mnist
def test_existing_run_is_not_overwritten(tmp_path):
    cfg = config(tmp_path, max_steps=1)
    install_random_vq(cfg)
    train(cfg, verbose=False)
    with pytest.raises(CheckpointError, match="--overwrite"):
        train(cfg, verbose=False)
    train(cfg, overwrite=True, verbose=False)


@needs_mnist
def test_a_run_another_process_trains_is_refused_and_a_stale_lock_taken_over(tmp_path):
    import socket
    from minimfm.run_lock import LOCK
    cfg = config(tmp_path, run_name="locked")
    install_random_vq(cfg)
    train(cfg, verbose=False, stop_after=3)
    run = tmp_path / "locked"
    assert not (run / LOCK).exists()  # released when training ends
    log = (run / "metrics.jsonl").read_text()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / LOCK).write_text(f"{other.pid} {socket.gethostname()}\n")
        with pytest.raises(CheckpointError, match=f"being trained by process {other.pid}"):
            train(cfg, resume=True, verbose=False)
        assert (run / "metrics.jsonl").read_text() == log and (run / LOCK).exists()  # nothing touched
    finally:
        other.kill()
        other.wait()
    train(cfg, resume=True, verbose=False)  # the holder is gone: its lock is stale
    assert load_checkpoint(run / "ckpt.pt")["step"] == 6 and not (run / LOCK).exists()


def test_sigkill_mid_save_leaves_previous_checkpoint(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_atomic({"kind": "model", "step": 0, "w": torch.zeros(10)}, path)
    script = textwrap.dedent(f"""
        import torch, sys
        from minimfm.checkpoint import save_atomic
        big = torch.randn(8_000_000)  # 32 MB: each save takes long enough to be killed inside it
        step = 1
        print("ready", flush=True)
        while True:
            save_atomic({{"kind": "model", "step": step, "w": big}}, {str(path)!r})
            step += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=ROOT)
    assert proc.stdout.readline().strip() == b"ready"
    time.sleep(0.7)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    ckpt = load_checkpoint(path, kind="model")  # whatever step it reached, the file is whole
    assert ckpt["step"] >= 0 and ckpt["w"].numel() in (10, 8_000_000)
    leftovers = [p for p in tmp_path.iterdir() if p.name != "ckpt.pt"]
    assert all(p.suffix == ".tmp" for p in leftovers)  # at most the interrupted temp file


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "minimfm", *args], capture_output=True, text=True, cwd=ROOT)


def test_cli_refuses_bad_checkpoints_with_one_line(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x80\x04not really a checkpoint" * 10)
    plain_pickle = tmp_path / "pickle.pt"
    plain_pickle.write_bytes(pickle.dumps({"hello": "world"}))
    not_ours = tmp_path / "tensor.pt"
    torch.save({"weights": torch.zeros(3)}, not_ours)
    other_kind = tmp_path / "vq.pt"
    save_atomic({"kind": "vq", "dataset": "mnist"}, other_kind)
    for path in (corrupt, plain_pickle, not_ours, other_kind, tmp_path / "missing.pt"):
        r = _cli("sample", "--ckpt", str(path), "--prompt", "a bold seven", "--out", str(tmp_path / "x.png"))
        assert r.returncode == 2, (path, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "error" in r.stderr, (path, r.stderr)


def test_cli_refuses_a_model_of_another_mode(tmp_path):
    from minimfm.runs import load_model, model_checkpoint
    m = tiny_model("ar")
    path = tmp_path / "ar.pt"
    save_atomic(model_checkpoint(m, {"kind": "vq"}, step=0), path)
    with pytest.raises(CheckpointError, match="'ar' model, expected 'masked'"):
        load_model(path, "cpu", mode="masked")
