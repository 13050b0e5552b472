"""Tuning (minimfm/tuning.py): the validation split, an equal budget per mode, the selection rule, resume, the CLI."""
import dataclasses
import hashlib
import json
import math

import pytest
import torch

from conftest import DATA, needs_mnist
from helpers import tiny_config
from minimfm import tuning as T
from minimfm.checkpoint import CheckpointError
from minimfm.config import ConfigError, make_config
from minimfm.data import VALIDATION_IMAGES, CaptionedDataset, load_images, validation_mask
from minimfm.modes import MODE_NAMES, REGISTRY
from test_compare import install_tokenizers


# ------------------------------------------------------------------------------------------ validation split

def digests(images: torch.Tensor) -> set[str]:
    return {hashlib.sha1(x.numpy().tobytes()).hexdigest() for x in images.mul(255).round().to(torch.uint8)}


def test_validation_is_the_last_images_of_each_class_even_in_a_split_sorted_by_class():
    labels = torch.arange(10).repeat_interleave(600)  # sorted by class, as the CIFAR-10 JPEG copy is stored
    mask = validation_mask(labels)
    assert int(mask.sum()) == VALIDATION_IMAGES and torch.bincount(labels[mask]).tolist() == [500] * 10
    assert mask[600 - 500:600].all() and not mask[:100].any()  # the last 500 of class 0
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    assert torch.equal(validation_mask(shuffled), validation_mask(shuffled))  # deterministic
    with pytest.raises(ValueError, match="class 0 has 500"):
        validation_mask(torch.arange(10).repeat_interleave(500))


@needs_mnist
def test_validation_split_is_held_out_of_training_and_never_the_test_set():
    images, labels = load_images("mnist", "train", DATA)
    n, mask = len(labels), validation_mask(labels)
    val = CaptionedDataset("mnist", "validation", DATA, seed=3)
    held = CaptionedDataset("mnist", "train", DATA, seed=3, holdout=True)
    full = CaptionedDataset("mnist", "train", DATA, seed=3)
    assert len(val) == VALIDATION_IMAGES and len(held) == n - VALIDATION_IMAGES
    # disjoint from training, together the whole split: validation the masked images, training the others
    assert not set(val.index) & set(held.index) and sorted(val.index + held.index) == list(range(n))
    assert torch.equal(val.images, images[mask]) and torch.equal(held.images, images[~mask])
    assert torch.equal(val.labels, labels[mask]) and torch.bincount(val.labels).tolist() == [500] * 10
    # the default split is untouched, and every image keeps the caption it has in the whole split
    assert torch.equal(full.images, images) and len(full) == n and full.index is None
    for ds in (val, held):
        assert [ds.caption(i) for i in (0, 7, len(ds) - 1)] == [full.caption(ds.index[i]) for i in (0, 7, len(ds) - 1)]
    # no validation image is a test image (pixel for pixel)
    test_images, _ = load_images("mnist", "test", DATA)
    assert not digests(val.images) & digests(test_images)
    # deterministic: the same images, labels and captions every time
    again = CaptionedDataset("mnist", "validation", DATA, seed=3)
    assert torch.equal(again.images, val.images) and again.caption(11) == val.caption(11)
    with pytest.raises(ValueError, match="unknown split"):
        CaptionedDataset("mnist", "val", DATA)


def test_training_reads_the_split_without_validation_only_when_asked(monkeypatch):
    from minimfm import train as train_module
    seen = []

    class Stop(Exception):
        pass

    def spy(*args, **kwargs):
        seen.append(kwargs.get("holdout"))
        raise Stop

    monkeypatch.setattr(train_module, "CaptionedDataset", spy)
    for holdout in (False, True):
        with pytest.raises(Stop):
            train_module.TrainingData(tiny_config(holdout_validation=holdout), model=None, verbose=False)
    assert seen == [False, True]
    with pytest.raises(ConfigError, match="--holdout-validation"):
        make_config("smoke", holdout_validation=True, tasks="caption,edit")


# --------------------------------------------------------------------------------------- equal budget per mode

