"""The CLI's promise (minimfm/__main__.py): every error a user can cause ends with ONE line on stderr (under
MAX_MESSAGE characters), a non-zero exit code, no traceback, and nothing lost.

Each row of CASES is a command as a new user might type it, run in-process on two smoke models (ar and diffusion,
4 steps on random tokenizers) that are trained once for the module. Every row also checks that the runs folder,
checkpoints, tokenizers and any half-made run folder included, is byte for byte what it was before.
"""
import errno
import hashlib
import json
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import minimfm.checkpoint
from conftest import DATA, ROOT, mnist_staged
from minimfm.__main__ import MAX_MESSAGE, main
from minimfm.checkpoint import load_checkpoint, save_atomic
from minimfm.config import make_config
from minimfm.judge import Judge
from minimfm.tokenizers.latent import PatchLatent
from minimfm.tokenizers.store import tokenizer_path
from minimfm.tokenizers.training import tokenizer_to_checkpoint
from minimfm.tokenizers.vq import VQTokenizer

PROMPT = "a bold seven leaning right"
SMOKE = ["--preset", "smoke", "--limit-train", "64", "--latent-kind", "patch", "--data-root", str(DATA)]
BAR = re.compile(r"\d+%\||\d+it \[|it/s\]|s/it\]")  # tqdm's progress output, which shares stderr with the error


