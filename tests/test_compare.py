"""The paradigm comparison: FLOP counting per mode, budget matching, results.json schema, resume (the claims' rows:
tests/test_claims.py)."""
import json

import pytest
import torch
import torch.nn as nn

from conftest import DATA, needs_mnist
from helpers import install_random_vq, tiny_config
from minimfm import compare as C
from minimfm.checkpoint import save_atomic
from minimfm.judge import Judge
from minimfm.runs import build_model
from minimfm.tokenizers.latent import PatchLatent
from minimfm.tokenizers.store import tokenizer_path
from minimfm.tokenizers.training import tokenizer_to_checkpoint
from minimfm.tokenizers.vq import VQTokenizer


def toy_model(mode, **overrides):
    cfg = tiny_config(mode, latent_kind="patch", **overrides)
    torch.manual_seed(0)
    tokenizer = PatchLatent(1, patch=4) if mode == "diffusion" else \
        VQTokenizer(1, codebook_size=cfg.vq_codebook_size, code_dim=cfg.vq_code_dim, hidden=16)
    return build_model(cfg, tokenizer)


def linear_params(modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


@pytest.mark.parametrize("mode", ["ar", "masked", "diffusion"])
def test_step_flops_counts_every_per_token_matmul(mode):
    model = toy_model(mode)
    cfg = model.cfg
    # by hand: every nn.Linear / conv weight is applied per token, except the timestep MLP (once per sequence)
    per_sequence = set(model.time_emb.modules()) if mode == "diffusion" else set()
    per_sequence |= set(model.image_tokenizer.modules())  # frozen: encodes the data once, not trained
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))
              and m not in per_sequence]
    norms = [p for n, p in model.named_parameters() if "norm" in n]  # RMSNorm gains: one multiply per feature
    N = linear_params(layers) + sum(p.numel() for p in norms)
    T = model.layout.length
    expected = cfg.batch_size * T * (6 * N + 12 * cfg.n_layer * cfg.d_model * T)
    assert C.step_flops(model, cfg.batch_size) == expected
    assert C.step_flops(model, 2 * cfg.batch_size) == 2 * expected


def test_masked_sequence_is_one_token_longer_and_costs_more_per_step():
    ar, masked = toy_model("ar"), toy_model("masked")
    assert masked.layout.length == ar.layout.length + 1  # Show-o's task token
    assert C.step_flops(masked, 8) > C.step_flops(ar, 8)


def test_budget_matching_gives_each_mode_the_same_flops():
    per_step = {"ar": 3.0e9, "masked": 3.1e9, "diffusion": 2.9e9}
    steps = C.steps_for_budget(per_step, 3000 * 3.0e9)
    assert steps["ar"] == 3000 and steps["masked"] == 2903 and steps["diffusion"] == 3103
    for mode, s in steps.items():  # rounding leaves at most half a step of difference
        assert abs(s * per_step[mode] - 3000 * 3.0e9) <= per_step[mode] / 2
    with pytest.raises(ValueError, match="less than one step of ar"):
        C.steps_for_budget(per_step, 1e9)
    assert C.steps_for_minutes({"ar": 0.5, "masked": 2.0}, 1) == {"ar": 120, "masked": 30}
    with pytest.raises(ValueError, match="positive"):
        C.steps_for_minutes({"ar": 0.5}, 0)


def install_tokenizers(cfg):
    install_random_vq(cfg)
    torch.manual_seed(0)
    judge = Judge(1).eval()
    save_atomic(tokenizer_to_checkpoint(judge, kind="judge", dataset="mnist"), tokenizer_path(cfg, "judge"))
    patch = PatchLatent(1, patch=4)
    save_atomic(tokenizer_to_checkpoint(patch, kind="latent", dataset="mnist"), tokenizer_path(cfg, "latent"))


def compare_config(tmp_path):
    """4 steps of 8 sequences per mode, random tokenizers and judge installed: the plumbing, in seconds."""
    cfg = tiny_config("ar", runs_dir=str(tmp_path), data_root=str(DATA), limit_train=64, batch_size=8,
                      max_steps=4, warmup_steps=1, log_every=1, latent_kind="patch", eval_samples=10,
                      eval_captions=10, threads=1)
    install_tokenizers(cfg)
    return cfg


