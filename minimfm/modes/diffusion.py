"""Diffusion mode (Transfusion, Zhou et al. 2024): images are continuous latents, denoised by the same transformer.

An image is h·w real vectors (pixel patches or an autoencoder latent). Training noises them to a random time t;
the transformer reads caption + noisy image and, at every image position, predicts the noise ε (DDPM) or the
velocity v (rectified flow); text positions keep the next-token loss:

    L = L_text + λ · ||f(x_t, t) − target||²        (schedules.py holds x_t, the target and the samplers)

Around the shared transformer sit a patch encoder and decoder (linear, or a small conv encoder/decoder on the
(h, w) grid: two 3x3 convs, no down/up-sampling, so not Transfusion §4.1's U-Net blocks) and a timestep embedding,
either added to every image position (Transfusion) or fed to adaLN-Zero (DiT). Inside an image attention is
bidirectional (the omni mask), so every patch sees the whole noisy image; the caption before it is causal and
never sees the image, so during sampling its keys/values are computed once and each of the S denoising steps
processes only the N image positions.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from minimfm.model import MultimodalModel
from minimfm.modes.sampling import guided, repeat_for_guidance
from minimfm.modes.schedules import TimestepEmbedding, make_schedule


class LinearPatches(nn.Module):
    """DiT's patch embedding / final linear layer: the same linear map at every grid position."""

    def __init__(self, d_in: int, d_out: int, grid: tuple[int, int], zero: bool = False):
        super().__init__()
        self.proj = nn.Linear(d_in, d_out)
        # DiT: xavier for the input embedding (unit-variance latents keep unit scale); zero for the output layer
        # so the untrained model predicts 0 (a sane ε or v guess) and every block starts as a clean residual
        nn.init.xavier_uniform_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        if zero:
            nn.init.zeros_(self.proj.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)  # (B, N, d_out)


class ConvPatches(nn.Module):
    """A small conv encoder/decoder: two 3x3 convs on the (h, w) latent grid, no down/up-sampling.

    Each position's vector is mixed with its neighbours before (or after) the transformer, which a per-position
    linear map cannot do. It is not Transfusion §4.1's U-Net down/up blocks, only a stand-in for their local
    mixing: there is no down/up-sampling (and no U-Net skip path), because one latent position must stay one
    transformer position, the sequence layout fixing N = h·w.
    """

    def __init__(self, d_in: int, d_out: int, grid: tuple[int, int], zero: bool = False):
        super().__init__()
        self.grid = grid
        hidden = max(d_in, d_out)  # d_model on both sides
        self.conv1 = nn.Conv2d(d_in, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, d_out, 3, padding=1)
        if zero:
            nn.init.zeros_(self.conv2.weight)
            nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        h, w = self.grid
        z = x.transpose(1, 2).reshape(B, -1, h, w)  # (B, d_in, h, w)
        z = self.conv2(F.silu(self.conv1(z)))  # (B, d_out, h, w)
        return z.flatten(2).transpose(1, 2)  # (B, N, d_out)


