"""Sequences as segments: text and images in any order, any number of images (Chameleon's interleaved documents,
Transfusion §2: "a sequence of text and images", each image wrapped in [BOI] ... [EOI]).

A sequence is a list of segments: a list of token ids (text, special tokens included, exactly as the model reads
them) or IMAGE (N placeholder positions that a mode fills with codes, latents or noise). An image must come right
after a `[BOI]` and, unless it ends the sequence (an image being generated), right before an `[EOI]`:

    [[BOS, a, thin, three, BOI], IMAGE, [EOI, then, a, seven, BOI], IMAGE, [EOI, EOS]]

A batch is RAGGED: each row keeps its own layout, padded to one length on the left ("flush right": the ends line
up, what batched decoding wants) or on the right ("flush left"), and per-row index tensors say where each image
starts. With N = 4 and two rows, one flush right, one flush left:

    row 0:  [PAD] [PAD] [BOS]  a  three [BOI]  ▢ ▢ ▢ ▢  [EOI] [EOS]     modality -1 -1 0 0 0 0 1 1 1 1 0 0
    row 1:  [BOS] [BOI]  ▢ ▢ ▢ ▢  [EOI]  a  three [EOS] [PAD] [PAD]     modality  0 0 1 1 1 1 0 0 0 0 -1 -1
    image_start (B, K) = [[6], [2]];   rows with fewer than K images hold -1 in the unused columns

Why ragged rows rather than one fixed layout per template: the interleaved and editing data mix templates (text,
image, text, image; image, text, image, text; ...) in one batch, and a registry of layouts would grow with every
template. What stays fixed is the size of an image: every image is ONE block of N consecutive positions, so

    h[modality >= 1].view(M, N, D)        # the batch's M images in reading order: row 0's, then row 1's, ...

works for any mix, and `image_row` says which row each of the M images came from. Images are numbered k = 1, 2,
... per row in the modality map, which is what makes the omni mask keep an earlier image from seeing a later one
(minimfm/masks.py): a later image sees an earlier one through the causal part, never the reverse.

`sequence.pack` (one caption, one image) is the special case: `text_to_image` / `image_to_text` rows with
`length = layout.length`, text-to-image rows flush right and image-to-text rows flush left give byte-identical
tokens, modality, positions and text targets (tests/test_segments.py), and `image_start[:, 0]` is its
`image_start`. Positions are the column index, padding included, as there: RoPE sees only distances, and padding
sits only at a row's edges, so the distances inside a row are the unpadded ones.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from minimfm.masks import PAD, TEXT
from minimfm.sequence import IGNORE
from minimfm.tokenizers.text import TextTokenizer


class _Image:
    """The image segment marker: one image's N positions (N is the model's, given to `pack`)."""

    def __repr__(self) -> str:
        return "IMAGE"

    def __reduce__(self) -> str:
        return "IMAGE"  # pickle / deepcopy (DataLoader workers) give back THIS object, so `seg is IMAGE` holds


IMAGE = _Image()
Segments = list  # list[list[int] | IMAGE]


def wrap(parts: list, tok: TextTokenizer, *, task: int | None = None, eos: bool = True) -> Segments:
    """Plain parts (lists of word ids, IMAGE) -> a sequence: [task] [BOS] ... [BOI] IMAGE [EOI] ... [EOS].

    `eos=False` leaves it open, as a generation prompt."""
    out: Segments = [([task] if task is not None else []) + [tok.bos_id]]
    for part in parts:
        if part is IMAGE:
            out[-1].append(tok.boi_id)
            out += [IMAGE, [tok.eoi_id]]
        else:
            out[-1] += list(part)
    if eos:
        out[-1].append(tok.eos_id)
    return out


def text_to_image(caption: list[int], tok: TextTokenizer, task_tokens: bool = False) -> Segments:
    """sequence.pack's text-to-image order: [T2I] [BOS] caption [BOI] image [EOI] [EOS]."""
    return wrap([caption, IMAGE], tok, task=tok.t2i_id if task_tokens else None)


def image_to_text(caption: list[int], tok: TextTokenizer, task_tokens: bool = False) -> Segments:
    """sequence.pack's image-to-text order: [MMU] [BOS] [BOI] image [EOI] caption [EOS]."""
    return wrap([IMAGE, caption], tok, task=tok.mmu_id if task_tokens else None)


@dataclass
class SegmentBatch:
    """A packed batch of segment sequences. T = the packed length, K = the most images in a row."""
    tokens: torch.Tensor        # (B, T) text ids; [PAD] at padding and image positions
    modality: torch.Tensor      # (B, T) 0 text, k >= 1 image number k of its row, -1 padding
    positions: torch.Tensor     # (B, T) column index, fed to the rotary embedding
    text_targets: torch.Tensor  # (B, T) next text token to predict at each position, IGNORE where none
    image_start: torch.Tensor   # (B, K) index of image k's first position in row b, -1 when row b has fewer

    def to(self, device) -> "SegmentBatch":
        return SegmentBatch(*(getattr(self, f.name).to(device) for f in fields(self)))

    @property
    def image_positions(self) -> torch.Tensor:
        return self.modality >= 1  # (B, T) bool, N True per image

    @property
    def image_row(self) -> torch.Tensor:
        """(M,) the row of each image, in the reading order of `h[image_positions].view(M, N, D)`."""
        return torch.nonzero(self.image_start >= 0)[:, 0]