FAST = dict(curve_points=2, sweep_n=10, sweep_steps={"masked": (1, 2), "diffusion": (2,)}, verbose=False)


@needs_mnist
def test_seeds_resume_and_every_curve_point_at_one_sample_size(tmp_path, monkeypatch):
    cfg = compare_config(tmp_path)
    fast = {**FAST, "sweep_n": 20}  # not the table's eval_samples (10): the curve's last point must still be 20
    out = C.compare(cfg, modes=("ar",), seeds=1, **fast)
    state = json.loads((out / "results.json").read_text())
    assert list(state["modes"]) == ["ar"] and state["plan"]["steps"]["ar"] == 4
    assert state["seeds"] == [0] and state["sweep_n"] == 20
    ar = state["modes"]["ar"]
    for key in ("prompted_accuracy", "attribute_match", "frechet_distance", "frechet_floor", "caption_accuracy",
                "caption_attribute_accuracy", "caption_perplexity", "images_per_second", "seconds_per_image",
                "nfe_per_image", "train_flops", "train_seconds", "steps_trained", "curve", "step_sweep", "cfg_check",
                "seeds", "intervals", "per_seed"):
        assert key in ar, key
    assert ar["seeds"] == [0] and list(ar["per_seed"]) == ["0"]
    assert ar["intervals"]["prompted_accuracy"]["half_width"] is None  # one seed: no interval, none invented
    # fixed-n Fréchet: every point of the curve and the sweep on 20 images, one floor; the table on eval_samples
    assert [p["step"] for p in ar["curve"]] == [2, 4]
    assert [p["n_samples"] for p in ar["curve"] + ar["step_sweep"]] == [20, 20, 20]
    floors = {p["frechet_floor"] for p in ar["curve"] + ar["step_sweep"]}
    assert len(floors) == 1 and ar["n_samples"] == 10 and ar["frechet_floor"] not in floors
    assert ar["curve"][-1]["flops"] == ar["train_flops"] == 4 * state["plan"]["flops_per_step"]["ar"]
    assert ar["nfe_per_image"] == 49 and [p["nfe_per_image"] for p in ar["step_sweep"]] == [49]
    assert 0 <= ar["prompted_accuracy"] <= 1 and ar["train_seconds"] > 0
    md = (out / "results.md").read_text()
    assert "| ar | 1 | 4 |" in md and "at 20 images: " + f"{floors.pop():.1f}" in md
    assert "A paired test needs at least 2 seeds" in md

    trained = []
    real_run_mode = C.run_mode
    monkeypatch.setattr(C, "run_mode", lambda base, mode, *a, seed, **k: trained.append((mode, seed)) or
                        real_run_mode(base, mode, *a, seed=seed, **k))
    out = C.compare(cfg, modes=("ar", "masked"), seeds=2, **fast)
    state2 = json.loads((out / "results.json").read_text())
    assert trained == [("masked", 0), ("ar", 1), ("masked", 1)]  # (ar, seed 0) was finished: kept, not retrained
    assert state2["modes"]["ar"]["per_seed"]["0"] == ar["per_seed"]["0"] and state2["seeds"] == [0, 1]
    assert (tmp_path / "compare-mnist-smoke" / "masked" / "seed1" / "ckpt.pt").is_file()
    ar2 = state2["modes"]["ar"]
    values = [ar2["per_seed"][s]["prompted_accuracy"] for s in ("0", "1")]
    assert ar2["intervals"]["prompted_accuracy"]["values"] == values
    assert ar2["prompted_accuracy"] == pytest.approx(sum(values) / 2)
    assert ar2["intervals"]["frechet_distance"]["half_width"] is not None
    assert ar2["curve"][0]["intervals"]["frechet_distance"]["n"] == 2
    assert [p["nfe_per_image"] for p in state2["modes"]["masked"]["step_sweep"]] == [1, 2]
    pairs = {(r["a"], r["b"], r["metric"]) for r in state2["paired"]}
    assert ("ar", "masked", "frechet_distance") in pairs and all(r["n"] == 2 for r in state2["paired"])
    md = (out / "results.md").read_text()
    assert "| ar − masked |" in md and " ± " in md
    for name in ("quality_vs_steps.png", "quality_vs_compute.png", "samples.png"):
        assert (out / name).stat().st_size > 1000

    trained.clear()  # asking for fewer seeds again trains nothing
    C.compare(cfg, modes=("ar", "masked"), seeds=1, **fast)
    assert trained == []
    with pytest.raises(Exception, match="other settings, budget or --sweep-n"):
        C.compare(cfg, budget_flops=2 * state["plan"]["flops"]["ar"], modes=("ar",), seeds=1, **fast)
    with pytest.raises(Exception, match="other settings, budget or --sweep-n"):
        C.compare(cfg, modes=("ar",), seeds=1, **FAST)