class DiffusionModel(MultimodalModel):
    """Transfusion: one transformer, next-token loss on text and a diffusion loss on continuous image latents."""

    mode = "diffusion"

    def __init__(self, cfg, tok, image_tokenizer, max_text_len):
        super().__init__(cfg, tok, image_tokenizer, max_text_len)
        # the ablation: image positions attend causally among themselves (the caption prefix is causal anyway)
        self.mask_kind = "causal" if cfg.image_attention == "causal" else "omni"
        d, D = image_tokenizer.latent_dim, cfg.d_model
        patches = ConvPatches if cfg.patch_encoder == "conv" else LinearPatches
        self.patch_in = patches(d, D, self.grid)
        self.patch_out = patches(D, d, self.grid, zero=True)
        self.time_emb = TimestepEmbedding(D)
        self.schedule = make_schedule(cfg.objective, cfg.time_sampling)  # plain math, no weights: nothing to save

    def uses_adaln(self) -> bool:
        return self.cfg.time_cond == "adaln"

    @property
    def latent_dim(self) -> int:
        return self.image_tokenizer.latent_dim

    # ------------------------------------------------------------------------------------------- pieces
    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        return self.time_emb(self.schedule.time_input(t))  # (B, D)

    def embed_images(self, latents: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """Latents (B, N, d) at times t (B,) -> (B, N, D); t=None reads them as clean (t = 0)."""
        t = self.schedule.zero_time(latents.shape[0], self.device) if t is None else t
        x = self.patch_in(latents)  # (B, N, D)
        if self.cfg.time_cond == "add":
            x = x + self.time_embedding(t)[:, None]  # Transfusion: the same vector added at every image position
        return x

    def transformer_kwargs(self, modality: torch.Tensor, t: torch.Tensor | None = None) -> dict:
        """adaLN-Zero conditioning: the time embedding (B, 1, D), broadcast over positions, and where it applies.

        One row of cond per sequence (not per position): the modulation MLP then runs once per sequence instead
        of T times, and the block broadcasts it; `cond_mask` keeps text positions a plain block.
        """
        if not self.uses_adaln():
            return {}
        t = self.schedule.zero_time(modality.shape[0], self.device) if t is None else t
        return {"cond": self.time_embedding(t)[:, None], "cond_mask": modality >= 1}  # every image of the row

    def reading_inputs(self, latents: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Captioning reads the clean latents at t = 0, in the image-to-text layout the base class packs."""
        B = latents.shape[0]
        modality = self.pack([[] for _ in range(B)], torch.zeros(B, dtype=torch.bool)).modality
        return self.embed_images(latents), self.transformer_kwargs(modality)

    # -------------------------------------------------------------------------------------- training
    def training_times(self, generate: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(M,) noise times, one per IMAGE, on the generator's device. A read image (image-then-caption, an
        edit's source) gets at most half the schedule (Transfusion): the text after it must stay readable from
        it, and pure noise has nothing to read."""
        half = 0.5 if self.cfg.i2t_noise_limit else 1.0
        limit = torch.where(generate.cpu(), 1.0, half)
        return self.schedule.sample_t(limit, generator)

    def training_condition(self, batch, t: torch.Tensor) -> dict:
        """adaLN-Zero kwargs for training: each image's positions get ITS time embedding (Transfusion noises the
        images of a sequence independently). One image per row keeps transformer_kwargs' (B, 1, D) rows, so the
        modulation MLP runs once per row; several need a (B, T, D) condition, one per position."""
        if not self.uses_adaln():
            return {}
        B, is_image = batch.tokens.shape[0], batch.modality >= 1
        if t.shape[0] == B and (batch.image_start.dim() == 1 or batch.image_start.shape[1] == 1):
            return self.transformer_kwargs(batch.modality, t)  # M = B and at most one per row: one each
        per_image = self.time_embedding(t)  # (M, D)
        cond = per_image.new_zeros(*batch.tokens.shape, per_image.shape[-1])  # (B, T, D), 0 where text
        cond = cond.masked_scatter(is_image[..., None], per_image.repeat_interleave(self.n_image, 0))
        return {"cond": cond, "cond_mask": is_image}

    def sequence_loss(self, batch, latents, generate, generator):
        M, N, d = latents.shape
        # every draw on the generator (CPU in train.py) before anything moves: resumed runs replay it exactly
        t = self.training_times(generate, generator)  # (M,): one time per image, not per sequence
        eps = torch.randn((M, N, d), generator=generator, device=generator.device)
        t, eps = t.to(self.device), eps.to(latents.device, latents.dtype)
        x_t = self.schedule.add_noise(latents, eps, t)
        h = self.hidden(batch, self.embed_images(x_t, t), **self.training_condition(batch, t))  # (B, T, D)
        out = self.patch_out(self.image_hidden(h, batch.modality))  # (M, N, d)
        # every image has N·d values, so the mean over all of them is the mean of the per-image losses
        image_loss = F.mse_loss(out.float(), self.schedule.target(latents, eps).float())
        return self.combine(self.text_loss(h, batch), image_loss)

    # -------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample_after(self, prefix, *, steps=None, known=None, known_mask=None, cfg_scale, generator,
                     sampler: str | None = None):
        """Latents (B, N, d) after the prefix's sequences in S denoising steps; returns (latents, S).

        CFG: the prefix's rows [B:] are the unconditional ones (the null prompt), run in ONE transformer call per
        step with the conditional rows; the outputs (ε or v) are mixed as cond + s·(cond − uncond). The prefix's
        keys/values are read by every step, never recomputed: a step feeds only the N image positions, then
        crops the cache back to the prefix. Inpainting: `known` (B, N, d) latents and `known_mask` (B, N) bool;
        before each step the known positions are replaced by the known latents noised to the current time, and
        set exactly at the end.
        """
        def denoiser(x_in, t_rows):  # (B', N, d) at times (B',) -> (B', N, d) ε or v, unguided
            image = self.embed_images(x_in, t_rows) + self.image_grid_embedding()  # (B', N, D)
            kwargs = self.transformer_kwargs(torch.ones_like(prefix.positions), t_rows)  # every position: image
            h = self.transformer(image, prefix.mask, prefix.positions, cache=prefix.cache, **kwargs)
            prefix.cache.crop(prefix.length)  # the next step's image replaces this one; the prefix stays
            return self.patch_out(h)
        B = len(prefix.last) // (2 if cfg_scale else 1)
        return self.denoise(denoiser, B, steps, known, known_mask, cfg_scale, generator, sampler)

    def denoise(self, denoiser, B, steps, known, known_mask, cfg_scale, generator, sampler
                ) -> tuple[torch.Tensor, int]:
        """The reverse process (see sample_after) over `denoiser`, one transformer evaluation per step."""
        schedule, S = self.schedule, self.sampling_steps(steps)
        sampler = sampler or schedule.samplers[0]
        if sampler not in schedule.samplers:
            raise ValueError(f"unknown sampler '{sampler}' for --objective {self.cfg.objective}, "
                             f"choose {', '.join(schedule.samplers)}")
        N, B2 = self.n_image, B * (2 if cfg_scale else 1)
        known, known_mask = self.check_known(known, known_mask, B)
        if known is not None:
            known_mask = known_mask[..., None]  # (B, N, 1)
        x = torch.randn((B, N, self.latent_dim), generator=generator, device=generator.device).to(self.device)
        times = schedule.sampling_times(S)
        for t, t_next in zip(times[:-1], times[1:]):
            t_rows = torch.full((B2,), t, device=self.device)  # (B',) int (DDPM step) or float (flow)
            if known is not None:
                x_known = schedule.add_noise(known, torch.randn(x.shape, generator=generator,
                                                                device=generator.device).to(x), t_rows[:B])
                x = torch.where(known_mask, x_known, x)
            x_in = repeat_for_guidance(x, cfg_scale)  # (B', N, d): cond and uncond see the same image
            out = guided(denoiser(x_in, t_rows).float(), cfg_scale)  # (B, N, d) ε or v
            x = schedule.step(x, out, t, t_next, generator, sampler)
        if known is not None:
            x = torch.where(known_mask, known, x)
        return x, S

    @torch.no_grad()
    def sample_images(self, prompts, *, steps=None, known=None, known_mask=None, cfg_scale, generator,
                      sampler: str | None = None, use_cache: bool = True):
        """Latents (B, N, d) for prompt ids: `sample_after` on the prompts read once (`prompt_prefix`).

        use_cache=False is the reference the cache must equal: every step re-reads the caption with the image
        (same latents to float precision, tests/test_diffusion.py).
        """
        if use_cache:
            return self.sample_after(self.prompt_prefix(prompts, cfg_scale), steps=steps, known=known,
                                     known_mask=known_mask, cfg_scale=cfg_scale, generator=generator, sampler=sampler)
        self.sampling_steps(steps)  # a bad step count fails before the prompt is packed
        batch, mask, P = self.prompt_batch(prompts, cfg_scale)
        end = P + self.n_image  # [EOI] and [EOS] after the image play no part in denoising
        prefix = self.text_emb(batch.tokens[:, :P])  # (B', P, D)

        def denoiser(x_in, t_rows):
            image = self.embed_images(x_in, t_rows) + self.image_grid_embedding()  # (B', N, D)
            kwargs = self.transformer_kwargs(batch.modality[:, :end], t_rows)
            h = self.transformer(torch.cat([prefix, image], 1), mask[:, :end, :end], batch.positions[:, :end],
                                 **kwargs)
            return self.patch_out(h[:, P:])
        return self.denoise(denoiser, len(prompts), steps, known, known_mask, cfg_scale, generator, sampler)
