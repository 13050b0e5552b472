"""Interleaved text-and-image examples with exact answers (Show-o's mixed-modality generation, Transfusion's
"known text and images, then more text and images").

A sample is a list of segments, text and image in any order, built from real MNIST digits and captions from
the same generator the training captions use (`data.make_caption` on the digit's pixel attributes, with the
digit's index in the split, so the caption is exactly `CaptionedDataset(split, seed).caption(index)`). Three
templates, chosen so that every segment the model produces has an answer a judge and the attribute functions can
check (▣ drawn by the model, ▢ given, «…» written by the model, the rest given):

    then      "<caption a>,"  ▣ a  "then <caption b>"  ▣ b                          (labels a != b)
    next      "this is a(n) <word a>"  ▢ a  "now draw the next digit"  ▣ (a + 1) mod 10
    captions  ▢ a  «<caption a>»  ▣ b  «<caption b>»                                 (labels a != b)

`DRAWN`, `NAMED` and `WRITES` below say so per template. No two templates (nor a caption row, nor an edit) open
alike, because what comes after an opening is what the model learns to write there: "next" first opened with its
image too, and a model asked to caption an image wrote "this is a one, now draw the next digit" (the one text that
always follows an image in "next" rows) and then [EOS] after the image it drew (masked mode, first run of this
layout: text after a drawn image 0.015). The "next" texts are the user's instruction, given. The second image of
"captions" is drawn with no digit asked for (so it is not scored by image accuracy), and the caption the model then
writes is the check of "text written after a generated image names its digit". In training that image is READ
(`LEARNED`): a caption learnt after a fully noised or masked image learns to guess, and the drawing of a second
image is what "then" and "next" teach.

Each segment carries what it must have: `label` is the digit an image shows or a text names, and `attributes`
what is asked of it. For an image, the attributes the text before it names (data.mentioned_attributes; the
"next" image is asked nothing but its digit); for a text, the attributes it states. The real digits satisfy
both exactly, so they serve as teacher-forcing targets; a produced segment is scored against the same fields.

The words "then", "this", "is", "an", "now", "draw", "next" are not caption words; like the edit instructions
they live in a separate, versioned list (INTERLEAVED_WORDS_V1), appended after the caption words by
`mixed_vocabulary`, because the caption vocabulary's size is part of every trained checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from minimfm.data import MNIST_WORDS, attributes, caption_vocabulary, load_images, make_caption, mentioned_attributes
from minimfm.edits import EDIT_WORDS_V1

TEMPLATES = ("then", "next", "captions")
DRAWN = {"then": (True, True), "next": (False, True), "captions": (False, True)}   # per image: the model draws it
NAMED = {"then": (True, True), "next": (False, True), "captions": (False, False)}  # per image: its text names it
WRITES = {"then": False, "next": False, "captions": True}  # the model writes the texts after the first image
LEARNED = {"then": (True, True), "next": (False, True), "captions": (False, False)}  # per image: trained as drawn
INTERLEAVED_WORDS_V1 = ("then", "this", "is", "an", "now", "draw", "next")


@dataclass
class Segment:
    """One span of a sequence: kind "text" (`text` set) or "image" (`image` [1, H, W] set, `index` its position
    in the split). `label`: the digit shown / named; `attributes`: what the segment must have (see module doc)."""
    kind: str
    label: int
    attributes: dict = field(default_factory=dict)
    text: str = ""
    image: torch.Tensor | None = field(default=None, repr=False)
    index: int = -1


@dataclass
class Interleaved:
    """A template name and its segments, in sequence order."""
    template: str
    segments: list[Segment]

    def describe(self) -> str:
        """Readable one-liner: texts as written, images as [image 7]."""
        return " ".join(s.text if s.kind == "text" else f"[image {s.label}]" for s in self.segments)


def mixed_vocabulary(dataset: str = "mnist") -> list[str]:
    """Caption words, then the edit and interleaved words they lack, appended so caption ids do not move.

    Version 1 (EDIT_WORDS_V1 + INTERLEAVED_WORDS_V1): a model trained with it stores it in its checkpoint, so
    later versions must only append."""
    base = caption_vocabulary(dataset)
    return base + [w for w in dict.fromkeys(EDIT_WORDS_V1 + INTERLEAVED_WORDS_V1) if w not in base]


def _image(images, labels, i: int, asked: dict) -> Segment:
    return Segment("image", int(labels[i]), asked, image=images[i].reshape(1, *images.shape[-2:]), index=i)


def _make(template: str, a: int, b: int, images, labels, attrs, caption_seed: int) -> Interleaved:
    la, lb = int(labels[a]), int(labels[b])
    cap_a = make_caption("mnist", la, attrs[a], a, caption_seed)
    cap_b = make_caption("mnist", lb, attrs[b], b, caption_seed)
    named_a, named_b = mentioned_attributes(cap_a, "mnist"), mentioned_attributes(cap_b, "mnist")
    if template == "then":
        segs = [Segment("text", la, named_a, text=cap_a + ","), _image(images, labels, a, named_a),
                Segment("text", lb, named_b, text="then " + cap_b), _image(images, labels, b, named_b)]
    elif template == "next":
        article = "an" if la == 8 else "a"
        segs = [Segment("text", la, {}, text=f"this is {article} {MNIST_WORDS[la]}"), _image(images, labels, a, {}),
                Segment("text", lb, {}, text="now draw the next digit"), _image(images, labels, b, {})]
    else:  # captions: the model reads each image and writes its caption
        segs = [_image(images, labels, a, {}), Segment("text", la, named_a, text=cap_a),
                _image(images, labels, b, {}), Segment("text", lb, named_b, text=cap_b)]
    return Interleaved(template, segs)


def build_interleaved(images: torch.Tensor, labels: torch.Tensor, n: int, seed: int = 0,
                      templates: tuple[str, ...] = TEMPLATES, caption_seed: int = 0) -> list[Interleaved]:
    """n samples from MNIST images [N, 1, H, W] and labels [N], templates in turn (so each appears), digits
    drawn from a generator seeded by `seed`; `caption_seed` is the caption seed of the training run."""
    if n < 1:
        raise ValueError(f"build_interleaved: n must be at least 1, got {n}")
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"build_interleaved: need as many labels as images (and some), got {len(images)} and "
                         f"{len(labels)}")
    unknown = [t for t in templates if t not in TEMPLATES]
    if unknown or not templates:
        raise ValueError(f"unknown template '{unknown[0] if unknown else ''}', choose from {', '.join(TEMPLATES)}")
    by_label = [(labels == d).nonzero().flatten() for d in range(10)]
    missing = [d for d in range(10) if len(by_label[d]) == 0]
    if missing:
        raise ValueError(f"build_interleaved: the images hold no digit {missing[0]}; every digit is needed")
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for i in range(n):
        a = int(torch.randint(len(labels), (1,), generator=g))
        la = int(labels[a])
        if templates[i % len(templates)] == "next":
            lb = (la + 1) % 10
        else:  # a different digit, so a model that copies the first image is caught
            lb = (la + 1 + int(torch.randint(9, (1,), generator=g))) % 10
        b = int(by_label[lb][int(torch.randint(len(by_label[lb]), (1,), generator=g))])
        pairs.append((a, b))
    used = sorted({i for p in pairs for i in p})
    attrs = dict(zip(used, attributes("mnist", images[used])))  # from the pixels, as the caption generator does
    return [_make(templates[i % len(templates)], a, b, images, labels, attrs, caption_seed)
            for i, (a, b) in enumerate(pairs)]


def interleaved_from_split(split: str = "train", n: int = 8000, seed: int = 0, root: str = "data",
                           caption_seed: int = 0) -> list[Interleaved]:
    """build_interleaved over a whole MNIST split."""
    images, labels = load_images("mnist", split, root)
    return build_interleaved(images, labels, n, seed, caption_seed=caption_seed)
