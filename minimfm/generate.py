"""Interleaved generation: the model writes text until IT emits [BOI], the mode draws that image, [EOI] follows and
the text goes on until [EOS] (Transfusion §2.3 / §3: "the model emits BOI and switches to diffusion"; Chameleon's
mixed-modal decoding). The caller gives known text (and images); the model decides when an image comes.

    prompt   [T2I] [BOS] the digit 3 ,    known text, read in one pass into the loop's KV cache
    text     written thin [BOI]           one cached step per word, greedy or sampled
    image    ▢ ▢ ▢ ▢                       the mode's sampler, continuing the loop's cache (model.sample_after)
    read     ▢ ▢ ▢ ▢ [EOI]                 the finished image read back, clean, into the loop's cache
    text     [EOS]                         (or more words, another [BOI], ...)

The model may only choose words, [BOI] or [EOS]: [EOI] is forced after an image (it has a fixed size N, so
Chameleon forces it too) and the other special tokens never follow text, so the modality switches only on
[BOI] / [EOI]. Models with Show-o's task tokens (masked, mar) get [T2I] in front: "text, then an image" is the
only sequence they were trained to continue with an image.

What is reused and what is recomputed:
- Reused: the loop's KV cache holds the whole sequence; a word costs one position, a finished image N, [EOI] one.
  The image sampler continues that cache (`model.sequence_prefix` -> `model.sample_after`): every pass feeds
  only the image's N positions (ar: one code) after the cached keys/values, so an image sees ALL that came
  before it, earlier images and their text included (editing, "draw the next digit"). For a one-image prompt
  it is the image `sample_images([caption])` draws with the same seed: the same random draws in the same order,
  only the layout differs (no left padding), so codes are equal and latents agree to ~1e-6 (tests/test_generate.py).
- Recomputed: with guidance, the unconditional branch's own short prefix, the mode's null prompt
  ([T2I]? [BOS] [BOI], 2-3 positions), once per image. The finished image is read once more, clean (t = 0,
  nothing masked), because the sampler's last pass saw it noisy or partly masked (ar's passes saw the same
  codes and could be kept; one pass of N positions is not worth a second code path).
- Training matches this: every image of a row has its own timestep / mask ratio / predictor offset
  (minimfm/segments.py), so the model has seen a clean earlier image beside the one being generated. Not done:
  batched decoding (rows in lockstep, per-row positions, idle rows masked); the loop runs one row at a time.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from minimfm.masks import TEXT
from minimfm.modes.sampling import sample_from_logits
from minimfm.segments import IMAGE, Segments, check
from minimfm.tokenizers.text import SPECIAL_TOKENS
from minimfm.transformer import KVCache


class Context:
    """The sequence so far as a KV cache: feed text or a finished image, read the next-token logits, draw an image.

    This is the loop's only view of the model, so tests can script it (tests/test_generate.py)."""

    def __init__(self, model, *, cfg_scale: float | None = None, steps: int | None = None,
                 generator: torch.Generator | None = None, **sampler_options):
        self.model, self.tok = model, model.tok
        self.cache = KVCache(model.cfg.n_layer)
        self.modality: list[int] = []  # 0 text, k image number k: the mask of every new position comes from it
        self.h: torch.Tensor | None = None  # (D,) output at the last position
        self.cfg_scale = model.cfg.cfg_scale if cfg_scale is None else cfg_scale
        self.steps, self.options = steps, sampler_options
        self.generator = generator or torch.Generator(model.device).manual_seed(0)
        self.nfe = 0

    @property
    def length(self) -> int:
        return len(self.modality)

    def _feed(self, x: torch.Tensor, modality: list[int], **kwargs) -> None:
        """Append x (1, n, D) at the next n positions; their mask rows are those of the full sequence's mask."""
        n = len(modality)
        self.modality += modality
        full = torch.tensor([self.modality], device=self.model.device)  # (1, T)
        T = full.shape[1]
        mask = self.model.mask(full)[:, T - n:]  # (1, n, T): the same rows a full forward pass would use
        positions = torch.arange(T - n, T, device=self.model.device)[None]  # (1, n)
        self.h = self.model.transformer(x, mask, positions, cache=self.cache, **kwargs)[0, -1]  # (D,)

    def feed_text(self, ids: list[int]) -> None:
        if ids:
            self._feed(self.model.text_emb(torch.tensor([ids], device=self.model.device)), [TEXT] * len(ids))

    def feed_image(self, rep: torch.Tensor) -> None:
        """Read a finished image, (N,) codes or (N, d) latents, as clean inputs (what captioning reads)."""
        model = self.model
        k = max(self.modality, default=0) + 1  # images are numbered 1, 2, ...: image k never sees image k + 1
        x = model.embed_images(rep[None].to(model.device)) + model.image_grid_embedding()  # (1, N, D)
        # adaLN (diffusion): these positions are image positions at t = 0; {} for every other mode
        kwargs = model.transformer_kwargs(torch.ones(1, model.n_image, dtype=torch.long, device=model.device))
        self._feed(x, [k] * model.n_image, **kwargs)

    def logits(self) -> torch.Tensor:
        """(V,) next-token logits at the last position fed."""
        return self.model.text_head(self.h).float()

    def draw(self) -> torch.Tensor:
        """The mode's sampler for the image after the sequence so far (which ends in [BOI]): (N,) codes or
        (N, d) latents. The sampler reads this cache (nothing is copied, nothing in it changes)."""
        prefix = self.model.sequence_prefix(self.cache, self.modality, self.h, self.cfg_scale)
        rep, nfe = self.model.sample_after(prefix, steps=self.steps, cfg_scale=self.cfg_scale,
                                           generator=self.generator, **self.options)
        self.nfe += nfe
        return rep[0]


