"""The multimodal model: text embedding + the shared transformer + text head, and a mode's image layers.

`MultimodalModel` holds everything the three modes share: the text side (embedding, head, next-token loss),
the 2-D grid embedding of image positions, the sequence layout, captioning and the image-generation entry point.
A mode (minimfm/modes/*.py) subclasses it and supplies only what makes it different:

    embed_images(rep)            image representation (codes or latents) -> (B, N, D) transformer inputs
    sequence_loss(batch, rep, generate, generator)
                                 the image loss (+ the shared text loss) of a packed batch with M images
    sample_after(prefix, *, steps, known, known_mask, cfg_scale, generator)
                                 its sampler: one code at a time, T masked steps, or S denoising steps, for the
                                 image that follows a Prefix (a sequence already read into a KV cache)
    sample_images(prompts, ...)  the same for caption prompts: `prompt_prefix` reads them, then sample_after

so each paper's idea sits in one file and nothing here branches on the mode. Every sampler takes the same
arguments: `steps` (None = the mode's default; a mode without a step knob refuses a number), `known` and
`known_mask` (B, N) for inpainting / completion, `cfg_scale` and `generator`; mode-specific options
(temperature, the cache switch, ...) come after as keywords. A Prefix is built from caption prompts
(`prompt_prefix`) or from the generation loop's cache (`sequence_prefix`, minimfm/generate.py), so an image can
depend on everything before it, earlier images included. The registry (minimfm/modes/__init__.py) names
the modes and what the rest of minimfm needs to know about each.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from minimfm.config import Config
from minimfm.masks import PAD, TEXT, attention_mask
from minimfm.modes import get_mode
from minimfm.modes.sampling import with_unconditional
from minimfm.sequence import IGNORE, Batch, Layout, pack
from minimfm.segments import SegmentBatch
from minimfm.tokenizers.text import TextTokenizer
from minimfm.transformer import KVCache, Transformer, init_weights


@dataclass
class Prefix:
    """Everything before an image, already read into a KV cache: what a sampler continues.

    Transfusion §2.3 (and Chameleon's mixed-modal decoding): the model emits [BOI], and the image is generated
    after the sequence so far, whose keys/values are reused rather than recomputed. Rows [:B] are the sequences
    to continue; when guiding, rows [B:] are their unconditional twins (the mode's null prompt), left-padded to
    the same length P so that one transformer call serves both: padding keys are masked out and RoPE sees only
    distances. Masked, diffusion and mar samplers crop the cache back to P after each pass; ar appends its codes,
    so a Prefix serves one image.
    """
    cache: KVCache           # (B', H, P, Dh) per layer: keys/values of the P prefix positions
    last: torch.Tensor       # (B', D) output at position P - 1 ([BOI]): ar predicts its first code from it
    mask: torch.Tensor       # (B', N, P + N) the image's rows of the full attention mask
    positions: torch.Tensor  # (B', N) the image's rotary positions
    length: int              # P


class MultimodalModel(nn.Module):
    """One transformer over interleaved text and image positions (Chameleon / Show-o / Transfusion backbone).

    Text uses a word embedding and a linear head over the text vocabulary. Image positions get their input from
    the mode plus a learned row + column embedding: the transformer's rotary positions are 1-D over the whole
    sequence, and the grid embedding is what tells a position which pixel block of the image it holds.
    """

    mode: str = ""            # a name in minimfm.modes.REGISTRY
    mask_kind: str = "causal"  # attention among image positions: "causal" or "omni" (bidirectional in the image)
    task_tokens: bool = False  # Show-o's [T2I] / [MMU] in front of each sequence

    def __init__(self, cfg: Config, tok: TextTokenizer, image_tokenizer: nn.Module, max_text_len: int):
        super().__init__()
        self.cfg, self.tok = cfg, tok
        self.image_tokenizer = image_tokenizer.eval().requires_grad_(False)  # frozen, saved with the model
        self.grid = tuple(image_tokenizer.grid)
        h, w = self.grid
        self.layout = Layout(max_text_len, h * w, self.task_tokens)
        D = cfg.d_model
        self.text_emb = nn.Embedding(len(tok), D)
        self.row_emb, self.col_emb = nn.Embedding(h, D), nn.Embedding(w, D)
        self.transformer = Transformer(D, cfg.n_layer, cfg.n_head, cfg.mlp_ratio, cfg.dropout,
                                       adaln=self.uses_adaln())
        self.text_head = nn.Linear(D, len(tok), bias=False)
        for m in (self.text_emb, self.row_emb, self.col_emb, self.text_head):
            init_weights(m)

    def uses_adaln(self) -> bool:
        return False

    # ------------------------------------------------------------------------------------------- pieces
    @property
    def n_image(self) -> int:
        return self.layout.n_image

    @property
    def device(self) -> torch.device:
        return self.text_emb.weight.device

    @property
    def default_steps(self) -> int | None:
        """The config's sampling steps for this mode (T or S); None for a mode without a step knob (ar)."""
        field = get_mode(self.mode).steps_field
        return None if field is None else getattr(self.cfg, field)

    def sampling_steps(self, steps: int | None) -> int:
        """The steps a sampler runs: the default when None; a clear refusal for a bad or meaningless number."""
        if self.default_steps is None:
            if steps is not None:
                raise ValueError(f"--steps: the {self.mode} mode has no step count (it makes one code per "
                                 f"transformer evaluation, {self.n_image} per image); leave --steps out")
            return self.n_image
        steps = self.default_steps if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"--steps: must be a whole number >= 1, got {steps!r}")
        return steps

    def prompt_batch(self, prompts: list[list[int]], cfg_scale: float) -> tuple[Batch, torch.Tensor, int]:
        """What every sampler starts from: the text-to-image prompts packed (followed by as many empty captions
        when guiding, the unconditional rows), their full attention mask, and P, where the image starts."""
        rows = with_unconditional(prompts, cfg_scale)
        batch = self.pack(rows, torch.ones(len(rows), dtype=torch.bool))
        return batch, self.mask(batch.modality), self.layout.prompt_length()

    @torch.no_grad()
    def prompt_prefix(self, prompts: list[list[int]], cfg_scale: float) -> Prefix:
        """Caption prompts (and, when guiding, as many empty captions) packed by `prompt_batch` and read once:
        the Prefix `sample_images` hands to the mode's `sample_after`."""
        batch, full_mask, P = self.prompt_batch(prompts, cfg_scale)
        N, cache = self.n_image, KVCache(self.cfg.n_layer)
        h = self.transformer(self.text_emb(batch.tokens[:, :P]), full_mask[:, :P, :P], batch.positions[:, :P],
                             cache=cache)  # (B', P, D)
        return Prefix(cache, h[:, -1], full_mask[:, P:P + N, :P + N], batch.positions[:, P:P + N], P)

    @torch.no_grad()
    def sequence_prefix(self, cache: KVCache, modality: list[int], last: torch.Tensor, cfg_scale: float) -> Prefix:
        """One sequence read by the generation loop (its cache, the modality of each position, its output `last`
        (D,) at the last position, a [BOI]) as the Prefix of its next image. Nothing is copied and the loop's
        cache is never changed: KVCache.update concatenates into new tensors and crop only slices.

        Guidance needs what the model learnt as "no condition": the null prompt of prompt_batch (an empty
        caption, [T2I]? [BOS] [BOI]), read here in one short pass (2-3 positions) and placed so that its image
        starts where the sequence's does, its keys left-padded to the sequence's length."""
        L, N, dev = len(modality), self.n_image, self.device
        # the modality of each row's prefix and image: the image is numbered after every earlier one (sees them)
        rows = [list(modality) + [max(modality) + 1] * N]
        ks, vs, lasts = [cache.k], [cache.v], [last.reshape(1, -1)]  # per row: per layer (1, H, length, Dh)
        if cfg_scale:
            null = self.pack([[]], torch.ones(1, dtype=torch.bool))
            ids = null.tokens[:, null.modality[0] == TEXT][:, :-2]  # (1, u): drop [EOI] [EOS] after the image
            u = ids.shape[1]
            null_cache = KVCache(self.cfg.n_layer)
            causal = torch.ones(u, u, dtype=torch.bool, device=dev).tril()[None]  # (1, u, u)
            h = self.transformer(self.text_emb(ids), causal, torch.arange(L - u, L, device=dev)[None],
                                 cache=null_cache)  # (1, u, D)
            rows.append([TEXT] * u + [1] * N)
            ks, vs, lasts = ks + [null_cache.k], vs + [null_cache.v], lasts + [h[:, -1]]
        P = max(map(len, rows)) - N

        def stack(per_row):  # (1, H, length, Dh) per row -> (B', H, P, Dh); left padding, masked out below
            return torch.cat([torch.cat([t.new_zeros(*t.shape[:2], P - t.shape[2], t.shape[3]), t], 2)
                              for t in per_row])
        padded = KVCache(self.cfg.n_layer)
        padded.k, padded.v = [stack(layer) for layer in zip(*ks)], [stack(layer) for layer in zip(*vs)]
        modality_rows = torch.tensor([[PAD] * (P + N - len(r)) + r for r in rows], device=dev)  # (B', P + N)
        mask = self.mask(modality_rows)[:, P:]  # (B', N, P + N)
        positions = torch.arange(L, L + N, device=dev).expand(len(rows), N)  # (B', N) both rows' image at L
        return Prefix(padded, torch.cat(lasts), mask, positions, P)

    def check_known(self, known: torch.Tensor | None, known_mask: torch.Tensor | None, B: int
                    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Inpainting inputs on the model's device: both or neither, `known_mask` (B, N) bool."""
        if (known is None) != (known_mask is None):
            raise ValueError("inpainting needs both known (B, N[, d]) and known_mask (B, N)")
        if known is None:
            return None, None
        if known_mask.shape != (B, self.n_image) or tuple(known.shape[:2]) != (B, self.n_image):
            raise ValueError(f"known and known_mask must start with ({B}, {self.n_image}), got "
                             f"{tuple(known.shape)} and {tuple(known_mask.shape)}")
        return known.to(self.device), known_mask.to(self.device, torch.bool)

    def image_grid_embedding(self) -> torch.Tensor:
        """(N, D) learned 2-D position of each image position, raster order."""
        h, w = self.grid
        rows = self.row_emb.weight[:, None, :].expand(h, w, -1)  # (h, w, D)
        cols = self.col_emb.weight[None, :, :].expand(h, w, -1)  # (h, w, D)
        return (rows + cols).reshape(h * w, -1)  # (N, D)

    def embed_images(self, rep: torch.Tensor) -> torch.Tensor:
        """Mode hook: image representation -> (B, N, D) inputs, WITHOUT the grid embedding (added here)."""
        raise NotImplementedError

    def transformer_kwargs(self, modality: torch.Tensor, **image_state) -> dict:
        """Mode hook: extra conditioning for the transformer (the diffusion mode's adaLN timestep)."""
        return {}

    def embed_sequence(self, tokens: torch.Tensor, modality: torch.Tensor,
                       image_inputs: torch.Tensor | None) -> torch.Tensor:
        """Text embeddings everywhere, then the image inputs (M, N, D) written into the image positions.

        M = B for one image per row; a segment batch (minimfm/segments.py) has M images in reading order, each
        numbered k >= 1 in `modality`, and they fill the positions in that same order."""
        x = self.text_emb(tokens)  # (B, T, D)
        if image_inputs is not None:
            image_inputs = image_inputs + self.image_grid_embedding()
            x = x.masked_scatter((modality >= 1)[..., None], image_inputs.to(x.dtype))
        return x

    def mask(self, modality: torch.Tensor) -> torch.Tensor:
        return attention_mask(modality, self.mask_kind)

    def hidden(self, batch: Batch, image_inputs: torch.Tensor | None, **kwargs) -> torch.Tensor:
        """Full-sequence forward: (B, T, D) final hidden states (dense mask, or FlexAttention with --attention flex)."""
        x = self.embed_sequence(batch.tokens, batch.modality, image_inputs)
        if self.cfg.attention == "flex":
            from minimfm.masks import flex_block_mask
            block_mask = flex_block_mask(batch.modality, self.mask_kind)  # skips fully masked 128x128 tiles
            return self.transformer(x, None, batch.positions, block_mask=block_mask, **kwargs)
        return self.transformer(x, self.mask(batch.modality), batch.positions, **kwargs)

    def text_loss(self, h: torch.Tensor, batch: Batch) -> torch.Tensor:
        scored = batch.text_targets != IGNORE  # score only positions with a text target (saves the head matmul)
        logits = self.text_head(h[scored])  # (n_scored, V)
        return F.cross_entropy(logits.float(), batch.text_targets[scored])

    def pack(self, captions: list[list[int]], t2i: torch.Tensor, drop: torch.Tensor | None = None) -> Batch:
        """Pack a batch; captions of text-to-image rows with drop=True become empty (unconditional, for CFG)."""
        if drop is not None:
            captions = [[] if (d and f) else c for c, d, f in zip(captions, drop.tolist(), t2i.tolist())]
        return pack(captions, t2i, self.tok, self.layout).to(self.device)

    # -------------------------------------------------------------------------------------- training
    def forward(self, *inputs) -> tuple[torch.Tensor, dict]:
        """The training loss: forward() is what DistributedDataParallel and torch.compile wrap (train.py).
        Two input forms: a caption batch (captions, rep, t2i, drop, generator) goes to `training_loss`; a packed
        segment batch (SegmentBatch, rep, generate, generator: minimfm/mixed_data.py) to `sequence_loss`.
        Sampling and captioning have their own methods."""
        if isinstance(inputs[0], SegmentBatch):
            return self.sequence_loss(*inputs)
        return self.training_loss(*inputs)

    def training_loss(self, captions: list[list[int]], rep: torch.Tensor, t2i: torch.Tensor, drop: torch.Tensor,
                      generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        """Total loss and a dict of floats to log for one caption and one image per row: `rep` codes (B, N) or
        latents (B, N, d); the image of a text-to-image row is the one generated, an image-to-text row reads it."""
        return self.sequence_loss(self.pack(captions, t2i, drop), rep, t2i, generator)

    def sequence_loss(self, batch: Batch | SegmentBatch, rep: torch.Tensor, generate: torch.Tensor,
                      generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        """Mode hook: the loss of a packed batch holding M images, one per row (sequence.Batch) or any number
        (segments.SegmentBatch). `rep` (M, N) codes or (M, N, d) latents in reading order (row 0's images, then
        row 1's, ...); `generate` (M,) bool: the image is generated (noised over the whole schedule, masked),
        not read as context. Each image draws its own corruption (Transfusion: a timestep and noise per image)."""
        raise NotImplementedError

    def image_index(self, batch: Batch | SegmentBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(M,) row and (M,) first position of each image, in reading order (the order of `rep`)."""
        start = batch.image_start
        if start.dim() == 1:  # sequence.Batch: exactly one image per row
            return torch.arange(len(start), device=start.device), start
        row, k = torch.nonzero(start >= 0, as_tuple=True)  # row-major: the reading order
        return row, start[row, k]

    def image_hidden(self, h: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (M, N, D): the outputs at the image positions; every image is N consecutive positions."""
        return h[modality >= 1].view(-1, self.n_image, h.shape[-1])

    def extra_step_flops(self, batch_size: int) -> float:
        """Mode hook: training FLOPs of modules marked `counted_by_mode` (see minimfm/flops.py); none here."""
        return 0.0

    def combine(self, text_loss: torch.Tensor, image_loss: torch.Tensor) -> tuple[torch.Tensor, dict]:
        loss = self.cfg.text_loss_weight * text_loss + self.cfg.image_loss_weight * image_loss
        return loss, {"loss": loss.item(), "text_loss": text_loss.item(), "image_loss": image_loss.item()}

    # ----------------------------------------------------------------------------------- generation
    def encode_prompts(self, prompts: list[str]) -> list[list[int]]:
        """Caption-style prompts -> ids; an unknown word raises the tokenizer's UnknownWordError."""
        ids = [self.tok.encode(p) for p in prompts]
        too_long = [p for p, i in zip(prompts, ids) if len(i) > self.layout.max_text_len]
        if too_long:
            raise ValueError(f"prompt longer than {self.layout.max_text_len} words: '{too_long[0]}'")
        return ids

    def sample_after(self, prefix: Prefix, *, steps: int | None = None, known: torch.Tensor | None = None,
                     known_mask: torch.Tensor | None = None, cfg_scale: float, generator: torch.Generator,
                     **options) -> tuple[torch.Tensor, int]:
        """Mode hook: the image after each of the prefix's B sequences, (B, N) codes or (B, N, d) latents, and the
        transformer evaluations (NFE) used. `cfg_scale` must be the one the prefix was built with."""
        raise NotImplementedError

    def sample_images(self, prompts: list[list[int]], *, steps: int | None = None,
                      known: torch.Tensor | None = None, known_mask: torch.Tensor | None = None,
                      cfg_scale: float, generator: torch.Generator, **options) -> tuple[torch.Tensor, int]:
        """Image representations for prompt ids, and the transformer evaluations (NFE) used: the prompts are
        read once (`prompt_prefix`) and the mode's `sample_after` continues them. A mode may override this to
        offer a reference path that recomputes the prompt at every pass (`use_cache=False`)."""
        return self.sample_after(self.prompt_prefix(prompts, cfg_scale), steps=steps, known=known,
                                 known_mask=known_mask, cfg_scale=cfg_scale, generator=generator, **options)

    @torch.no_grad()
    def generate_images(self, prompts: list[str], *, steps: int | None = None, cfg_scale: float | None = None,
                        seed: int = 0, **options) -> torch.Tensor:
        """Images [B, C, H, W] in [0, 1] for caption-style prompts. Sets `self.last_nfe` (evaluations per image)."""
        ids = self.encode_prompts(prompts)
        generator = torch.Generator(self.device).manual_seed(seed)
        scale = self.cfg.cfg_scale if cfg_scale is None else cfg_scale
        rep, self.last_nfe = self.sample_images(ids, steps=steps, cfg_scale=scale, generator=generator, **options)
        return self.decode_images(rep)

    def decode_images(self, rep: torch.Tensor) -> torch.Tensor:
        h, w = self.grid
        if rep.dim() == 2:  # discrete codes (B, N)
            return self.image_tokenizer.decode(rep.view(-1, h, w)).clamp(0, 1)
        return self.image_tokenizer.decode(rep).clamp(0, 1)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> this mode's representation (codes (B, N) or latents (B, N, d)) with the frozen tokenizer."""
        rep = self.image_tokenizer.encode(images.to(self.device))
        return rep.flatten(1) if rep.dtype == torch.long else rep

    # ------------------------------------------------------------------------------------- captioning
    def reading_inputs(self, rep: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Image inputs (B, N, D) and transformer kwargs for an image that is READ (clean, fully known)."""
        return self.embed_images(rep), {}

    @torch.no_grad()
    def caption(self, images: torch.Tensor, max_len: int | None = None) -> list[str]:
        """Greedy captions for images [B, C, H, W]: `[BOS] [BOI] image [EOI]`, then one word per step (KV cache)."""
        ids = self.caption_ids(self.encode_images(images), max_len)
        return [self.tok.decode(seq) for seq in ids]

    @torch.no_grad()
    def caption_ids(self, rep: torch.Tensor, max_len: int | None = None) -> list[list[int]]:
        B = rep.shape[0]
        max_len = max_len or self.layout.max_text_len + 1
        batch = self.pack([[] for _ in range(B)], torch.zeros(B, dtype=torch.bool))
        prefix = int(batch.image_start[0]) + self.n_image + 1  # up to and including [EOI]
        image_inputs, kwargs = self.reading_inputs(rep)
        x = self.embed_sequence(batch.tokens, batch.modality, image_inputs)[:, :prefix]
        full_mask = self.mask(batch.modality)
        cache = KVCache(self.cfg.n_layer)
        kwargs = {k: (v[:, :prefix] if torch.is_tensor(v) else v) for k, v in kwargs.items()}
        h = self.transformer(x, full_mask[:, :prefix, :prefix], batch.positions[:, :prefix], cache=cache, **kwargs)
        out = torch.zeros(B, 0, dtype=torch.long, device=self.device)
        done = torch.zeros(B, dtype=torch.bool, device=self.device)
        for step in range(max_len):
            next_id = self.text_head(h[:, -1]).argmax(-1)  # (B,)
            next_id = torch.where(done, torch.full_like(next_id, self.tok.pad_id), next_id)
            out = torch.cat([out, next_id[:, None]], 1)
            done |= next_id == self.tok.eos_id
            if bool(done.all()) or step == max_len - 1:
                break
            pos = prefix + step
            # the caption extends the text; the causal row for this position sees everything before it
            mask = torch.ones(B, 1, pos + 1, dtype=torch.bool, device=self.device)
            h = self.transformer(self.text_emb(next_id[:, None]), mask,
                                 torch.full((B, 1), pos, device=self.device), cache=cache)
        return [[t for t in row if t not in (self.tok.eos_id, self.tok.pad_id)] for row in out.tolist()]

    @torch.no_grad()
    def caption_nll(self, rep: torch.Tensor, captions: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced negative log-likelihood of true captions (+[EOS]) after the image: (sum per row, count)."""
        B = rep.shape[0]
        batch = self.pack(captions, torch.zeros(B, dtype=torch.bool))
        image_inputs, kwargs = self.reading_inputs(rep)
        h = self.hidden(batch, image_inputs, **kwargs)
        # score positions from [EOI] onwards: the caption words and the closing [EOS]
        after_image = torch.arange(batch.tokens.shape[1], device=self.device)[None] >= \
            (batch.image_start + self.n_image)[:, None]
        scored = (batch.text_targets != IGNORE) & after_image
        logits = self.text_head(h).float()
        nll = F.cross_entropy(logits.transpose(1, 2), batch.text_targets.clamp(min=0), reduction="none")
        return (nll * scored).sum(1), scored.sum(1)