def _flatten(row: Segments, tok: TextTokenizer, n_image: int, where: str) -> list[int | None]:
    """One row as ids, with None for image positions; checks that [BOI] and [EOI] bracket images and nothing else."""
    out: list[int | None] = []
    for i, seg in enumerate(row):
        if seg is IMAGE:
            if i and row[i - 1] is IMAGE:  # the flat list below could not tell where one ends
                raise ValueError(f"{where}: segments {i - 1} and {i} are images with no [EOI] [BOI] between them")
            out += [None] * n_image
        elif isinstance(seg, (list, tuple)):
            out += [int(t) for t in seg]
        else:
            raise ValueError(f"{where}: segment {i} is {type(seg).__name__}, not a list of ids or IMAGE")
    for i, t in enumerate(out):
        before, after = out[i - 1] if i else tok.pad_id, out[i + 1] if i + 1 < len(out) else None
        if t is None and before is not None and before != tok.boi_id:
            raise ValueError(f"{where}: an image at position {i} does not follow a [BOI]")
        if t is None and i + 1 < len(out) and after is not None and after != tok.eoi_id:
            raise ValueError(f"{where}: an image ending at position {i} is followed by something other than [EOI]")
        if t == tok.boi_id and i + 1 < len(out) and after is not None:
            raise ValueError(f"{where}: the [BOI] at position {i} is not followed by an image")
        if t == tok.eoi_id and before is not None:
            raise ValueError(f"{where}: the [EOI] at position {i} does not follow an image")
    return out


def check(row: Segments, tok: TextTokenizer) -> None:
    """Raise ValueError unless every image is bracketed by [BOI] ... [EOI] (or ends the row) and those tokens
    appear nowhere else: the rule that lets a model switch modality only on [BOI] and [EOI]."""
    _flatten(row, tok, 1, "sequence")


def pack(rows: list[Segments], tok: TextTokenizer, n_image: int, *, flush_right=None,
         length: int | None = None) -> SegmentBatch:
    """Lay out B segment lists as (B, T) tensors with modality map, text targets and per-image starts.

    flush_right (B,) bools (default all False): pad that row on the left so its last token sits at T - 1.
    length: T (default the longest row); a row longer than it is an error.
    """
    if n_image < 1:
        raise ValueError(f"n_image must be >= 1, got {n_image}")
    flat = [_flatten(row, tok, n_image, f"row {b}") for b, row in enumerate(rows)]
    B = len(flat)
    T = max((len(f) for f in flat), default=0) if length is None else length
    right = [False] * B if flush_right is None else [bool(f) for f in (
        flush_right.tolist() if torch.is_tensor(flush_right) else flush_right)]
    if len(right) != B:
        raise ValueError(f"flush_right has {len(right)} entries for {B} rows")
    too_long = [b for b, f in enumerate(flat) if len(f) > T]
    if too_long:
        raise ValueError(f"row {too_long[0]} has {len(flat[too_long[0]])} positions, more than length={T}")
    K = max((f.count(None) // n_image for f in flat), default=0)
    tokens = torch.full((B, T), tok.pad_id, dtype=torch.long)
    modality = torch.full((B, T), PAD, dtype=torch.long)
    image_start = torch.full((B, K), -1, dtype=torch.long)
    for b, (ids, r) in enumerate(zip(flat, right)):
        start = T - len(ids) if r else 0
        k = 0
        for i, t in enumerate(ids):
            if t is None:
                if i == 0 or ids[i - 1] is not None:  # first position of a new image
                    image_start[b, k] = start + i
                    k += 1
                modality[b, start + i] = k
            else:
                tokens[b, start + i], modality[b, start + i] = t, TEXT
    positions = torch.arange(T).expand(B, T).clone()
    # the same rule as sequence.pack: position i predicts token i+1 when both are text. This scores [BOI] after
    # text (the model learns WHEN an image comes), the text after every [EOI], and never an image position
    is_text = modality == TEXT
    text_targets = torch.full((B, T), IGNORE, dtype=torch.long)
    both_text = is_text[:, :-1] & is_text[:, 1:]
    text_targets[:, :-1][both_text] = tokens[:, 1:][both_text]
    return SegmentBatch(tokens, modality, positions, text_targets, image_start)


def unpack(batch: SegmentBatch) -> list[Segments]:
    """The segment lists back, padding dropped and neighbouring text merged (the form `pack` round-trips)."""
    rows = []
    for ids, mod in zip(batch.tokens.tolist(), batch.modality.tolist()):
        row: Segments = []
        previous = PAD
        for t, m in zip(ids, mod):
            if m == TEXT:
                if not row or row[-1] is IMAGE:
                    row.append([])
                row[-1].append(t)
            elif m >= 1 and m != previous:  # a new image number starts a new image segment
                row.append(IMAGE)
            previous = m if m != PAD else previous
        rows.append(row)
    return rows
