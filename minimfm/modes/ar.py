"""Autoregressive mode (Chameleon): an image is a raster sequence of VQ codes, predicted one by one like words.

Training is next-token prediction over the whole sequence under a causal mask: the caption words, then each code
given the caption and the codes before it (and, in the image-to-text order, the caption given the codes).

    L = L_text + λ · Σ_j -log p(c_j | caption, c_<j)

Vocabulary: codes get their OWN embedding table and output head instead of sharing one softmax with text at an
offset (Chameleon's choice). The layout already says which positions are image positions, so a shared softmax
would only spend probability mass (and a larger head matmul) on tokens that can never appear there; `[EOI]` is
forced after the last code instead of predicted.

Sampling costs one transformer evaluation per code; the KV cache makes each of them process one new position.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from minimfm.model import MultimodalModel
from minimfm.modes.sampling import guided, repeat_for_guidance, sample_from_logits
from minimfm.transformer import init_weights


class ARModel(MultimodalModel):
    """Chameleon-style early fusion: VQ codes generated left to right, raster order, under a causal mask."""

    mode = "ar"
    mask_kind = "causal"

    def __init__(self, cfg, tok, image_tokenizer, max_text_len):
        super().__init__(cfg, tok, image_tokenizer, max_text_len)
        K = image_tokenizer.codebook_size
        self.code_emb = nn.Embedding(K, cfg.d_model)
        self.code_head = nn.Linear(cfg.d_model, K, bias=False)
        init_weights(self.code_emb)
        init_weights(self.code_head)

    def embed_images(self, codes: torch.Tensor) -> torch.Tensor:
        return self.code_emb(codes)  # (B, N, D)

    def image_predictors(self, start: torch.Tensor) -> torch.Tensor:
        """(M, N) index of the position whose output predicts each code: the one just before it."""
        return start[:, None] - 1 + torch.arange(self.n_image, device=start.device)[None]

    def sequence_loss(self, batch, codes, generate, generator):
        """Next-code loss on every image of the batch, read or generated alike (one causal sequence: Chameleon
        models all of it); image k of a row is predicted from the positions just before its own codes."""
        h = self.hidden(batch, self.embed_images(codes))  # (B, T, D)
        row, start = self.image_index(batch)  # (M,) each
        idx = self.image_predictors(start)  # (M, N)
        h_img = h[row[:, None], idx]  # (M, N, D)
        # every image has N codes, so this mean over all codes is also the mean of the per-image losses
        image_loss = F.cross_entropy(self.code_head(h_img).flatten(0, 1).float(), codes.flatten())
        return self.combine(self.text_loss(h, batch), image_loss)

    @torch.no_grad()
    def sample_after(self, prefix, *, steps=None, known=None, known_mask=None, cfg_scale, generator,
                     temperature=None, top_k=None, top_p=None):
        """Codes (B, N) after the prefix's sequences, one transformer evaluation per code (`steps` must stay None).

        With cfg_scale > 0 the prefix's rows [B:] are the unconditional ones (the null prompt, learnt through
        caption dropout). Completion: where `known_mask` (B, N) is set, the code is taken from `known` (B, N)
        instead of sampled (teacher forcing); a raster prefix (the top rows) is what conditions the rest, since a
        code only sees the codes before it. Each code is appended to the prefix's cache (it is used up).
        """
        cfg = self.cfg
        N = self.sampling_steps(steps)  # refuses a step count: one evaluation per code
        temperature = cfg.temperature if temperature is None else temperature
        top_k = cfg.top_k if top_k is None else top_k
        top_p = cfg.top_p if top_p is None else top_p
        B = len(prefix.last) // (2 if cfg_scale else 1)
        known, known_mask = self.check_known(known, known_mask, B)
        grid, P = self.image_grid_embedding(), prefix.length
        codes = torch.zeros(B, N, dtype=torch.long, device=self.device)
        h = prefix.last  # (B', D): the output at [BOI] predicts code 0
        for j in range(N):
            logits = guided(self.code_head(h).float(), cfg_scale)
            codes[:, j] = sample_from_logits(logits, generator, temperature, top_k, top_p)
            if known is not None:
                codes[:, j] = torch.where(known_mask[:, j], known[:, j], codes[:, j])
            if j + 1 < N:  # code j, at position P + j, predicts code j + 1; the last code predicts nothing
                x = (self.code_emb(repeat_for_guidance(codes[:, j], cfg_scale)) + grid[j])[:, None]  # (B', 1, D)
                h = self.transformer(x, prefix.mask[:, j:j + 1, :P + j + 1], prefix.positions[:, j:j + 1],
                                     cache=prefix.cache)[:, -1]  # (B', D)
        return codes, N

    @torch.no_grad()
    def sample_images(self, prompts, *, steps=None, known=None, known_mask=None, cfg_scale, generator,
                      temperature=None, top_k=None, top_p=None, use_cache: bool = True):
        """Codes (B, N) for prompt ids: `sample_after` on the prompts read once (`prompt_prefix`).

        use_cache=False is the reference the cache must equal: every code re-reads the prompt and the codes
        before it (N evaluations of growing length; same codes, tests/test_ar.py).
        """
        options = dict(steps=steps, known=known, known_mask=known_mask, cfg_scale=cfg_scale, generator=generator,
                       temperature=temperature, top_k=top_k, top_p=top_p)
        if use_cache:
            return self.sample_after(self.prompt_prefix(prompts, cfg_scale), **options)
        cfg = self.cfg
        N = self.sampling_steps(steps)
        temperature = cfg.temperature if temperature is None else temperature
        top_k = cfg.top_k if top_k is None else top_k
        top_p = cfg.top_p if top_p is None else top_p
        B = len(prompts)
        known, known_mask = self.check_known(known, known_mask, B)
        batch, full_mask, P = self.prompt_batch(prompts, cfg_scale)
        grid = self.image_grid_embedding()
        x = self.text_emb(batch.tokens[:, :P])  # (B', P + j, D): the prompt and the codes so far
        codes = torch.zeros(B, N, dtype=torch.long, device=self.device)
        for j in range(N):
            h = self.transformer(x, full_mask[:, :P + j, :P + j], batch.positions[:, :P + j])
            logits = guided(self.code_head(h[:, -1]).float(), cfg_scale)
            codes[:, j] = sample_from_logits(logits, generator, temperature, top_k, top_p)
            if known is not None:
                codes[:, j] = torch.where(known_mask[:, j], known[:, j], codes[:, j])
            x_new = (self.code_emb(repeat_for_guidance(codes[:, j], cfg_scale)) + grid[j])[:, None]  # (B', 1, D)
            x = torch.cat([x, x_new], 1)
        return codes, N
