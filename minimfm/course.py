"""How the course's notebooks obtain their models and tokenizers, and `python -m minimfm course prepare`.

A learner opens notebook 03 on a laptop, in a hosted notebook, or after a kernel crash half-way through training.
`course_model("ar")` gives the same model in each case:

- runs/ and data/ are found from the repository root (this file's location, or $MINIMFM_ROOT), never from the
  working directory, so a notebook server started elsewhere still finds (and reuses) them;
- a run interrupted after a checkpoint is resumed to the end of the preset's schedule, not loaded as if finished;
  a run folder left without a checkpoint (a run killed before its first save) is started, not refused; nothing is
  deleted unless the caller passes overwrite=True (the train module's rules: `train(resume=True)`);
- the checkpoint's step count must equal the preset's max_steps (or `stop_after`), and the settings it was trained
  with must be the preset's: a model trained under other settings is an error, never silently used;
- the model is loaded onto the selected device (cuda, then mps, then cpu), the device the preset was chosen for.

`prepare` builds every checkpoint the notebooks read (COURSE_ITEMS below, read off their code cells) through the
same functions, so a lecturer can build them once before class.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from minimfm.checkpoint import CheckpointError, load_checkpoint
from minimfm.config import Config, ConfigError, make_config, preset_from_env, shorten
from minimfm.runs import check_model_checkpoint, model_from_checkpoint, select_device
from minimfm.train import RUN_MARKERS, run_folder, train

# Settings that change how a model samples, logs or where it lives, not what was trained: a checkpoint that differs
# from the preset only in these is still the preset's model. max_steps is checked on its own (resume or refuse).
NOT_TRAINED = ("preset", "run_name", "runs_dir", "data_root", "device", "threads", "max_steps", "log_every",
               "sample_every", "ckpt_every", "compile", "attention", "micro_batch_size", "eval_samples",
               "eval_captions", "temperature", "top_k", "top_p", "cfg_scale", "mask_steps", "diffusion_steps",
               "init_from")  # a path, which differs between machines; course_mixed_model checks the base itself

# Notebook 08's fine-tune (Transfusion §4.3: a trained model learns new tasks from a few thousand examples): the
# course model of a mode, trained on captions, interleaved text and images and instruction edits in equal shares of
# each batch, `task_examples` of each new task, for 40 % of the preset's steps (tiny: 600 steps, ~8-10 min on 2
# cores). The learning rate is half the base's peak: chosen to learn the new tasks in that time while the
# caption tasks hold (README "Mixed-modal sequences" measures both: they hold for masked and diffusion, not for ar).
MIXED_TASKS = "caption,interleaved,edit"
MIXED_RECIPE = dict(lr=5e-4, min_lr=5e-5, warmup_steps=50)
MIXED_STEP_FRACTION = 0.4
MIXED_EXAMPLES = {"smoke": 500}  # smoke limits training to 2,000 digits: fewer edits can be built; else 8,000
NOTEBOOK_08_MODE = "masked"  # the fine-tune that held its single-task quality and drew the clearest images (README)
CURVE_MODE = "mar"  # the mode whose 1k / 4k / 8k curve is committed (results/mixed-tiny/edit-curve-mar-*.json)


def repo_root() -> Path:
    """The folder holding runs/ and data/: $MINIMFM_ROOT if set, else the repository this package lives in."""
    if os.environ.get("MINIMFM_ROOT"):
        root = Path(os.environ["MINIMFM_ROOT"]).expanduser().resolve()
        if not root.is_dir():
            raise ConfigError(f"MINIMFM_ROOT {shorten(root)} is not a folder")
        return root
    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file() and (root / "minimfm").is_dir():
        return root
    raise ConfigError(f"minimfm is installed in {shorten(root)}, outside its repository: set MINIMFM_ROOT to the "
                      f"folder that holds (or will hold) runs/ and data/")


def course_config(mode: str = "ar", dataset: str = "mnist", preset: str | None = None, **overrides) -> Config:
    """The config a notebook trains with: the preset ($MINIMFM_PRESET, else small on a GPU and tiny on a CPU) with
    absolute runs/ and data/ folders under repo_root(); any Config field can be overridden."""
    root = repo_root()
    folders = dict(data_root=str(root / "data"), runs_dir=str(root / "runs"))
    return make_config(preset or preset_from_env(), **{**folders, "mode": mode, "dataset": dataset, **overrides})


def _differences(saved: dict, cfg: Config) -> list[str]:
    now = cfg.to_dict()
    return [f"--{k.replace('_', '-')} {v} (the course's: {now[k]})" for k, v in saved.items()
            if k in now and k not in NOT_TRAINED and v != now[k]]


def _read(path: Path, cfg: Config) -> dict:
    ckpt = check_model_checkpoint(load_checkpoint(path, kind="model", dataset=cfg.dataset), path)
    if ckpt["mode"] != cfg.mode:
        raise CheckpointError(f"{path} is a '{ckpt['mode']}' model, not '{cfg.mode}'")
    return ckpt


def _refusal(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path} {why}: pass overwrite=True to train it again from scratch (its run folder is "
                           f"replaced), or run_name='...' for a separate run")


def _check_settings(ckpt: dict, path: Path, cfg: Config) -> None:
    """The checkpoint is this config's model: the same trained settings and the same schedule."""
    diff = _differences(ckpt["config"], cfg)
    if diff:
        raise _refusal(path, f"was trained with {'; '.join(diff[:3])}")
    if ckpt["config"].get("max_steps") != cfg.max_steps:
        raise _refusal(path, f"was trained on a {ckpt['config'].get('max_steps')}-step schedule, the "
                             f"{cfg.preset} preset's is {cfg.max_steps} steps")


