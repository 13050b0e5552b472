"""Packing captioned images into one interleaved token sequence (Chameleon, Show-o, Transfusion).

Two orders teach one model two tasks:

    text-to-image:  [PAD]… [BOS] caption [BOI] image [EOI] [EOS]        (left-padded)
    image-to-text:  [BOS] [BOI] image [EOI] caption [EOS] [PAD]…        (right-padded)

Padding the caption side keeps every image at a FIXED offset within its order (L + 2 for text-to-image, 2 for
image-to-text, with L the longest caption), so image embeddings are written into the sequence with one boolean
index and samplers never have to track ragged offsets. A mode that uses Show-o's task tokens puts `[T2I]` or
`[MMU]` in front (after the padding), shifting both offsets by one. Padding is masked out of attention as keys and
never scored, and rotary positions only see relative distances, so left-padding changes nothing a token can see.

The image span holds placeholders (`[PAD]` ids) in `tokens`; each mode writes its own image embeddings there.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from minimfm.masks import PAD, TEXT
from minimfm.tokenizers.text import TextTokenizer

IGNORE = -100  # cross_entropy's ignore_index


@dataclass
class Layout:
    """Sizes that fix where everything sits: caption room L, image positions N, optional task token."""
    max_text_len: int
    n_image: int
    task_tokens: bool = False

    @property
    def length(self) -> int:
        return self.max_text_len + self.n_image + 4 + int(self.task_tokens)  # BOS BOI EOI EOS (+ task)

    def image_start(self, t2i: bool) -> int:
        return (self.max_text_len + 2 if t2i else 2) + int(self.task_tokens)

    def prompt_length(self) -> int:
        """Length of a text-to-image prompt up to and including [BOI]: where the image starts."""
        return self.image_start(True)


@dataclass
class Batch:
    """One packed batch. T = layout.length; all tensors share the batch dimension B."""
    tokens: torch.Tensor        # (B, T) text ids; [PAD] at padding and image positions
    modality: torch.Tensor      # (B, T) 0 text, 1 image, -1 padding (see minimfm/masks.py)
    positions: torch.Tensor     # (B, T) sequence index, fed to the rotary embedding
    text_targets: torch.Tensor  # (B, T) next text token to predict at each position, IGNORE where none
    t2i: torch.Tensor           # (B,) bool: text-to-image order
    image_start: torch.Tensor   # (B,) index of the first image position

    def to(self, device) -> "Batch":
        return Batch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))

    @property
    def image_positions(self) -> torch.Tensor:
        return self.modality == 1  # (B, T) bool, exactly N True per row


def pack(captions: list[list[int]], t2i: torch.Tensor, tok: TextTokenizer, layout: Layout) -> Batch:
    """Lay out caption ids and image placeholders in either order, with modality map and text targets."""
    B, T, L, N = len(captions), layout.length, layout.max_text_len, layout.n_image
    tokens = torch.full((B, T), tok.pad_id, dtype=torch.long)
    modality = torch.full((B, T), PAD, dtype=torch.long)
    for b, (ids, forward) in enumerate(zip(captions, t2i.tolist())):
        if len(ids) > L:
            raise ValueError(f"caption of {len(ids)} tokens does not fit max_text_len={L}")
        task = ([tok.t2i_id if forward else tok.mmu_id]) if layout.task_tokens else []
        if forward:
            seq = task + [tok.bos_id] + ids + [tok.boi_id] + [None] * N + [tok.eoi_id, tok.eos_id]
            start = T - len(seq)  # left padding
        else:
            seq = task + [tok.bos_id, tok.boi_id] + [None] * N + [tok.eoi_id] + ids + [tok.eos_id]
            start = 0
        for i, t in enumerate(seq):
            modality[b, start + i] = TEXT if t is not None else 1
            if t is not None:
                tokens[b, start + i] = t
    positions = torch.arange(T).expand(B, T).clone()
    is_text = modality == TEXT
    # position i predicts token i+1 when both are text: this scores caption words, [BOI] after a caption,
    # [EOS] after [EOI], and the caption after [EOI]; what follows an image position is the mode's business
    text_targets = torch.full((B, T), IGNORE, dtype=torch.long)
    both_text = is_text[:, :-1] & is_text[:, 1:]
    text_targets[:, :-1][both_text] = tokens[:, 1:][both_text]
    image_start = torch.tensor([layout.image_start(bool(f)) for f in t2i.tolist()], dtype=torch.long)
    return Batch(tokens, modality, positions, text_targets, t2i.clone().bool(), image_start)
