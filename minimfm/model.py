"""The multimodal model: text embedding + the shared transformer + text head, and a mode's image layers.

`MultimodalModel` holds everything the three modes share: the text side (embedding, head, next-token loss),
the 2-D grid embedding of image positions, the sequence layout, captioning and the image-generation entry point.
A mode (minimfm/modes/*.py) subclasses it and supplies only what makes it different:

    embed_images(rep)            image representation (codes or latents) -> (B, N, D) transformer inputs
    training_loss(...)           the image loss (+ the shared text loss)
    sample_images(prompts, *, steps, known, known_mask, cfg_scale, generator)
                                 its sampler: one code at a time, T masked steps, or S denoising steps

so each paper's idea sits in one file and nothing here branches on the mode. Every sampler takes the same
arguments: `steps` (None = the mode's default; a mode without a step knob refuses a number), `known` and
`known_mask` (B, N) for inpainting / completion, `cfg_scale` and `generator`; mode-specific options
(temperature, the cache switch, ...) come after as keywords. The registry (minimfm/modes/__init__.py) names
the modes and what the rest of minimfm needs to know about each.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from minimfm.config import Config
from minimfm.masks import attention_mask
from minimfm.modes import get_mode
from minimfm.modes.sampling import with_unconditional
from minimfm.sequence import IGNORE, Batch, Layout, pack
from minimfm.tokenizers.text import TextTokenizer
from minimfm.transformer import KVCache, Transformer, init_weights


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
    def forward(self, captions: list[list[int]], rep: torch.Tensor, t2i: torch.Tensor, drop: torch.Tensor,
                generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        """The training loss: forward() is what DistributedDataParallel and torch.compile wrap (train.py).
        Sampling and captioning have their own methods."""
        return self.training_loss(captions, rep, t2i, drop, generator)

    def training_loss(self, captions: list[list[int]], rep: torch.Tensor, t2i: torch.Tensor, drop: torch.Tensor,
                      generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        """Mode hook: total loss and a dict of floats to log. `rep` are codes (B, N) or latents (B, N, d)."""
        raise NotImplementedError

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

    def sample_images(self, prompts: list[list[int]], *, steps: int | None = None,
                      known: torch.Tensor | None = None, known_mask: torch.Tensor | None = None,
                      cfg_scale: float, generator: torch.Generator, **options) -> tuple[torch.Tensor, int]:
        """Mode hook: image representations for prompt ids, and the transformer evaluations (NFE) used."""
        raise NotImplementedError

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
