"""The paradigm comparison: ar, masked and diffusion on one backbone, one data order and one training budget.

Each paper compares itself with Chameleon in its own setup (Show-o, Table 2; Transfusion, Figure 2), so their
numbers never line up. Here the three modes share the transformer width and depth, the tokenizer-free text side,
the data order of every step (train.py draws it from (seed, step)) and the budget, matched in training FLOPs:

    FLOPs per step = batch · T · (6 · N + 12 · n_layer · d_model · T)      (minimfm/flops.py)

with T the packed sequence length and N the trainable parameters that multiply activations (everything except
embedding tables): 6N for forward + backward over each token (Kaplan et al. 2020), plus the attention scores.
The modes differ slightly in N (a code head vs a patch decoder) and in T (Show-o's task token), so each gets
round(budget / its FLOPs per step) optimiser steps; wall-clock is measured and reported beside it.

Per mode the folder `runs/<name>/<mode>/` holds an ordinary training run, and `results.json` gains the mode's
entry only when its evaluation is complete: an interrupted comparison resumes from the last checkpoint of the
unfinished mode and never retrains a finished one.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

from minimfm.checkpoint import CheckpointError, load_checkpoint
from minimfm.config import Config
from minimfm.flops import matmul_parameters, step_flops  # noqa: F401  (re-exported for notebooks and tests)
from minimfm.modes import MODE_NAMES, REGISTRY

MODES = MODE_NAMES
SWEEP_STEPS = {name: spec.sweep_steps for name, spec in REGISTRY.items() if spec.sweep_steps}  # ar: N codes
CURVE_POINTS = 4  # evaluations along training, for quality vs training compute


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


def mode_config(base: Config, mode: str, name: str, steps: int) -> Config:
    return dataclasses.replace(base, mode=mode, run_name=f"{name}/{mode}", max_steps=steps, sample_every=0,
                               ckpt_every=max(1, steps))


# ------------------------------------------------------------------------------------------------ the run

def plan(base: Config, budget_flops: float | None, budget_minutes: float | None, verbose: bool = True) -> dict:
    """Steps and FLOPs per mode for the requested budget (default: the preset's max_steps of the ar mode)."""
    from minimfm.runs import build_model, image_tokenizer_for
    if budget_flops is not None and budget_minutes is not None:
        raise ValueError("give --budget-flops or --budget-minutes, not both")
    flops = {}
    for mode in MODES:
        cfg = dataclasses.replace(base, mode=mode)
        flops[mode] = step_flops(build_model(cfg, image_tokenizer_for(cfg, verbose)[0]), cfg.batch_size)
    if budget_minutes is not None:
        from minimfm.bench import time_training_step  # the bench's timing: speed does not depend on the data
        speed = {mode: time_training_step(dataclasses.replace(base, mode=mode), steps=8, warmup=1)[1]
                 for mode in MODES}
        steps = steps_for_minutes(speed, budget_minutes)
        kind = f"{budget_minutes:g} minutes per mode"
    else:
        budget_flops = budget_flops if budget_flops is not None else base.max_steps * flops["ar"]
        steps = steps_for_budget(flops, budget_flops)
        kind = f"{budget_flops:.3g} training FLOPs per mode"
    return {"budget": kind, "steps": steps, "flops_per_step": flops,
            "flops": {m: steps[m] * flops[m] for m in MODES}}


def evaluate_checkpoint(path: Path, judge, n: int, n_captions: int, **kwargs) -> dict:
    from minimfm.evaluate import evaluate
    from minimfm.runs import model_from_checkpoint
    model = model_from_checkpoint(load_checkpoint(path, kind="model"), judge_device(judge))
    result = evaluate(model, judge, n_samples=n, n_captions=n_captions, verbose=False, **kwargs)
    result.pop("caption_examples", None)
    return result


def judge_device(judge) -> torch.device:
    return next(judge.parameters()).device


def run_mode(base: Config, mode: str, name: str, steps: int, flops_per_step: float, judge, *,
             sweep_n: int, curve_points: int, sweep_steps: dict, verbose: bool) -> dict:
    """Train one mode in `curve_points` resumable segments, evaluating after each; then the step sweep."""
    from minimfm.train import train
    cfg = mode_config(base, mode, name, steps)
    run = Path(cfg.runs_dir) / cfg.name
    curve_file = run / "curve.json"
    curve = json.loads(curve_file.read_text()) if curve_file.is_file() else []
    milestones = sorted({max(1, round(steps * k / curve_points)) for k in range(1, curve_points + 1)})
    final = None
    for at in milestones:
        if any(point["step"] == at for point in curve):
            continue
        train(cfg, resume=True, verbose=verbose, stop_after=at)
        ckpt = load_checkpoint(run / "ckpt.pt", kind="model")
        last = at == steps
        n, n_cap = (cfg.eval_samples, cfg.eval_captions) if last else (sweep_n, sweep_n)
        result = evaluate_checkpoint(run / "ckpt.pt", judge, n, n_cap)
        point = {"step": at, "flops": at * flops_per_step, "train_seconds": ckpt["train_seconds"],
                 **{k: result[k] for k in ("prompted_accuracy", "frechet_distance", "caption_accuracy",
                                           "n_samples")}}
        curve.append(point)
        curve_file.write_text(json.dumps(curve, indent=2))
        if last:
            final = result
            (run / "final.json").write_text(json.dumps(result, indent=2))
    if final is None:
        final = json.loads((run / "final.json").read_text())
    ckpt = load_checkpoint(run / "ckpt.pt", kind="model")
    sweep = []
    for s in sweep_steps.get(mode, (None,)):
        r = evaluate_checkpoint(run / "ckpt.pt", judge, sweep_n, 0, steps=s)
        sweep.append({"steps": s, **{k: r[k] for k in ("nfe_per_image", "prompted_accuracy", "frechet_distance",
                                                       "frechet_floor", "seconds_per_image")}})
    no_cfg = evaluate_checkpoint(run / "ckpt.pt", judge, sweep_n, 0, cfg_scale=0.0)
    with_cfg = evaluate_checkpoint(run / "ckpt.pt", judge, sweep_n, 0)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {**final, "steps_trained": steps, "train_flops": steps * flops_per_step,
            "train_seconds": ckpt["train_seconds"],
            "images_per_second": steps * cfg.batch_size / max(ckpt["train_seconds"], 1e-9),
            "final_text_loss": rows[-1]["text_loss"], "final_image_loss": rows[-1]["image_loss"],
            "curve": sorted(curve, key=lambda p: p["step"]), "step_sweep": sweep,
            "cfg_check": {"n_samples": sweep_n, "cfg_scale": with_cfg["cfg_scale"],
                          "prompted_accuracy_cfg": with_cfg["prompted_accuracy"],
                          "prompted_accuracy_no_cfg": no_cfg["prompted_accuracy"]}}


def compare(base: Config, *, name: str | None = None, budget_flops: float | None = None,
            budget_minutes: float | None = None, modes: tuple[str, ...] = MODES, sweep_n: int = 100,
            curve_points: int = CURVE_POINTS, sweep_steps: dict | None = None, overwrite: bool = False,
            verbose: bool = True) -> Path:
    """Train and evaluate `modes` under one budget; writes results.json, results.md and figures. Resumable."""
    from minimfm.tokenizers.store import get_tokenizer
    from minimfm.runs import select_device
    if base.threads:
        torch.set_num_threads(base.threads)
    name = name or f"compare-{base.dataset}-{base.preset}"
    out = Path(base.runs_dir) / name
    results_path = out / "results.json"
    if overwrite and out.exists():
        import shutil
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    setting = {k: v for k, v in base.to_dict().items()
               if k not in ("mode", "run_name", "threads", "device", "runs_dir", "data_root")}
    budget = plan(base, budget_flops, budget_minutes, verbose)
    state = json.loads(results_path.read_text()) if results_path.is_file() else {}
    if state and (state["setting"] != setting or state["plan"]["steps"] != budget["steps"]):
        raise CheckpointError(f"{out} holds a comparison with other settings or budget: pass --overwrite to "
                              f"start again, or --name to keep both")
    state = state or {"setting": setting, "plan": budget, "modes": {}, "started": time.strftime("%Y-%m-%d %H:%M")}
    judge = get_tokenizer(base, "judge", verbose).to(select_device(base.device))
    for mode in modes:
        if mode in state["modes"]:
            if verbose:
                print(f"{mode}: finished earlier, kept ({results_path})")
            continue
        if verbose:
            print(f"{mode}: {budget['steps'][mode]} steps, {budget['flops'][mode]:.3g} FLOPs")
        state["modes"][mode] = run_mode(base, mode, name, budget["steps"][mode], budget["flops_per_step"][mode],
                                        judge, sweep_n=sweep_n, curve_points=curve_points,
                                        sweep_steps=SWEEP_STEPS if sweep_steps is None else sweep_steps,
                                        verbose=verbose)
        results_path.write_text(json.dumps(state, indent=2))
        (out / "results.md").write_text(markdown_table(state))
    from minimfm.compare_plots import plot_compute, plot_samples, plot_steps
    plot_steps(state, out / "quality_vs_steps.png")
    plot_compute(state, out / "quality_vs_compute.png")
    plot_samples(out, [m for m in modes if m in state["modes"]], base.dataset, out / "samples.png")
    return out


def markdown_table(state: dict) -> str:
    head = ("| mode | steps | train FLOPs | train min | images/s | prompted acc | attribute match | Fréchet (floor) "
            "| caption acc | caption ppl | s / image | NFE |")
    lines = [f"Budget: {state['plan']['budget']}; {state['setting']['dataset']}, preset "
             f"{state['setting']['preset']}, d_model {state['setting']['d_model']}, {state['setting']['n_layer']} "
             f"layers, batch {state['setting']['batch_size']}.", "", head, "|" + "---|" * 12]
    for mode, r in state["modes"].items():
        lines.append(
            f"| {mode} | {r['steps_trained']} | {r['train_flops']:.3g} | {r['train_seconds'] / 60:.1f} | "
            f"{r['images_per_second']:.0f} | {r['prompted_accuracy']:.3f} | {r['attribute_match']:.3f} | "
            f"{r['frechet_distance']:.1f} ({r['frechet_floor']:.1f}) | {r['caption_accuracy']:.3f} | "
            f"{r['caption_perplexity']:.3f} | {r['seconds_per_image']:.4f} | {r['nfe_per_image']} |")
    return "\n".join(lines) + "\n"
