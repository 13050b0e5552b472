"""Training speed of a config: tokens/s, images/s and model FLOP utilisation (MFU) against a MEASURED peak.

MFU = (training FLOPs per step / seconds per step) / peak FLOP/s (PaLM, Chowdhery et al. 2022, App. B). The
FLOPs are the ones the comparison budgets with (minimfm/compare.py: 6·N per token plus attention), and the peak
is measured on this machine in the same run, as the best rate of large square matmuls in the training dtype
(fp32 on CPU, bf16 on CUDA), not read off a spec sheet: a ratio of two measurements from one run is what
survives a noisy shared machine.

Speed does not depend on what the weights or the data are, so the bench needs no dataset and no trained
tokenizer: it builds the config's model around a random-weight tokenizer of the right shape and feeds it
well-formed captions and random codes/latents.
"""
from __future__ import annotations

import statistics
import time
from contextlib import nullcontext

import torch

from minimfm.config import Config


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, sizes: tuple[int, ...] | None = None, repeats: int = 5) -> float:
    """Best FLOP/s of square matmuls in the training dtype (bf16 on CUDA, fp32 elsewhere)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    sizes = sizes or ((4096, 8192) if device.type == "cuda" else (1024, 2048))
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        a @ b  # the first call allocates and picks a kernel
        synchronize(device)
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            synchronize(device)
            best = max(best, 2 * n ** 3 / (time.perf_counter() - start))
    return best


def random_tokenizer(cfg: Config) -> torch.nn.Module:
    """A random-weight image tokenizer of the shape cfg's mode uses: the discrete one cfg.quantizer selects
    (VQ, FSQ or LFQ), or the autoencoder / patch latent."""
    from minimfm.modes import image_tokenizer_kind
    from minimfm.tokenizers.store import new_tokenizer
    return new_tokenizer(cfg, image_tokenizer_kind(cfg.mode), 1 if cfg.dataset == "mnist" else 3)


def synthetic_batch(model, cfg: Config, generator: torch.Generator):
    """A batch shaped like real training data: class prompts as captions, random codes or unit-scale latents."""
    from minimfm.data import class_words, prompt_for
    from minimfm.modes import image_tokenizer_kind
    B, N = cfg.batch_size, model.n_image
    captions = [model.tok.encode(prompt_for(cfg.dataset, i % len(class_words(cfg.dataset)))) for i in range(B)]
    if image_tokenizer_kind(model.mode) == "latent":
        d = model.image_tokenizer.latent_dim
        rep = torch.randn(B, N, d, generator=generator)
    else:
        rep = torch.randint(0, model.image_tokenizer.codebook_size, (B, N), generator=generator)
    t2i = torch.rand(B, generator=generator) < cfg.t2i_ratio
    drop = torch.rand(B, generator=generator) < cfg.caption_dropout
    return captions, rep, t2i, drop


def time_training_step(cfg: Config, steps: int = 5, warmup: int = 2) -> tuple[torch.nn.Module, float]:
    """Median seconds of a full training step (forward, backward, clip, AdamW) after `warmup` untimed ones;
    returns the model too, for its FLOP count."""
    from minimfm.runs import build_model, check_training_device, select_device
    from minimfm.train import make_optimizer
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = select_device(cfg.device)
    check_training_device(cfg, device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, random_tokenizer(cfg)).to(device).train()
    optimizer = make_optimizer(model, cfg, device)
    net = torch.compile(model) if cfg.compile else model
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    micro = cfg.micro_batch_size or cfg.batch_size
    if cfg.batch_size % micro:
        raise ValueError(f"--micro-batch-size {micro} must divide --batch-size {cfg.batch_size}")
    g = torch.Generator().manual_seed(cfg.seed)
    captions, rep, t2i, drop = synthetic_batch(model, cfg, g)
    rep = rep.to(device)
    times = []
    for i in range(warmup + steps):
        synchronize(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        for a in range(0, cfg.batch_size, micro):
            with autocast:
                loss, _ = net(captions[a:a + micro], rep[a:a + micro], t2i[a:a + micro], drop[a:a + micro], g)
            (loss * micro / cfg.batch_size).backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return model, statistics.median(times)


def bench(cfg: Config, steps: int = 5, warmup: int = 2, verbose: bool = True) -> dict:
    """Training speed of cfg's model and its MFU against the matmul peak measured right after."""
    from minimfm.flops import matmul_parameters, step_flops
    model, seconds = time_training_step(cfg, steps, warmup)
    device = model.device
    flops = step_flops(model, cfg.batch_size)
    peak = matmul_peak(device)
    return {"mode": cfg.mode, "dataset": cfg.dataset, "preset": cfg.preset, "device": str(device),
            "threads": torch.get_num_threads() if device.type == "cpu" else None,
            "compile": cfg.compile, "attention": cfg.attention, "batch_size": cfg.batch_size,
            "sequence_length": model.layout.length, "matmul_parameters": matmul_parameters(model),
            "seconds_per_step": seconds, "tokens_per_second": cfg.batch_size * model.layout.length / seconds,
            "images_per_second": cfg.batch_size / seconds, "flops_per_step": flops,
            "achieved_flops": flops / seconds, "peak_flops": peak, "mfu": flops / seconds / peak}


def format_bench(r: dict) -> str:
    where = f"{r['device']}" + (f", {r['threads']} thread{'s' * (r['threads'] > 1)}" if r["threads"] else "")
    return "\n".join([
        f"{r['mode']} on {r['dataset']}, preset {r['preset']} ({where}; compile {r['compile']}, "
        f"attention {r['attention']}): batch {r['batch_size']} x {r['sequence_length']} positions, "
        f"{r['matmul_parameters'] / 1e6:.2f}M matmul parameters",
        f"  seconds / step (median)      {r['seconds_per_step']:.4f}",
        f"  training tokens / s          {r['tokens_per_second']:,.0f}",
        f"  training images / s          {r['images_per_second']:,.1f}",
        f"  model FLOP/s                 {r['achieved_flops'] / 1e9:,.1f} GFLOP/s",
        f"  measured matmul peak         {r['peak_flops'] / 1e9:,.1f} GFLOP/s",
        f"  MFU (of the measured peak)   {100 * r['mfu']:.1f} %"])