@dataclass
class Generation:
    """What the loop produced: the whole sequence as segments (packable, minimfm/segments.py) and its images."""
    segments: Segments = field(default_factory=lambda: [[]])
    images: list[torch.Tensor] = field(default_factory=list)  # every image in order, known ones included:
    #                                                           codes (N,) or latents (N, d)
    drawn: list[int] = field(default_factory=list)            # which of them the mode drew
    chosen: list[int] = field(default_factory=list)           # the text ids the model chose (prompt excluded)
    logits: list[torch.Tensor] = field(default_factory=list)  # (V,) the logits each choice was made from
    read_at: list[int] = field(default_factory=list)          # the sequence index those logits came from

    def finished(self, tok) -> bool:
        """The model ended the sequence itself with [EOS] (not the length limit)."""
        return bool(self.chosen) and self.chosen[-1] == tok.eos_id

    def text(self, tok) -> str:
        """The sequence as one readable line, special tokens kept, images as <image k>."""
        parts, k = [], 0
        for seg in self.segments:
            if seg is IMAGE:
                k += 1
                parts.append(f"<image {k}>")
            else:
                parts.append(tok.decode(seg, skip_special=False))
        return " ".join(p for p in parts if p)


def encode_prompt(model, prompt: str) -> list[int]:
    """'a three' -> [T2I]? [BOS] a three. Special tokens may be written ('[BOS] a three [BOI]'); [BOS] and, for
    models with task tokens, [T2I] are added in front when the prompt does not start with them."""
    tok, ids = model.tok, []
    for word in prompt.split():
        ids += [tok.index[word]] if word in SPECIAL_TOKENS else tok.encode(word)
    if ids and ids[0] in (tok.t2i_id, tok.mmu_id):
        task = ids[:1]
        ids = ids[1:]
    else:
        task = [tok.t2i_id] if model.task_tokens else []
    return task + ([] if ids[:1] == [tok.bos_id] else [tok.bos_id]) + ids


