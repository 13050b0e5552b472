"""One training loop for every mode: AdamW, warm-up + cosine, clipping, EMA, logging, samples, checkpoints.

Reproducibility is built in rather than bolted on: the data order of step s is a function of (seed, s), and so is
every random draw a step makes (sequence order, caption dropout, the mode's masking or noise). A run resumed from
a checkpoint at step s therefore continues exactly as if it had never stopped (tests/test_train.py checks this
bit for bit on CPU).
"""
from __future__ import annotations

import json
import math
import shutil
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from tqdm.auto import tqdm

from minimfm.checkpoint import CheckpointError, load_checkpoint, save_atomic, write_text_atomic
from minimfm.config import Config, ConfigError, parse_tasks, shorten
from minimfm.data import CaptionedDataset, class_words, prompt_for
from minimfm.finetune import init_from
from minimfm.mixed_data import MixedTrainingData, text_tokenizer
from minimfm.run_lock import check_not_training, training_lock
from minimfm.runs import (build_model, check_folder, check_model_checkpoint, check_training_device,
                          image_tokenizer_for, load_weights, model_checkpoint, select_device)


class TrainingDivergedError(RuntimeError):
    """The loss, the gradient or the weights stopped being finite; training stops without saving that state.
    The message is one line and names the checkpoint that is kept."""


class EMA:
    """Exponential moving average of the trainable weights, used for sampling when --ema > 0."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for n, p in model.named_parameters():
            if n in self.shadow:
                self.shadow[n].lerp_(p.detach(), 1 - self.decay)

    def state_dict(self) -> dict:
        return self.shadow

    def load_state_dict(self, state: dict) -> None:
        for n, t in state.items():
            self.shadow[n].copy_(t)


def lr_at(step: int, cfg: Config) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to cfg.min_lr at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, cfg: Config, device: torch.device) -> torch.optim.AdamW:
    """AdamW; weight decay only on matrices of linear layers (not on norms, biases or embeddings)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_embedding = name.endswith("_emb.weight")
        (decay if p.dim() >= 2 and not is_embedding else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), fused=device.type == "cuda" or None)


def batch_indices(step: int, cfg: Config, n: int) -> torch.Tensor:
    """Indices of step `step`'s batch: walk through seeded per-epoch permutations, so it depends on step only."""
    B, idx = cfg.batch_size, []
    pos = step * B
    while len(idx) < B:
        epoch, offset = divmod(pos, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch))
        take = perm[offset:offset + B - len(idx)].tolist()
        idx += take
        pos += len(take)
    return torch.tensor(idx)


class TrainingData:
    """Captions (as ids) and image representations (codes or latents) for the whole split, encoded once."""

    def __init__(self, cfg: Config, model, verbose: bool = True):
        ds = CaptionedDataset(cfg.dataset, "train", cfg.data_root, seed=cfg.seed, limit=cfg.limit_train or None,
                              holdout=cfg.holdout_validation)
        self.captions = [model.tok.encode(ds.caption(i)) for i in range(len(ds))]
        reps = []
        with torch.no_grad():
            for chunk in tqdm(ds.images.split(1000), desc="encoding images", disable=not verbose, leave=False):
                reps.append(model.encode_images(chunk).cpu())
        self.reps = torch.cat(reps)  # (N, n_image) codes or (N, n_image, d) latents
        self.labels = ds.labels

    def __len__(self) -> int:
        return len(self.captions)

    def batch(self, step: int, cfg: Config):
        idx = batch_indices(step, cfg, len(self))
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        t2i = torch.rand(len(idx), generator=g) < cfg.t2i_ratio
        drop = torch.rand(len(idx), generator=g) < cfg.caption_dropout
        return [self.captions[i] for i in idx.tolist()], self.reps[idx.to(self.reps.device)], t2i, drop, g

    @staticmethod
    def micro_batch(inputs: list, a: int, b: int, device) -> tuple:
        """Rows [a, b) of a step's batch, as the model's forward takes them (mixed_data.MixedTrainingData too)."""
        captions, rep, t2i, drop = inputs
        return captions[a:b], rep[a:b].to(device), t2i[a:b], drop[a:b]


def sample_prompts(dataset: str) -> list[str]:
    return [prompt_for(dataset, c) for c in range(len(class_words(dataset)))]