@needs_mnist
def test_an_interrupted_seed_resumes_from_its_last_segment(tmp_path, monkeypatch):
    cfg = compare_config(tmp_path)
    calls = []
    real_evaluate = C.evaluate_checkpoint

    def evaluate_then_crash(path, *a, **k):
        calls.append(path)
        if len(calls) == 2:  # the second evaluation: after the final segment
            raise KeyboardInterrupt
        return real_evaluate(path, *a, **k)

    monkeypatch.setattr(C, "evaluate_checkpoint", evaluate_then_crash)
    with pytest.raises(KeyboardInterrupt):
        C.compare(cfg, modes=("ar",), seeds=1, **FAST)
    run = tmp_path / "compare-mnist-smoke" / "ar" / "seed0"
    assert list(json.loads((run / "evaluations.json").read_text())) == ["step 2"]  # the first half's survived
    calls.clear()
    monkeypatch.setattr(C, "evaluate_checkpoint", lambda path, *a, **k: calls.append(k) or real_evaluate(path, *a, **k))
    out = C.compare(cfg, modes=("ar",), seeds=1, **FAST)
    assert [p["step"] for p in json.loads((out / "results.json").read_text())["modes"]["ar"]["curve"]] == [2, 4]
    # sweep_n == eval_samples: the step-4 evaluation is also the table's, the sweep's and the guided check's;
    # only the unguided check is new
    assert len(calls) == 2 and calls[1]["cfg_scale"] == 0.0


@needs_mnist
def test_a_comparison_from_before_seeds_is_not_mixed_in(tmp_path):
    cfg = compare_config(tmp_path)
    old = tmp_path / "compare-mnist-smoke"
    old.mkdir()
    (old / "results.json").write_text(json.dumps({"setting": {}, "plan": {}, "modes": {"ar": {}}}))
    with pytest.raises(Exception, match="from before --seeds"):
        C.compare(cfg, modes=("ar",), **FAST)


def result(seed, acc, fd, cap=None):
    """One made-up (mode, seed) result, the shape run_mode returns."""
    point = {"step": 4, "flops": 8.0, "prompted_accuracy": acc, "frechet_distance": fd, "caption_accuracy": cap}
    return {"mode": "ar", "seed": seed, "steps_trained": 4, "prompted_accuracy": acc, "frechet_distance": fd,
            "caption_accuracy": cap, "nfe_per_image": 49, "curve": [point],
            "step_sweep": [{"steps": None, "nfe_per_image": 49, "frechet_distance": fd}],
            "cfg_check": {"cfg_scale": 3.0, "prompted_accuracy_cfg": acc, "prompted_accuracy_no_cfg": acc - 0.1}}