# Edits sample without guidance unless asked. No training row drops an edit's instruction or source, so the only
# unconditional branch available is the caption task's null prompt (a generic digit), and extrapolating away from
# it is not "more of the edit": on 200 edits of training digits guidance 3 -> 1 raised identity kept 0.895 -> 0.950
# and moved 0.910 -> 0.990 (masked, trained in the mix from the start), 0.910 -> 0.935 and 0.990 -> 0.995
# (diffusion). InstructPix2Pix's null branch (the source kept, the instruction dropped) would need edit rows
# trained with the instruction dropped.
EDIT_CFG_SCALE = 1.0


def edit_prompt(model, instruction: list[int]) -> Segments:
    """Instruction editing as a generation prompt (Transfusion §4.3), the layout the edit fine-tune trains on
    (minimfm/mixed_data.py): [T2I]? [BOS] instruction [BOI] source [EOI] [BOI] -> the edited image; the source
    is the one known image."""
    tok = model.tok
    task = [tok.t2i_id] if model.task_tokens else []
    return [task + [tok.bos_id] + list(instruction) + [tok.boi_id], IMAGE, [tok.eoi_id, tok.boi_id]]


def _given_chunks(ids, boi: int) -> list[list[int]]:
    """[a, b, BOI, c, BOI, d] -> [[a, b, BOI], [c, BOI], [d]]: given text cut after each [BOI] ([] stays [[]])."""
    chunks, current = [], []
    for t in ids:
        current.append(int(t))
        if t == boi:
            chunks.append(current)
            current = []
    return chunks + [current] if current or not chunks else chunks


def check_prompt(prompt: Segments, tok) -> None:
    """segments.check for a prompt, where a [BOI] inside its last text asks for an image there (decode): ValueError
    unless the prompt, with each such image in place and its forced [EOI], is a well-formed sequence."""
    text_tail = bool(prompt) and prompt[-1] is not IMAGE
    given = _given_chunks(prompt[-1], tok.boi_id) if text_tail else []
    check(list(prompt[:-1] if text_tail else prompt) + given[:1] +  # each image to draw as if it were there
          [part for chunk in given[1:] for part in (IMAGE, [tok.eoi_id] + chunk)], tok)


def decode(ctx, prompt: Segments, known: list[torch.Tensor] = (), *, max_tokens: int = 48, max_images: int = 4,
           temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
           generator: torch.Generator | None = None) -> Generation:
    """The loop on a context: read the prompt (text segments, IMAGE for each of `known`), then choose text and draw
    images until [EOS] or `max_tokens` chosen ids. A [BOI] in the prompt's last text asks for an image there: the
    mode draws it, [EOI] follows, and the given text after it is read before the model chooses again ("a three,
    [BOI] then a seven [BOI]": the `then` template, its requests given, its images drawn)."""
    tok, out, known = ctx.tok, Generation(), list(known)
    generator = generator or torch.Generator().manual_seed(0)
    banned = [tok.pad_id, tok.bos_id, tok.eoi_id, tok.mask_id, tok.t2i_id, tok.mmu_id]  # never follow text
    check_prompt(prompt, tok)
    pending: list[int] = []
    for seg in prompt:  # known text and images: read, nothing chosen
        if seg is IMAGE:
            if not known:
                raise ValueError("the prompt has more IMAGE segments than known images")
            ctx.feed_text(pending)
            out.segments[-1] += pending
            out.images.append(known.pop(0))
            ctx.feed_image(out.images[-1])
            out.segments += [IMAGE, []]
            pending = []
        else:
            pending += list(seg)
    if known:
        raise ValueError(f"{len(known)} known images left over: the prompt has fewer IMAGE segments")
    if not pending and out.images:
        pending = [tok.eoi_id]  # the prompt ends with a known image: close it
    if not pending or pending[-1] == tok.eos_id:
        raise ValueError("the prompt must end in text, [BOI] or a known image, not be empty or end in [EOS]")
    n_images = out.segments.count(IMAGE)
    given = _given_chunks(pending, tok.boi_id)  # the prompt's tail, cut after each [BOI]: read between images
    pending = given.pop(0)
    while True:
        ctx.feed_text(pending)
        out.segments[-1] += pending
        if pending[-1] == tok.boi_id:  # the switch to the image, and the only one
            rep = ctx.draw()
            ctx.feed_image(rep)
            out.drawn.append(len(out.images))
            out.images.append(rep)
            out.segments += [IMAGE, []]
            n_images += 1
            pending = [tok.eoi_id] + (given.pop(0) if given else [])  # [EOI] forced: an image has N positions
            continue
        if pending[-1] == tok.eos_id or len(out.chosen) >= max_tokens:
            break
        logits = ctx.logits()  # (V,)
        allowed = logits.clone()
        allowed[banned + ([tok.boi_id] if n_images >= max_images else [])] = float("-inf")
        next_id = int(sample_from_logits(allowed[None], generator, temperature, top_k, top_p)[0])
        out.chosen.append(next_id)
        out.logits.append(logits)
        out.read_at.append(ctx.length - 1)
        pending = [next_id]
    return out


