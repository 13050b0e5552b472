"""Training and evaluating the claims' runs (the claims themselves: minimfm/claims.py), resumable per run and seed.

Run `name` with seed s lives in runs/claims-<dataset>-<preset>/<name> (seed 0) or <name>_seed<s>, and its evaluation
in eval.json there. A run whose eval.json holds every metric the selected claims read is never retrained; one whose
eval.json lacks some (a folder kept from an older claims run: eval.json alone, no checkpoint) is trained again with
the same seed and data order, evaluated afresh, and the old figures are kept under "superseded".
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from minimfm.checkpoint import CheckpointError, load_checkpoint, write_text_atomic
from minimfm.claims import (CLAIM_RUNS, CLAIMS, IMAGE_METRICS, RUN_BUDGET, claim_rows, claim_run_names, claims_markdown,
                            needed_metrics, parse_claims, run_folder_name, run_steps)
from minimfm.config import Config

SECONDS_PER_BASELINE_STEP = 0.36  # tiny's diffusion baseline on 2 CPU cores (measured), for the printed estimate
TEXT_CAPTIONS = 2000  # held-out captions for text perplexity: a text-only pass is cheap, so more than --n


def run_config(base: Config, folder: str, name: str, seed: int, steps: int) -> Config:
    """The Config of one claim run: the diffusion baseline with the run's settings, seed and steps."""
    settings = {k: v for k, v in CLAIM_RUNS[name].items() if k != "text_only"}
    return dataclasses.replace(base, **{"mode": "diffusion", "run_name": f"{folder}/{run_folder_name(name, seed)}",
                                        "seed": seed, "max_steps": steps, "sample_every": 0, "ckpt_every": steps,
                                        **settings})


def flops_per_step(cfg: Config, text_only: bool = False) -> float:
    """Training FLOPs of one step of cfg's model, built with an UNTRAINED tokenizer (FLOPs do not depend on its
    weights, and a 14x14 tokenizer not yet trained must not be trained just to print an estimate)."""
    from minimfm.commands import IMAGE_SHAPES
    from minimfm.flops import step_flops
    from minimfm.modes import image_tokenizer_kind
    from minimfm.runs import build_model
    from minimfm.tokenizers.store import new_tokenizer
    if text_only:
        from minimfm.text_only import build_text_only
        return step_flops(build_text_only(cfg), cfg.batch_size)
    tokenizer = new_tokenizer(cfg, image_tokenizer_kind(cfg.mode), IMAGE_SHAPES[cfg.dataset][0])
    return step_flops(build_model(cfg, tokenizer), cfg.batch_size)


def plan(base: Config, names: list[str], steps: int) -> dict:
    """FLOPs per step and steps of each run (claims.run_steps), with the runs their budgets refer to."""
    refers = [RUN_BUDGET[n].split(" of ")[1] for n in names if " of " in RUN_BUDGET.get(n, "")]
    needed = list(dict.fromkeys(["baseline", "conv", *refers, *names]))
    flops = {n: flops_per_step(run_config(base, "plan", n, 0, steps), n == "textonly") for n in needed}
    return {"flops_per_step": flops, "steps": run_steps(needed, steps, flops)}


def cached(run: Path) -> dict:
    done = run / "eval.json"
    return json.loads(done.read_text()) if done.is_file() else {}


def estimate(names: list[str], seeds: list[int], budget: dict, done: dict) -> str:
    """The cost line printed before any training: runs x steps, and the FLOPs in baseline steps and hours."""
    todo = [(n, s) for n in names for s in seeds if not done[(n, s)]]
    total = sum(budget["steps"][n] for n, _ in todo)
    flops = budget["flops_per_step"]
    equivalent = sum(budget["steps"][n] * flops[n] / flops["baseline"] for n, _ in todo)
    seconds = equivalent * SECONDS_PER_BASELINE_STEP
    time_text = f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"
    return (f"{len(names)} runs x {len(seeds)} seeds = {len(names) * len(seeds)} trainings, "
            f"{len(names) * len(seeds) - len(todo)} already evaluated; to train: {len(todo)} runs, {total:,} steps "
            f"= {equivalent:,.0f} baseline steps in FLOPs, ~{time_text} at {SECONDS_PER_BASELINE_STEP} s per baseline "
            f"step (tiny, 2 CPU cores; evaluations and new tokenizers not included)")


