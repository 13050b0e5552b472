"""MAR mode (Li et al. 2024, "Autoregressive Image Generation without Vector Quantization"): masked
autoregression over CONTINUOUS tokens, each drawn by a small per-token diffusion head.

The masked mode predicts a hidden VQ code with a softmax over a codebook; MAR keeps the same masked modelling
(random order, cosine mask schedule, bidirectional attention inside the image) but the tokens are the diffusion
mode's continuous latents, so there is no codebook and no softmax. Instead the transformer's output z_j at a
hidden position conditions a small MLP that models p(x_j | z_j) by denoising (MAR §3.2, "diffusion loss"):

    L = L_text + λ · E_{j hidden, t, ε} || head(x_j,t | t, z_j) − target(x_j, ε) ||²

with x_j,t the token noised to time t by the diffusion mode's schedule (--objective: rectified flow or DDPM) and
the target its velocity or noise. The head is cheap (it sees one d-dimensional token), so each hidden token is
noised HEAD_BATCH_MUL times per step (MAR uses diffusion_batch_mul = 4; we use 2): more denoising signal for one
transformer pass.

Sampling (MAR §3.3) starts with every token hidden and runs T = --mask-steps transformer passes. Each pass
produces z at every hidden position; the next tokens to reveal are chosen in a RANDOM order fixed at the start
(not by confidence, which a continuous density does not give), as many as the cosine schedule says, and each is
drawn by running the head's reverse process for S = --diffusion-steps steps from noise scaled by the temperature
(--temperature: < 1 trades diversity for fidelity, MAR §5). Classifier-free guidance mixes the head's outputs
for the caption's z and the empty caption's z at every head step.

This is the missing link between `masked` and `diffusion`: continuous values like diffusion, a few tokens at a
time like masked. NFE counts transformer passes (T); the head's S steps per revealed token are extra and small.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from minimfm.model import MultimodalModel
from minimfm.modes.sampling import (guided, mask_schedule, masked_counts, most_confident, repeat_for_guidance,
                                    training_mask)
from minimfm.modes.schedules import TimestepEmbedding, make_schedule
from minimfm.transformer import init_weights

# Noise draws per hidden token per training step (MAR's diffusion_batch_mul, 4 there). At tiny the head is a
# quarter of a step's time with 4 draws: 2 trains 18 % faster per step (488 vs 399 ms on 2 cores, one run).
HEAD_BATCH_MUL = 2
HEAD_DEPTH = 3       # residual blocks in the head (MAR uses 3 for its small models, 6-12 for larger ones)


class AdaLNResBlock(nn.Module):
    """MLP residual block modulated by the condition c (DiT's adaLN-Zero, as in MAR's SimpleMLPAdaLN)."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))
        self.modulation[1].init_std = 0.0  # gate 0: the block starts as the identity

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.modulation(c).chunk(3, dim=-1)  # (M, width) each
        return x + gate * self.mlp(self.norm(x) * (1 + scale) + shift)