def write_samples(model, path: Path, seed: int = 0) -> None:
    from minimfm.viz import save_image_grid
    prompts = sample_prompts(model.cfg.dataset)
    was_training = model.training
    model.eval()
    images = model.generate_images(prompts, seed=seed)
    model.train(was_training)
    save_image_grid(images, path, prompts, ncols=5)


def read_metrics(path: Path) -> list[dict]:
    """The rows of metrics.jsonl; a line cut short by a killed process is skipped, not fatal."""
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


def trim_metrics(path: Path, step: int) -> None:
    """Keep the log lines up to `step`: a resumed run restarts from its checkpoint, and the lines written after
    that checkpoint would otherwise appear twice."""
    rows = read_metrics(path)
    kept = [r for r in rows if r["step"] <= step]
    if path.is_file() and len(kept) != len(path.read_text().splitlines()):
        write_text_atomic("".join(json.dumps(r) + "\n" for r in kept), path)


def plot_losses(metrics_path: Path, out: Path) -> None:
    import matplotlib.pyplot as plt
    rows = read_metrics(metrics_path)
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in ("loss", "text_loss", "image_loss"):
        ax.plot([r["step"] for r in rows], [r[key] for r in rows], label=key)
    ax.set_xlabel("step"), ax.set_ylabel("loss"), ax.set_yscale("log"), ax.legend(), ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


RUN_MARKERS = ("config.json", "ckpt.pt", "metrics.jsonl")  # what every run folder holds once training started


def run_folder(cfg: Config) -> Path:
    """runs_dir / name, refused unless it lies inside runs_dir and outside its tokenizer cache, so that
    --overwrite can only ever delete this run's own folder (Config.validate has checked the name's characters)."""
    runs = check_folder(cfg.runs_dir, "--runs-dir")
    run = runs / cfg.name
    root, target = runs.resolve(), run.resolve()  # resolve() follows links: a link out of runs_dir is refused
    if root not in target.parents or target.relative_to(root).parts[0] == "tokenizers":
        raise ConfigError(f"--run-name {shorten(cfg.name)}: the run folder {shorten(target)} is not inside "
                          f"--runs-dir {shorten(root)} (or is its tokenizer cache)")
    return run