def _target(cfg: Config, stop_after: int | None) -> int:
    return cfg.max_steps if stop_after is None else min(stop_after, cfg.max_steps)


def run_state(cfg: Config, stop_after: int | None = None) -> tuple[str, dict | None]:
    """What ensure_run will do with cfg's run folder: ("finished", ckpt), ("resume", ckpt) or ("start", None).
    Raises CheckpointError for a checkpoint that is not this config's model or is past the step asked for, and for
    a folder that holds no minimfm run (nothing is written into it)."""
    target, run = _target(cfg, stop_after), run_folder(cfg)
    path = run / "ckpt.pt"
    if path.is_file():
        ckpt = _read(path, cfg)
        _check_settings(ckpt, path, cfg)
        step = ckpt.get("step")
        if step == target:
            return "finished", ckpt
        if not (isinstance(step, int) and 0 < step < target):
            raise _refusal(path, f"is at step {step}, past the {target} asked for")
        return "resume", ckpt  # interrupted after a checkpoint: continue where it stopped
    # a folder without a checkpoint is a run killed before its first save: train(resume=True) starts it again and
    # deletes nothing; but a folder that holds no run at all is not ours to write into
    if run.is_dir() and not run.is_symlink() and not any((run / m).exists() for m in RUN_MARKERS) and \
            any(p.name != "samples" for p in run.iterdir()):
        raise CheckpointError(f"{run} exists and holds no {', '.join(RUN_MARKERS)}, so it is not a minimfm run: "
                              f"not writing into it; move it away or pass run_name='...'")
    return "start", None


def ensure_run(cfg: Config, *, stop_after: int | None = None, overwrite: bool = False,
               verbose: bool = True) -> tuple[dict, str]:
    """Make sure cfg's run folder holds a checkpoint at step `stop_after` (default: cfg.max_steps) trained with
    cfg's settings: start it, resume it, or take it as it is. Returns (the checkpoint, what was done)."""
    target = _target(cfg, stop_after)
    state, ckpt = ("overwrite", None) if overwrite else run_state(cfg, stop_after)
    if state == "finished":
        return ckpt, "cached"
    # resume=True continues from the checkpoint, or starts a run that has none; overwrite replaces the folder
    train(cfg, resume=not overwrite, overwrite=overwrite, verbose=verbose, stop_after=target)
    done = {"overwrite": f"trained {target} steps (replaced)", "start": f"trained {target} steps",
            "resume": f"resumed at step {ckpt['step'] if ckpt else 0}, trained to {target}"}[state]
    path = run_folder(cfg) / "ckpt.pt"
    ckpt = _read(path, cfg)
    _check_settings(ckpt, path, cfg)
    if ckpt.get("step") != target:
        raise CheckpointError(f"{path} is at step {ckpt.get('step')} after training, not {target}")
    return ckpt, done


