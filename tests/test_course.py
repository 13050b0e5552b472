"""course_model, the one way notebooks obtain a trained model, and `python -m minimfm course prepare`.

Each test trains a few steps of a 2-layer width-32 model on 64 MNIST images in its own runs folder, on random
tokenizers (nothing under the repository's runs/ is read or written)."""
import hashlib
from pathlib import Path

import pytest
import torch

import minimfm.course
from conftest import ROOT, needs_mnist
from helpers import install_random_vq
from minimfm.__main__ import main
from minimfm.checkpoint import CheckpointError, load_checkpoint, save_atomic
from minimfm.config import ConfigError
from minimfm.course import course_config, course_items, course_mixed_model, course_model, mixed_config, repo_root
from minimfm.judge import Judge
from minimfm.tokenizers.latent import AutoencoderLatent, PatchLatent
from minimfm.tokenizers.training import tokenizer_to_checkpoint
from minimfm.tokenizers.vq import VQTokenizer
from minimfm.train import train

SMALL = dict(preset="smoke", limit_train=64, batch_size=8, max_steps=6, ckpt_every=100, log_every=2, warmup_steps=2,
             sample_every=0, d_model=32, n_layer=2, n_head=2, vq_codebook_size=16, vq_code_dim=8, verbose=False)


def small(tmp_path, **kw) -> dict:
    return {**SMALL, "runs_dir": str(tmp_path), **kw}


@pytest.fixture
def runs(tmp_path):
    install_random_vq(course_config("ar", **{k: v for k, v in small(tmp_path).items() if k != "verbose"}))
    return tmp_path


@pytest.fixture
def calls(monkeypatch):
    """Every train() call course_model makes, as its keyword arguments."""
    seen = []

    def spy(cfg, **kwargs):
        seen.append(kwargs)
        return train(cfg, **kwargs)
    monkeypatch.setattr(minimfm.course, "train", spy)
    return seen


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_root_is_the_repository_whatever_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("MINIMFM_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)  # e.g. a hosted notebook started outside notebooks/
    cfg = course_config("ar", preset="smoke")
    assert repo_root() == ROOT
    assert (Path(cfg.data_root), Path(cfg.runs_dir)) == (ROOT / "data", ROOT / "runs")
    monkeypatch.setenv("MINIMFM_ROOT", str(tmp_path))
    assert Path(course_config("ar", preset="smoke").runs_dir) == tmp_path.resolve() / "runs"
    monkeypatch.setenv("MINIMFM_ROOT", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="MINIMFM_ROOT"):
        repo_root()


@needs_mnist
def test_an_interrupted_run_is_resumed_to_the_presets_step_count(runs, calls):
    cfg = course_config("ar", **{k: v for k, v in small(runs).items() if k != "verbose"})
    train(cfg, stop_after=3, verbose=False)  # a learner's kernel died after the checkpoint at step 3
    assert load_checkpoint(runs / cfg.name / "ckpt.pt")["step"] == 3
    resumed = course_model("ar", **small(runs))
    assert calls == [dict(resume=True, overwrite=False, verbose=False, stop_after=6)]
    assert load_checkpoint(runs / cfg.name / "ckpt.pt")["step"] == 6
    straight = course_model("ar", **small(runs, run_name="straight"))  # one uninterrupted run of 6 steps
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    calls.clear()
    course_model("ar", **small(runs))  # finished: loaded as it is
    assert calls == []


@needs_mnist
def test_a_run_folder_without_checkpoint_is_started_not_refused(runs):
    cfg = course_config("ar", **{k: v for k, v in small(runs).items() if k != "verbose"})
    run = runs / cfg.name
    (run / "samples").mkdir(parents=True)  # killed before its first save: config and a partial log, no ckpt.pt
    (run / "config.json").write_text("{}")
    (run / "metrics.jsonl").write_text('{"step": 2, "loss": 9.0}\n{"step": 4, "lo')
    with pytest.raises(CheckpointError, match="exists"):
        train(cfg, verbose=False)  # what notebooks called before: refused
    course_model("ar", **small(runs))
    assert load_checkpoint(run / "ckpt.pt")["step"] == 6
    foreign = runs / "mine"  # a folder of the learner's own under the run name: never written into
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="not a minimfm run"):
        course_model("ar", **small(runs, run_name="mine"))
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