def test_aggregate_reports_mean_and_interval_of_every_metric():
    entry = C.aggregate({"2": result(2, 0.9, 50.0), "0": result(0, 0.8, 40.0), "1": result(1, 0.85, 45.0)})
    assert entry["seeds"] == [0, 1, 2] and list(entry["per_seed"]) == ["0", "1", "2"]
    assert entry["prompted_accuracy"] == pytest.approx(0.85) and entry["frechet_distance"] == pytest.approx(45.0)
    fd = entry["intervals"]["frechet_distance"]  # 40, 45, 50: sd 5, half-width 4.302653 * 5 / sqrt(3)
    assert fd["values"] == [40.0, 45.0, 50.0] and fd["half_width"] == pytest.approx(12.420689, abs=1e-6)
    assert entry["nfe_per_image"] == 49 and entry["intervals"]["nfe_per_image"]["half_width"] == 0
    assert entry["caption_accuracy"] is None and "caption_accuracy" not in entry["intervals"]  # not measured
    assert entry["mode"] == "ar" and "seed" not in entry
    assert entry["curve"][0]["step"] == 4 and entry["curve"][0]["frechet_distance"] == pytest.approx(45.0)
    assert entry["curve"][0]["intervals"]["frechet_distance"]["half_width"] == pytest.approx(fd["half_width"])
    assert entry["step_sweep"][0]["steps"] is None
    assert entry["cfg_check"]["prompted_accuracy_no_cfg"] == pytest.approx(0.75)
    lagging = result(1, 0.85, 45.0)
    lagging["curve"][0]["step"] = 2
    with pytest.raises(ValueError, match="curve points differ"):
        C.aggregate({"0": result(0, 0.8, 40.0), "1": lagging})
    md = C.cell(entry, "frechet_distance", ".1f")
    assert md == "45.0 ± 12.4"


def test_paired_differences_test_every_pair_on_common_seeds():
    a = C.aggregate({str(s): result(s, 0.9 + 0.01 * s, 40.0 + s) for s in range(3)})
    b = C.aggregate({str(s): result(s, 0.8 + 0.01 * s, 50.0 + 2 * s) for s in range(2)})
    rows = {r["metric"]: r for r in C.paired_differences({"ar": a, "masked": b})}
    assert set(rows) == {"prompted_accuracy", "frechet_distance"}  # caption accuracy was not measured
    fd = rows["frechet_distance"]
    assert fd["seeds"] == [0, 1] and (fd["a"], fd["b"]) == ("ar", "masked")  # seed 2 of ar has no partner
    assert fd["difference"]["values"] == [-10.0, -11.0] and fd["df"] == 1
    assert rows["prompted_accuracy"]["p"] == 0.0 and rows["prompted_accuracy"]["beyond_noise"] is True  # 0.1 twice
    assert "| ar − masked |" in "\n".join(C.paired_table(list(rows.values())))


def test_seed_list_and_a_bad_seeds_flag_is_one_line(capsys):
    from minimfm.__main__ import main
    assert C.seed_list(5, 3) == [5, 6, 7]
    with pytest.raises(ValueError, match="--seeds"):
        C.seed_list(0, 0)
    with pytest.raises(ValueError, match="--seeds"):
        C.seed_list(2**31 - 2, 3)
    for bad in ("0", "-1", "three"):
        with pytest.raises(SystemExit) as e:
            main(["compare", "--preset", "smoke", "--seeds", bad])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and len(err.splitlines()) == 1 and "--seeds" in err, err


# ------------------------------------------------------------------ rows beyond the defaults: tuned recipes, variants

from minimfm.compare_rows import Row, pairs, same_setting  # noqa: E402


def write_recipe(folder, mode, best, preset="smoke", trial=3):
    folder.mkdir(parents=True, exist_ok=True)
    state = {"setting": {"dataset": "mnist", "preset": preset}, "mode": mode, "best": best, "best_trial": trial}
    (folder / "best.json").write_text(json.dumps(state))
    return folder / "best.json"