def course_model(mode: str, dataset: str = "mnist", preset: str | None = None, *, device: str = "auto",
                 stop_after: int | None = None, overwrite: bool = False, verbose: bool = True, **overrides):
    """The trained model a notebook uses: runs/<dataset>-<mode>-<preset>/ckpt.pt, trained (with a progress bar),
    resumed or reused as it stands, checked to be the preset's at the preset's step count (or `stop_after`), and
    loaded in eval mode onto `device` (auto: cuda, then mps, then cpu). Overrides are Config fields (run_name,
    image_attention, ...). `overwrite=True` retrains from scratch, replacing the run folder."""
    cfg = course_config(mode, dataset, preset, **{"device": device.partition(":")[0], **overrides})
    target = select_device(device)  # a bad or missing device fails before any training
    return _trained_model(cfg, target, stop_after=stop_after, overwrite=overwrite, verbose=verbose)


def _trained_model(cfg: Config, device, **ensure):
    """ensure_run(cfg), then its checkpoint's model in eval mode on `device`, reading data and runs where cfg does."""
    ckpt, _ = ensure_run(cfg, **ensure)
    model = model_from_checkpoint(ckpt, device)
    model.cfg.data_root, model.cfg.runs_dir = cfg.data_root, cfg.runs_dir  # the checkpoint stores where it was trained
    return model


