"""The paradigm comparison: ar, masked and diffusion on one backbone, one data order and one training budget.

Each paper compares itself with Chameleon in its own setup (Show-o, Table 2; Transfusion, Figure 2), so their
numbers never line up. Here the three modes share the transformer width and depth, the tokenizer-free text side,
the data order of every step (train.py draws it from (seed, step)) and the budget, matched in training FLOPs:

    FLOPs per step = batch · T · (6 · N + 12 · n_layer · d_model · T)      (minimfm/flops.py)

with T the packed sequence length and N the trainable parameters that multiply activations (everything except
embedding tables): 6N for forward + backward over each token (Kaplan et al. 2020), plus the attention scores.
The modes differ slightly in N (a code head vs a patch decoder) and in T (Show-o's task token), so each gets
round(budget / its FLOPs per step) optimiser steps; wall-clock is measured and reported beside it.

One training run is one number per metric, and two seeds of the same mode can differ by more than two modes do.
So each mode is trained with K seeds (`--seeds`, seed s of every mode shares the data order and the evaluation
prompts), every metric is reported as the mean ± its 95 % Student t interval over seeds, and "a beats b" is
beyond noise only when a paired t-test over seeds says so (minimfm/stats.py says why that test).

Every point of a curve or a sweep is evaluated on the same number of images (`--sweep-n`, default the table's
--eval-samples), because a Fréchet distance shrinks as the sample grows; the real-data floor at that number is
stored and printed beside the values.

Per (mode, seed) the folder `runs/<name>/<mode>/seed<s>/` holds an ordinary training run and its evaluations
(`evaluations.json`, one entry per evaluation, written as each finishes); `results.json` gains the seed only when
all of them are done: an interrupted comparison resumes from the last checkpoint of the unfinished (mode, seed)
and never retrains or re-evaluates a finished one.

Each mode at its default recipe is one row; `--recipes` adds each mode's tuned recipe (`tune`, minimfm/tuning.py)
and the papers' own (Transfusion's DDPM objective) as further rows at the same budget (minimfm/compare_rows.py).
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import time
from pathlib import Path

import torch

from minimfm.checkpoint import CheckpointError, load_checkpoint, write_text_atomic
from minimfm.compare_rows import (Row, all_rows, check_rows, comparison_rows, entries, kept_default, merge_plan,
                                  pairs, read_recipes, recipe_notes, row_config, same_setting)
from minimfm.config import Config
from minimfm.flops import matmul_parameters, step_flops  # noqa: F401  (re-exported for notebooks and tests)
from minimfm.modes import MODE_NAMES, REGISTRY
from minimfm.stats import interval, paired_test

MODES = MODE_NAMES
SWEEP_STEPS = {name: spec.sweep_steps for name, spec in REGISTRY.items() if spec.sweep_steps}  # ar: N codes
CURVE_POINTS = 4  # evaluations along training, for quality vs training compute
# seeds per mode when --seeds is not given. 3 is the fewest that make a paired t-test useful: 2 seeds leave one
# degree of freedom (t_0.975 = 12.7, a difference must be 13 standard errors), 3 leave two (4.3). smoke is CI's
# plumbing check (notebook 06 runs a live comparison), where one seed keeps it seconds.
SEEDS = {"smoke": 1}
DEFAULT_SEEDS = 3
# what a curve point and a sweep point keep of an evaluation
CURVE_KEYS = ("prompted_accuracy", "attribute_match", "frechet_distance", "frechet_floor", "caption_accuracy",
              "caption_attribute_accuracy", "n_samples")
SWEEP_KEYS = ("nfe_per_image", "prompted_accuracy", "frechet_distance", "frechet_floor", "seconds_per_image",
              "n_samples")
# the metrics a paired test compares between every two modes (results.json "paired", results.md)
PAIRED_METRICS = ("prompted_accuracy", "attribute_match", "frechet_distance", "caption_accuracy",
                  "caption_attribute_accuracy")


def steps_for_budget(flops_per_step: dict[str, float], budget_flops: float) -> dict[str, int]:
    """Optimiser steps that spend `budget_flops` in each mode (rounded; at least one step, or an error)."""
    steps = {mode: round(budget_flops / f) for mode, f in flops_per_step.items()}
    too_small = [m for m, s in steps.items() if s < 1]
    if too_small:
        raise ValueError(f"--budget-flops {budget_flops:.3g} buys less than one step of {too_small[0]} "
                         f"({flops_per_step[too_small[0]]:.3g} FLOPs per step)")
    return steps


def steps_for_minutes(seconds_per_step: dict[str, float], minutes: float) -> dict[str, int]:
    """Optimiser steps that fill `minutes` of training per mode at the measured speed."""
    if minutes <= 0:
        raise ValueError(f"--budget-minutes must be positive, got {minutes}")
    return {mode: max(1, int(minutes * 60 / s)) for mode, s in seconds_per_step.items()}


def seed_list(first: int, k: int) -> list[int]:
    """The seeds of a comparison: first, first + 1, ..., first + k - 1."""
    if k < 1:
        raise ValueError(f"--seeds: must be a whole number >= 1, got {k}")
    if first + k > 2**31:
        raise ValueError(f"--seeds {k} from --seed {first} passes the largest seed, 2**31 - 1")
    return list(range(first, first + k))


def seed_folder(out: Path, mode: str, seed: int) -> Path:
    return Path(out) / mode / f"seed{seed}"


def mode_config(base: Config, mode: str, name: str, steps: int, seed: int, row: str | None = None) -> Config:
    """The run of one (row, seed); a mode's default row is the mode itself (minimfm/compare_rows.py)."""
    return dataclasses.replace(base, mode=mode, run_name=f"{name}/{row or mode}/seed{seed}", seed=seed,
                               max_steps=steps, sample_every=0, ckpt_every=max(1, steps))


