"""Claims from the papers, each tested by a small controlled pair (or sweep) of runs at our scale, with seeds.

Each row reports the setting, the metric, what we measured (mean ± 95 % t interval over seeds) and the direction the
paper reports, and says whether our sign agrees and whether a paired t-test over seeds calls the difference beyond
noise. "Did not reproduce" is a valid answer: the runs are short and small, and the point is to show how to check
a claim, not to settle it.

    a  diffusion: bidirectional vs causal attention inside the image       Transfusion, Table 5
    b  diffusion: conv (two 3x3 convs) vs linear patch encoder, equal steps Transfusion, Table 7 (U-Net down/up)
    c  masked: quality saturates around 8-12 decoding steps                 MaskGIT, Fig. 6 (from `compare`)
    d  classifier-free guidance raises prompted accuracy                     all three papers (from `compare`)
    e  diffusion: image-loss weight λ in {1, 5, 10}                          Transfusion fixes λ = 5, no sweep
    f  text: discrete image tokens (ar) cost the text side more than         Transfusion §4.2 (vs Chameleon)
       diffusion, against a text-only model of the same captions
    g  diffusion: the image-to-text noise limit (t <= half the schedule)     Transfusion §4.3 (image noising)
       on / off, on captioning
    h  grid 7x7 vs 14x14 image positions, masked vs ar: does masked          MaskGIT (T fixed vs N steps: up to
       decoding pay off for long images (speed, and quality kept)?           64x faster; Table 1 for quality)
    i  conv vs linear patch encoder at matched training FLOPs (fixes b)      Transfusion, Table 7
    j  continuity: masked codes vs mar (continuous tokens) vs diffusion     MAR Table 1; the course's question

Every run is trained with K seeds (`--claim-seeds`; seed s of every run sees the same data order and evaluation
prompts), and "a beats b" is beyond noise only when a paired t-test on the per-seed values (paired by seed,
minimfm/stats.py) gives p < 0.05; with one seed there is no test and the row says so. Budgets: a diffusion run that
differs from the baseline in one setting gets the same steps (`--claim-steps`), as the papers' ablations do; a run in
another mode gets the steps that spend the baseline's training FLOPs (minimfm/flops.py); a 14x14 run gets the steps
of its 7x7 twin (the same images seen; each step costs ~4x); the text-only model the baseline's steps, batch and
learning rate (the same captions seen); and the linear encoder of claim i the FLOPs of the conv run (RUN_BUDGET).

Caption "exact match" (claims f and g) is evaluate.py's caption accuracy + attributes: the caption names the right
class and every attribute it names (MNIST thickness and slant) is the image's own, with at least one named. Not
string equality with the test caption: its template is drawn at random per image (five for MNIST), so string
equality would mostly score the template draw, which no model can read from the pixels. Claim g is a pair, not a
sweep: --i2t-noise-limit switches between half and the whole schedule (modes/diffusion.py); a sweep of the limit
needs it as a number there first.

This module holds the definitions and the rows (pure functions of finished results); minimfm/claims_runs.py trains.
"""
from __future__ import annotations

from minimfm.config import parse_choice_list
from minimfm.stats import interval, paired_test

