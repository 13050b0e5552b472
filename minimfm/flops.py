"""Training FLOPs of a model, the currency of every fair comparison (compare, claims, bench).

    FLOPs per step = batch · T · (6 · N + 12 · n_layer · d_model · T) + the mode's extra

with T the packed sequence length and N the trainable parameters that multiply activations at every position
(everything except embedding tables): 6N for forward + backward over each token (Kaplan et al. 2020), plus the
attention scores. Modules marked `per_sequence` (the diffusion timestep MLP, run once per sequence) are left out;
modules marked `counted_by_mode` (a per-image-token head that runs several times per token, as MAR's diffusion
head) are left out here and added by the model's `extra_step_flops`, which knows how often they run.
"""
from __future__ import annotations

import torch.nn as nn


def matmul_parameters(model: nn.Module) -> int:
    """Trainable parameters applied once at every position: all but embedding tables (a lookup costs no FLOPs)
    and modules marked `per_sequence` or `counted_by_mode`."""
    skip = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for m in model.modules():
        if getattr(m, "per_sequence", False) or getattr(m, "counted_by_mode", False):
            skip |= {id(p) for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in skip)


def step_flops(model, batch_size: int) -> float:
    """Training FLOPs of one optimiser step (forward + backward) of a MultimodalModel on caption rows (one image per
    row, model.layout's length T); see the module docstring. Mixed rows (--tasks interleaved, edit) are longer and
    ragged, so this undercounts them: the comparisons that use it train captions only."""
    T, cfg = model.layout.length, model.cfg
    backbone = batch_size * T * (6 * matmul_parameters(model) + 12 * cfg.n_layer * cfg.d_model * T)
    return backbone + model.extra_step_flops(batch_size)