# ------------------------------------------------------------------------------------------------ the run

def plan(base: Config, budget_flops: float | None, budget_minutes: float | None, verbose: bool = True,
         rows: list[Row] = ()) -> dict:
    """Steps and FLOPs per mode (and per extra row) for the requested budget (default: the preset's max_steps
    of the ar mode): every row spends the same budget at its own cost per step."""
    from minimfm.runs import build_model, image_tokenizer_for
    if budget_flops is not None and budget_minutes is not None:
        raise ValueError("give --budget-flops or --budget-minutes, not both")
    configs = {mode: dataclasses.replace(base, mode=mode) for mode in MODES}
    configs.update({row.name: row_config(base, row) for row in rows if row.name not in configs})
    flops = {key: step_flops(build_model(cfg, image_tokenizer_for(cfg, verbose)[0]), cfg.batch_size)
             for key, cfg in configs.items()}
    if budget_minutes is not None:
        from minimfm.bench import time_training_step  # the bench's timing: speed does not depend on the data
        speed = {key: time_training_step(cfg, steps=8, warmup=1)[1] for key, cfg in configs.items()}
        steps = steps_for_minutes(speed, budget_minutes)
        kind = f"{budget_minutes:g} minutes per mode"
    else:
        budget_flops = budget_flops if budget_flops is not None else base.max_steps * flops["ar"]
        steps = steps_for_budget(flops, budget_flops)
        kind = f"{budget_flops:.3g} training FLOPs per mode"
    return {"budget": kind, "steps": steps, "flops_per_step": flops,
            "flops": {m: steps[m] * flops[m] for m in flops}}


def evaluate_checkpoint(path: Path, judge, n: int, n_captions: int, **kwargs) -> dict:
    from minimfm.evaluate import evaluate
    from minimfm.runs import model_from_checkpoint
    model = model_from_checkpoint(load_checkpoint(path, kind="model"), judge_device(judge))
    result = evaluate(model, judge, n_samples=n, n_captions=n_captions, verbose=False, **kwargs)
    result.pop("caption_examples", None)
    return result


def judge_device(judge) -> torch.device:
    return next(judge.parameters()).device


