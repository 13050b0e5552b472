"""The sampling toolkit every mode shares: guidance, code sampling, mask schedules.

Classifier-free guidance (Ho & Salimans 2022) is the same in every mode: the batch is run twice in one call,
once with the caption and once with an empty one (the unconditional model learnt through caption dropout), and
the two outputs are mixed. `with_unconditional` builds the doubled batch and `guided` mixes the outputs, whether
they are code logits (ar, masked) or a denoiser's prediction (diffusion, mar).

The mask schedule γ, the training mask and the decoding counts belong to MaskGIT-style masked modelling, which
the masked mode (codes) and the mar mode (continuous tokens) both use.
"""
from __future__ import annotations

import math

import torch


# --------------------------------------------------------------------------------------------- guidance
def with_unconditional(prompts: list[list[int]], cfg_scale: float) -> list[list[int]]:
    """Rows to run: the prompts, then (when guiding) as many empty captions. Row i + B is row i's unconditional."""
    return prompts + ([[] for _ in prompts] if cfg_scale else [])


def guided(outputs: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on a batch stacked as [cond; uncond]: cond + s·(cond − uncond).

    Written as (1+s)·cond − s·uncond in Show-o; Chameleon's and CM3Leon's scale g is s + 1. s = 0 is plain
    conditional sampling (and the batch was not doubled).
    """
    if scale == 0:
        return outputs
    cond, uncond = outputs.chunk(2)
    return cond + scale * (cond - uncond)


def repeat_for_guidance(x: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """The same image (codes or latents) for the cond and the uncond rows: (B, ...) -> (2B, ...) when guiding."""
    return x.repeat(2, *([1] * (x.dim() - 1))) if cfg_scale else x


# ------------------------------------------------------------------------------------------ code sampling
def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Keep the top-k logits and/or the smallest set with probability mass >= top_p; the rest become -inf."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= top_p  # mass before this token already enough
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_from_logits(logits: torch.Tensor, generator: torch.Generator, temperature: float = 1.0,
                       top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """(B, K) logits -> (B,) ids; temperature 0 is greedy."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = filter_logits(logits.float() / temperature, top_k, top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


# ------------------------------------------------------------------------------- MaskGIT-style decoding
def mask_schedule(u: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """γ(u): fraction of tokens masked at time u in [0, 1]; decreasing, γ(0) = 1, γ(1) = 0 (MaskGIT §3.2).

    cosine masks more tokens for longer (few fixed early, when the image is least determined), which MaskGIT
    found best; linear is the baseline; sqrt (1 − √u) fixes many tokens early, the opposite bet.
    """
    if kind == "cosine":
        # cos(π/2) is 6e-17 in floating point, not 0: make γ(1) exactly 0 so the last step fixes everything
        return torch.where(u < 1, torch.cos(0.5 * math.pi * u), torch.zeros_like(u))
    if kind == "linear":
        return 1.0 - u
    if kind == "sqrt":
        return 1.0 - u.sqrt()
    raise ValueError(f"unknown mask schedule '{kind}', choose cosine, linear or sqrt")


def training_mask(t2i: torch.Tensor, n: int, kind: str, generator: torch.Generator) -> torch.Tensor:
    """(B, n) bool on the generator's device: tokens to hide in training (MaskGIT, Show-o, MAR).

    Text-to-image rows hide max(1, ceil(γ(u)·n)) tokens with u ~ U(0, 1), so training sees every masking level
    the decoder passes through; image-to-text rows hide none (they read the clean image and learn the caption).
    """
    B = len(t2i)
    u = torch.rand(B, generator=generator, device=generator.device)
    n_masked = torch.ceil(mask_schedule(u, kind) * n).long().clamp(1, n)  # (B,)
    # every row draws its permutation, whatever its order, so the random stream does not depend on t2i
    rank = torch.rand(B, n, generator=generator, device=generator.device).argsort(1).argsort(1)  # (B, n)
    return (rank < n_masked[:, None]) & t2i.to(rank.device)[:, None]


def masked_counts(n_unknown: torch.Tensor, steps: int, kind: str) -> torch.Tensor:
    """(steps, B) tokens still masked AFTER each step: floor(n · γ((t+1)/T)), made useful at every step.

    The plain floor can leave a step with nothing to do (T = 16 over 49 tokens fixes 0 at some step), so, as
    MaskGIT does, every step fixes at least one token while any remain, and enough stay masked that each later
    step has one to fix (when n >= T). The last row is 0. Computed on the CPU in float64 (MPS has no float64),
    so the counts are the same on every device, then moved to n_unknown's device.
    """
    n = n_unknown.cpu().long()  # (B,)
    u = torch.arange(1, steps + 1, dtype=torch.float64) / steps  # (T,)
    planned = torch.floor(n[None].double() * mask_schedule(u, kind)[:, None]).long()  # (T, B)
    counts, previous = [], n
    for t in range(steps):
        keep_for_later = torch.clamp(n.new_full(n.shape, steps - 1 - t), max=n)  # one per later step, if possible
        now = torch.minimum(torch.maximum(planned[t], keep_for_later), previous - 1).clamp(min=0)
        counts.append(now)
        previous = now
    return torch.stack(counts).to(n_unknown.device)


def gumbel_noise(shape: tuple, generator: torch.Generator, device) -> torch.Tensor:
    """Standard Gumbel samples -log(-log U); the clamps keep both logs finite when U is 0 or 1 - ε."""
    u = torch.rand(shape, generator=generator, device=device)
    neg_log_u = (-torch.log(u.clamp(min=1e-20))).clamp(min=1e-20)
    return -torch.log(neg_log_u)


def most_confident(confidence: torch.Tensor, still_masked: torch.Tensor, n_fix: torch.Tensor) -> torch.Tensor:
    """(B, N) bool: the n_fix (B,) most confident of the still-masked positions (confidence -inf elsewhere)."""
    confidence = confidence.masked_fill(~still_masked, float("-inf"))
    rank = confidence.argsort(1, descending=True).argsort(1)  # (B, N) 0 = most confident
    return still_masked & (rank < n_fix[:, None])


def choice_noise_scale(choice_temperature: float, t: int, steps: int) -> float:
    """MaskGIT's annealed randomness in which tokens are fixed: full at step 0, zero at the last step."""
    return choice_temperature * (1.0 - (t + 1) / steps)
