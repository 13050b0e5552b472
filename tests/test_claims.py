"""The claims (minimfm/claims.py, claims_runs.py): rows from made-up results, the paired test behind "beyond noise",
the --claims subset and --claim-seeds, budgets, resumption from eval.json, and the text-only baseline of claim f."""
import json
import math

import pytest
import torch

from conftest import DATA, needs_mnist
from helpers import tiny_latent_model
from minimfm import claims as C
from minimfm import claims_runs as R
from minimfm.checkpoint import CheckpointError
from minimfm.config import ConfigError, make_config
from minimfm.stats import paired_test


def fake(acc=0.9, fd=50.0, cap=0.9, exact=0.8, ppl=1.5, spi=0.05, text=1.6):
    return {"prompted_accuracy": acc, "frechet_distance": fd, "caption_accuracy": cap,
            "caption_attribute_accuracy": exact, "caption_perplexity": ppl, "seconds_per_image": spi,
            "text_perplexity": text}


def seeds(*per_seed: dict) -> dict:
    return dict(enumerate(per_seed))


def rows_of(results, state=None, **kwargs) -> dict:
    return {r["claim"]: r for r in C.claim_rows(results, state, **kwargs)}


def test_rows_a_b_c_d_e_j_report_the_sign_they_measure():
    results = {"baseline": seeds(fake(fd=50), fake(fd=53), fake(fd=51)),
               "causal": seeds(fake(0.8, 70), fake(0.8, 75), fake(0.8, 72)),
               "conv": seeds(fake(fd=60), fake(fd=61), fake(fd=66)),
               "lambda5": seeds(fake(fd=45), fake(fd=47), fake(fd=44)),
               "lambda10": seeds(fake(fd=55), fake(fd=56), fake(fd=57)),
               "masked": seeds(fake(fd=70), fake(fd=66), fake(fd=68)),
               "mar": seeds(fake(fd=55), fake(fd=56), fake(fd=54))}
    sweep = [{"steps": t, "frechet_distance": fd, "nfe_per_image": t} for t, fd in
             [(1, 90), (2, 75), (4, 70), (8, 62), (12, 60), (16, 59.5)]]
    state = {"modes": {m: {"step_sweep": sweep, "cfg_check": {"cfg_scale": 3.0, "prompted_accuracy_cfg": 0.9,
                                                               "prompted_accuracy_no_cfg": 0.7}}
                       for m in ("ar", "masked", "diffusion")}}
    rows = rows_of(results, state, steps=600)
    assert rows["a"]["agrees"] is True and rows["a"]["beyond_noise"] is True and rows["a"]["seeds"] == [0, 1, 2]
    assert rows["b"]["agrees"] is False
    assert rows["c"]["agrees"] is True and rows["d"]["agrees"] is True
    assert "best FD λ=5" in rows["e"]["ours"] and rows["e"]["agrees"] is None
    assert rows["j1"]["agrees"] is True and rows["j2"]["agrees"] is True  # mar 55 < masked 68; diffusion 51.3 < 55
    assert "0.900 ± 0.000 / 55.0 ± 2.5 vs" in rows["j1"]["ours"]  # mar: mean ± 4.30 · sd / √3
    rows = rows_of(results, None, selected=("c", "d"))
    assert rows["c"]["ours"] == "not run" and rows["d"]["agrees"] is None
    assert list(rows_of(results, state, selected=("a", "j"))) == ["a", "j1", "j2"]  # only the selected claims


def test_beyond_noise_is_a_paired_t_test_over_seeds_not_the_seed_spread():
    # seeds move both runs together (spread 20) but causal is worse by 3 +- 0.1 in every seed: paired, beyond noise
    results = {"baseline": seeds(fake(fd=40), fake(fd=60), fake(fd=50)),
               "causal": seeds(fake(fd=43), fake(fd=63.1), fake(fd=52.9))}
    row = rows_of(results, selected=("a",))["a"]
    expected = paired_test([40, 60, 50], [43, 63.1, 52.9])
    assert row["p"] == pytest.approx(expected["p"]) and row["beyond_noise"] is True and row["agrees"] is True
    assert "beyond noise" in C.mark(row) and "within" not in C.mark(row)
    # a larger mean gap (5) whose sign flips between seeds: within noise
    results["causal"] = seeds(fake(fd=55), fake(fd=50), fake(fd=70))
    row = rows_of(results, selected=("a",))["a"]
    assert row["agrees"] is True and row["beyond_noise"] is False and C.mark(row).startswith("yes, within noise")
    # one seed: a sign, no test; seeds are paired by number (seed 2 of causal alone is left out)
    row = rows_of({"baseline": {0: fake(fd=40)}, "causal": {0: fake(fd=45), 2: fake(fd=1)}}, selected=("a",))["a"]
    assert row["seeds"] == [0] and row["beyond_noise"] is None and C.mark(row) == "yes (1 seed: no test)"
    assert "no test" in C.claims_markdown([row], 200, [0])


