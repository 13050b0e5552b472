"""Finite scalar quantization (FSQ, Mentzer et al., 2023): a codebook with nothing to learn.

Each of the d = len(levels) channels of the encoder output is squashed into a bounded range and rounded to
one of L_i evenly spaced values; the code is the tuple of those integers, read as one number in a mixed radix
(levels (8, 5, 5, 5) give 8*5*5*5 = 1,000 codes). The grid is fixed, so there is no codebook to collapse, no
commitment or codebook loss and no dead codes to restart: every corner of the grid is reachable, and in the
paper usage stays near 100 % where VQ needs EMA updates and restarts to get there.

Why it sits next to VQ here: FSQ's codes are as good for the transformer as VQ's (an index in [0, K)), but
its latent is d-dimensional with d ~ 4-6, so each code carries its meaning in a few interpretable "digits".
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

# The paper's recommended levels per target codebook size (FSQ Table 1): about 2^8 ... 2^16 codes.
RECOMMENDED_LEVELS = {8: (8, 6, 5), 10: (8, 5, 5, 5), 12: (7, 5, 5, 5, 5), 14: (8, 8, 8, 6, 5),
                      16: (8, 8, 8, 5, 5, 5)}


def parse_levels(text: str) -> tuple[int, ...]:
    """'8,5,5,5' -> (8, 5, 5, 5); every level must be an integer >= 2."""
    try:
        levels = tuple(int(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise ValueError(f"FSQ levels must be comma-separated integers like 8,5,5,5, got '{text}'") from None
    if not levels or min(levels) < 2:
        raise ValueError(f"every FSQ level must be >= 2, got '{text}'")
    return levels


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) in the forward pass, identity in the backward pass (the straight-through estimator)."""
    return x + (x.round() - x).detach()


class FiniteScalarQuantizer(nn.Module):
    """z [B, d, h, w] -> each channel i bounded to L_i values and rounded; codes = mixed-radix index of the tuple."""

    def __init__(self, levels: tuple[int, ...] | list[int]):
        super().__init__()
        self.levels = tuple(int(v) for v in levels)
        self.code_dim = len(self.levels)
        self.codebook_size = math.prod(self.levels)
        L = torch.tensor(self.levels, dtype=torch.float32)
        self.register_buffer("_levels", L, persistent=False)
        # basis[i] = L_0 * ... * L_{i-1}: the place value of digit i in the mixed-radix code.
        self.register_buffer("_basis", torch.cumprod(torch.tensor((1,) + self.levels[:-1]), 0), persistent=False)
        self.register_buffer("_half", (L // 2), persistent=False)  # largest integer on each axis

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """Squash z [B, N, d] so that rounding gives exactly L_i integers per channel (paper, Appendix A.1).

        An odd L has integers -(L-1)/2 .. (L-1)/2, symmetric around 0; an even L (e.g. 8) would need the
        half-integers, so the range is shifted by 1/2 and the shift removed again in tanh's argument so z = 0
        still maps near the centre.
        """
        eps = 1e-3
        half_l = (self._levels - 1) * (1 + eps) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, N, d] -> grid values [B, N, d] in [-1, 1], with a straight-through gradient."""
        return round_ste(self.bound(z)) / self._half

    def codes_from_values(self, q: torch.Tensor) -> torch.Tensor:
        """Grid values [..., d] in [-1, 1] -> integer codes [...] in [0, codebook_size)."""
        digits = (q * self._half + self._half).round().long()  # (..., d) in [0, L_i)
        return (digits * self._basis).sum(-1)

    def values_from_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Integer codes [...] -> grid values [..., d] in [-1, 1] (the inverse of codes_from_values)."""
        digits = (codes[..., None] // self._basis) % self._levels.long()  # (..., d)
        return (digits - self._half) / self._half

    def forward(self, z: torch.Tensor):
        """z [B, d, h, w] -> (quantised z with straight-through gradient, aux loss = 0, codes [B, h, w])."""
        B, d, h, w = z.shape
        q = self.quantize(z.permute(0, 2, 3, 1))  # (B, h, w, d)
        codes = self.codes_from_values(q.detach())
        return q.permute(0, 3, 1, 2), z.new_zeros(()), codes  # FSQ needs no commitment loss

    @torch.no_grad()
    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, d, h, w] -> codes [B, h, w]."""
        return self.codes_from_values(self.quantize(z.permute(0, 2, 3, 1)))

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, h, w] -> decoder input [B, d, h, w]."""
        return self.values_from_codes(codes).permute(0, 3, 1, 2)
