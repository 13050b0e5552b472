"""The paradigm comparison: FLOP counting per mode, budget matching, results.json schema, resume, claim rows."""
import json

import pytest
import torch
import torch.nn as nn

from conftest import DATA, needs_mnist
from helpers import install_random_vq, tiny_config
from minimfm import compare as C
from minimfm.checkpoint import save_atomic
from minimfm import claims as C_claims
from minimfm.claims import claim_rows, claims_markdown
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


def fake(acc, fd, cap=0.9):
    return {"prompted_accuracy": acc, "frechet_distance": fd, "caption_accuracy": cap}


def test_claim_rows_report_the_sign_they_measure():
    runs = {"baseline": fake(0.9, 50), "baseline_seed1": fake(0.9, 53), "causal": fake(0.8, 70), "conv": fake(0.92, 60), "lambda5": fake(0.9, 45),
            "lambda10": fake(0.85, 55)}
    sweep = [{"steps": t, "frechet_distance": fd, "nfe_per_image": t} for t, fd in
             [(1, 90), (2, 75), (4, 70), (8, 62), (12, 60), (16, 59.5)]]
    state = {"modes": {m: {"step_sweep": sweep, "cfg_check": {"cfg_scale": 3.0, "prompted_accuracy_cfg": 0.9,
                                                               "prompted_accuracy_no_cfg": 0.7}} for m in C.MODES}}
    rows = {r["claim"]: r for r in claim_rows(runs, state, 600, 200)}
    assert rows["a"]["agrees"] is True and rows["b"]["agrees"] is False
    assert rows["a"]["beyond_noise"] is True  # |70 - 50| > seed noise |53 - 50|
    assert "within seed noise" not in claims_markdown([rows["a"]], 200)
    runs["conv"] = fake(0.9, 48)  # better by 2 < seed noise 3
    rows = {r["claim"]: r for r in claim_rows(runs, state, 600, 200)}
    assert rows["b"]["agrees"] is True and rows["b"]["beyond_noise"] is False
    assert "yes, within seed noise" in claims_markdown([rows["b"]], 200)
    assert rows["c"]["agrees"] is True and rows["d"]["agrees"] is True
    assert "best FD λ=5" in rows["e"]["ours"] and rows["e"]["agrees"] is None
    runs["causal"] = fake(0.95, 40)
    sweep[-1]["frechet_distance"] = 40  # still improving a lot after 12 steps: no saturation
    state["modes"]["ar"]["cfg_check"]["prompted_accuracy_cfg"] = 0.6
    rows = {r["claim"]: r for r in claim_rows(runs, state, 600, 200)}
    assert rows["a"]["agrees"] is False and rows["c"]["agrees"] is False and rows["d"]["agrees"] is False
    rows = {r["claim"]: r for r in claim_rows(runs, None, 600, 200)}
    assert rows["c"]["ours"] == "not run" and rows["d"]["agrees"] is None


def test_continuity_claim_compares_seed_means_against_seed_spread():
    runs = {"baseline": fake(0.98, 40), "baseline_seed1": fake(0.96, 44), "masked": fake(0.9, 70),
            "masked_seed1": fake(0.9, 66), "mar": fake(0.95, 52), "mar_seed1": fake(0.95, 50)}
    rows = {r["claim"]: r for r in C_claims.continuity_rows(runs, 600)}
    # j1: mar mean 51 vs masked mean 68: gap 17 > larger spread 4 -> agrees, beyond noise
    assert rows["j1"]["agrees"] is True and rows["j1"]["beyond_noise"] is True
    assert "mar 0.950 / 51.0 (±1.0)" in rows["j1"]["ours"]
    # j2: diffusion mean 42 vs mar 51: gap 9 > spread 4 -> agrees; make them close and it is within noise
    assert rows["j2"]["agrees"] is True and rows["j2"]["beyond_noise"] is True
    runs["mar"], runs["mar_seed1"] = fake(0.95, 41), fake(0.95, 45)
    rows = {r["claim"]: r for r in C_claims.continuity_rows(runs, 600)}
    assert rows["j2"]["agrees"] is True and rows["j2"]["beyond_noise"] is False  # 42 vs 43, spreads 4
    runs["mar"], runs["mar_seed1"] = fake(0.95, 80), fake(0.95, 82)
    rows = {r["claim"]: r for r in C_claims.continuity_rows(runs, 600)}
    assert rows["j1"]["agrees"] is False