# name -> the settings that differ from the diffusion baseline (the preset's diffusion run: linear patches, λ = 1,
# 7x7 latents). "text_only" is not a Config field: it selects minimfm/text_only.py.
CLAIM_RUNS: dict[str, dict] = {
    "baseline": {},
    "causal": {"image_attention": "causal"},
    "conv": {"patch_encoder": "conv"},
    "lambda5": {"image_loss_weight": 5.0},
    "lambda10": {"image_loss_weight": 10.0},
    "masked": {"mode": "masked"},
    "mar": {"mode": "mar"},
    "ar": {"mode": "ar"},
    "textonly": {"text_only": True},
    "i2t_full_noise": {"i2t_noise_limit": False},
    "masked_14x14": {"mode": "masked", "tokenizer_downsample": 2},
    "ar_14x14": {"mode": "ar", "tokenizer_downsample": 2},
    "linear_matched": {},  # the baseline's settings, with the conv run's training FLOPs
}
# how many steps a run gets when it is not the default: "steps" (= --claim-steps) for runs of the diffusion mode,
# "flops" (the baseline's FLOPs) for another mode
RUN_BUDGET: dict[str, str] = {
    "textonly": "steps",
    "masked_14x14": "steps of masked",
    "ar_14x14": "steps of ar",
    # claim i: the linear encoder gets the conv run's FLOPs (more steps), not more width. Widening d_model would
    # change every block of the transformer and its optimisation, not only the encoder under test; FLOPs are the
    # currency of every other comparison here. step_flops charges the conv at all T positions (it runs on the N
    # image positions only), which overstates its cost a little: the linear run gets slightly MORE than exact
    # matching would give, so the check leans against the claim, not for it.
    "linear_matched": "flops of conv",
}
CLAIMS: dict[str, tuple[str, ...]] = {  # claim -> the runs it reads (c and d read the comparison)
    "a": ("baseline", "causal"), "b": ("baseline", "conv"), "c": (), "d": (),
    "e": ("baseline", "lambda5", "lambda10"), "f": ("textonly", "ar", "baseline"), "g": ("baseline", "i2t_full_noise"),
    "h": ("masked", "ar", "masked_14x14", "ar_14x14"), "i": ("conv", "linear_matched"),
    "j": ("masked", "mar", "baseline"),
}
IMAGE_METRICS = frozenset({"prompted_accuracy", "frechet_distance", "seconds_per_image"})
CLAIM_METRICS = {"f": frozenset({"text_perplexity", "caption_attribute_accuracy"}),
                 "g": frozenset({"caption_attribute_accuracy", "caption_accuracy"})}


def parse_claims(text: str) -> tuple[str, ...]:
    """'a,b,j' -> ('a', 'b', 'j') in table order; one line naming --claims for anything else."""
    names = parse_choice_list(text.lower(), tuple(CLAIMS), "--claims", "claim", "a,b,j")
    return tuple(c for c in CLAIMS if c in names)


def claim_run_names(selected: tuple[str, ...]) -> list[str]:
    """The runs the selected claims read, in CLAIM_RUNS order (each trained once, however many claims read it)."""
    wanted = {r for c in selected for r in CLAIMS[c]}
    return [r for r in CLAIM_RUNS if r in wanted]


def run_folder_name(name: str, seed: int) -> str:
    """Seed 0 keeps the bare name and seed s the suffix _seed<s>: the folders of the two-seed claims
    (baseline, baseline_seed1, masked_seed1, ...) are these runs' seeds 0 and 1, and their eval.json is reused."""
    return name if seed == 0 else f"{name}_seed{seed}"


def needed_metrics(name: str, selected: tuple[str, ...]) -> frozenset[str]:
    """The metrics the selected claims read from run `name`: a cached eval.json without one is completed."""
    if name == "textonly":
        return frozenset({"text_perplexity"})
    need = set(IMAGE_METRICS)
    for c in selected:
        if name in CLAIMS[c]:
            need |= CLAIM_METRICS.get(c, frozenset())
    return frozenset(need)


def run_steps(names, steps: int, flops: dict[str, float]) -> dict[str, int]:
    """Training steps of each run from --claim-steps and each run's FLOPs per step (see RUN_BUDGET)."""
    out: dict[str, int] = {}

    def steps_of(name: str) -> int:
        if name not in out:
            rule = RUN_BUDGET.get(name, "flops" if "mode" in CLAIM_RUNS[name] else "steps")
            if rule == "steps":
                out[name] = steps
            elif rule == "flops":
                out[name] = max(1, round(steps * flops["baseline"] / flops[name]))
            elif rule.startswith("flops of "):
                out[name] = max(1, round(steps_of(rule[9:]) * flops[rule[9:]] / flops[name]))
            else:  # "steps of <run>"
                out[name] = steps_of(rule[9:])
        return out[name]
    return {name: steps_of(name) for name in names}


# ------------------------------------------------------------------------------------------------ rows

def values(results: dict, name: str, key: str) -> dict[int, float]:
    """{seed: value} of one metric of one run, over the seeds that measured it."""
    return {int(s): float(r[key]) for s, r in results.get(name, {}).items()
            if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)}


def show(per_seed: dict[int, float], spec: str) -> str:
    """'0.695 ± 0.041' (95 % t interval), the mean alone with one seed, '-' when not measured."""
    if not per_seed:
        return "-"
    iv = interval(list(per_seed.values()))
    return format(iv["mean"], spec) + ("" if iv["half_width"] is None else f" ± {format(iv['half_width'], spec)}")