def run_mode(base: Config, mode: str, name: str, steps: int, flops_per_step: float, judge, *, seed: int,
             sweep_n: int, curve_points: int, sweep_steps: dict, verbose: bool, row: str | None = None) -> dict:
    """One (mode, seed), or one (row, seed) of another recipe of the mode (base carries it): train in `curve_points`
    resumable segments, evaluating after each on `sweep_n` images; then, on the final checkpoint, the table's
    evaluation, the step sweep and the guidance check.

    Every evaluation samples with the run's seed and is kept in evaluations.json as soon as it is done. The last
    curve point is also the sweep point at the default steps and the guidance check's "with" side (the same
    images), and the table's evaluation too when sweep_n is the table's --eval-samples.
    """
    from minimfm.train import train
    cfg = mode_config(base, mode, name, steps, seed, row)
    run = Path(cfg.runs_dir) / cfg.name
    done_file = run / "evaluations.json"
    done = json.loads(done_file.read_text()) if done_file.is_file() else {}

    def evaluated(key: str, at: int, n: int, n_captions: int, **kwargs) -> dict:
        if key not in done:
            ckpt = load_checkpoint(run / "ckpt.pt", kind="model")
            if ckpt["step"] != at:  # evaluations.json lost or edited: never score another step's weights
                raise CheckpointError(f"{run / 'ckpt.pt'} is at step {ckpt['step']}, but '{key}' needs step {at}: "
                                      f"delete {run} to train this seed again")
            result = evaluate_checkpoint(run / "ckpt.pt", judge, n, n_captions, seed=seed, **kwargs)
            done[key] = {**result, "train_seconds": ckpt["train_seconds"]}
            write_text_atomic(json.dumps(done, indent=2), done_file)
        return done[key]

    milestones = sorted({max(1, round(steps * k / curve_points)) for k in range(1, curve_points + 1)})
    curve = []
    for at in milestones:
        if f"step {at}" not in done:
            train(cfg, resume=True, verbose=verbose, stop_after=at)
        r = evaluated(f"step {at}", at, sweep_n, cfg.eval_captions)
        curve.append({"step": at, "flops": at * flops_per_step, "train_seconds": r["train_seconds"],
                      **{k: r[k] for k in CURVE_KEYS}})
    last = done[f"step {steps}"]
    final = last if sweep_n == cfg.eval_samples else evaluated("final", steps, cfg.eval_samples, cfg.eval_captions)
    sweep = []
    for s in sweep_steps.get(mode, (None,)):
        r = last if s is None or s == last["steps"] else evaluated(f"sweep steps {s}", steps, sweep_n, 0, steps=s)
        sweep.append({"steps": s, **{k: r[k] for k in SWEEP_KEYS}})
    no_cfg = evaluated("no guidance", steps, sweep_n, 0, cfg_scale=0.0)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {**final, "seed": seed, "steps_trained": steps, "train_flops": steps * flops_per_step,
            "images_per_second": steps * cfg.batch_size / max(final["train_seconds"], 1e-9),
            "final_text_loss": rows[-1]["text_loss"], "final_image_loss": rows[-1]["image_loss"],
            "curve": curve, "step_sweep": sweep,
            "cfg_check": {"n_samples": sweep_n, "cfg_scale": last["cfg_scale"],
                          "prompted_accuracy_cfg": last["prompted_accuracy"],
                          "prompted_accuracy_no_cfg": no_cfg["prompted_accuracy"]}}


# ------------------------------------------------------------------------------------- seeds -> one row

def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def summarise(rows: list[dict]) -> dict:
    """Rows of one shape, one per seed -> one row. A number becomes its mean over seeds (kept exactly when every
    seed has the same value), with its interval under "intervals"; a number that is None in any seed stays None
    (not measured); text is kept; nested rows (curve, sweep) are left to the caller."""
    out, intervals = {}, {}
    for key, first in rows[0].items():
        values = [row.get(key) for row in rows]
        if key == "seed" or isinstance(first, (dict, list)):
            continue
        if all(_number(v) for v in values):
            intervals[key] = interval(values)
            out[key] = first if all(v == first for v in values) else intervals[key]["mean"]
        else:
            out[key] = None if any(_number(v) or v is None for v in values) else first
    return {**out, "intervals": intervals}


def _points(results: list[dict], list_key: str, match: str) -> list[dict]:
    """The curve (or sweep) of each seed, point by point: the points must line up (same steps) across seeds."""
    lists = [r[list_key] for r in results]
    if len({tuple(p[match] for p in points) for points in lists}) != 1:
        raise ValueError(f"the seeds' {list_key} points differ in {match}: they cannot be averaged point by point")
    return [summarise(list(points)) for points in zip(*lists)]


