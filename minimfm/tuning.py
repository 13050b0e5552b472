"""Each paradigm at its best recipe: the same small tuning budget for every mode, chosen on a validation split.

Comparing defaults answers "which paradigm, with our settings?"; a reviewer asks "which paradigm, each at its best?"
(issue #16). A mode whose default learning rate or guidance scale happens to suit it would otherwise win on luck.
So `python -m minimfm tune --mode M --trials K` gives every mode the same search:

- The space. The shared knobs SHARED (learning rate, guidance scale) plus the mode's own, declared with the mode
  (`tuning` in minimfm/modes/__init__.py): ar top-k and temperature; masked the mask schedule and T; diffusion λ,
  the patch encoder, the objective (rectified flow or DDPM ε-prediction) and the timestep conditioning; mar T, S
  and temperature. A recipe is one value per knob, written as Config overrides.
- The search: seeded random search over the grid of recipes. Trial 0 is the preset's own recipe, so tuning can
  only keep it or find one that beats it on validation; trials 1 … K−1 are the first K−1 other recipes of the
  whole grid shuffled by random.Random((seed, mode)). No recipe is tried twice, and `--trials 8` after
  `--trials 4` keeps the first four and trains four more (the order is the same prefix).
- The budget: K trials per mode, each spending the same training FLOPs: what --trial-steps steps of the preset's
  ar model cost (default a third of --max-steps). A recipe that costs more per step (the conv encoder) gets
  fewer steps, as in `compare`, so a recipe is chosen under the rule it is compared under. Every trial trains with
  the same seed: the recipe is the only difference.
- The data. Trials train without the validation split (`--holdout-validation`: 5,000 training images, the last
  500 of each class, minimfm/data.py) and are scored on it, never on the test split: prompted accuracy and
  attribute match of n = --eval-samples images prompted with validation captions, their Fréchet distance to the
  validation images (judge features), and caption accuracy on n validation images. The frozen tokenizers and the
  judge are the comparison's own, shared by every trial and every mode; they were trained on the whole training
  split, validation images included (the tokenizers without labels), which is a small leak, stated rather than
  paid for with a second set of tokenizers whose recipes would not transfer to the comparison.
- The rule: the best trial has the lowest Fréchet distance among the trials whose prompted accuracy is within
  ACCURACY_SLACK = 0.01 of the best one (the class is what the course leads with; Fréchet, which also sees
  diversity and attributes, decides among near-ties); an exact tie goes to the earlier trial (the default first).
  Sampling cost does not enter the rule: a recipe with more sampling steps may win, and `compare`'s step sweep
  shows what it costs.

Folder: runs/tune-<dataset>-<preset>-<mode>/trial<i>/ is an ordinary training run, resumed where it stopped;
best.json holds the setting, the budget, every finished trial (overrides, steps, FLOPs, validation figures) and
"best", the chosen recipe as Config overrides (what `compare --recipes` reads); best.md is the table. Both are
rewritten after each trial, so an interrupted search never retrains a finished trial.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import random
import zlib
from pathlib import Path

from minimfm.checkpoint import CheckpointError, write_text_atomic
from minimfm.config import Config
from minimfm.modes import get_mode

# knobs every mode is tuned over (Config field -> values tried); the tiny preset's defaults are among them
SHARED: dict[str, tuple] = {"lr": (5e-4, 1e-3, 2e-3, 3e-3), "cfg_scale": (1.5, 3.0, 5.0)}
ACCURACY_SLACK = 0.01  # trials this close to the best prompted accuracy compete on Fréchet distance
TRIAL_FRACTION = 3     # default trial length: max_steps // TRIAL_FRACTION steps of the ar model's FLOPs
# what a trial keeps of its validation evaluation
TRIAL_KEYS = ("prompted_accuracy", "attribute_match", "frechet_distance", "frechet_floor", "caption_accuracy",
              "caption_attribute_accuracy", "n_samples", "n_captions", "nfe_per_image", "seconds_per_image",
              "train_seconds")
NOT_SETTINGS = ("run_name", "threads", "device", "runs_dir", "data_root")  # where and how fast, not what
RULE = (f"lowest Fréchet distance among the trials within {ACCURACY_SLACK} of the best prompted accuracy, on the "
        f"validation split; ties to the earlier trial")


def space(mode: str) -> dict[str, tuple]:
    """The knobs tuned for `mode` and the values tried: SHARED plus the mode's own (its registry entry)."""
    return {**SHARED, **get_mode(mode).tuning}


