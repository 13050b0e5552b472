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
from minimfm.transformer import KVCache, init_weights


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
        """(B, N) index of the position whose output predicts each code: the one just before it."""
        return start[:, None] - 1 + torch.arange(self.n_image, device=start.device)[None]

    def training_loss(self, captions, codes, t2i, drop, generator):
        batch = self.pack(captions, t2i, drop)
        h = self.hidden(batch, self.embed_images(codes))  # (B, T, D)
        idx = self.image_predictors(batch.image_start)  # (B, N)
        h_img = h.gather(1, idx[..., None].expand(-1, -1, h.shape[-1]))  # (B, N, D)
        image_loss = F.cross_entropy(self.code_head(h_img).flatten(0, 1).float(), codes.flatten())
        return self.combine(self.text_loss(h, batch), image_loss)

    @torch.no_grad()
    def sample_images(self, prompts, *, steps=None, known=None, known_mask=None, cfg_scale, generator,
                      temperature=None, top_k=None, top_p=None, use_cache: bool = True):
        """Codes (B, N) for prompt ids, one transformer evaluation per code (so `steps` must stay None).

        With cfg_scale > 0 the batch is doubled: rows [B:] have an empty caption (the unconditional model learnt
        through caption dropout). Completion: where `known_mask` (B, N) is set, the code is taken from `known`
        (B, N) instead of sampled (teacher forcing); a raster prefix (the top rows) is what conditions the rest,
        since a code only sees the codes before it.
        """
        cfg = self.cfg
        N = self.sampling_steps(steps)  # refuses a step count: one evaluation per code
        temperature = cfg.temperature if temperature is None else temperature
        top_k = cfg.top_k if top_k is None else top_k
        top_p = cfg.top_p if top_p is None else top_p
        B = len(prompts)
        known, known_mask = self.check_known(known, known_mask, B)
        batch, full_mask, P = self.prompt_batch(prompts, cfg_scale)
        grid = self.image_grid_embedding()
        x = self.text_emb(batch.tokens[:, :P])  # (B', P, D)
        codes = torch.zeros(B, N, dtype=torch.long, device=self.device)
        cache = KVCache(cfg.n_layer) if use_cache else None
        for j in range(N):
            end = P + j  # positions [0, end) are known; with a cache, x holds only those not yet fed
            start = end - x.shape[1]
            h = self.transformer(x, full_mask[:, start:end, :end], batch.positions[:, start:end], cache=cache)
            logits = guided(self.code_head(h[:, -1]).float(), cfg_scale)
            codes[:, j] = sample_from_logits(logits, generator, temperature, top_k, top_p)
            if known is not None:
                codes[:, j] = torch.where(known_mask[:, j], known[:, j], codes[:, j])
            x_new = (self.code_emb(repeat_for_guidance(codes[:, j], cfg_scale)) + grid[j])[:, None]  # (B', 1, D)
            x = x_new if use_cache else torch.cat([x, x_new], 1)
        return codes, N