def aggregate(per_seed: dict[str, dict]) -> dict:
    """A mode's entry in results.json from its finished seeds: each metric's mean under its own key (what a reader
    of a one-seed comparison read), "intervals" with each metric's mean ± 95 % interval, the same for every curve
    and sweep point and the guidance check, and the per-seed results under "per_seed"."""
    results = [per_seed[k] for k in sorted(per_seed, key=int)]
    return {"seeds": [r["seed"] for r in results], **summarise(results),
            "curve": _points(results, "curve", "step"), "step_sweep": _points(results, "step_sweep", "steps"),
            "cfg_check": summarise([r["cfg_check"] for r in results]),
            "per_seed": {str(r["seed"]): r for r in results}}


def paired_differences(modes: dict, which: list[tuple[str, str]] | None = None) -> list[dict]:
    """For every two modes a, b (or the pairs of rows `which`) and every PAIRED_METRICS metric: a paired t-test of
    a - b over their common seeds."""
    rows = []
    which = itertools.combinations(modes, 2) if which is None else [p for p in which if set(p) <= modes.keys()]
    for a, b in which:
        seeds = [s for s in modes[a]["per_seed"] if s in modes[b]["per_seed"]]
        for metric in PAIRED_METRICS:
            va = [modes[a]["per_seed"][s].get(metric) for s in seeds]
            vb = [modes[b]["per_seed"][s].get(metric) for s in seeds]
            if seeds and all(_number(v) for v in va + vb):
                rows.append({"metric": metric, "a": a, "b": b, "seeds": [int(s) for s in seeds],
                             **paired_test(va, vb)})
    return rows


def compare(base: Config, *, name: str | None = None, budget_flops: float | None = None,
            budget_minutes: float | None = None, modes: tuple[str, ...] = MODES, seeds: int | None = None,
            sweep_n: int | None = None, curve_points: int = CURVE_POINTS, sweep_steps: dict | None = None,
            recipes: str | Path | None = None, overwrite: bool = False, verbose: bool = True) -> Path:
    """Train and evaluate `modes` under one budget, `seeds` seeds each (default SEEDS / DEFAULT_SEEDS), every curve
    and sweep point on `sweep_n` images (default base.eval_samples); writes results.json, results.md and figures.
    `recipes` (a `tune` best.json or a folder of them) adds each mode's tuned row and the papers' variants
    (minimfm/compare_rows.py). Resumable per row and seed; asking for more seeds or rows later adds them."""
    from minimfm.tokenizers.store import get_tokenizer
    from minimfm.runs import select_device
    if base.threads:
        torch.set_num_threads(base.threads)
    tuned = read_recipes(recipes, base) if recipes is not None else None
    rows = comparison_rows(base, modes, tuned)
    seeds = seed_list(base.seed, SEEDS.get(base.preset, DEFAULT_SEEDS) if seeds is None else seeds)
    sweep_n = base.eval_samples if sweep_n is None else sweep_n
    if sweep_n < 1:
        raise ValueError(f"--sweep-n: must be a whole number >= 1, got {sweep_n}")
    name = name or f"compare-{base.dataset}-{base.preset}"
    out = Path(base.runs_dir) / name
    results_path = out / "results.json"
    if overwrite and out.exists():
        import shutil
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    setting = {k: v for k, v in base.to_dict().items()
               if k not in ("mode", "run_name", "threads", "device", "runs_dir", "data_root")}
    budget = plan(base, budget_flops, budget_minutes, verbose, rows)
    state = json.loads(results_path.read_text()) if results_path.is_file() else {}
    if state and "seeds" not in state:
        raise CheckpointError(f"{out} holds a one-seed comparison from before --seeds (its curves mix image counts): "
                              f"pass --overwrite to start again, or --name to keep both")
    check_rows(state, rows, out)
    if state and (not same_setting(state["setting"], setting) or state["sweep_n"] != sweep_n
                  or not merge_plan(state["plan"], budget)):
        raise CheckpointError(f"{out} holds a comparison with other settings, budget or --sweep-n: pass --overwrite "
                              f"to start again, or --name to keep both")
    state = state or {"setting": setting, "plan": budget, "sweep_n": sweep_n, "seeds": [], "modes": {},
                      "started": time.strftime("%Y-%m-%d %H:%M")}
    state["seeds"] = sorted(set(state["seeds"]) | set(seeds))
    if tuned is not None:
        state.setdefault("recipes", {}).update({m: {**r, "kept_default": kept_default(base, r["overrides"])}
                                                for m, r in tuned.items() if m in modes})
    judge = get_tokenizer(base, "judge", verbose).to(select_device(base.device))
    state["judge_features"] = judge.config["feature_dim"]
    for seed in seeds:  # seed-major: an interrupted comparison has whole comparisons of its first seeds
        for row in rows:
            table = state["modes"] if row.name == row.mode else state.setdefault("variants", {})
            per_seed = table.get(row.name, {}).get("per_seed", {})
            if str(seed) in per_seed:
                if verbose:
                    print(f"{row.name}, seed {seed}: finished earlier, kept ({results_path})")
                continue
            steps = budget["steps"][row.name]
            if verbose:
                print(f"{row.name}, seed {seed}: {steps} steps, {budget['flops'][row.name]:.3g} FLOPs")
            result = run_mode(row_config(base, row), row.mode, name, steps, budget["flops_per_step"][row.name],
                              judge, seed=seed, sweep_n=sweep_n, curve_points=curve_points, row=row.name,
                              sweep_steps=SWEEP_STEPS if sweep_steps is None else sweep_steps, verbose=verbose)
            entry = aggregate({**per_seed, str(seed): result})
            table[row.name] = entry if row.name == row.mode else {"row": row.name, "overrides": row.overrides, **entry}
            state["paired"] = paired_differences(entries(state), pairs(all_rows(state)))
            write_text_atomic(json.dumps(state, indent=2), results_path)
            write_text_atomic(markdown_table(state), out / "results.md")
    from minimfm.compare_plots import plot_compute, plot_samples, plot_steps
    plot_steps(state, out / "quality_vs_steps.png")
    plot_compute(state, out / "quality_vs_compute.png")
    plot_samples(out, [m for m in modes if m in state["modes"]], base.dataset, out / "samples.png",
                 run_seed=seeds[0])
    return out


