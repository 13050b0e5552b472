"""Continuous image latents for the diffusion mode (Transfusion): a sequence of h*w real vectors per image.

Two kinds share one interface, so the transformer never knows which one it is fed:
  PatchLatent        pixels cut into p x p patches (ViT/DiT "patchify"); nothing to train.
  AutoencoderLatent  a small conv autoencoder, as Transfusion uses a (much larger) VAE.
Both give `encode(images) -> [B, h*w, d]`, `decode(latents) -> images`, `grid` = (h, w) and `latent_dim` = d.

Normalisation: diffusion schedules assume data of roughly unit variance (the noise is N(0, I)), so encode
returns (z - mean) / std with a per-dimension `mean` and `std` [d] measured on training images by
`fit_normalisation` and stored as buffers (they travel with the checkpoint). This plays the role of Stable
Diffusion's single latent scale factor 0.18215, but per dimension, because raw pixel patches have a
nonzero mean that a single scale would leave in.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from minimfm.tokenizers.vq import ConvDecoder, ConvEncoder, default_image_size


class NormalisedLatent(nn.Module):
    """Shared machinery: raw latents [B, h*w, d] are standardised with buffers fitted on training data."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim
        self.register_buffer("mean", torch.zeros(latent_dim))
        self.register_buffer("std", torch.ones(latent_dim))

    def raw_encode(self, images: torch.Tensor) -> torch.Tensor:  # (B, h*w, d), unnormalised
        raise NotImplementedError

    def raw_decode(self, latents: torch.Tensor) -> torch.Tensor:  # (B, h*w, d) -> (B, C, H, W) logits/pixels
        raise NotImplementedError

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, C, H, W] in [0, 1] -> normalised latents [B, h*w, d] (about N(0, 1) per dim on train data)."""
        return (self.raw_encode(images) - self.mean) / self.std

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """normalised latents [B, h*w, d] -> images [B, C, H, W] in [0, 1]."""
        return self.raw_decode(latents * self.std + self.mean)

    @torch.no_grad()
    def fit_normalisation(self, images: torch.Tensor, batch_size: int = 1000) -> "NormalisedLatent":
        """Set `mean`/`std` [d] from the raw latents of `images` (a few thousand training images suffice)."""
        z = torch.cat([self.raw_encode(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
        z = z.reshape(-1, self.latent_dim).cpu().double()  # (N*h*w, d); on the CPU: MPS has no float64
        self.mean.copy_(z.mean(0))
        self.std.copy_(z.std(0).clamp(min=1e-4))  # a constant dimension must not divide by zero
        return self


def fit_normalisation(latent_model: NormalisedLatent, images: torch.Tensor) -> NormalisedLatent:
    """Function form of `latent_model.fit_normalisation(images)`; returns the model."""
    was_training = latent_model.training
    latent_model.eval()
    latent_model.fit_normalisation(images)
    latent_model.train(was_training)
    return latent_model


class PatchLatent(NormalisedLatent):
    """Non-overlapping p x p pixel patches as latent vectors (the "patchify" stem of ViT / DiT).

    MNIST with p=4: 7x7 grid of 16-dim vectors; CIFAR-10: 8x8 grid of 48-dim vectors. Lossless: decode(encode(x))
    returns x exactly (up to float rounding), which makes it the reference point for the learned latents.
    """

    def __init__(self, in_channels: int, patch: int = 4, image_size: int | None = None):
        super().__init__(in_channels * patch * patch)
        self.image_size = image_size or default_image_size(in_channels)
        assert self.image_size % patch == 0, f"image size {self.image_size} is not a multiple of patch {patch}"
        self.config = dict(in_channels=in_channels, patch=patch, image_size=self.image_size)
        self.in_channels, self.patch = in_channels, patch

    @property
    def grid(self) -> tuple[int, int]:
        return self.image_size // self.patch, self.image_size // self.patch

    def raw_encode(self, images):
        B, C, H, W = images.shape
        p = self.patch
        x = images.reshape(B, C, H // p, p, W // p, p)  # (B, C, h, p, w, p)
        return x.permute(0, 2, 4, 1, 3, 5).reshape(B, (H // p) * (W // p), C * p * p)  # (B, h*w, C*p*p)

    def raw_decode(self, latents):
        B = latents.shape[0]
        (h, w), p, C = self.grid, self.patch, self.in_channels
        x = latents.reshape(B, h, w, C, p, p).permute(0, 3, 1, 4, 2, 5)  # (B, C, h, p, w, p)
        return x.reshape(B, C, h * p, w * p).clamp(0, 1)


class AutoencoderLatent(NormalisedLatent):
    """A small deterministic conv autoencoder (28 -> 7, 32 -> 8) with `latent_channels` channels per position.

    Regulariser: a small L2 penalty on the raw latents (`latent_penalty`) instead of the VAE's KL term. The KL
    term's job in latent diffusion is to stop the latent scale drifting and the space from being arbitrarily
    spread out; a deterministic encoder with an L2 pull towards 0 does the same here without sampling noise
    (which would cost reconstruction quality at this size), and `fit_normalisation` fixes the final scale.
    """

    def __init__(self, in_channels: int, latent_channels: int = 4, hidden: int = 64, image_size: int | None = None,
                 downsample: int = 4):
        super().__init__(latent_channels)
        self.image_size = image_size or default_image_size(in_channels)
        assert self.image_size % downsample == 0, f"the encoder downsamples {downsample}x"
        self.config = dict(in_channels=in_channels, latent_channels=latent_channels, hidden=hidden,
                           image_size=self.image_size, downsample=downsample)
        self.in_channels, self.downsample = in_channels, downsample
        self.encoder = ConvEncoder(in_channels, latent_channels, hidden, downsample)
        self.decoder = ConvDecoder(latent_channels, in_channels, hidden, downsample)

    @property
    def grid(self) -> tuple[int, int]:
        return self.image_size // self.downsample, self.image_size // self.downsample

    def raw_encode(self, images):
        z = self.encoder(images)  # (B, d, h, w)
        return z.flatten(2).transpose(1, 2)  # (B, h*w, d)

    def raw_decode(self, latents):
        h, w = self.grid
        z = latents.transpose(1, 2).reshape(latents.shape[0], self.latent_dim, h, w)  # (B, d, h, w)
        return self.decoder(z).clamp(0, 1)

    def forward(self, images: torch.Tensor, latent_penalty: float = 1e-3):
        """Training pass: (unclamped reconstruction, latent_penalty * mean(z^2)); the caller adds the pixel loss."""
        z = self.raw_encode(images)  # (B, h*w, d)
        h, w = self.grid
        recon = self.decoder(z.transpose(1, 2).reshape(len(z), self.latent_dim, h, w))  # clamp would kill gradients
        return recon, latent_penalty * z.pow(2).mean()