def check_run_dir(run: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to touch an existing folder unless told to; nothing is created or deleted here."""
    if run.exists() and (run.is_symlink() or not run.is_dir()):
        raise CheckpointError(f"{run} exists and is not a run folder (a file or a link): choose another --run-name")
    if run.exists() and not (resume or overwrite):
        raise CheckpointError(f"run folder {run} exists: pass --resume to continue it or --overwrite to replace it")
    if run.exists() and overwrite and not resume and not (
            any((run / m).exists() for m in RUN_MARKERS) or all(p.name == "samples" for p in run.iterdir())):
        raise CheckpointError(f"--overwrite: {run} holds no {', '.join(RUN_MARKERS)}, so it is not a minimfm run; "
                              f"not deleting it")


@contextmanager
def removed_unless_checkpointed(run: Path, fresh: bool):
    """A fresh run that fails before its first checkpoint (bad data, a diverging loss, Ctrl-C) is removed: it has
    nothing to resume from, and its folder would only block the corrected command with 'run folder exists'."""
    try:
        yield
    except BaseException:
        if fresh and not (run / "ckpt.pt").is_file():
            shutil.rmtree(run, ignore_errors=True)
        raise


def check_finite(what: dict[str, float], step: int, kept: str) -> None:
    """Stop on a non-finite loss or gradient norm (checked before the optimiser applies it) or weight (checked
    before a save): a NaN state never reaches a checkpoint."""
    for name, value in what.items():
        if not math.isfinite(value):
            raise TrainingDivergedError(f"training stopped at step {step}: the {name} is {value}; {kept}; lower "
                                        f"--lr or the loss weights")


def micro_batch_generator(cfg: Config, step: int, index: int, n_micro: int, step_generator: torch.Generator
                          ) -> torch.Generator:
    """The generator a micro-batch draws its masking / noise from: with one micro-batch, the step's own
    generator (so unsplit runs are unchanged); with several, one seeded by (seed, step, index), which makes the
    draws independent of how many processes share the batch."""
    if n_micro == 1:
        return step_generator
    return torch.Generator().manual_seed((cfg.seed * 1_000_003 + step) * 4099 + index)


def train(cfg: Config, resume: bool = False, overwrite: bool = False, verbose: bool = True,
          stop_after: int | None = None) -> Path:
    """Train cfg.mode on cfg.dataset; returns the run folder. `stop_after` ends early (tests of resume).

    Under torchrun the same function runs in every process (minimfm/distributed.py): the model is wrapped in
    DistributedDataParallel, each process runs its share of the micro-batches, and only rank 0 writes the
    run folder (checkpoints, metrics, samples) and shows a progress bar.

    The run folder is created (or, with `overwrite`, replaced) only once everything that can fail at the start has
    succeeded: tokenizer, model, checkpoint to resume, data. `resume` on a run without a checkpoint starts it.
    """
    from minimfm import distributed
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run = run_folder(cfg)
    ckpt_path = run / "ckpt.pt"
    ctx, device = distributed.setup(select_device(cfg.device))
    check_training_device(cfg, device)
    rows, n_micro = distributed.micro_batches(cfg.batch_size, cfg.micro_batch_size, ctx)
    verbose = verbose and ctx.is_main
    if ctx.is_main:  # rank 0 builds any missing tokenizer; the others wait, then read it
        check_run_dir(run, resume, overwrite)
        check_not_training(run)  # before any work; the lock itself is taken once the folder is made
        image_tokenizer, tokenizer_ckpt = image_tokenizer_for(cfg, verbose)
    distributed.barrier(ctx)
    if not ctx.is_main:
        image_tokenizer, tokenizer_ckpt = image_tokenizer_for(cfg, verbose=False)
    torch.manual_seed(cfg.seed)  # after the tokenizer: whether it was cached must not change the init
    model = build_model(cfg, image_tokenizer, text_tokenizer(cfg)).to(device)
    if cfg.init_from and not (resume and ckpt_path.is_file()):  # a fine-tune starts from a base model's weights
        init_from(model, cfg.init_from)
    optimizer = make_optimizer(model, cfg, device)
    ema = EMA(model, cfg.ema) if cfg.ema else None
    step, seconds_before, saved_step = 0, 0.0, None
    if resume and ckpt_path.is_file():
        ckpt = check_model_checkpoint(load_checkpoint(ckpt_path, kind="model", dataset=cfg.dataset), ckpt_path)
        if ckpt["mode"] != cfg.mode:
            raise CheckpointError(f"{ckpt_path} is a '{ckpt['mode']}' run, not '{cfg.mode}'")
        load_weights(model, ckpt["model"], f"--resume: the weights in {ckpt_path}" + _changed(ckpt["config"], cfg))
        optimizer.load_state_dict(ckpt["optimizer"])
        if ema is not None and ckpt.get("ema"):
            ema.load_state_dict(ckpt["ema"])
        step = saved_step = ckpt["step"]
        seconds_before = ckpt.get("train_seconds", 0.0)
    # --tasks caption reads its data exactly as before #15; interleaved and edit rows come as segment batches
    data = (TrainingData if parse_tasks(cfg.tasks) == ("caption",) else MixedTrainingData)(cfg, model, verbose)
    # the encoded split is megabytes (codes or small latents), so it lives on the device: no per-step host-to-device
    # copies, hence no pinned memory or loader workers to tune
    data.reps = data.reps.to(device)

    fresh = ctx.is_main and (overwrite and not resume or not run.exists())
    if ctx.is_main:  # setup succeeded: only now is an old run replaced and the folder made
        if overwrite and not resume and run.exists():
            shutil.rmtree(run)
        (run / "samples").mkdir(parents=True, exist_ok=True)
        trim_metrics(run / "metrics.jsonl", step)
        write_text_atomic(json.dumps(cfg.to_dict(), indent=2), run / "config.json")
    # forward() is the training loss, so DDP and torch.compile wrap the same call the single process makes
    net = model
    if ctx.active:
        from torch.nn.parallel import DistributedDataParallel
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                      broadcast_buffers=False)  # the frozen tokenizer's buffers never change
    if cfg.compile:
        net = torch.compile(net)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()

    def kept() -> str:
        return f"{ckpt_path} (step {saved_step}) is kept" if saved_step is not None else \
            "no checkpoint had been written yet"

    def save(at_step: int) -> None:
        nonlocal saved_step
        # every rank holds the same weights, so every rank checks them and all stop together
        largest = torch.stack([p.detach().abs().max().float() for p in model.parameters()]).max()  # NaN if any
        check_finite({"largest weight": float(largest)}, at_step, kept())
        if ctx.is_main:
            save_atomic(model_checkpoint(model, tokenizer_ckpt, step=at_step, optimizer=optimizer, ema=ema,
                                         train_seconds=seconds_before + loop_seconds), ckpt_path)
        saved_step = at_step

    end = cfg.max_steps if stop_after is None else min(cfg.max_steps, stop_after)
    model.train()
    tick, seen, loop_seconds = time.time(), 0, 0.0
    # the bar closes before any error line is printed; a fresh run that fails before its first save is removed
    with (removed_unless_checkpointed(run, fresh),
          training_lock(run) if ctx.is_main else nullcontext(),
          tqdm(range(step, end), initial=step, total=cfg.max_steps, desc=f"{cfg.mode} {cfg.dataset}",
               disable=not verbose) as bar,
          (run / "metrics.jsonl").open("a") if ctx.is_main else nullcontext() as metrics_file):
        for step in bar:
            step_start = time.time()
            *inputs, g = data.batch(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg)
            torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout, if any, is a function of the step too
            optimizer.zero_grad(set_to_none=True)
            logs: dict[str, float] = {}
            for i, (a, b) in enumerate(rows):
                generator = micro_batch_generator(cfg, step, a * n_micro // cfg.batch_size, n_micro, g)
                last = i == len(rows) - 1
                sync = nullcontext() if last or not ctx.active else net.no_sync()  # all-reduce once, after the last
                with sync:
                    with autocast:
                        loss, micro_logs = net(*data.micro_batch(inputs, a, b, device), generator)
                    # each process averages its len(rows) micro-batches and DDP averages over processes: the
                    # gradient is the mean over all n_micro micro-batches, whatever the world size
                    (loss if n_micro == 1 else loss / len(rows)).backward()
                for k, v in micro_logs.items():
                    logs[k] = logs.get(k, 0.0) + v / len(rows)
            logs = distributed.mean_over_processes(logs, ctx, device)
            if cfg.grad_clip:
                logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
            # logged values are floats already (no extra sync) and averaged over processes: all ranks stop together
            check_finite({k: logs[k] for k in ("loss", "grad_norm") if k in logs}, step + 1, kept())
            optimizer.step()
            if ema is not None:
                ema.update(model)
            loop_seconds += time.time() - step_start  # optimiser steps only: sample grids and saves are not training
            seen += cfg.batch_size
            done = step + 1
            if ctx.is_main and (done % cfg.log_every == 0 or done == end):
                rate = seen / (time.time() - tick)
                tick, seen = time.time(), 0
                bar.set_postfix(loss=f"{logs['loss']:.3f}", img_s=f"{rate:.0f}")
                metrics_file.write(json.dumps({"step": done, "lr": lr_at(step, cfg), "images_per_s": rate,
                                               **logs}) + "\n")
                metrics_file.flush()
            if ctx.is_main and cfg.sample_every and done % cfg.sample_every == 0 and done < end:
                write_samples(model, run / "samples" / f"step{done:06d}.png", cfg.seed)
            if done % cfg.ckpt_every == 0 or done == end:
                save(done)
    if ctx.is_main:
        plot_losses(run / "metrics.jsonl", run / "loss.png")
        if stop_after is None or end == cfg.max_steps:
            write_samples(model, run / "samples" / "final.png", cfg.seed)
    distributed.teardown(ctx)
    return run


def _changed(saved: dict, cfg: Config) -> str:
    """' (trained with --d-model 32, now 64)': the settings a resumed run changed, for the mismatch message."""
    now = cfg.to_dict()
    diff = [f"--{k.replace('_', '-')} {v}, now {now[k]}" for k, v in saved.items()
            if k in now and v != now[k] and k not in ("max_steps", "device", "threads", "runs_dir", "data_root")]
    return f" (trained with {'; '.join(diff[:3])})" if diff else ""