def paired(a: dict[int, float], b: dict[int, float], lower_is_better: bool) -> dict:
    """Is a better than b? The sign of the mean paired difference, and a paired t-test over the common seeds."""
    seeds = sorted(a.keys() & b.keys())
    if not seeds:
        return {"agrees": None, "beyond_noise": None, "p": None, "seeds": []}
    test = paired_test([a[s] for s in seeds], [b[s] for s in seeds])
    diff = test["difference"]["mean"]
    agrees = None if diff == 0 else (diff < 0) == lower_is_better  # a tie has no sign
    return {"agrees": agrees, "beyond_noise": test["beyond_noise"],
            "p": test["p"], "seeds": seeds}


def _acc_fd(results: dict, name: str) -> str:
    return f"{show(values(results, name, 'prompted_accuracy'), '.3f')} / " \
           f"{show(values(results, name, 'frechet_distance'), '.1f')}"


ACC_FD = "prompted accuracy / Fréchet distance"


def _fd_pair(results, claim, better, worse, setting, paper) -> dict:
    """The common row: `better` should have the lower Fréchet distance than `worse`."""
    fd = lambda name: values(results, name, "frechet_distance")  # noqa: E731
    return {"claim": claim, "setting": setting, "metric": ACC_FD,
            "ours": f"{_acc_fd(results, better)} vs {_acc_fd(results, worse)}", "paper": paper,
            **paired(fd(better), fd(worse), lower_is_better=True)}


def claim_rows(results: dict, compare_state: dict | None = None, *, steps: int = 600, run_steps: dict | None = None,
               selected: tuple[str, ...] = tuple(CLAIMS)) -> list[dict]:
    """The rows of the selected claims from finished runs, results[run][seed] = its eval.json (pure: tests feed
    made-up results). `run_steps` (run -> steps) names the budgets in the settings; default: `steps` for all."""
    st = lambda name: (run_steps or {}).get(name, steps)  # noqa: E731
    rows = []
    for claim in selected:
        rows += ROWS[claim](results, compare_state, steps, st)
    return rows


def _a(results, _, steps, st):
    return [_fd_pair(results, "a", "baseline", "causal", f"diffusion, {steps} steps: bidirectional vs causal inside "
                     f"the image", "bidirectional better (Transfusion Table 5: lower FID)")]


def _b(results, _, steps, st):
    return [_fd_pair(results, "b", "conv", "baseline", f"diffusion, {steps} steps each (so the conv run also "
                     f"spends more FLOPs; claim i matches them): conv vs linear patch encoder",
                     "U-Net down/up blocks beat linear (Transfusion Table 7; ours: two 3x3 convs, no "
                     "down/up-sampling)")]


def _c_d(compare_state, claim):
    masked = (compare_state or {}).get("modes", {}).get("masked")
    if not masked:
        return [{"claim": claim, "setting": "needs a finished `compare` run", "metric": "-", "ours": "not run",
                 "paper": "-", "agrees": None}]
    if claim == "c":
        sweep = {p["steps"]: p for p in masked["step_sweep"]}
        gain_to_8 = sweep[1]["frechet_distance"] - sweep[8]["frechet_distance"]
        gain_past_12 = sweep[12]["frechet_distance"] - sweep[16]["frechet_distance"]
        text = ", ".join(f"T={t}: {p['frechet_distance']:.1f}" for t, p in sorted(sweep.items()))
        return [{"claim": "c", "setting": f"masked, comparison run, T in {sorted(sweep)}",
                 "metric": "Fréchet distance (judge features, mean over the comparison's seeds)", "ours": text,
                 "paper": "quality saturates around 8-12 steps (MaskGIT Fig. 6)",
                 "agrees": gain_to_8 > 0 and abs(gain_past_12) < 0.25 * gain_to_8}]
    checks = {m: r["cfg_check"] for m, r in compare_state["modes"].items()}
    text = ", ".join(f"{m} {c['prompted_accuracy_no_cfg']:.3f} → {c['prompted_accuracy_cfg']:.3f}"
                     for m, c in checks.items())
    scale = next(iter(checks.values()))["cfg_scale"]
    return [{"claim": "d", "setting": f"comparison runs, CFG scale 0 vs {scale:g}", "metric": "prompted accuracy",
             "ours": text, "paper": "guidance raises prompt alignment (CM3Leon for token AR, Show-o, Transfusion)",
             "agrees": all(c["prompted_accuracy_cfg"] > c["prompted_accuracy_no_cfg"] for c in checks.values())}]