def test_rows_f_g_h_i_from_made_up_results():
    results = {
        "textonly": seeds({"text_perplexity": 1.50}, {"text_perplexity": 1.52}, {"text_perplexity": 1.49}),
        "baseline": seeds(fake(text=1.55, exact=0.80), fake(text=1.58, exact=0.82), fake(text=1.53, exact=0.79)),
        "ar": seeds(fake(text=1.70, exact=0.70, fd=65), fake(text=1.75, exact=0.69, fd=65),
                    fake(text=1.69, exact=0.72, fd=65)),
        "i2t_full_noise": seeds(fake(exact=0.60), fake(exact=0.65), fake(exact=0.62)),
        "masked": seeds(fake(fd=60, spi=0.02), fake(fd=62, spi=0.021), fake(fd=61, spi=0.019)),
        "masked_14x14": seeds(fake(fd=58, spi=0.03), fake(fd=57, spi=0.031), fake(fd=59, spi=0.029)),
        "ar_14x14": seeds(fake(fd=70, spi=0.30), fake(fd=72, spi=0.33), fake(fd=69, spi=0.29)),
        "conv": seeds(fake(fd=40), fake(fd=42), fake(fd=41)),
        "linear_matched": seeds(fake(fd=41), fake(fd=40), fake(fd=43)),
    }
    rows = rows_of(results, selected=("f", "g", "h", "i"), steps=800,
                   run_steps={"baseline": 800, "ar": 780, "conv": 800, "linear_matched": 1088, "masked": 767})
    f1, f2 = rows["f1"], rows["f2"]
    assert f1["agrees"] is True and f1["beyond_noise"] is True  # diffusion's text 0.17 better in every seed
    assert "text-only 1.503" in f1["ours"] and "(+0.050" in f1["ours"] and "(+0.210" in f1["ours"]
    assert "ar 780" in f1["setting"] and f2["agrees"] is True
    assert rows["g"]["agrees"] is True and rows["g"]["beyond_noise"] is True
    h1, h2 = rows["h1"], rows["h2"]
    assert "7x7 2.50" in h1["ours"] and "14x14 10." in h1["ours"]  # ar ÷ masked: 2.5x at 7x7, ~10x at 14x14
    assert h1["agrees"] is True and h1["beyond_noise"] is True
    assert h2["agrees"] is True  # masked keeps (here: beats) ar's quality at 14x14
    i = rows["i"]
    assert "1088 steps" in i["setting"] and i["agrees"] is True and i["beyond_noise"] is False  # 41 vs 41.3
    # a metric not measured (an eval.json from before it existed) is shown as '-', never invented
    del results["textonly"]
    f1 = rows_of(results, selected=("f",))["f1"]
    assert "text-only -" in f1["ours"] and f1["agrees"] is True


def test_selection_budgets_and_seed_folder_names():
    assert C.parse_claims("j, a,B") == ("a", "b", "j")
    for bad, match in (("k", "'k' is not one of"), ("a,a", "twice"), ("", "'' is not one of")):
        with pytest.raises(ConfigError, match=match):
            C.parse_claims(bad)
    assert C.claim_run_names(("a", "b", "j")) == ["baseline", "causal", "conv", "masked", "mar"]
    assert C.claim_run_names(("c", "d")) == []
    # the two-seed claims' folders are seeds 0 and 1 of the same runs; seed 2 continues the pattern
    assert [C.run_folder_name("baseline", s) for s in (0, 1, 2)] == ["baseline", "baseline_seed1", "baseline_seed2"]
    assert C.run_folder_name("masked", 1) == "masked_seed1"
    flops = {"baseline": 1.0, "conv": 1.36, "masked": 1.04, "ar": 1.03, "masked_14x14": 3.9, "textonly": 0.16,
             "linear_matched": 1.0, "causal": 1.0}
    steps = C.run_steps(list(flops), 800, flops)
    assert steps["causal"] == steps["conv"] == steps["textonly"] == 800  # one setting changed: equal steps
    assert steps["masked"] == round(800 / 1.04) == steps["masked_14x14"]  # 14x14: its 7x7 twin's steps
    assert steps["linear_matched"] == 1088  # the conv run's FLOPs: 800 x 1.36
    assert C.needed_metrics("textonly", ("f",)) == {"text_perplexity"}
    assert "text_perplexity" in C.needed_metrics("ar", ("f", "h")) and \
        "text_perplexity" not in C.needed_metrics("ar", ("h",))