def made_up_run(calls):
    """run_mode replaced: records (row, seed, config) and returns a made-up result of the shape run_mode returns."""
    quality = {"ar": (0.90, 50.0), "ar-tuned": (0.95, 40.0), "diffusion": (0.80, 60.0), "diffusion-ddpm": (0.85, 55.0)}

    def run(base, mode, name, steps, flops_per_step, judge, *, seed, row=None, **kwargs):
        calls.append((row, seed, base))
        acc, fd = quality[row]
        acc, fd = acc + 0.01 * seed, fd + seed * (1 + len(row))  # seed noise, different per row
        point = {"step": steps, "flops": steps * flops_per_step, "train_seconds": 1.0, "prompted_accuracy": acc,
                 "attribute_match": 0.5, "frechet_distance": fd, "frechet_floor": 5.0, "caption_accuracy": 0.9,
                 "caption_attribute_accuracy": 0.5, "n_samples": 10}
        return {**point, "mode": mode, "seed": seed, "steps_trained": steps, "train_flops": steps * flops_per_step,
                "n_captions": 10, "caption_perplexity": 1.5, "images_per_second": 100.0, "seconds_per_image": 0.01,
                "nfe_per_image": 49, "curve": [point],
                "step_sweep": [{"steps": None, "nfe_per_image": 49, "prompted_accuracy": acc, "frechet_distance": fd,
                                "frechet_floor": 5.0, "seconds_per_image": 0.01, "n_samples": 10}],
                "cfg_check": {"n_samples": 10, "cfg_scale": base.cfg_scale, "prompted_accuracy_cfg": acc,
                              "prompted_accuracy_no_cfg": acc - 0.1}}
    return run


def test_recipes_add_tuned_and_ddpm_rows_beside_the_default_rows(tmp_path, monkeypatch):
    import minimfm.compare_plots
    cfg = compare_config(tmp_path)
    for plot in ("plot_steps", "plot_compute", "plot_samples"):  # figures need real runs; their code is tested above
        monkeypatch.setattr(minimfm.compare_plots, plot, lambda *a, **k: None)
    calls = []
    monkeypatch.setattr(C, "run_mode", made_up_run(calls))
    out = C.compare(cfg, modes=("ar", "diffusion"), seeds=2, **FAST)  # the defaults first, as before --recipes
    before = json.loads((out / "results.json").read_text())
    assert [(r, s) for r, s, _ in calls] == [("ar", 0), ("diffusion", 0), ("ar", 1), ("diffusion", 1)]
    assert "variants" not in before and list(before["modes"]) == ["ar", "diffusion"]

    recipes = tmp_path / "recipes"
    write_recipe(recipes / "tune-mnist-smoke-ar", "ar",
                 {"lr": 0.002, "cfg_scale": 3.0, "top_k": 16, "temperature": 1.0})
    write_recipe(recipes / "tune-mnist-smoke-diffusion", "diffusion",  # tuning kept the default: no tuned row
                 {"lr": cfg.lr, "cfg_scale": cfg.cfg_scale, "objective": "flow", "patch_encoder": "linear"}, trial=0)
    write_recipe(recipes / "tune-mnist-tiny-masked", "masked", {"lr": 0.003}, preset="tiny")  # another preset: passed
    calls.clear()
    out = C.compare(cfg, modes=("ar", "diffusion"), seeds=2, recipes=recipes, **FAST)
    state = json.loads((out / "results.json").read_text())
    # only the new rows are trained, each with its recipe, in its own folder
    assert [(r, s) for r, s, _ in calls] == [("ar-tuned", 0), ("diffusion-ddpm", 0), ("ar-tuned", 1),
                                            ("diffusion-ddpm", 1)]
    tuned, ddpm = calls[0][2], calls[1][2]
    assert (tuned.mode, tuned.lr, tuned.top_k) == ("ar", 0.002, 16)
    assert (ddpm.mode, ddpm.objective) == ("diffusion", "ddpm")
    # the default rows are where every reader looks for them, unchanged; the new rows under "variants"
    assert state["modes"] == before["modes"] and list(state["modes"]) == ["ar", "diffusion"]
    assert list(state["variants"]) == ["ar-tuned", "diffusion-ddpm"]
    assert state["variants"]["ar-tuned"]["mode"] == "ar" and state["variants"]["ar-tuned"]["seeds"] == [0, 1]
    assert state["variants"]["diffusion-ddpm"]["overrides"] == {"objective": "ddpm"}
    assert state["recipes"]["diffusion"]["kept_default"] is True and state["recipes"]["ar"]["kept_default"] is False
    assert "masked" not in state["recipes"]
    # one budget in FLOPs for every row, the default ar's max_steps
    plan, budget = state["plan"], cfg.max_steps * state["plan"]["flops_per_step"]["ar"]
    for row in ("ar", "diffusion", "ar-tuned", "diffusion-ddpm"):
        assert abs(plan["steps"][row] * plan["flops_per_step"][row] - budget) <= plan["flops_per_step"][row] / 2
        assert state["variants"].get(row, state["modes"].get(row))["train_flops"] == plan["flops"][row]
    tested = {(r["a"], r["b"]) for r in state["paired"]}
    assert tested == {("ar", "diffusion"), ("ar-tuned", "ar"), ("diffusion-ddpm", "diffusion"),
                      ("ar-tuned", "diffusion")}
    md = (out / "results.md").read_text()
    for text in ("| ar | 2 |", "| ar-tuned | 2 |", "| diffusion-ddpm | 2 |", "- ar-tuned: lr 0.002, top_k 16",
                 "`tune` trial 3", "Transfusion's own objective", "diffusion: tuning kept the default recipe",
                 "| ar-tuned − ar |", "| diffusion-ddpm − diffusion |"):
        assert text in md, text

    calls.clear()  # resumable per row and seed: nothing left to train
    C.compare(cfg, modes=("ar", "diffusion"), seeds=2, recipes=recipes, **FAST)
    assert calls == []
    write_recipe(recipes / "tune-mnist-smoke-ar", "ar", {"lr": 0.003})
    with pytest.raises(Exception, match=r"row ar-tuned was trained with .*\(its recipe changed\)"):
        C.compare(cfg, modes=("ar", "diffusion"), seeds=2, recipes=recipes, **FAST)