@needs_mnist
def test_the_step_count_and_settings_are_checked(runs, calls):
    course_model("ar", **small(runs, max_steps=4))
    ckpt = runs / "mnist-ar-smoke" / "ckpt.pt"
    before = digest(ckpt)
    with pytest.raises(CheckpointError, match="4-step schedule, the smoke preset's is 6"):
        course_model("ar", **small(runs))
    with pytest.raises(CheckpointError, match="step 4, past the 2"):
        course_model("ar", **small(runs, max_steps=4), stop_after=2)
    with pytest.raises(CheckpointError, match="--d-model 32 .the course's: 64"):
        course_model("ar", **small(runs, max_steps=4, d_model=64))
    with pytest.raises(CheckpointError, match="'ar' model, not 'masked'"):
        course_model("masked", **small(runs, max_steps=4, run_name="mnist-ar-smoke"))
    assert digest(ckpt) == before and len(calls) == 1  # refusals touch nothing
    course_model("ar", **small(runs), overwrite=True)  # asked for: retrained on the preset's schedule
    assert load_checkpoint(ckpt)["step"] == 6
    course_model("ar", **small(runs, run_name="short"), stop_after=3)  # notebook 05's first steps of a run
    assert load_checkpoint(runs / "short" / "ckpt.pt")["step"] == 3
    assert load_checkpoint(runs / "short" / "ckpt.pt")["config"]["max_steps"] == 6  # the schedule of the full run
    course_model("ar", **small(runs, run_name="short"), stop_after=3)
    assert len(calls) == 3


@needs_mnist
def test_the_model_is_loaded_on_the_selected_device(runs, monkeypatch):
    course_model("ar", **small(runs))  # trained on what select_device picks (cpu here)
    asked = []

    def select(name):
        asked.append(name)
        return torch.device("meta")  # stands for a GPU: anything but the cpu a hard-coded load would give
    monkeypatch.setattr(minimfm.course, "select_device", select)
    model = course_model("ar", **small(runs))
    assert asked == ["auto"] and {p.device.type for p in model.parameters()} == {"meta"}


@needs_mnist
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_a_gpu_the_model_is_trained_and_loaded_there(runs):
    model = course_model("ar", **small(runs))
    assert {p.device.type for p in model.parameters()} == {"cuda"}


def install_random_tokenizers(items) -> None:
    """Random-weight tokenizers and judges at the paths prepare would train them to (seconds instead of minutes)."""
    for item in items:
        cfg, channels = item.config(), 3 if item.dataset == "cifar10" else 1
        model = {"judge": lambda: Judge(channels),
                 "vq": lambda: VQTokenizer(channels, cfg.vq_codebook_size, cfg.vq_code_dim, hidden=16),
                 "latent": lambda: PatchLatent(channels, patch=4) if cfg.latent_kind == "patch" else
                 AutoencoderLatent(channels, cfg.latent_channels, hidden=16)}.get(item.kind)
        if model is not None:
            save_atomic(tokenizer_to_checkpoint(model().eval(), kind=item.kind, dataset=item.dataset),
                        item.path())