@torch.no_grad()
def generate(model, prompt: str | Segments, known: list[torch.Tensor] = (), *, max_tokens: int = 48,
             max_images: int = 4, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
             cfg_scale: float | None = None, steps: int | None = None, seed: int = 0,
             **sampler_options) -> Generation:
    """Interleaved generation for one prompt ('a three', '[BOS] the digit 3 ,', or segments with known images).

    Text is greedy by default (temperature 0); `cfg_scale`, `steps` and the keyword options go to the mode's
    sampler. Returns a Generation; `model.decode_images(torch.stack(g.images))` gives the pictures."""
    if isinstance(prompt, str):
        prompt = [encode_prompt(model, prompt)]
    generator = torch.Generator(model.device).manual_seed(seed)
    ctx = Context(model, cfg_scale=cfg_scale, steps=steps, generator=generator, **sampler_options)
    out = decode(ctx, prompt, known, max_tokens=max_tokens, max_images=max_images, temperature=temperature,
                 top_k=top_k, top_p=top_p, generator=generator)
    model.last_nfe = ctx.nfe
    return out


# ----------------------------------------------------------------------------------------------- pictures
def strip_parts(g: Generation, tok, pictures: torch.Tensor) -> list:
    """A generation as the cells of a strip, in reading order: the text of each text segment (special tokens
    dropped) and each image's picture [C, H, W] from `pictures` (model.decode_images of g.images)."""
    parts, k = [], 0
    for seg in g.segments:
        if seg is IMAGE:
            parts.append(pictures[k])
            k += 1
        elif tok.decode(seg):
            parts.append(tok.decode(seg))
    return parts


def save_strip(rows: list[list], path, title: str = "", scale: float = 1.4) -> None:
    """One row per generation, text cells beside the images they come before and after: a PNG, written
    atomically (never half a file)."""
    import io
    import textwrap

    import matplotlib.pyplot as plt

    from minimfm.checkpoint import _write_atomic
    ncols = max(1, max(len(r) for r in rows))
    fig, axes = plt.subplots(len(rows), ncols, figsize=(ncols * scale, len(rows) * scale + 0.4 * bool(title)),
                             squeeze=False)
    for r, row in enumerate(rows):
        for c, ax in enumerate(axes[r]):
            ax.axis("off")
            if c >= len(row):
                continue
            if isinstance(row[c], str):
                ax.text(0.5, 0.5, "\n".join(textwrap.wrap(row[c], 16)), ha="center", va="center", fontsize=8,
                        transform=ax.transAxes)
            else:
                img = row[c].detach().float().cpu().clamp(0, 1)
                ax.imshow(img[0] if img.shape[0] == 1 else img.permute(1, 2, 0), cmap="gray", vmin=0, vmax=1)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    _write_atomic(path, lambda f: f.write(png.getvalue()))