# ------------------------------------------------------------------------------------------------ tables

def cell(row: dict, key: str, spec: str, scale: float = 1.0) -> str:
    """'mean ± half-width' of one metric of a summarised row; the mean alone with one seed; '-' if not measured."""
    if row.get(key) is None:
        return "-"
    iv = row.get("intervals", {}).get(key)
    if iv is None or iv["half_width"] is None:
        return format(row[key] * scale, spec)
    return f"{format(iv['mean'] * scale, spec)} ± {format(iv['half_width'] * scale, spec)}"


def _floor_note(n: int, floor: float, features: int | None) -> str:
    note = f"Fréchet floor (real training images against the test set) at {n} images: {floor:.1f}"
    if features and n < features:
        note += (f"; fewer images than the judge's {features} features, so each covariance is rank-deficient and "
                 f"the floor is high: read values against it")
    return note + "."


def markdown_table(state: dict) -> str:
    """results.md: the table (mean ± 95 % interval), the recipes of rows other than the defaults, the paired tests,
    the step sweep and the training curve."""
    setting, modes = state["setting"], entries(state)  # every row: the modes' defaults first
    seeds = sorted({s for r in modes.values() for s in r["seeds"]})
    first = next(iter(modes.values()))
    lines = [f"Budget: {state['plan']['budget']}; {setting['dataset']}, preset {setting['preset']}, d_model "
             f"{setting['d_model']}, {setting['n_layer']} layers, batch {setting['batch_size']}.", "",
             f"Seeds {', '.join(map(str, seeds))}: each figure is the mean over a mode's seeds ± the half-width of "
             f"its 95 % Student t interval (one seed: the mean alone, no interval). Each seed's evaluation: "
             f"{first['n_samples']} generated images, {first['n_captions']} captioned test images.", "",
             "| mode | seeds | steps | train FLOPs | train min | images/s | prompted acc | attribute match "
             "| Fréchet (floor) | caption acc | caption acc (+ attributes) | caption ppl | s / image | NFE |",
             "|" + "---|" * 14]
    for mode, r in modes.items():
        lines.append(
            f"| {mode} | {len(r['seeds'])} | {r['steps_trained']} | {r['train_flops']:.3g} | "
            f"{cell(r, 'train_seconds', '.1f', 1 / 60)} | {cell(r, 'images_per_second', '.0f')} | "
            f"{cell(r, 'prompted_accuracy', '.3f')} | {cell(r, 'attribute_match', '.3f')} | "
            f"{cell(r, 'frechet_distance', '.1f')} ({r['frechet_floor']:.1f}) | {cell(r, 'caption_accuracy', '.3f')} | "
            f"{cell(r, 'caption_attribute_accuracy', '.3f')} | {cell(r, 'caption_perplexity', '.3f')} | "
            f"{cell(r, 'seconds_per_image', '.4f')} | {r['nfe_per_image']:g} |")
    lines += recipe_notes(state) + [""] + paired_table(state.get("paired", []))
    n, features = state["sweep_n"], state.get("judge_features")
    lines += ["", f"Step sweep, {n} images per point. " + _floor_note(n, first["step_sweep"][0]["frechet_floor"],
                                                                     features), "",
              "| mode | steps | NFE | prompted acc | Fréchet | s / image |", "|---|---|---|---|---|---|"]
    for mode, r in modes.items():
        for p in r["step_sweep"]:
            lines.append(f"| {mode} | {p['steps'] if p['steps'] is not None else '-'} | {p['nfe_per_image']:g} "
                         f"| {cell(p, 'prompted_accuracy', '.3f')} | {cell(p, 'frechet_distance', '.1f')} | "
                         f"{cell(p, 'seconds_per_image', '.4f')} |")
    lines += ["", f"Quality vs training compute, {n} images per point. " +
              _floor_note(n, first["curve"][0]["frechet_floor"], features), "",
              "| mode | step | train FLOPs | prompted acc | Fréchet | caption acc | caption acc (+ attributes) |",
              "|---|---|---|---|---|---|---|"]
    for mode, r in modes.items():
        for p in r["curve"]:
            lines.append(f"| {mode} | {p['step']} | {p['flops']:.3g} | {cell(p, 'prompted_accuracy', '.3f')} | "
                         f"{cell(p, 'frechet_distance', '.1f')} | {cell(p, 'caption_accuracy', '.3f')} | "
                         f"{cell(p, 'caption_attribute_accuracy', '.3f')} |")
    return "\n".join(lines) + "\n"