def draw(base: Config, mode: str, trials: int, seed: int | None = None) -> list[dict]:
    """The recipes of `trials` trials as Config overrides, one value per knob of space(mode): trial 0 is base's
    own values, then the other recipes of the grid in a seeded shuffle (a prefix of the same order for any K)."""
    knobs = space(mode)
    default = {k: getattr(base, k) for k in knobs}
    grid = [dict(zip(knobs, values)) for values in itertools.product(*knobs.values())]
    others = [r for r in grid if r != default]
    seed = base.seed if seed is None else seed
    random.Random(seed * 1_000_003 + zlib.crc32(mode.encode())).shuffle(others)  # crc32: stable across runs
    if not 1 <= trials <= len(others) + 1:
        raise ValueError(f"--trials {trials}: the {mode} space holds {len(others) + 1} recipes (the default and "
                         f"{len(others)} others); ask for 1 to {len(others) + 1}")
    return [default] + others[:trials - 1]


def select(results: list[dict], slack: float = ACCURACY_SLACK) -> int:
    """Index of the best trial: the lowest Fréchet distance among the trials within `slack` of the best prompted
    accuracy; among equals, the first."""
    if not results:
        raise ValueError("no finished trial to choose from")
    top = max(r["prompted_accuracy"] for r in results)
    near = [i for i, r in enumerate(results) if r["prompted_accuracy"] >= top - slack - 1e-12]
    return min(near, key=lambda i: (results[i]["frechet_distance"], i))


def trial_config(base: Config, mode: str, name: str, index: int, overrides: dict, steps: int) -> Config:
    """Trial `index`: the recipe, trained for `steps` steps without the validation split."""
    return dataclasses.replace(base, mode=mode, run_name=f"{name}/trial{index}", max_steps=steps, sample_every=0,
                               ckpt_every=min(base.ckpt_every, steps), holdout_validation=True, **overrides)


def trial_steps_for_budget(base: Config, mode: str, recipes: list[dict], trial_steps: int, verbose: bool = False
                           ) -> tuple[float, list[int], list[float]]:
    """The trial budget in FLOPs (trial_steps steps of base's ar model) and, per recipe, the steps that spend it
    (rounded, as in `compare`) and the FLOPs of one of its steps."""
    from minimfm.flops import step_flops
    from minimfm.runs import build_model, image_tokenizer_for

    def flops(cfg: Config) -> float:
        return step_flops(build_model(cfg, image_tokenizer_for(cfg, verbose)[0]), cfg.batch_size)
    budget = trial_steps * flops(dataclasses.replace(base, mode="ar"))
    per_step = [flops(dataclasses.replace(base, mode=mode, **r)) for r in recipes]
    steps = [round(budget / f) for f in per_step]
    if min(steps) < 1:
        raise ValueError(f"--trial-steps {trial_steps}: buys less than one step of some {mode} recipes; give more")
    return budget, steps, per_step