def mixed_config(mode: str, dataset: str = "mnist", preset: str | None = None, *, tasks: str = MIXED_TASKS,
                 examples: int | None = None, **overrides) -> Config:
    """The config of notebook 08's fine-tune of course_model(mode, **overrides): run <dataset>-<mode>-<preset>-mixed
    (or -<tasks>-<examples> when they are not the defaults), initialised from that model's checkpoint."""
    base = course_config(mode, dataset, preset, **overrides)
    default = MIXED_EXAMPLES.get(base.preset, 8000)
    examples = examples or default
    name = f"{base.run_name or f'{dataset}-{mode}-{base.preset}'}-mixed"
    if (tasks, examples) != (MIXED_TASKS, default):
        name += f"-{tasks.replace(',', '-')}-{examples}"
    steps = max(1, round(MIXED_STEP_FRACTION * base.max_steps))
    return course_config(mode, dataset, preset, **{
        **overrides, "run_name": name, "tasks": tasks, "task_examples": examples,
        "init_from": str(run_folder(base) / "ckpt.pt"),
        "max_steps": steps, **MIXED_RECIPE, "warmup_steps": min(MIXED_RECIPE["warmup_steps"], max(1, steps // 10))})


def course_mixed_model(mode: str, dataset: str = "mnist", preset: str | None = None, *, tasks: str = MIXED_TASKS,
                       examples: int | None = None, device: str = "auto", verbose: bool = True, **overrides):
    """Notebook 08's model: course_model(mode, **overrides) fine-tuned on `tasks` (mixed_config), trained (the base
    first, if it is missing), resumed or reused like course_model, and loaded in eval mode onto `device`."""
    overrides = {"device": device.partition(":")[0], **overrides}
    cfg = mixed_config(mode, dataset, preset, tasks=tasks, examples=examples, **overrides)
    target = select_device(device)  # bad names and devices fail before any training
    ensure_run(course_config(mode, dataset, preset, **overrides), verbose=verbose)  # the base
    return _trained_model(cfg, target, verbose=verbose)


def course_tokenizer(kind: str, dataset: str = "mnist", preset: str | None = None, *, verbose: bool = True,
                     **overrides) -> torch.nn.Module:
    """An image tokenizer ("vq", "latent") or the judge ("judge") under runs/tokenizers/, trained once if missing."""
    from minimfm.tokenizers.store import get_tokenizer
    return get_tokenizer(course_config("ar", dataset, preset, **overrides), kind, verbose)


# ------------------------------------------------------------------------------------------ course prepare

@dataclass(frozen=True)
class Item:
    """One checkpoint a notebook reads: a tokenizer kind ("judge", "vq", "latent") or "model"."""
    kind: str
    label: str
    notebooks: str
    dataset: str
    preset: str
    mode: str = "ar"
    stop_after: int | None = None
    overrides: tuple = ()  # (field, value) pairs
    mixed: bool = False  # notebook 08's fine-tune of the mode's course model (mixed_config)

    def config(self) -> Config:
        make = mixed_config if self.mixed else course_config
        return make(self.mode, self.dataset, self.preset, **dict(self.overrides))

    def path(self) -> Path:
        from minimfm.tokenizers.store import tokenizer_path
        cfg = self.config()
        return run_folder(cfg) / "ckpt.pt" if self.kind == "model" else tokenizer_path(cfg, self.kind)


def course_items(dataset: str = "mnist", preset: str | None = None) -> list[Item]:
    """What the notebooks load or train, in the order they need it (read off their code cells)."""
    preset = preset or preset_from_env()
    common = dict(dataset=dataset, preset=preset)
    items = [Item("judge", "judge (evaluation classifier)", "01, 03-06", **common),
             Item("vq", "VQ tokenizer", "01, 03, 04, 06", **common),
             Item("latent", "autoencoder latents", "01, 05, 05b, 06", mode="diffusion", **common)]
    if dataset == "mnist":
        items.append(Item("latent", "pixel-patch latents", "01", overrides=(("latent_kind", "patch"),), **common))
    items += [Item("model", f"{mode} model", chapter, mode=mode, **common)
              for mode, chapter in (("ar", "03"), ("masked", "04"), ("diffusion", "05"), ("mar", "05b"))]
    if dataset == "mnist":  # notebook 08: one mode's mixed-modal fine-tune (the others are in the README)
        items.append(Item("model", f"{NOTEBOOK_08_MODE} mixed-modal fine-tune", "08", mode=NOTEBOOK_08_MODE,
                          mixed=True, **common))
    if dataset == "mnist":  # notebook 05's attention ablation: the first steps of the run, twice (same names)
        short = 10 if preset == "smoke" else 250
        for tag, extra in (("bidirectional", ()), ("causal", (("image_attention", "causal"),))):
            items.append(Item("model", f"diffusion, first {short} steps, {tag}", "05", mode="diffusion",
                              stop_after=short, overrides=(("run_name", f"{dataset}-diffusion-{preset}-{tag}-first"
                                                                         f"{short}"),) + extra, **common))
    cifar = dict(dataset="cifar10", preset="smoke")  # notebook 07 trains its smoke CIFAR-10 run itself, every time
    items += [Item("judge", "CIFAR-10 judge", "07", **cifar), Item("vq", "CIFAR-10 VQ tokenizer", "07", **cifar)]
    paths = [item.path() for item in items]
    return [item for i, item in enumerate(items) if paths[i] not in paths[:i]]  # --dataset cifar10 --preset smoke


def _planned(item: Item) -> str:
    """What prepare would do with one item, for --dry-run."""
    if item.kind != "model":
        return "built" if item.path().is_file() else "to build"
    cfg = item.config()
    target = _target(cfg, item.stop_after)
    try:
        state, ckpt = run_state(cfg, item.stop_after)
    except CheckpointError as e:
        return f"refused ({e})"
    return {"finished": "built", "start": f"to train {target} steps",
            "resume": f"to resume from step {ckpt['step'] if ckpt else 0} to {target}"}[state]


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 60 else f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def prepare(dataset: str = "mnist", preset: str | None = None, *, dry_run: bool = False, verbose: bool = True) -> float:
    """Build every item of course_items (one line each as it finishes); returns the wall time in seconds."""
    start = time.time()
    items = course_items(dataset, preset)
    for i, item in enumerate(items, 1):
        path, began = item.path(), time.time()
        if dry_run:
            status = _planned(item)
        elif item.kind == "model":
            _, status = ensure_run(item.config(), stop_after=item.stop_after, verbose=verbose)
        else:
            cached = path.is_file()
            course_tokenizer(item.kind, item.dataset, item.preset, verbose=verbose, **dict(item.overrides))
            status = "cached" if cached else "trained"
        took = "" if dry_run else f" in {_minutes(time.time() - began)}"
        print(f"[{i}/{len(items)}] {item.label} ({item.dataset}, {item.preset}; notebook {item.notebooks}): "
              f"{status}{took} -> {path}", flush=True)
    seconds = time.time() - start
    print(f"{'listed' if dry_run else 'course ready:'} {len(items)} items in {_minutes(seconds)}")
    return seconds