def run(capsys, *argv) -> tuple[int, str, str]:
    """main() in-process: (exit code, stdout, stderr). argparse errors exit from inside parse_args."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def error_lines(err: str) -> list[str]:
    return [line for line in re.split(r"[\r\n]", err) if line.strip() and not BAR.search(line)]


def assert_one_line_error(rc, err: str, pattern: str) -> str:
    assert rc not in (0, None), err
    assert "Traceback" not in err, err
    lines = error_lines(err)
    assert len(lines) == 1, lines
    assert len(lines[0]) < MAX_MESSAGE and "error" in lines[0], lines[0]
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (relative path -> sha256) and every folder (-> 'dir')."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def install_random_tokenizers(runs: Path) -> None:
    """Random-weight VQ, patch latents and judge where smoke training looks for them: no tokenizer training."""
    cfg = make_config("smoke", runs_dir=str(runs), latent_kind="patch", limit_train=64)
    torch.manual_seed(0)
    vq = VQTokenizer(1, codebook_size=cfg.vq_codebook_size, code_dim=cfg.vq_code_dim, hidden=16).eval()
    for kind, model in (("vq", vq), ("latent", PatchLatent(1, patch=4)), ("judge", Judge(1).eval())):
        save_atomic(tokenizer_to_checkpoint(model, kind=kind, dataset="mnist"), tokenizer_path(cfg, kind))


def smoke_world(tmp_path_factory, name: str, modes: tuple[str, ...], steps: int) -> tuple[Path, Path, Path]:
    """A temporary root with runs/ holding a smoke model per mode (random tokenizers) and an empty inputs/ path."""
    if not mnist_staged():
        pytest.skip("MNIST not staged in data/ (run scripts/stage_data.sh)")
    root = tmp_path_factory.mktemp(name)
    runs = root / "runs"
    install_random_tokenizers(runs)
    for mode in modes:
        assert main(["train", *SMOKE, "--runs-dir", str(runs), "--mode", mode, "--max-steps", str(steps)]) == 0
    return root, runs, root / "inputs"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """runs/ with an ar and a diffusion smoke model, and inputs/ with files a user might wrongly pass."""
    root, runs, inputs = smoke_world(tmp_path_factory, "cli", ("ar", "diffusion"), 4)
    inputs.mkdir()
    (inputs / "empty.txt").write_text("\n  \n")
    (inputs / "folder").mkdir()
    (inputs / "folder.png").mkdir()
    (inputs / "a-file").write_text("not a folder")
    (inputs / "text.pt").write_text("hello, I am text")
    (inputs / "pickle.pt").write_bytes(pickle.dumps({"images": [1, 2, 3]}))
    (inputs / "fake.png").write_text("not an image")
    images = {"rank2": torch.rand(28, 28), "rgb": torch.rand(2, 3, 28, 28), "empty": torch.rand(0, 1, 28, 28),
              "uint8": torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8), "nan": torch.full((2, 1, 28, 28),
              float("nan")), "0-255": torch.rand(2, 1, 28, 28) * 255, "small": torch.rand(2, 1, 16, 16)}
    for name, x in images.items():
        torch.save({"images": x}, inputs / f"{name}.pt")
    torch.save({"pictures": torch.rand(2, 1, 28, 28)}, inputs / "no-key.pt")
    ckpt = load_checkpoint(runs / "mnist-ar-smoke" / "ckpt.pt")
    del ckpt["config"]
    torch.save(ckpt, inputs / "no-config.pt")
    (runs / "not-a-run").mkdir()
    (runs / "not-a-run" / "thesis.tex").write_text("months of work")
    (runs / "link-out").symlink_to(inputs / "folder", target_is_directory=True)
    (inputs / "bad-data").mkdir()
    (inputs / "bad-data" / "mnist-train.pt").write_bytes(b"PK\x03\x04 a zip cut short")
    return SimpleNamespace(root=root, runs=runs, inputs=inputs, ar=runs / "mnist-ar-smoke" / "ckpt.pt",
                           diffusion=runs / "mnist-diffusion-smoke" / "ckpt.pt",
                           train=["train", *SMOKE, "--runs-dir", str(runs), "--max-steps", "6"])


def sample(w, *extra, ckpt=None):
    return ["sample", "--ckpt", ckpt or w.ar, "--prompt", PROMPT, "--out", w.root / "out.png", *extra]


def caption(w, name):
    return ["caption", "--ckpt", w.ar, "--images", w.inputs / name]


CASES = [
    # --- data loss: outputs over inputs, run names outside the runs folder, NaN training
    ("sample --out the checkpoint", lambda w: [*sample(w)[:-2], "--out", w.ar], "never replaces an input"),
    ("sample --out another checkpoint", lambda w: [*sample(w)[:-2], "--out", w.diffusion], "is a minimfm checkpoint"),
    ("evaluate --out the checkpoint", lambda w: ["evaluate", "--ckpt", w.ar, "--out", w.ar], "--out must end in .json"),
    ("bench --out a checkpoint", lambda w: ["bench", *SMOKE, "--out", w.ar], "--out must end in .json"),
    ("train --run-name . --overwrite", lambda w: [*w.train, "--run-name", ".", "--overwrite"], "--run-name"),
    ("train --run-name .. --overwrite", lambda w: [*w.train, "--run-name", "..", "--overwrite"], "--run-name"),
    ("train --run-name ../escape", lambda w: [*w.train, "--run-name", "../escape"], "--run-name"),
    ("train --run-name a/../../b", lambda w: [*w.train, "--run-name", "a/../../b"], "--run-name"),
    ("train --run-name /absolute", lambda w: [*w.train, "--run-name", w.root / "abs", "--overwrite"], "--run-name"),
    ("train --run-name tokenizers", lambda w: [*w.train, "--run-name", "tokenizers", "--overwrite"], "reserved"),
    ("train --overwrite a folder that is no run", lambda w: [*w.train, "--run-name", "not-a-run", "--overwrite"],
     "not a minimfm run; not deleting it"),
    ("train --run-name a link out of runs", lambda w: [*w.train, "--run-name", "link-out", "--overwrite"],
     "not inside --runs-dir"),
    ("compare --name . --overwrite", lambda w: ["compare", *SMOKE, "--runs-dir", w.runs, "--name", ".",
                                                "--overwrite"], "--name"),
    ("train --lr inf", lambda w: [*w.train, "--run-name", "x", "--lr", "inf"], "--lr: must be a finite number > 0"),
    ("train --image-loss-weight nan", lambda w: [*w.train, "--mode", "diffusion", "--run-name", "x",
                                                 "--image-loss-weight", "nan"], "--image-loss-weight"),
    ("train diverging from step 1", lambda w: [*w.train, "--run-name", "x", "--lr", "1e30", "--warmup-steps", "1"],
     r"training stopped at step \d+: the \w+ is nan; no checkpoint had been written yet"),
    # --- tracebacks before
    ("sample --n 0", lambda w: sample(w, "--n", "0"), r"--n: must be a whole number in \[1, 10000\], got 0"),
    ("sample --n -3", lambda w: sample(w, "--n", "-3"), "--n"),
    ("sample --n 100000", lambda w: sample(w, "--n", "100000"), "--n"),
    ("sample 300 images to a grid", lambda w: sample(w, "--n", "300"), "at most 256"),
    ("sample --steps 10000", lambda w: sample(w, "--steps", "10000", ckpt=w.diffusion), "--steps"),
    ("sample empty prompts file", lambda w: [*sample(w)[:3], "--prompts-file", w.inputs / "empty.txt", "--out",
                                             w.root / "o.png"], "holds no prompts"),
    ("sample folder as prompts file", lambda w: [*sample(w)[:3], "--prompts-file", w.inputs / "folder", "--out",
                                                 w.root / "o.png"], "is a folder"),
    ("sample --out a folder", lambda w: [*sample(w)[:-2], "--out", w.inputs / "folder"], "is a folder"),
    ("sample --out a folder.png", lambda w: [*sample(w)[:-2], "--out", w.inputs / "folder.png"], "is a folder"),
    ("sample --out under a file", lambda w: [*sample(w)[:-2], "--out", w.inputs / "a-file" / "o.png"], "is a file"),
    ("sample --device banana", lambda w: sample(w, "--device", "banana"), "--device"),
    ("sample --cfg-scale nan", lambda w: sample(w, "--cfg-scale", "nan", ckpt=w.diffusion), "--cfg-scale"),
    ("sample --cfg-scale inf", lambda w: sample(w, "--cfg-scale", "inf", ckpt=w.diffusion), "--cfg-scale"),
    ("sample a 5,000-word prompt", lambda w: [*sample(w)[:3], "--prompt", " ".join(["seven"] * 5000), "--out",
                                              w.root / "o.png"], "prompt longer than"),
    ("sample a checkpoint without config", lambda w: sample(w, ckpt=w.inputs / "no-config.pt"), "no 'config'"),
    ("sample a text file as checkpoint", lambda w: sample(w, ckpt=w.inputs / "text.pt"), "not a readable"),
    ("train --ckpt-every 0", lambda w: [*w.train, "--run-name", "x", "--ckpt-every", "0"], "--ckpt-every"),
    ("train --log-every 0", lambda w: [*w.train, "--run-name", "x", "--log-every", "0"], "--log-every"),
    ("train --threads -1", lambda w: [*w.train, "--run-name", "x", "--threads", "-1"], "--threads"),
    ("train --top-p 0", lambda w: [*w.train, "--run-name", "x", "--top-p", "0"], r"--top-p: must be in \(0, 1\]"),
    ("train --device banana", lambda w: [*w.train, "--run-name", "x", "--device", "banana"], "--device"),
    ("train --runs-dir a file", lambda w: [*w.train, "--runs-dir", w.inputs / "a-file"], "is a file, not a folder"),
    ("train --resume with another --d-model", lambda w: [*w.train, "--resume", "--d-model", "64"],
     r"--resume: .*--d-model 32, now 64.* do not fit"),
    ("train on a corrupt dataset cache", lambda w: [*w.train, "--run-name", "x", "--data-root",
                                                    w.inputs / "bad-data"], "dataset cache"),
    ("compare --budget-flops inf", lambda w: ["compare", *SMOKE, "--runs-dir", w.runs, "--budget-flops", "inf"],
     "--budget-flops"),
    ("caption a text file", lambda w: caption(w, "text.pt"), "not a readable"),
    ("caption a pickle", lambda w: caption(w, "pickle.pt"), "not a readable"),
    ("caption a rank-2 tensor", lambda w: caption(w, "rank2.pt"), r"shape \(28, 28\)"),
    ("caption RGB for an MNIST model", lambda w: caption(w, "rgb.pt"), r"reads \[N, 1, 28, 28\]"),
    ("caption 16x16 images", lambda w: caption(w, "small.pt"), r"reads \[N, 1, 28, 28\]"),
    ("caption uint8 images", lambda w: caption(w, "uint8.pt"), "uint8 values"),
    ("caption an empty batch", lambda w: caption(w, "empty.pt"), "0 images"),
    ("caption a file without 'images'", lambda w: caption(w, "no-key.pt"), "no 'images'"),
    ("caption a text file named .png", lambda w: caption(w, "fake.png"), "not a PNG"),
    ("caption a folder", lambda w: caption(w, "folder"), "is a folder"),
    # --- silently accepted before
    ("sample diffusion --steps 0", lambda w: sample(w, "--steps", "0", ckpt=w.diffusion), "--steps"),
    ("evaluate --n 0", lambda w: ["evaluate", "--ckpt", w.ar, "--n", "0"], "--n"),
    ("evaluate --n -1", lambda w: ["evaluate", "--ckpt", w.ar, "--n", "-1"], "--n"),
    ("evaluate --out under a file", lambda w: ["evaluate", "--ckpt", w.ar, "--out", w.inputs / "a-file" / "r.json"],
     "is a file"),
    ("caption NaN images", lambda w: caption(w, "nan.pt"), "NaN"),
    ("caption 0..255 images", lambda w: caption(w, "0-255.pt"), "divide 0..255 images by 255"),
    ("train --resume a run that does not exist", lambda w: [*w.train, "--run-name", "nothere", "--resume"],
     "no checkpoint"),
]


@pytest.mark.parametrize("argv, pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_loses_nothing(world, capsys, argv, pattern):
    before = snapshot(world.root)
    rc, _, err = run(capsys, *argv(world))
    assert_one_line_error(rc, err, pattern)
    assert snapshot(world.root) == before  # no file changed, no half-made run folder left behind


@pytest.fixture
def copy(world, tmp_path):
    """A private copy of the runs folder, for commands that are meant to write into it."""
    shutil.copytree(world.runs, tmp_path / "runs")
    return SimpleNamespace(runs=tmp_path / "runs", ar=tmp_path / "runs" / "mnist-ar-smoke",
                           train=["train", *SMOKE, "--runs-dir", tmp_path / "runs", "--max-steps", "8"])


def test_diverging_resume_keeps_the_last_good_checkpoint(copy, capsys):
    ckpt = (copy.ar / "ckpt.pt").read_bytes()
    rc, _, err = run(capsys, *copy.train, "--resume", "--lr", "1e30")
    assert_one_line_error(rc, err, r"training stopped at step \d+: .*/ckpt\.pt \(step 4\) is kept")
    assert (copy.ar / "ckpt.pt").read_bytes() == ckpt


def test_disk_full_during_a_checkpoint_write(copy, capsys, monkeypatch):
    def full_disk(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")
    ckpt = (copy.ar / "ckpt.pt").read_bytes()
    monkeypatch.setattr(minimfm.checkpoint.torch, "save", full_disk)
    rc, _, err = run(capsys, *copy.train, "--resume")
    assert_one_line_error(rc, err, r"disk full while writing .*ckpt\.pt .*the previous ckpt\.pt is intact")
    assert (copy.ar / "ckpt.pt").read_bytes() == ckpt
    assert not list(copy.ar.glob("*.tmp"))  # the half-written temp file is gone


def test_resume_drops_metrics_past_the_checkpoint_and_checkpoints_are_readable(copy, capsys):
    metrics = copy.ar / "metrics.jsonl"
    with metrics.open("a") as f:  # a run killed after logging steps 5-6 but before checkpointing them
        f.write('{"step": 5, "loss": 1.0}\n{"step": 6, "lo')
    rc, _, err = run(capsys, *copy.train, "--resume", "--log-every", "1")
    assert rc == 0, err
    steps = [int(re.search(r'"step": (\d+)', line).group(1)) for line in metrics.read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 8, steps
    umask = minimfm.checkpoint._umask()
    assert (copy.ar / "ckpt.pt").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_evaluate_creates_a_missing_output_folder(world, capsys, tmp_path, monkeypatch):
    """--out in a folder that does not exist yet: created when the results are written (the evaluation itself is
    replaced by a stub here; it is tested in test_evaluate.py)."""
    import minimfm.evaluate
    monkeypatch.setattr(minimfm.evaluate, "evaluate", lambda model, judge, **kw: {"n_samples": kw["n_samples"]})
    monkeypatch.setattr(minimfm.evaluate, "format_results", lambda r: "table")
    out = tmp_path / "new" / "folder" / "r.json"
    rc, stdout, err = run(capsys, "evaluate", "--ckpt", world.ar, "--n", "10", "--out", out)
    assert rc == 0 and not error_lines(err), err
    assert json.loads(out.read_text())["n_samples"] == 10


def test_dataset_cache_is_written_atomically(tmp_path, monkeypatch):
    """A write that fails half-way leaves no cache behind (a half-written one would break every later run)."""
    from minimfm.data import load_images
    if not (DATA / "MNIST" / "raw" / "t10k-images-idx3-ubyte").exists():
        pytest.skip("needs the raw MNIST files")
    (tmp_path / "MNIST").mkdir()
    (tmp_path / "MNIST" / "raw").symlink_to(DATA / "MNIST" / "raw")

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"half a cache")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(minimfm.checkpoint.torch, "save", full_disk)
    with pytest.raises(minimfm.checkpoint.CheckpointError, match="disk full"):
        load_images("mnist", "test", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MNIST"]


def test_a_real_process_exits_2_with_one_line(world):
    """The in-process cases above, once as a real process: exit status and stderr as a shell sees them."""
    r = subprocess.run([sys.executable, "-m", "minimfm", "caption", "--ckpt", str(world.ar), "--images",
                        str(world.inputs / "uint8.pt")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