def claim_run(base: Config, folder: str, name: str, seed: int, steps: int, n: int, need: frozenset,
              verbose: bool) -> dict:
    """Train (or resume) one run of the claims and evaluate what `need` asks for; eval.json caches it."""
    from minimfm.compare import evaluate_checkpoint
    from minimfm.evaluate import text_perplexity
    from minimfm.runs import load_model, select_device
    from minimfm.tokenizers.store import get_tokenizer
    from minimfm.train import train
    cfg = run_config(base, folder, name, seed, steps)
    run = Path(cfg.runs_dir) / cfg.name
    result = cached(run)
    if result.get("steps_trained", steps) != steps:  # an eval.json from before the record is trusted, as before
        raise CheckpointError(f"{run} holds a run of {result['steps_trained']} steps, not {steps}: pass the "
                              f"--claim-steps it was made with, or another --runs-dir")
    if need <= result.keys():
        return result
    ckpt = run / "ckpt.pt"
    kind = "text_only" if name == "textonly" else "model"
    if not (ckpt.is_file() and load_checkpoint(ckpt, kind=kind)["step"] == steps):  # kept from an interrupted run
        if verbose:
            print(f"claim run {run_folder_name(name, seed)}: {CLAIM_RUNS[name] or 'diffusion defaults'}, {steps} steps")
        if name == "textonly":
            from minimfm.text_only import train_text_only
            train_text_only(cfg, verbose=verbose)
        else:
            train(cfg, resume=True, verbose=verbose)
    saved = load_checkpoint(ckpt, kind=kind)
    if saved["step"] != steps:  # e.g. the checkpoint of a longer --claim-steps, which resuming cannot shorten
        raise CheckpointError(f"{ckpt} is at step {saved['step']}, not {steps}: pass the --claim-steps it was made "
                              f"with, or another --runs-dir")
    fresh = {"steps_trained": steps, "evaluated": time.strftime("%Y-%m-%d %H:%M"),
             "train_seconds": saved["train_seconds"]}
    device = select_device(cfg.device)
    if name == "textonly":
        from minimfm.text_only import load_text_only
        model = load_text_only(ckpt, device)
    else:
        judge = get_tokenizer(cfg, "judge", verbose).to(device)
        fresh.update(evaluate_checkpoint(ckpt, judge, n, n, seed=seed))
        model = load_model(ckpt, cfg.device)
    fresh["text_perplexity"] = text_perplexity(model, TEXT_CAPTIONS)  # every run: cheap, and claim f may come later
    if result and IMAGE_METRICS & result.keys():  # an older evaluation of this run: kept for the record
        fresh["superseded"] = {k: v for k, v in result.items() if k != "superseded"}
    write_text_atomic(json.dumps(fresh, indent=2), run / "eval.json")
    return fresh


def run_claims(base: Config, *, steps: int = 600, n: int = 200, compare_name: str | None = None,
               seeds: int | None = None, claims: str | tuple[str, ...] | None = None, verbose: bool = True) -> Path:
    """Train and evaluate the runs of the selected claims (default: all) with `seeds` seeds each (default: 3, smoke
    1, as compare), seed-major, then write claims.json and claims.md for the selected claims."""
    import torch

    from minimfm.compare import DEFAULT_SEEDS, SEEDS
    if base.threads:
        torch.set_num_threads(base.threads)
    selected = parse_claims(claims) if isinstance(claims, str) else tuple(claims or CLAIMS)
    k = SEEDS.get(base.preset, DEFAULT_SEEDS) if seeds is None else seeds
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 100 or base.seed + k > 2**31:
        raise ValueError(f"--claim-seeds: must be a whole number in [1, 100] (and --seed + it at most 2**31), got {k}")
    seed_list = list(range(base.seed, base.seed + k))
    folder = f"claims-{base.dataset}-{base.preset}"
    out = Path(base.runs_dir) / folder
    names = claim_run_names(selected)
    budget = plan(base, names, steps)
    need = {name: needed_metrics(name, selected) for name in names}
    done = {(name, s): need[name] <= cached(out / run_folder_name(name, s)).keys() for name in names for s in seed_list}
    if verbose:
        print(f"claims {','.join(selected)}: " + estimate(names, seed_list, budget, done))
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[int, dict]] = {name: {} for name in names}
    for s in seed_list:  # seed-major: an interrupted run has whole sets of claims for its first seeds
        for name in names:
            results[name][s] = claim_run(base, folder, name, s, budget["steps"][name], n, need[name], verbose)
    compare_file = Path(base.runs_dir) / (compare_name or f"compare-{base.dataset}-{base.preset}") / "results.json"
    compare_state = json.loads(compare_file.read_text()) if compare_file.is_file() else None
    rows = claim_rows(results, compare_state, steps=steps, run_steps=budget["steps"], selected=selected)
    write_text_atomic(json.dumps({"steps": steps, "n": n, "seeds": seed_list, "claims": list(selected),
                                  "run_steps": budget["steps"], "flops_per_step": budget["flops_per_step"],
                                  "rows": rows, "runs": {k: {str(s): r for s, r in v.items()}
                                                         for k, v in results.items()}}, indent=2),
                      out / "claims.json")
    write_text_atomic(claims_markdown(rows, n, seed_list), out / "claims.md")
    return out
