"""Discrete image tokens: conv encoder -> quantizer -> conv decoder, and the VQ-VAE quantizer (van den Oord
et al., 2017) with an EMA codebook and dead-code restarts.

An image goes through a small conv encoder that downsamples 4x (MNIST 28 -> 14 -> 7, CIFAR 32 -> 16 -> 8; or 2x
for a finer 14x14 / 16x16 grid), each of the h*w output vectors is quantised, and the index of its code is the
token. The transformer only ever sees these integers; the decoder turns them back into pixels.

Three quantizers share the encoder and decoder (`VQTokenizer(quantizer=...)`):
  vq   nearest entry of a learned codebook (here): an explicit, inspectable table of any size, kept alive by
       EMA updates and dead-code restarts; the representation Chameleon uses.
  fsq  finite scalar quantization (fsq.py, Mentzer et al., 2023): round each of a few bounded channels.
  lfq  lookup-free quantization (lfq.py, MAGVIT-v2): the sign of each channel, a binary code.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from minimfm.tokenizers.fsq import FiniteScalarQuantizer
from minimfm.tokenizers.lfq import LookupFreeQuantizer


def default_image_size(in_channels: int) -> int:
    """MNIST is 1x28x28, CIFAR-10 is 3x32x32; the channel count tells them apart."""
    return 28 if in_channels == 1 else 32


class ResBlock(nn.Module):
    """A pre-activation residual block; it lets the 7x7/8x8 bottleneck mix neighbours without losing detail."""

    def __init__(self, channels: int):
        super().__init__()
        self.net = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1),
                                 nn.ReLU(), nn.Conv2d(channels, channels, 1))

    def forward(self, x):
        return x + self.net(x)


def check_downsample(downsample: int) -> int:
    if downsample not in (2, 4):
        raise ValueError(f"the conv tokenizers downsample 2x or 4x, got {downsample}")
    return downsample


class ConvEncoder(nn.Module):
    """Two convs (stride 2 and 2: 4x downsampling; stride 2 and 1: 2x) + two residual blocks; shared by every
    discrete tokenizer and the autoencoder latents."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 64, downsample: int = 4):
        super().__init__()
        second = (nn.Conv2d(hidden // 2, hidden, 4, stride=2, padding=1) if check_downsample(downsample) == 4
                  else nn.Conv2d(hidden // 2, hidden, 3, padding=1))
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden // 2, 4, stride=2, padding=1), nn.ReLU(),  # H -> H/2
            second,  # H/2 -> H/4 (or H/2)
            ResBlock(hidden), ResBlock(hidden), nn.ReLU(),
            nn.Conv2d(hidden, out_channels, 1))

    def forward(self, images):
        return self.net(images * 2 - 1)  # centred input trains faster than [0, 1]


class ConvDecoder(nn.Module):
    """Mirror of ConvEncoder with transposed convs. The output is linear, not a sigmoid: with an MSE loss a
    sigmoid saturates on MNIST's black background within ~30 steps and its gradient vanishes (the model then
    outputs a blank image forever), so pixels are only clamped to [0, 1] at decode time."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 64, downsample: int = 4):
        super().__init__()
        first = (nn.ConvTranspose2d(hidden, hidden // 2, 4, stride=2, padding=1) if check_downsample(downsample) == 4
                 else nn.Conv2d(hidden, hidden // 2, 3, padding=1))
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1),
            ResBlock(hidden), ResBlock(hidden), nn.ReLU(),
            first, nn.ReLU(),  # H/4 -> H/2 (or H/2 -> H/2)
            nn.ConvTranspose2d(hidden // 2, out_channels, 4, stride=2, padding=1))  # H/2 -> H

    def forward(self, z):
        return self.net(z) + 0.5  # start at mid-grey, the centre of [0, 1]


class VectorQuantizerEMA(nn.Module):
    """Nearest-neighbour quantiser whose codebook follows an exponential moving average of its assignments
    (VQ-VAE-2, Razavi et al., 2019), with restarts of dead codes (Dhariwal et al., Jukebox, 2020).

    The codebook receives no gradients: each code is the running mean of the encoder vectors assigned to it,
    which is k-means done online and is more stable than learning it with a codebook loss. A code whose
    running count drops below `dead_threshold` is "dead" (no encoder vector picks it, so EMA never moves it);
    it is re-seeded at a random encoder vector of the current batch, where it is guaranteed to be used.
    """

    def __init__(self, codebook_size: int, code_dim: int, decay: float = 0.99, beta: float = 0.25,
                 dead_threshold: float = 1.0, eps: float = 1e-5):
        super().__init__()
        self.codebook_size, self.code_dim = codebook_size, code_dim
        self.decay, self.beta, self.dead_threshold, self.eps = decay, beta, dead_threshold, eps
        self.register_buffer("embed", torch.randn(codebook_size, code_dim))
        self.register_buffer("cluster_size", torch.zeros(codebook_size))
        self.register_buffer("embed_sum", self.embed.clone())
        # Until the first training batch the codebook is noise; seeding it from real encoder outputs means
        # every code starts inside the data and few die in the first hundred steps.
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the closest code (squared L2) for each row of flat [N, D]."""
        dist = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.embed.t()
                + self.embed.pow(2).sum(1)[None])  # (N, K)
        return dist.argmin(1)

    @torch.no_grad()
    def _random_rows(self, flat: torch.Tensor, n: int) -> torch.Tensor:
        idx = torch.randint(0, flat.shape[0], (n,), device=flat.device)
        return flat[idx]

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, codes: torch.Tensor) -> None:
        if not self.initialized:
            self.embed.copy_(self._random_rows(flat, self.codebook_size))
            self.cluster_size.fill_(self.dead_threshold)
            self.embed_sum.copy_(self.embed * self.dead_threshold)
            self.initialized.fill_(True)
        onehot = F.one_hot(codes, self.codebook_size).type(flat.dtype)  # (N, K)
        self.cluster_size.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(onehot.t() @ flat, alpha=1 - self.decay)
        # Laplace smoothing keeps the division finite for codes with a zero count.
        n = self.cluster_size.sum()
        size = (self.cluster_size + self.eps) / (n + self.codebook_size * self.eps) * n
        self.embed.copy_(self.embed_sum / size[:, None])
        dead = self.cluster_size < self.dead_threshold
        if dead.any():
            fresh = self._random_rows(flat, int(dead.sum()))
            self.embed[dead] = fresh
            # Give the restarted code one threshold's worth of count so it is not restarted again at once.
            self.cluster_size[dead] = self.dead_threshold
            self.embed_sum[dead] = fresh * self.dead_threshold

    def forward(self, z: torch.Tensor):
        """z [B, D, h, w] -> (quantised z with straight-through gradient, commitment loss, codes [B, h, w])."""
        B, D, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, D)  # (B*h*w, D)
        codes = self.nearest(flat)
        if self.training:
            self._update(flat.detach(), codes)
            codes = self.nearest(flat)  # restarts may have placed a code exactly on some vectors
        q = self.embed[codes].view(B, h, w, D).permute(0, 3, 1, 2)  # (B, D, h, w)
        # Only the encoder is pulled towards the codes; the codes themselves move by EMA above.
        commitment = self.beta * F.mse_loss(z, q.detach())
        q = z + (q - z).detach()  # straight-through: decoder gradient flows to the encoder unchanged
        return q, commitment, codes.view(B, h, w)

    @torch.no_grad()
    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, D, h, w] -> codes [B, h, w] of the nearest entries."""
        B, D, h, w = z.shape
        return self.nearest(z.permute(0, 2, 3, 1).reshape(-1, D)).view(B, h, w)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, h, w] -> decoder input [B, D, h, w]."""
        return self.embed[codes].permute(0, 3, 1, 2)