def test_every_mode_draws_the_same_number_of_recipes_from_its_own_space():
    base = make_config("smoke")
    for mode in MODE_NAMES:
        knobs = T.space(mode)
        assert {"lr", "cfg_scale"} <= knobs.keys() and REGISTRY[mode].tuning, mode  # shared + its own
        recipes = T.draw(base, mode, 6)
        assert len(recipes) == 6 and recipes[0] == {k: getattr(base, k) for k in knobs}  # trial 0: the default
        assert len({json.dumps(r, sort_keys=True) for r in recipes}) == 6  # never the same recipe twice
        assert all(r.keys() == knobs.keys() and all(r[k] in knobs[k] or i == 0 for k in r)
                   for i, r in enumerate(recipes))
        for r in recipes:
            dataclasses.replace(base, mode=mode, **r)  # every value is one the Config accepts
        assert T.draw(base, mode, 3) == recipes[:3]  # more trials later: the same first ones
        assert T.draw(base, mode, 6) == recipes  # seeded
    assert T.draw(base, "ar", 6, seed=1) != T.draw(base, "ar", 6)
    assert REGISTRY["diffusion"].tuning["objective"] == ("flow", "ddpm")
    size = math.prod(len(values) for values in T.space("ar").values())  # the default is one of them (tiny)
    assert len(T.draw(base, "ar", size)) == size
    with pytest.raises(ValueError, match="--trials"):
        T.draw(base, "ar", size + 1)


def test_every_trial_of_every_mode_spends_the_same_flops(tmp_path):
    base = tiny_config("ar", runs_dir=str(tmp_path), latent_kind="patch", batch_size=8)
    install_tokenizers(base)
    budgets = set()
    for mode in MODE_NAMES:
        recipes = T.draw(base, mode, 4)
        budget, steps, per_step = T.trial_steps_for_budget(base, mode, recipes, trial_steps=50)
        budgets.add(budget)
        assert len(steps) == 4
        for s, f in zip(steps, per_step):  # rounding leaves at most half a step either way
            assert abs(s * f - budget) <= f / 2, (mode, s, f)
        if mode == "ar":
            assert steps[0] == 50  # the reference: the default ar recipe trains exactly --trial-steps
        if mode == "diffusion":
            conv = [s for r, s in zip(recipes, steps) if r["patch_encoder"] == "conv"]
            assert all(s < 50 for s in conv)  # costlier per step: fewer steps
    assert len(budgets) == 1


# ---------------------------------------------------------------------------------------------- selection rule

def trial(acc, fd):
    return {"prompted_accuracy": acc, "frechet_distance": fd}


def test_selection_prefers_fid_among_trials_near_the_best_accuracy():
    assert T.select([trial(0.95, 30), trial(0.99, 60), trial(0.985, 40), trial(0.97, 10)]) == 2
    assert T.select([trial(0.99, 50), trial(0.99, 50)]) == 0  # an exact tie: the earlier trial
    assert T.select([trial(0.98, 50), trial(0.99, 70)]) == 0  # 0.98 is within 0.01 of 0.99 (inclusive)
    assert T.select([trial(0.979, 50), trial(0.99, 70)]) == 1
    assert T.select([trial(0.5, 80)]) == 0
    with pytest.raises(ValueError):
        T.select([])


# ------------------------------------------------------------------------------------------------------ resume

def fake_training(monkeypatch, tmp_path, crash_at=None):
    """train() and evaluate_checkpoint() replaced: each trial's config is recorded, its 'validation figures'
    made up from its trial number."""
    import minimfm.compare
    import minimfm.train
    trained, scores = [], {0: (0.90, 50.0), 1: (0.97, 60.0), 2: (0.965, 40.0), 3: (0.80, 10.0), 4: (0.975, 45.0)}

    def train(cfg, resume, verbose):
        assert resume and cfg.holdout_validation and cfg.sample_every == 0
        trained.append(cfg)
        run = tmp_path / cfg.name
        run.mkdir(parents=True, exist_ok=True)
        return run

    def evaluate(path, judge, n, n_captions, **kwargs):
        assert kwargs["split"] == "validation" and n == n_captions == 10
        i = int(path.parent.name.removeprefix("trial"))
        if i == crash_at:
            raise KeyboardInterrupt
        acc, fd = scores[i]
        return {"prompted_accuracy": acc, "frechet_distance": fd, "frechet_floor": 5.0, "caption_accuracy": 0.9,
                "n_samples": n, "n_captions": n, "nfe_per_image": 49}

    monkeypatch.setattr(minimfm.train, "train", train)
    monkeypatch.setattr(minimfm.compare, "evaluate_checkpoint", evaluate)
    return trained


def tune_config(tmp_path):
    cfg = tiny_config("ar", runs_dir=str(tmp_path), data_root=str(DATA), latent_kind="patch", batch_size=8,
                      eval_samples=10, eval_captions=10)
    install_tokenizers(cfg)
    return cfg