def _e(results, _, steps, st):
    sweep = {"λ=1": "baseline", "λ=5": "lambda5", "λ=10": "lambda10"}
    fd = {k: values(results, name, "frechet_distance") for k, name in sweep.items()}
    measured = {k: v for k, v in fd.items() if v}
    text = ", ".join(f"{k}: {_acc_fd(results, name)}; {show(values(results, name, 'caption_accuracy'), '.3f')}"
                     for k, name in sweep.items())
    if measured:
        best = min(measured, key=lambda k: sum(measured[k].values()) / len(measured[k]))
        rival = "λ=1" if best != "λ=1" else min((k for k in measured if k != best), default=None,
                                                key=lambda k: sum(measured[k].values()) / len(measured[k]))
        test = paired(fd[best], fd[rival], True) if rival else {"p": None}
        text += f" (best FD {best}" + (f"; vs {rival}: p {test['p']:.2g})" if test["p"] is not None else ")")
    return [{"claim": "e", "setting": f"diffusion, {steps} steps: image-loss weight λ",
             "metric": ACC_FD + "; caption accuracy", "ours": text,
             "paper": "Transfusion uses λ=5 without a sweep (no direction claimed)", "agrees": None}]


def _f(results, _, steps, st):
    ppl = {name: values(results, name, "text_perplexity") for name in ("textonly", "baseline", "ar")}
    ref = ppl["textonly"]

    def gap(name: str) -> str:
        seeds = ppl[name].keys() & ref.keys()
        return show({s: ppl[name][s] - ref[s] for s in seeds}, "+.3f") if seeds else "-"
    exact = {name: values(results, name, "caption_attribute_accuracy") for name in ("baseline", "ar")}
    budget = f"text-only and diffusion {st('baseline')} steps, ar {st('ar')} (the diffusion FLOPs)"
    return [{"claim": "f1", "setting": f"held-out caption perplexity, no image: {budget}",
             "metric": "perplexity of the caption words (renormalised over words; minus text-only)",
             "ours": f"text-only {show(ref, '.3f')}; diffusion {show(ppl['baseline'], '.3f')} ({gap('baseline')}); "
                     f"ar {show(ppl['ar'], '.3f')} ({gap('ar')})",
             "paper": "discrete image tokens hurt text more: Transfusion reaches Chameleon's text perplexity at "
                      "49-60 % of its compute (§4.2)", **paired(ppl["baseline"], ppl["ar"], lower_is_better=True)},
            {"claim": "f2", "setting": f"captioning test images: {budget}",
             "metric": "caption exact match (class and every attribute named right, at least one named)",
             "ours": f"diffusion {show(exact['baseline'], '.3f')} vs ar {show(exact['ar'], '.3f')}",
             "paper": "Transfusion captions better than Chameleon at equal compute (§4.2, CIDEr)",
             **paired(exact["baseline"], exact["ar"], lower_is_better=False)}]


def _g(results, _, steps, st):
    def text(name: str) -> str:
        return "; ".join(show(values(results, name, k), ".3f") for k in
                         ("caption_attribute_accuracy", "caption_accuracy", "caption_perplexity"))
    exact = {name: values(results, name, "caption_attribute_accuracy") for name in ("baseline", "i2t_full_noise")}
    return [{"claim": "g", "setting": f"diffusion, {steps} steps: image-to-text rows noised to t <= 0.5 (on) vs "
                                      f"the whole schedule (off)",
             "metric": "caption exact match; caption accuracy (class); caption perplexity (given the image)",
             "ours": f"on {text('baseline')} vs off {text('i2t_full_noise')}",
             "paper": "limiting the noise of images that precede a caption helps captioning (Transfusion §4.3)",
             **paired(exact["baseline"], exact["i2t_full_noise"], lower_is_better=False)}]