class DiffusionHead(nn.Module):
    """MAR's per-token denoiser: predicts ε (DDPM) or v (flow) for ONE token, given its noisy value x_t, the time
    t and the transformer's output z at that position. Runs on (M, d) rows, M = tokens being denoised."""

    counted_by_mode = True  # runs HEAD_BATCH_MUL times per hidden token, not once per position (flops.py)

    def __init__(self, token_dim: int, cond_dim: int, width: int, depth: int = HEAD_DEPTH):
        super().__init__()
        self.input_proj = nn.Linear(token_dim, width)
        self.time_emb = TimestepEmbedding(width)
        self.cond_proj = nn.Linear(cond_dim, width)
        self.blocks = nn.ModuleList(AdaLNResBlock(width) for _ in range(depth))
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.out = nn.Linear(width, token_dim)
        self.final_modulation[1].init_std = 0.0
        self.out.init_std = 0.0  # the untrained head predicts 0, a sane ε or v guess
        self.apply(init_weights)

    def forward(self, x_t: torch.Tensor, time_input: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x_t (M, d), time_input (M,) on the 0..1000 scale, z (M, D) -> (M, d)."""
        c = self.time_emb(time_input) + self.cond_proj(z)  # (M, width)
        x = self.input_proj(x_t)
        for block in self.blocks:
            x = block(x, c)
        shift, scale = self.final_modulation(c).chunk(2, dim=-1)
        return self.out(self.final_norm(x) * (1 + scale) + shift)  # (M, d)


class MARModel(MultimodalModel):
    """MAR on the shared backbone: Show-o's masked modelling over continuous latents, a diffusion head per token."""

    mode = "mar"
    mask_kind = "omni"
    task_tokens = True  # the same [T2I] / [MMU] layout as the masked mode: the controlled pair differs in tokens only

    def __init__(self, cfg, tok, image_tokenizer, max_text_len):
        super().__init__(cfg, tok, image_tokenizer, max_text_len)
        d, D = image_tokenizer.latent_dim, cfg.d_model
        self.token_in = nn.Linear(d, D)
        self.mask_emb = nn.Embedding(1, D)  # the learned [MASK] input vector (an Embedding: no FLOPs, no decay)
        self.head = DiffusionHead(d, D, width=D)
        init_weights(self.token_in)
        init_weights(self.mask_emb)
        self.schedule = make_schedule(cfg.objective, cfg.time_sampling)  # the head's noise schedule (plain math, nothing to save)
        self.last_order: torch.Tensor | None = None  # (B, N) step at which each token was revealed, -1 = known

    @property
    def latent_dim(self) -> int:
        return self.image_tokenizer.latent_dim

    def embed_images(self, latents: torch.Tensor, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """Latents (B, N, d) -> (B, N, D); positions where `hidden` (B, N) is set get the [MASK] vector instead."""
        x = self.token_in(latents)  # (B, N, D)
        if hidden is not None:
            x = torch.where(hidden[..., None], self.mask_emb.weight[0].to(x.dtype), x)
        return x

    def extra_step_flops(self, batch_size: int) -> float:
        """The head's training FLOPs: 6 · its parameters per noised token, HEAD_BATCH_MUL draws per hidden token;
        hidden tokens per step are an expectation (t2i rows · N · E[γ(u)], u ~ U(0, 1))."""
        u = (torch.arange(1000, dtype=torch.float64) + 0.5) / 1000
        mean_hidden = float(mask_schedule(u, self.cfg.mask_schedule).mean()) * self.n_image
        head_params = sum(p.numel() for p in self.head.parameters())
        return 6.0 * head_params * HEAD_BATCH_MUL * batch_size * self.cfg.t2i_ratio * mean_hidden

    # -------------------------------------------------------------------------------------- training
    def head_loss(self, z: torch.Tensor, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Diffusion loss of the head on tokens x0 (M, d) given their conditions z (M, D)."""
        z, x0 = z.repeat(HEAD_BATCH_MUL, 1), x0.repeat(HEAD_BATCH_MUL, 1)  # (k·M, D), (k·M, d)
        M = x0.shape[0]
        t = self.schedule.sample_t(torch.ones(M), generator)
        eps = torch.randn(x0.shape, generator=generator, device=generator.device)
        t, eps = t.to(self.device), eps.to(x0.device, x0.dtype)
        out = self.head(self.schedule.add_noise(x0, eps, t), self.schedule.time_input(t), z)
        return F.mse_loss(out.float(), self.schedule.target(x0, eps).float())

    def sequence_loss(self, batch, latents, generate, generator):
        N = latents.shape[1]
        # a mask ratio per IMAGE; a read image hides none. Dropped captions: same masking (unconditional model)
        hide = training_mask(generate, N, self.cfg.mask_schedule, generator).to(self.device)  # (M, N), M images
        h = self.hidden(batch, self.embed_images(latents, hide))  # (B, T, D)
        # mean over the hidden tokens of all images: an image counts by how many it hides
        z = self.image_hidden(h, batch.modality)[hide]  # (n_hidden, D): outputs at the hidden positions
        if z.shape[0] == 0:  # no generated image in this (micro-)batch: no image loss, not NaN
            image_loss = h.sum() * 0.0
        else:
            image_loss = self.head_loss(z, latents[hide], generator)
        return self.combine(self.text_loss(h, batch), image_loss)

    # -------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample_tokens(self, z: torch.Tensor, cfg_scale: float, generator: torch.Generator, steps: int,
                      temperature: float) -> torch.Tensor:
        """Draw tokens (M, d) from the head given z (M', D), M' = 2M when guiding ([cond; uncond] rows)."""
        M = z.shape[0] // (2 if cfg_scale else 1)
        x = temperature * torch.randn((M, self.latent_dim), generator=generator, device=generator.device)
        x = x.to(self.device)
        times = self.schedule.sampling_times(steps)
        for t, t_next in zip(times[:-1], times[1:]):
            t_in = self.schedule.time_input(torch.full((z.shape[0],), t, device=self.device))
            out = guided(self.head(repeat_for_guidance(x, cfg_scale), t_in, z).float(), cfg_scale)  # (M, d)
            x = self.schedule.step(x, out, t, t_next, generator, self.schedule.samplers[0])
        return x

    @torch.no_grad()
    def sample_after(self, prefix, *, steps=None, known=None, known_mask=None, cfg_scale, generator,
                     head_steps: int | None = None, temperature: float | None = None):
        """Latents (B, N, d) after the prefix's sequences in T = `steps` transformer passes; NFE = T.

        `head_steps` (default --diffusion-steps) are the head's denoising steps per revealed token;
        `temperature` (default --temperature) scales the head's starting noise. When guiding, the prefix's rows
        [B:] are the unconditional ones (the null prompt). Inpainting: `known` (B, N, d) latents where
        `known_mask` (B, N) is set are visible from the start and never changed. Sets `self.last_order` (B, N):
        the pass at which each token was revealed, -1 for known ones. Each pass feeds only the N image
        positions after the prefix's cached keys/values and crops the cache back.
        """
        cfg = self.cfg
        T = self.sampling_steps(steps)
        S = cfg.diffusion_steps if head_steps is None else head_steps
        temperature = cfg.temperature if temperature is None else temperature
        B, N, dev = len(prefix.last) // (2 if cfg_scale else 1), self.n_image, self.device
        known, known_mask = self.check_known(known, known_mask, B)

        hidden = torch.ones(B, N, dtype=torch.bool, device=dev) if known_mask is None else ~known_mask
        tokens = torch.zeros(B, N, self.latent_dim, device=dev) if known is None else known.float().clone()
        order = torch.full((B, N), -1, dtype=torch.long, device=dev)
        # MAR's random generation order, drawn once: earlier in the order = revealed sooner
        priority = torch.rand(B, N, generator=generator, device=generator.device).to(dev)
        still_hidden = masked_counts(hidden.sum(1), T, cfg.mask_schedule)  # (T, B)
        for t in range(T):
            x = self.embed_images(repeat_for_guidance(tokens, cfg_scale), repeat_for_guidance(hidden, cfg_scale))
            z = self.transformer(x + self.image_grid_embedding(), prefix.mask, prefix.positions,
                                 cache=prefix.cache)  # (B', N, D)
            prefix.cache.crop(prefix.length)  # the next pass's image differs; the prefix's keys/values stay
            reveal = most_confident(priority, hidden, hidden.sum(1) - still_hidden[t])  # (B, N)
            if reveal.any():
                z_rows = z[repeat_for_guidance(reveal, cfg_scale)]  # (M', D): cond rows first, then uncond
                tokens[reveal] = self.sample_tokens(z_rows, cfg_scale, generator, S, temperature).to(tokens.dtype)
            order = order.masked_fill(reveal, t)
            hidden = hidden & ~reveal
        self.last_order = order
        return tokens, T