def test_tune_resumes_and_never_retrains_a_finished_trial(tmp_path, monkeypatch):
    base = tune_config(tmp_path)
    trained = fake_training(monkeypatch, tmp_path, crash_at=2)
    with pytest.raises(KeyboardInterrupt):
        T.tune(base, "ar", trials=3, trial_steps=4, verbose=False)
    out = tmp_path / "tune-mnist-smoke-ar"
    state = json.loads((out / "best.json").read_text())
    assert [t["trial"] for t in state["trials"]] == [0, 1] and state["best_trial"] == 1
    assert [c.run_name for c in trained] == ["tune-mnist-smoke-ar/trial0", "tune-mnist-smoke-ar/trial1",
                                            "tune-mnist-smoke-ar/trial2"]
    recipes = T.draw(base, "ar", 5)
    assert all(getattr(trained[i], k) == v for i in range(3) for k, v in recipes[i].items())
    assert trained[0].max_steps == 4 and trained[0].lr == base.lr  # trial 0: the default recipe, --trial-steps

    trained = fake_training(monkeypatch, tmp_path)
    T.tune(base, "ar", trials=5, trial_steps=4, verbose=False)
    assert [c.run_name[-6:] for c in trained] == ["trial2", "trial3", "trial4"]  # 0 and 1 were finished
    state = json.loads((out / "best.json").read_text())
    assert [t["trial"] for t in state["trials"]] == [0, 1, 2, 3, 4]
    # best accuracy 0.975 (trial 4); within 0.01: trials 1, 2, 4; lowest Fréchet among them: trial 2
    assert state["best_trial"] == 2 and state["best"] == recipes[2] and state["trials"][2]["overrides"] == recipes[2]
    assert state["trial_steps"] == 4 and state["mode"] == "ar" and set(state["space"]) == set(T.space("ar"))
    assert all(abs(t["flops"] - state["trial_flops"]) <= t["flops"] / t["steps"] / 2 for t in state["trials"])
    md = (out / "best.md").read_text()
    assert "| **2** |" in md and "Best: trial 2" in md

    trained.clear()
    T.tune(base, "ar", trials=5, trial_steps=4, verbose=False)
    assert trained == []
    with pytest.raises(CheckpointError, match="other settings"):
        T.tune(base, "ar", trials=5, trial_steps=8, verbose=False)
    monkeypatch.setitem(T.SHARED, "lr", (4e-4, 1e-3))  # the space changed: the finished trials are not its draw
    with pytest.raises(CheckpointError, match="trial 1 was trained with"):
        T.tune(base, "ar", trials=5, trial_steps=4, verbose=False)


@needs_mnist
def test_tune_trains_and_scores_real_trials_on_the_validation_split(tmp_path):
    base = dataclasses.replace(tune_config(tmp_path), limit_train=64, warmup_steps=1, log_every=1, threads=1)
    out = T.tune(base, "masked", trials=2, trial_steps=2, verbose=False)
    state = json.loads((out / "best.json").read_text())
    assert [t["trial"] for t in state["trials"]] == [0, 1] and state["best_trial"] in (0, 1)
    for t in state["trials"]:
        assert t["n_samples"] == 10 and 0 <= t["prompted_accuracy"] <= 1 and t["frechet_distance"] > 0
        saved = json.loads((out / f"trial{t['trial']}" / "config.json").read_text())
        assert saved["holdout_validation"] is True and saved["mode"] == "masked"
        assert all(saved[k] == v for k, v in t["overrides"].items())


# ---------------------------------------------------------------------------------------------------- the CLI

def test_bad_trials_values_are_one_line(capsys, tmp_path):
    from minimfm.__main__ import main
    for argv, flag in ((["--trials", "0"], "--trials"), (["--trials", "-2"], "--trials"),
                       (["--trials", "many"], "--trials"), (["--trials", "200"], "--trials"),
                       (["--trial-steps", "0"], "--trial-steps"), ([], "--mode")):
        mode = [] if flag == "--mode" else ["--mode", "ar"]
        try:
            rc = main(["tune", "--preset", "smoke", "--runs-dir", str(tmp_path), *mode, *argv])
        except SystemExit as e:
            rc = e.code
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and flag in err and "Traceback" not in err, (argv, err)
    assert list(tmp_path.iterdir()) == []  # refused before any work
