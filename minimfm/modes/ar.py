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
from minimfm.transformer import KVCache, init_weights


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


def guided(logits: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on a batch stacked as [cond; uncond]: cond + s·(cond − uncond).

    Written as (1+s)·cond − s·uncond in Show-o; s = 0 is plain conditional sampling.
    """
    if scale == 0:
        return logits
    cond, uncond = logits.chunk(2)
    return cond + scale * (cond - uncond)


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
    def sample_images(self, prompts, *, cfg_scale, generator, temperature=None, top_k=None, top_p=None,
                      use_cache: bool = True, known_codes: torch.Tensor | None = None):
        """Codes (B, N) for prompt ids, one transformer evaluation per code.

        With cfg_scale > 0 the batch is doubled: rows [B:] have an empty caption (the unconditional model learnt
        through caption dropout). `known_codes` (B, n) teacher-forces the first n codes (image completion).
        """
        cfg = self.cfg
        temperature = cfg.temperature if temperature is None else temperature
        top_k = cfg.top_k if top_k is None else top_k
        top_p = cfg.top_p if top_p is None else top_p
        B, N = len(prompts), self.n_image
        rows = prompts + ([[] for _ in prompts] if cfg_scale else [])
        batch = self.pack(rows, torch.ones(len(rows), dtype=torch.bool))
        full_mask = self.mask(batch.modality)
        P = self.layout.prompt_length()
        grid = self.image_grid_embedding()
        x = self.text_emb(batch.tokens[:, :P])  # (B', P, D)
        codes = torch.zeros(B, N, dtype=torch.long, device=self.device)
        cache = KVCache(cfg.n_layer) if use_cache else None
        for j in range(N):
            end = P + j  # positions [0, end) are known; with a cache, x holds only those not yet fed
            start = end - x.shape[1]
            h = self.transformer(x, full_mask[:, start:end, :end], batch.positions[:, start:end], cache=cache)
            if known_codes is not None and j < known_codes.shape[1]:
                codes[:, j] = known_codes[:, j]
            else:
                logits = guided(self.code_head(h[:, -1]).float(), cfg_scale)
                codes[:, j] = sample_from_logits(logits, generator, temperature, top_k, top_p)
            step_codes = codes[:, j].repeat(2 if cfg_scale else 1)  # the same code for cond and uncond rows
            x_new = (self.code_emb(step_codes) + grid[j])[:, None]  # (B', 1, D)
            x = x_new if use_cache else torch.cat([x, x_new], 1)
        return codes, N