QUANTIZERS = ("vq", "fsq", "lfq")


class VQTokenizer(nn.Module):
    """Images [B, C, H, W] in [0, 1] <-> integer codes [B, H/f, W/f] (the image "words" of Chameleon/Show-o).

    `quantizer` picks how the encoder's vectors become codes: "vq" (a learned codebook of `codebook_size`
    entries of `code_dim`), "fsq" (`levels` per channel, codebook = their product) or "lfq" (`code_dim` sign
    bits, codebook = 2^code_dim). `downsample` f is 4 (8x8 tokens on CIFAR) or 2 (16x16).
    """

    def __init__(self, in_channels: int, codebook_size: int = 256, code_dim: int = 32, hidden: int = 64,
                 image_size: int | None = None, quantizer: str = "vq", levels: tuple[int, ...] | list[int] = (),
                 downsample: int = 4):
        super().__init__()
        self.image_size = image_size or default_image_size(in_channels)
        assert self.image_size % check_downsample(downsample) == 0, f"the encoder downsamples {downsample}x"
        if quantizer == "vq":
            self.quantizer = VectorQuantizerEMA(codebook_size, code_dim)
        elif quantizer == "fsq":
            self.quantizer = FiniteScalarQuantizer(levels)
        elif quantizer == "lfq":
            self.quantizer = LookupFreeQuantizer(code_dim)
        else:
            raise ValueError(f"unknown quantizer '{quantizer}', choose one of {', '.join(QUANTIZERS)}")
        code_dim, codebook_size = self.quantizer.code_dim, self.quantizer.codebook_size  # fsq/lfq derive them
        self.config = dict(in_channels=in_channels, codebook_size=codebook_size, code_dim=code_dim,
                           hidden=hidden, image_size=self.image_size, quantizer=quantizer,
                           levels=list(levels) if quantizer == "fsq" else [], downsample=downsample)
        self.in_channels, self.downsample = in_channels, downsample
        self.encoder = ConvEncoder(in_channels, code_dim, hidden, downsample)
        self.decoder = ConvDecoder(code_dim, in_channels, hidden, downsample)

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid (h, w): 7x7 for MNIST, 8x8 for CIFAR-10 at 4x downsampling (14x14, 16x16 at 2x)."""
        return self.image_size // self.downsample, self.image_size // self.downsample

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, C, H, W] in [0, 1] -> codes LongTensor [B, h, w] in [0, codebook_size)."""
        return self.quantizer.encode(self.encoder(images))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, h, w] -> images [B, C, H, W] in [0, 1]."""
        return self.decoder(self.quantizer.lookup(codes)).clamp(0, 1)

    def forward(self, images: torch.Tensor):
        """Training pass: (reconstruction, quantizer loss, codes). Updates a VQ codebook in train mode.

        The quantizer loss is VQ's or LFQ's commitment (plus LFQ's entropy term), zero for FSQ. The
        reconstruction is not clamped (a clamp has zero gradient outside [0, 1]); `decode` clamps it."""
        q, aux, codes = self.quantizer(self.encoder(images))
        return self.decoder(q), aux, codes


def codebook_stats(codes: torch.Tensor, codebook_size: int) -> dict:
    """How well the codebook is used: fraction of codes that appear, and the perplexity exp(H(histogram)).

    Perplexity is the "effective number of codes": K if all are equally frequent, 1 if one code is used.
    """
    counts = torch.bincount(codes.flatten(), minlength=codebook_size).double()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    return dict(usage=(counts > 0).double().mean().item(), perplexity=math.exp(entropy))