def write_eval(runs, name, seed, result):
    folder = runs / "claims-mnist-smoke" / C.run_folder_name(name, seed)
    folder.mkdir(parents=True)
    (folder / "eval.json").write_text(json.dumps(result))


def test_cached_runs_are_reused_and_incomplete_ones_retrained(tmp_path, monkeypatch, capsys):
    import minimfm.train
    trained = []

    def no_training(cfg, **kwargs):
        trained.append(cfg.run_name)
        raise RuntimeError("trained")
    monkeypatch.setattr(minimfm.train, "train", no_training)
    base = make_config("smoke", runs_dir=str(tmp_path), data_root=str(DATA))
    for name in ("baseline", "causal"):
        for s in (0, 1):  # an eval.json from before the steps were recorded (today's folders) is trusted
            write_eval(tmp_path, name, s, fake(fd=50 + 10 * (name == "causal") + s))
    out = R.run_claims(base, steps=4, n=20, seeds=2, claims="a", verbose=True)
    assert trained == []
    assert "2 runs x 2 seeds = 4 trainings, 4 already evaluated; to train: 0 runs" in capsys.readouterr().out
    saved = json.loads((out / "claims.json").read_text())
    assert saved["seeds"] == [0, 1] and saved["claims"] == ["a"] and saved["rows"][0]["agrees"] is True
    assert "| a |" in (out / "claims.md").read_text()
    # claim g needs the exact-match caption metric: the baseline's eval.json lacks it, so it is trained again
    write_eval(tmp_path, "i2t_full_noise", 0, fake())
    old = fake()
    del old["caption_attribute_accuracy"]
    (tmp_path / "claims-mnist-smoke" / "baseline" / "eval.json").write_text(json.dumps(old))
    with pytest.raises(RuntimeError, match="trained"):
        R.run_claims(base, steps=4, n=20, seeds=1, claims="g", verbose=False)
    assert trained == ["claims-mnist-smoke/baseline"]
    # an eval.json of another length is refused in one line, not mixed in
    write_eval(tmp_path, "conv", 0, {**fake(), "steps_trained": 9})
    with pytest.raises(CheckpointError, match="holds a run of 9 steps, not 4"):
        R.run_claims(base, steps=4, n=20, seeds=1, claims="b", verbose=False)


def test_claim_seeds_and_claims_flags_fail_in_one_line(capsys, tmp_path):
    from minimfm.__main__ import main
    for flag, bad in (("--claim-seeds", "0"), ("--claim-seeds", "-1"), ("--claim-seeds", "three"),
                      ("--claims", "a,k"), ("--claims", "b,b"), ("--claims", "")):
        with pytest.raises(SystemExit) as e:
            main(["claims", "--preset", "smoke", "--runs-dir", str(tmp_path), flag, bad])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and len(err.splitlines()) == 1 and flag in err, err
    with pytest.raises(ValueError, match="--claim-seeds"):
        R.run_claims(make_config("smoke", runs_dir=str(tmp_path)), seeds=0, claims="a", verbose=False)


@needs_mnist
def test_text_only_baseline_trains_and_scores_the_same_words(tmp_path):
    from minimfm.evaluate import text_perplexity
    from minimfm.text_only import load_text_only, train_text_only
    cfg = make_config("smoke", runs_dir=str(tmp_path), data_root=str(DATA), run_name="textonly", max_steps=3,
                      limit_train=64, log_every=1)
    run = train_text_only(cfg, verbose=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(math.isfinite(r["loss"]) for r in rows)
    model = load_text_only(run / "ckpt.pt")
    words = len(model.tok) - 8  # the caption words: special tokens take no probability mass
    ppl = text_perplexity(model, 50)
    assert math.isfinite(ppl) and 1 < ppl < words
    # equal logits give every word 1 / words, in both kinds of model: the same tokens, the same normalisation
    with torch.no_grad():
        model.text_head.weight.zero_()
    assert text_perplexity(model, 50) == pytest.approx(words, rel=1e-5)
    multimodal = tiny_latent_model("diffusion", data_root=str(DATA))
    assert math.isfinite(text_perplexity(multimodal, 50))
    with torch.no_grad():
        multimodal.text_head.weight.zero_()
    assert text_perplexity(multimodal, 50) == pytest.approx(words, rel=1e-5)
    assert train_text_only(cfg, verbose=False) == run  # finished: left as it is