@needs_mnist
def test_course_prepare_builds_every_item_then_finds_them_built(tmp_path, monkeypatch, capsys):
    (tmp_path / "data").symlink_to(ROOT / "data")
    monkeypatch.setenv("MINIMFM_ROOT", str(tmp_path))
    items = course_items("mnist", "smoke")
    assert [i.label for i in items if i.kind == "model"] == [
        "ar model", "masked model", "diffusion model", "mar model", "masked mixed-modal fine-tune",
        "diffusion, first 10 steps, bidirectional", "diffusion, first 10 steps, causal"]
    assert main(["course", "prepare", "--preset", "smoke", "--dry-run"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == len(items) + 1 and "to train 20 steps" in listed[4] and "listed 13 items" in listed[-1]
    assert not (tmp_path / "runs").exists()  # a dry run builds nothing
    install_random_tokenizers(items)
    assert main(["course", "prepare", "--preset", "smoke"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if line.startswith("[")][4].startswith("[5/13] ar model (mnist, smoke; notebook 03)"
                                                                           ": trained 20 steps in")
    assert lines[-1].startswith("course ready: 13 items in")
    for item in items:
        assert item.path().is_file(), item.label
    assert load_checkpoint(tmp_path / "runs" / "mnist-diffusion-smoke-causal-first10" / "ckpt.pt")["config"][
        "image_attention"] == "causal"
    mixed = load_checkpoint(tmp_path / "runs" / "mnist-masked-smoke-mixed" / "ckpt.pt")["config"]
    assert (mixed["tasks"], mixed["max_steps"], mixed["init_from"]) == (
        "caption,interleaved,edit", 8, str(tmp_path.resolve() / "runs" / "mnist-masked-smoke" / "ckpt.pt"))
    assert main(["course", "prepare", "--preset", "smoke"]) == 0
    assert sum(": cached in" in line for line in capsys.readouterr().out.splitlines()) == 13


@needs_mnist
def test_course_prepare_refuses_a_foreign_folder_with_one_line_and_keeps_it(tmp_path, monkeypatch, capsys):
    (tmp_path / "data").symlink_to(ROOT / "data")
    monkeypatch.setenv("MINIMFM_ROOT", str(tmp_path))
    install_random_tokenizers(course_items("mnist", "smoke"))
    foreign = tmp_path / "runs" / "mnist-ar-smoke"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(["course", "prepare", "--preset", "smoke"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a minimfm run" in err, err
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("argv, pattern", [
    (["course", "prepare", "--preset", "huge"], "--preset: invalid choice: 'huge'"),
    (["course", "build"], "argument action: invalid choice: 'build'"),
    (["course", "prepare", "--dataset", "imagenet"], "--dataset: invalid choice"),
])
def test_a_bad_course_flag_is_one_line(argv, pattern, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and pattern in err, err


@needs_mnist
def test_the_mixed_model_is_the_course_models_fine_tune_trained_once(runs, calls):
    cfg = mixed_config("ar", **{k: v for k, v in small(runs).items() if k != "verbose"})
    assert (cfg.run_name, cfg.init_from) == ("mnist-ar-smoke-mixed", str(runs / "mnist-ar-smoke" / "ckpt.pt"))
    assert cfg.task_examples == 500  # the smoke preset's 2,000 digits
    assert cfg.max_steps == round(0.4 * SMALL["max_steps"]) and cfg.tasks == "caption,interleaved,edit"
    model = course_mixed_model("ar", **small(runs), examples=40)  # the base is trained first: it was missing
    assert [c.get("stop_after") for c in calls] == [6, 2] and "make" in model.tok.index  # the grown vocabulary
    assert not model.training
    course_mixed_model("ar", **small(runs), examples=40)  # both finished: loaded, nothing trained
    assert len(calls) == 2
    other = mixed_config("ar", tasks="caption,edit", examples=1000, **{k: v for k, v in small(runs).items()
                                                                         if k != "verbose"})
    assert other.run_name == "mnist-ar-smoke-mixed-caption-edit-1000" and other.task_examples == 1000
    assert mixed_config("ar", run_name="mine", **{k: v for k, v in small(runs).items() if k != "verbose"}
                        ).init_from == str(runs / "mine" / "ckpt.pt")  # the fine-tune of the base named so