def _h(results, _, steps, st):
    spi = {name: values(results, name, "seconds_per_image") for name in CLAIMS["h"]}

    def speedup(ar: str, masked: str) -> dict[int, float]:  # per seed: how many times faster masked samples
        return {s: spi[ar][s] / spi[masked][s] for s in spi[ar].keys() & spi[masked].keys() if spi[masked][s] > 0}
    small, large = speedup("ar", "masked"), speedup("ar_14x14", "masked_14x14")
    ms = lambda name: show({s: v * 1000 for s, v in spi[name].items()}, ".1f")  # noqa: E731
    fd = lambda name: values(results, name, "frechet_distance")  # noqa: E731
    return [{"claim": "h1", "setting": f"masked vs ar, 7x7 and 14x14 image positions ({st('masked')} and "
                                       f"{st('ar')} steps at both grids)",
             "metric": "sampling time, ar ÷ masked (ms / image)",
             "ours": f"7x7 {show(small, '.2f')}x ({ms('ar')} vs {ms('masked')}); 14x14 {show(large, '.2f')}x "
                     f"({ms('ar_14x14')} vs {ms('masked_14x14')})",
             "paper": "masked decoding takes T steps whatever the length, ar one per token: its lead grows with the "
                      "image (MaskGIT: 8 steps vs 256 tokens, up to 64x faster)",
             **paired(large, small, lower_is_better=False)},
            {"claim": "h2", "setting": "masked vs ar at 14x14 (7x7 for reference)", "metric": ACC_FD,
             "ours": f"14x14 {_acc_fd(results, 'masked_14x14')} vs {_acc_fd(results, 'ar_14x14')}; 7x7 "
                     f"{_acc_fd(results, 'masked')} vs {_acc_fd(results, 'ar')}",
             "paper": "the speed costs no quality: MaskGIT's FID beats its ar baseline (MaskGIT Table 1)",
             **paired(fd("masked_14x14"), fd("ar_14x14"), lower_is_better=True)}]


def _i(results, _, steps, st):
    return [_fd_pair(results, "i", "conv", "linear_matched", f"diffusion: conv ({st('conv')} steps) vs linear "
                     f"({st('linear_matched')} steps: the conv run's training FLOPs)",
                     "U-Net down/up blocks beat linear (Transfusion Table 7)")]


def _j(results, _, steps, st):
    budget = f"the diffusion baseline's FLOPs of {steps} steps"
    return [_fd_pair(results, "j1", "mar", "masked", f"continuous (mar) vs discrete (masked) tokens, {budget}",
                     "continuous tokens with a diffusion loss beat VQ codes (MAR Table 1)"),
            _fd_pair(results, "j2", "baseline", "mar", f"whole image (diffusion) vs a few tokens at a time (mar), "
                     f"{budget}", "the course's continuity argument predicts diffusion; MAR reports MAR ahead at "
                                  "its scale")]


ROWS = {"a": _a, "b": _b, "c": lambda r, s, *_: _c_d(s, "c"), "d": lambda r, s, *_: _c_d(s, "d"), "e": _e,
        "f": _f, "g": _g, "h": _h, "i": _i, "j": _j}


def mark(row: dict) -> str:
    """'yes, beyond noise (p 0.012)', 'no, within noise (p 0.41)', 'yes (1 seed: no test)' or '-'."""
    if row["agrees"] is None:
        return "-"
    text = "yes" if row["agrees"] else "no"
    if row.get("beyond_noise") is None:
        return text + (f" ({len(row['seeds'])} seed: no test)" if "seeds" in row else "")
    return text + (", beyond noise" if row["beyond_noise"] else ", within noise") + f" (p {row['p']:.2g})"


def claims_markdown(rows: list[dict], n: int, seeds: list[int]) -> str:
    lines = [f"Seeds {', '.join(map(str, seeds))}: each figure is the mean over seeds ± the half-width of its 95 % "
             f"Student t interval (one seed: the mean alone). Each evaluation: {n} generated images and {n} captions "
             f"(judge on MNIST test prompts). Same sign: whether the mean difference has the paper's sign; beyond "
             f"noise: a paired t-test over seeds (two-sided) gives p < 0.05.", "",
             "| claim | setting | metric | ours | paper's direction | same sign |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['claim']} | {r['setting']} | {r['metric']} | {r['ours']} | {r['paper']} | {mark(r)} |"
              for r in rows]
    return "\n".join(lines) + "\n"