def paired_table(rows: list[dict]) -> list[str]:
    """Lines of results.md: per pair of modes, per metric, mean difference ± 95 % interval and the paired test."""
    tested = [r for r in rows if r["p"] is not None]
    if not tested:
        return ["Beyond noise? A paired test needs at least 2 seeds of both modes."]
    metrics = [m for m in PAIRED_METRICS if any(r["metric"] == m for r in tested)]
    head = {"prompted_accuracy": "prompted acc", "attribute_match": "attribute match", "frechet_distance": "Fréchet",
            "caption_accuracy": "caption acc", "caption_attribute_accuracy": "caption acc (+ attributes)"}
    lines = [f"Beyond noise? Paired t-test over seeds (two-sided, α = {tested[0]['alpha']:g}) of a − b: mean "
             f"difference ± 95 % interval (p); **bold** when p < {tested[0]['alpha']:g}.", "",
             "| a − b | " + " | ".join(head[m] for m in metrics) + " |", "|" + "---|" * (len(metrics) + 1)]
    pairs = dict.fromkeys((r["a"], r["b"]) for r in tested)
    for a, b in pairs:
        cells = []
        for m in metrics:
            r = next((r for r in tested if (r["a"], r["b"], r["metric"]) == (a, b, m)), None)
            if r is None:
                cells.append("-")
                continue
            spec = ".1f" if m == "frechet_distance" else ".3f"
            d = r["difference"]
            text = f"{format(d['mean'], spec)} ± {format(d['half_width'], spec)} (p {r['p']:.2g})"
            cells.append(f"**{text}**" if r["beyond_noise"] else text)
        lines.append(f"| {a} − {b} | " + " | ".join(cells) + " |")
    return lines
