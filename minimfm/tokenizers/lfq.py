"""Lookup-free quantization (LFQ, Yu et al., MAGVIT-v2, 2023; the tokenizer family Show-o builds on).

The encoder outputs `bits` channels per position and each is quantised to its sign, -1 or +1: the code is the
binary number those signs spell (10 bits -> 1,024 codes). As in FSQ the "codebook" is a fixed grid (the corners
of a hypercube) and nothing is looked up: the nearest corner of z is simply sign(z), which is why MAGVIT-v2
can grow the vocabulary to 2^18 codes at no cost.

A fixed binary grid has one failure VQ does not: the encoder can keep all positions in a few corners. MAGVIT-v2
adds an entropy penalty (Jansen et al., 2020): make each position's soft assignment confident (low per-position
entropy) while keeping the batch-average assignment spread out (high codebook entropy), with the soft
assignment p(c | z) = softmax_c(-|z - c|^2 / τ) = softmax_c(2 z·c / τ) over all 2^bits corners c. The
codebook term must be taken over whole codes: its per-bit shortcut (each bit on half the time) is satisfied
by ten copies of one bit, and on CIFAR-10 it let the codes collapse to ~4 in use (perplexity 3.6 of 1,024).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class LookupFreeQuantizer(nn.Module):
    """z [B, bits, h, w] -> sign(z) in {-1, +1}^bits with a straight-through gradient; code = Σ_i [z_i > 0] 2^i."""

    def __init__(self, bits: int, entropy_weight: float = 0.1, diversity: float = 1.0, beta: float = 0.25,
                 temperature: float = 1.0):
        super().__init__()
        self.code_dim, self.codebook_size = bits, 2 ** bits
        self.entropy_weight, self.diversity, self.beta, self.temperature = entropy_weight, diversity, beta, temperature
        self.register_buffer("_powers", 2 ** torch.arange(bits), persistent=False)

    def codes_from_signs(self, q: torch.Tensor) -> torch.Tensor:
        """Signs [..., bits] in {-1, +1} -> integer codes [...] in [0, 2^bits)."""
        return ((q > 0).long() * self._powers).sum(-1)

    def signs_from_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Integer codes [...] -> signs [..., bits] in {-1, +1} (the inverse of codes_from_signs)."""
        return ((codes[..., None] // self._powers) % 2).float() * 2 - 1

    def entropy_loss(self, flat: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """flat [N, bits]: mean per-position entropy minus `diversity` times the batch ("codebook") entropy, both
        over all 2^bits codes (exact; positions in chunks so 2^14 codes still fit in memory)."""
        corners = self.signs_from_codes(torch.arange(self.codebook_size, device=flat.device))  # (K, bits)
        per_position, avg_p = flat.new_zeros(()), flat.new_zeros(self.codebook_size)
        for part in flat.split(chunk):
            logp = F.log_softmax(2 * part @ corners.t() / self.temperature, dim=1)  # (n, K)
            per_position = per_position - (logp.exp() * logp).sum()
            avg_p = avg_p + logp.exp().sum(0)
        avg_p = avg_p / len(flat)
        codebook = -(avg_p * avg_p.clamp(min=1e-12).log()).sum()
        return per_position / len(flat) - self.diversity * codebook

    def forward(self, z: torch.Tensor):
        """z [B, bits, h, w] -> (quantised z with straight-through gradient, aux loss, codes [B, h, w])."""
        B, D, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, D)  # (B*h*w, bits)
        q = torch.where(flat > 0, 1.0, -1.0)
        aux = self.beta * F.mse_loss(flat, q)  # commitment: keep z near its corner
        if self.training and self.entropy_weight:
            aux = aux + self.entropy_weight * self.entropy_loss(flat)
        codes = self.codes_from_signs(q).view(B, h, w)
        q = flat + (q - flat).detach()  # straight-through
        return q.view(B, h, w, D).permute(0, 3, 1, 2), aux, codes  # (B, bits, h, w)

    @torch.no_grad()
    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, bits, h, w] -> codes [B, h, w]."""
        return self.codes_from_signs(z.permute(0, 2, 3, 1))

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, h, w] -> decoder input [B, bits, h, w]."""
        return self.signs_from_codes(codes).permute(0, 3, 1, 2)
