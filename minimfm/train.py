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
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm.auto import tqdm

from minimfm.checkpoint import CheckpointError, load_checkpoint, save_atomic
from minimfm.config import Config
from minimfm.data import CaptionedDataset, class_words, prompt_for
from minimfm.runs import build_model, check_training_device, image_tokenizer_for, model_checkpoint, select_device


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
        ds = CaptionedDataset(cfg.dataset, "train", cfg.data_root, seed=cfg.seed, limit=cfg.limit_train or None)
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


def plot_losses(metrics_path: Path, out: Path) -> None:
    import matplotlib.pyplot as plt
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in ("loss", "text_loss", "image_loss"):
        ax.plot([r["step"] for r in rows], [r[key] for r in rows], label=key)
    ax.set_xlabel("step"), ax.set_ylabel("loss"), ax.set_yscale("log"), ax.legend(), ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def prepare_run_dir(cfg: Config, resume: bool, overwrite: bool) -> Path:
    run = Path(cfg.runs_dir) / cfg.name
    if run.exists() and not (resume or overwrite):
        raise CheckpointError(f"run folder {run} exists: pass --resume to continue it or --overwrite to replace it")
    if run.exists() and overwrite and not resume:
        shutil.rmtree(run)
    (run / "samples").mkdir(parents=True, exist_ok=True)
    return run


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
    """
    from minimfm import distributed
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ctx, device = distributed.setup(select_device(cfg.device))
    check_training_device(cfg, device)
    verbose = verbose and ctx.is_main
    if ctx.is_main:  # rank 0 builds any missing tokenizer and the run folder; the others wait, then read them
        prepare_run_dir(cfg, resume, overwrite)
        image_tokenizer, tokenizer_ckpt = image_tokenizer_for(cfg, verbose)
    distributed.barrier(ctx)
    if not ctx.is_main:
        image_tokenizer, tokenizer_ckpt = image_tokenizer_for(cfg, verbose=False)
    run = Path(cfg.runs_dir) / cfg.name
    torch.manual_seed(cfg.seed)  # after the tokenizer: whether it was cached must not change the init
    model = build_model(cfg, image_tokenizer).to(device)
    optimizer = make_optimizer(model, cfg, device)
    ema = EMA(model, cfg.ema) if cfg.ema else None
    step, seconds_before = 0, 0.0
    ckpt_path = run / "ckpt.pt"
    if resume and ckpt_path.is_file():
        ckpt = load_checkpoint(ckpt_path, kind="model", dataset=cfg.dataset)
        if ckpt["mode"] != cfg.mode:
            raise CheckpointError(f"{ckpt_path} is a '{ckpt['mode']}' run, not '{cfg.mode}'")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ema is not None and ckpt.get("ema"):
            ema.load_state_dict(ckpt["ema"])
        step = ckpt["step"]
        seconds_before = ckpt.get("train_seconds", 0.0)
    if ctx.is_main:
        (run / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    data = TrainingData(cfg, model, verbose)
    # the encoded split is megabytes (codes or small latents), so it lives on the device: no per-step host-to-device
    # copies, hence no pinned memory or loader workers to tune
    data.reps = data.reps.to(device)
    rows, n_micro = distributed.micro_batches(cfg.batch_size, cfg.micro_batch_size, ctx)
    # forward() is the training loss, so DDP and torch.compile wrap the same call the single process makes
    net = model
    if ctx.active:
        from torch.nn.parallel import DistributedDataParallel
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                      broadcast_buffers=False)  # the frozen tokenizer's buffers never change
    if cfg.compile:
        net = torch.compile(net)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    metrics_file = (run / "metrics.jsonl").open("a") if ctx.is_main else None

    def save(at_step: int) -> None:
        if ctx.is_main:
            save_atomic(model_checkpoint(model, tokenizer_ckpt, step=at_step, optimizer=optimizer, ema=ema,
                                         train_seconds=seconds_before + loop_seconds), ckpt_path)

    end = cfg.max_steps if stop_after is None else min(cfg.max_steps, stop_after)
    bar = tqdm(range(step, end), initial=step, total=cfg.max_steps, desc=f"{cfg.mode} {cfg.dataset}",
               disable=not verbose)
    model.train()
    tick, seen, loop_seconds = time.time(), 0, 0.0
    for step in bar:
        step_start = time.time()
        captions, rep, t2i, drop, g = data.batch(step, cfg)
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
                    loss, micro_logs = net(captions[a:b], rep[a:b].to(device), t2i[a:b], drop[a:b], generator)
                # each process averages its len(rows) micro-batches and DDP averages over processes: the
                # gradient is the mean over all n_micro micro-batches, whatever the world size
                (loss if n_micro == 1 else loss / len(rows)).backward()
            for k, v in micro_logs.items():
                logs[k] = logs.get(k, 0.0) + v / len(rows)
        logs = distributed.mean_over_processes(logs, ctx, device)
        if cfg.grad_clip:
            logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
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
        metrics_file.close()
        plot_losses(run / "metrics.jsonl", run / "loss.png")
        if stop_after is None or end == cfg.max_steps:
            write_samples(model, run / "samples" / "final.png", cfg.seed)
    distributed.teardown(ctx)
    return run
