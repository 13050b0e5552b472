"""Masked mode (Show-o, MaskGIT): an image is a grid of VQ codes, some replaced by [MASK], all predicted at once.

Training hides a random fraction of a caption's image codes and asks for the hidden ones in one forward pass.
Attention inside the image is bidirectional (Show-o's omni-attention: causal over the text, full within the
image), so every masked code sees every visible code and the caption:

    L = L_text + λ · Σ_{j masked} -log p(c_j | caption, visible codes)

The fraction masked is γ(u) with u ~ U(0, 1) and γ a decreasing schedule (MaskGIT: cosine γ(u) = cos(πu/2)), so
training sees every masking level the sampler will pass through. The image-to-text order reads the clean image
and learns the caption after it (Show-o's [MMU] task); the [T2I] / [MMU] task token in front says which.

Sampling (MaskGIT) starts from an all-[MASK] image and runs T steps. Each step predicts every masked code, then
keeps the most confident ones so that N·γ((t+1)/T) codes remain masked; the rest wait for a later step with more
context. T steps, not N, is the whole point: 8 evaluations instead of AR's 49.

The caption never changes during sampling and, under the omni mask, never attends to the image, so its keys and
values are computed once and reused by all T steps (`KVCache.crop` back to the prompt after each step). Show-o
recomputes it every step; benchmarks/masked_prefix_cache.py measures what the cache saves.

Vocabulary: the code embedding has K+1 rows (row K is [MASK], an input only); the head predicts the K real codes,
so [MASK] can never be sampled or committed.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from minimfm.model import MultimodalModel
from minimfm.modes.sampling import (choice_noise_scale, guided, gumbel_noise, masked_counts, most_confident,
                                    repeat_for_guidance, sample_from_logits, training_mask)
from minimfm.transformer import KVCache, init_weights

CHOICE_TEMPERATURE = 4.5  # MaskGIT's Gumbel-noise scale on the confidences at step 0 (annealed to 0)


class MaskedModel(MultimodalModel):
    """Show-o-style unified model: bidirectional masked-code prediction for images, causal LM for text."""

    mode = "masked"
    mask_kind = "omni"
    task_tokens = True

    def __init__(self, cfg, tok, image_tokenizer, max_text_len):
        super().__init__(cfg, tok, image_tokenizer, max_text_len)
        K = image_tokenizer.codebook_size
        self.mask_code = K  # an input only: the head below has no row for it
        self.code_emb = nn.Embedding(K + 1, cfg.d_model)
        self.code_head = nn.Linear(cfg.d_model, K, bias=False)
        init_weights(self.code_emb)
        init_weights(self.code_head)
        self.last_order: torch.Tensor | None = None  # (B, N) step at which each code was fixed, -1 = known

    def embed_images(self, codes: torch.Tensor) -> torch.Tensor:
        return self.code_emb(codes)  # (B, N, D); codes may hold mask_code

    # -------------------------------------------------------------------------------------- training
    def training_mask(self, generate: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(M, N) bool: codes to hide, a ratio γ(u) drawn per IMAGE. A generated image hides max(1, ceil(γ(u)·N)),
        a read one (image-to-text, an edit's source) none."""
        return training_mask(generate, self.n_image, self.cfg.mask_schedule, generator).to(self.device)

    def sequence_loss(self, batch, codes, generate, generator):
        # dropped captions (training_loss): same masking, trains the unconditional model
        hide = self.training_mask(generate, generator)  # (M, N)
        h = self.hidden(batch, self.embed_images(codes.masked_fill(hide, self.mask_code)))  # (B, T, D)
        logits = self.code_head(self.image_hidden(h, batch.modality)[hide]).float()  # (n_hidden, K)
        # mean over the hidden codes of all images (an image counts by how many it hides, as a row did before);
        # a batch with no generated image has none and contributes 0, not NaN
        image_loss = F.cross_entropy(logits, codes[hide], reduction="sum") / hide.sum().clamp(min=1)
        return self.combine(self.text_loss(h, batch), image_loss)

    # -------------------------------------------------------------------------------------- sampling
    def image_logits(self, codes: torch.Tensor, batch, full_mask: torch.Tensor, cache: KVCache | None
                     ) -> torch.Tensor:
        """(B', N) current codes -> (B', N, K) code logits; one transformer evaluation.

        With a cache holding the prompt, only the N image positions are fed; their mask rows are the image rows
        of the full omni mask, keys up to the end of the image. Without one, prompt + image are recomputed.
        """
        P, N = self.layout.prompt_length(), self.n_image
        if cache is not None:
            x = self.embed_images(codes) + self.image_grid_embedding()  # (B', N, D)
            h = self.transformer(x, full_mask[:, P:P + N, :P + N], batch.positions[:, P:P + N], cache=cache)
            cache.crop(P)  # drop this step's image keys: the next step's image differs
        else:
            x = self.embed_sequence(batch.tokens[:, :P + N], batch.modality[:, :P + N], self.embed_images(codes))
            h = self.transformer(x, full_mask[:, :P + N, :P + N], batch.positions[:, :P + N])[:, P:]
        return self.code_head(h).float()  # (B', N, K)

    @torch.no_grad()
    def sample_after(self, prefix, *, steps=None, known=None, known_mask=None, cfg_scale, generator,
                     temperature=None, top_k=None, top_p=None, choice_temperature: float = CHOICE_TEMPERATURE):
        """Codes (B, N) after the prefix's sequences in T = `steps` parallel steps (MaskGIT); NFE = T.

        Each step samples a code at every masked position (temperature, top-k/p), scores it by log p + Gumbel
        noise scaled by choice_temperature·(1 − (t+1)/T), and fixes the most confident ones. The noise lets a
        less likely position win early (diversity) and vanishes by the last step. Guidance is
        cond + s·(cond − uncond) on the logits (`guided`; Show-o's (1+s)·cond − s·uncond is the same), with
        the unconditional rows (the prefix's rows [B:], the null prompt learnt via caption dropout) batched with
        the conditional ones. Written this way so s = 0 is exactly the conditional model (the --cfg-scale
        convention of every mode); it acts on the logits, so both the sampled code and its confidence come from
        the guided distribution. With known codes the unconditional rows see them too: guidance pushes towards
        the caption GIVEN them.

        Inpainting / extrapolation: positions with known_mask (B, N) start as the codes in `known` and are never
        changed; the schedule runs over the unknown positions only. Sets `self.last_order` (B, N): the step at
        which each code was fixed, -1 for known codes. The prefix's keys/values are read by every step, never
        recomputed: a step feeds only the N image positions, then crops the cache back to the prefix.
        """
        def image_logits(codes):  # (B', N) -> (B', N, K)
            x = self.embed_images(codes) + self.image_grid_embedding()  # (B', N, D)
            h = self.transformer(x, prefix.mask, prefix.positions, cache=prefix.cache)
            prefix.cache.crop(prefix.length)  # drop this step's image keys: the next step's image differs
            return self.code_head(h).float()
        B = len(prefix.last) // (2 if cfg_scale else 1)
        return self.decode_codes(image_logits, B, steps, known, known_mask, cfg_scale, generator,
                                 temperature, top_k, top_p, choice_temperature)

    def decode_codes(self, image_logits, B, steps, known, known_mask, cfg_scale, generator, temperature, top_k,
                     top_p, choice_temperature) -> tuple[torch.Tensor, int]:
        """The MaskGIT loop (see sample_after) over `image_logits`: (B', N) codes -> (B', N, K), one evaluation."""
        cfg = self.cfg
        T = self.sampling_steps(steps)
        temperature = cfg.temperature if temperature is None else temperature
        top_k = cfg.top_k if top_k is None else top_k
        top_p = cfg.top_p if top_p is None else top_p
        N, dev = self.n_image, self.device
        known, known_mask = self.check_known(known, known_mask, B)
        masked = torch.ones(B, N, dtype=torch.bool, device=dev) if known_mask is None else ~known_mask
        codes = torch.full((B, N), self.mask_code, dtype=torch.long, device=dev)
        if known is not None:
            codes = torch.where(known_mask, known, codes)
        order = torch.full((B, N), -1, dtype=torch.long, device=dev)
        still_masked = masked_counts(masked.sum(1), T, cfg.mask_schedule)  # (T, B)
        for t in range(T):
            both = repeat_for_guidance(codes, cfg_scale)  # the same image for cond and uncond rows
            logits = guided(image_logits(both), cfg_scale)  # (B, N, K)
            sampled = sample_from_logits(logits.flatten(0, 1), generator, temperature, top_k, top_p).view(B, N)
            log_p = logits.log_softmax(-1).gather(-1, sampled[..., None])[..., 0]  # (B, N)
            confidence = log_p + choice_noise_scale(choice_temperature, t, T) * gumbel_noise((B, N), generator, dev)
            fix = most_confident(confidence, masked, masked.sum(1) - still_masked[t])
            codes = torch.where(fix, sampled, codes)
            order = order.masked_fill(fix, t)
            masked = masked & ~fix
        self.last_order = order
        return codes, T

    @torch.no_grad()
    def sample_images(self, prompts, *, steps=None, known=None, known_mask=None, cfg_scale, generator,
                      temperature=None, top_k=None, top_p=None, choice_temperature: float = CHOICE_TEMPERATURE,
                      use_cache: bool = True):
        """Codes (B, N) for prompt ids: `sample_after` on the prompts read once (`prompt_prefix`).

        use_cache=False is the reference the cache must equal: every step re-reads the prompt with the image
        (Show-o's way; same codes, tests/test_masked.py; benchmarks/masked_prefix_cache.py measures the cost).
        """
        if use_cache:
            return self.sample_after(self.prompt_prefix(prompts, cfg_scale), steps=steps, known=known,
                                     known_mask=known_mask, cfg_scale=cfg_scale, generator=generator,
                                     temperature=temperature, top_k=top_k, top_p=top_p,
                                     choice_temperature=choice_temperature)
        self.sampling_steps(steps)  # a bad step count fails before the prompt is packed
        batch, full_mask, _ = self.prompt_batch(prompts, cfg_scale)
        return self.decode_codes(lambda codes: self.image_logits(codes, batch, full_mask, None), len(prompts),
                                 steps, known, known_mask, cfg_scale, generator, temperature, top_k, top_p,
                                 choice_temperature)