def tune(base: Config, mode: str | None = None, *, trials: int, trial_steps: int | None = None,
         name: str | None = None, overwrite: bool = False, verbose: bool = True) -> Path:
    """Run (or resume) `trials` trials of `mode` (default base.mode); writes best.json and best.md, returns the
    folder. See the module docstring for the space, the budget, the data and the selection rule."""
    import torch
    from tqdm.auto import tqdm
    from minimfm.compare import evaluate_checkpoint
    from minimfm.runs import select_device
    from minimfm.tokenizers.store import get_tokenizer
    from minimfm.train import train
    mode = mode or base.mode
    if base.threads:
        torch.set_num_threads(base.threads)
    trial_steps = max(1, base.max_steps // TRIAL_FRACTION) if trial_steps is None else trial_steps
    if trial_steps < 1:
        raise ValueError(f"--trial-steps: must be a whole number >= 1, got {trial_steps}")
    base = dataclasses.replace(base, mode=mode)
    recipes = draw(base, mode, trials)
    name = name or f"tune-{base.dataset}-{base.preset}-{mode}"
    out = Path(base.runs_dir) / name
    state_path = out / "best.json"
    if overwrite and out.exists():
        import shutil
        shutil.rmtree(out)
    budget, steps, per_step = trial_steps_for_budget(base, mode, recipes, trial_steps, verbose)
    setting = {k: v for k, v in base.to_dict().items() if k not in NOT_SETTINGS}
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    if state and (state["setting"] != setting or state["trial_steps"] != trial_steps):
        raise CheckpointError(f"{out} holds a search with other settings or --trial-steps: pass --overwrite to "
                              f"start again, or --name to keep both")
    state = state or {"setting": setting, "mode": mode, "trial_steps": trial_steps, "trial_flops": budget,
                      "space": space(mode), "rule": RULE, "trials": []}
    done = {t["trial"]: t for t in state["trials"]}
    for i, recipe in enumerate(recipes):
        if i in done and done[i]["overrides"] != recipe:
            raise CheckpointError(f"{out}: trial {i} was trained with {done[i]['overrides']}, not {recipe} (the "
                                  f"space or --seed changed): pass --overwrite or --name")
    out.mkdir(parents=True, exist_ok=True)
    judge = get_tokenizer(base, "judge", verbose).to(select_device(base.device))
    bar = tqdm(range(trials), desc=f"tune {mode}", disable=not verbose)
    for i in bar:
        if i in done:
            continue
        cfg = trial_config(base, mode, name, i, recipes[i], steps[i])
        run = train(cfg, resume=True, verbose=False)
        n = base.eval_samples
        r = evaluate_checkpoint(run / "ckpt.pt", judge, n, n, seed=base.seed, split="validation")
        done[i] = {"trial": i, "overrides": recipes[i], "steps": steps[i], "flops": steps[i] * per_step[i],
                   **{k: r.get(k) for k in TRIAL_KEYS}}
        state["trials"] = [done[k] for k in sorted(done)]
        best = state["trials"][select(state["trials"])]
        state["best"], state["best_trial"] = best["overrides"], best["trial"]
        write_text_atomic(json.dumps(state, indent=2), state_path)
        write_text_atomic(trial_table(state), out / "best.md")
        bar.set_postfix(best=f"trial {best['trial']}")
    return out


def trial_table(state: dict) -> str:
    """best.md: one line per trial (its recipe and validation figures), the chosen one in bold."""
    knobs = list(state["space"])
    lines = [f"Tuning {state['mode']} ({state['setting']['dataset']}, preset {state['setting']['preset']}): "
             f"{len(state['trials'])} trials of {state['trial_flops']:.3g} training FLOPs each ({state['trial_steps']} "
             f"steps of the ar model), scored on the validation split. Rule: {state['rule']}.", "",
             "| trial | " + " | ".join(knobs) + " | steps | prompted acc | Fréchet (floor) | caption acc |",
             "|" + "---|" * (len(knobs) + 5)]
    for t in state["trials"]:
        cap = "-" if t["caption_accuracy"] is None else f"{t['caption_accuracy']:.3f}"
        cells = [str(t["overrides"][k]) for k in knobs] + [
            str(t["steps"]), f"{t['prompted_accuracy']:.3f}",
            f"{t['frechet_distance']:.1f} ({t['frechet_floor']:.1f})", cap]
        mark = "**" if t["trial"] == state.get("best_trial") else ""
        lines.append(f"| {mark}{t['trial']}{mark} | " + " | ".join(cells) + " |")
    best = state.get("best")
    if best is not None:
        lines += ["", f"Best: trial {state['best_trial']}" + (" (the default recipe)" if state["best_trial"] == 0
                                                                else "") + ": " + json.dumps(best)]
    return "\n".join(lines) + "\n"