@pytest.mark.parametrize("recipes, message", [
    ("missing.json", "not found"), ("empty", "holds no best.json"), ("bad.json", "not JSON"),
    ("other.json", "not a best.json written by `tune`"), ("tiny.json", "tuned on mnist with preset tiny"),
    ("banana.json", "'banana' is not a setting a recipe may change"), ("seed.json", "'seed' is not a setting"),
    ("negative.json", "--lr"), ("unknown-mode.json", "--mode")])
def test_bad_recipes_are_one_line(tmp_path, capsys, recipes, message):
    from minimfm.__main__ import main
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"modes": {}}))
    write_recipe(tmp_path / "t", "ar", {"lr": 0.002}, preset="tiny").rename(tmp_path / "tiny.json")
    for name, mode, best in (("banana", "ar", {"banana": 1}), ("seed", "ar", {"seed": 3}),
                             ("negative", "ar", {"lr": -1.0}), ("unknown-mode", "gan", {})):
        write_recipe(tmp_path / "t", mode, best).rename(tmp_path / f"{name}.json")
    runs = tmp_path / "runs"
    with pytest.raises(SystemExit) as e:
        raise SystemExit(main(["compare", "--preset", "smoke", "--runs-dir", str(runs), "--recipes",
                               str(tmp_path / recipes)]))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "--recipes" in err and message in err, err
    assert not runs.exists()  # refused before any work


def test_which_rows_a_paired_test_compares():
    rows = [Row("ar", "ar", {}), Row("masked", "masked", {}), Row("diffusion", "diffusion", {}),
            Row("ar-tuned", "ar", {"lr": 0.002}), Row("diffusion-ddpm", "diffusion", {"objective": "ddpm"})]
    assert pairs(rows) == [("ar", "masked"), ("ar", "diffusion"), ("masked", "diffusion"),  # defaults, as before
                           ("ar-tuned", "ar"), ("diffusion-ddpm", "diffusion"),  # each against its default
                           ("ar-tuned", "masked"), ("ar-tuned", "diffusion")]  # the modes at their best
    assert pairs(rows[:3]) == pairs(rows)[:3]


def test_a_setting_added_since_a_comparison_started_keeps_it_resumable():
    new = C.Config().to_dict()
    old = {k: v for k, v in new.items() if k != "holdout_validation"}  # results.json from before the field
    assert same_setting(old, new) and same_setting(new, new)
    assert not same_setting(old, {**new, "holdout_validation": True})
    assert not same_setting(old, {**new, "lr": 0.5})
