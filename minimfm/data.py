"""Captioned MNIST and CIFAR-10 on top of the real torchvision loaders.

Each sample is an image, a caption, a class label and a dict of attributes computed from the pixels. The
attribute functions are public because evaluation reuses them: a generated "bold seven leaning right" is
checked with the very same `stroke_thickness` and `slant` that wrote the training caption.

Captions are chosen deterministically from (index, seed), so a run is reproducible and two modes trained
with the same seed see exactly the same text.
"""
from __future__ import annotations

import random
from pathlib import Path

import torch

DATASETS = ("mnist", "cifar10")
MNIST_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# Thresholds were set from the MNIST training split so each attribute value covers roughly a third of it
# (see tests/test_data.py::test_attribute_balance_on_mnist, which re-measures the split when data is staged).
THIN_BELOW, BOLD_ABOVE = 2.55, 3.15      # stroke width in pixels, from ink area / (half the boundary)
LEFT_BELOW, RIGHT_ABOVE = -0.01, 0.22    # horizontal shear of the ink (dx per dy), positive = top leans right
DARK_BELOW, LIGHT_ABOVE = 0.43, 0.52     # CIFAR mean luminance
GREY_SATURATION = 0.06                   # CIFAR: mean colour closer to grey than this has no hue word


# The validation split: 5,000 images of the TRAINING split (never the test split), the last 500 of each class, so
# that choosing a recipe (`python -m minimfm tune`) never looks at the images the comparison reports on. Per class,
# because a split may be stored sorted by class (the CIFAR-10 JPEG copy): its last 5,000 would all be trucks. A run
# trained with --holdout-validation leaves them out; `CaptionedDataset(split="validation")` reads exactly them.
VALIDATION_IMAGES = 5000


class DatasetMissingError(RuntimeError):
    """The dataset is not on disk and could not be downloaded; the message names the folder to fill."""


# ----------------------------------------------------------------------------------------------- loading

def _mnist(root: Path, train: bool):
    from torchvision.datasets import MNIST
    try:
        ds = MNIST(str(root), train=train, download=True)
    except (OSError, RuntimeError) as e:  # offline: URLError (an OSError) per mirror, then RuntimeError
        raise DatasetMissingError(
            f"MNIST is not in {root / 'MNIST' / 'raw'} and could not be downloaded ({type(e).__name__}); "
            f"put train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
            f"t10k-labels-idx1-ubyte (or their .gz) into {root / 'MNIST' / 'raw'}") from None
    images = ds.data.float().div(255).unsqueeze(1)  # (N, 1, 28, 28)
    return images, ds.targets.long()


def _cifar10(root: Path, train: bool):
    split = "train" if train else "test"
    folder = root / "cifar10-jpg" / split
    if folder.is_dir():  # the JPEG copy (ImageFolder layout train|test/<class>/)
        from torchvision.datasets import ImageFolder
        ds = ImageFolder(str(folder))
        assert tuple(ds.classes) == CIFAR_CLASSES, f"unexpected class folders in {folder}: {ds.classes}"
    else:
        from torchvision.datasets import CIFAR10
        try:
            ds = CIFAR10(str(root), train=train, download=True)
        except (OSError, RuntimeError) as e:  # offline: URLError (an OSError) or torchvision's RuntimeError
            raise DatasetMissingError(
                f"CIFAR-10 is neither in {root / 'cifar10-python.tar.gz'} (torchvision's download) nor as JPEG "
                f"folders in {folder}/<class>/ and could not be downloaded ({type(e).__name__}); put one of "
                f"them there") from None
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).float().div(255)  # (N, 3, 32, 32)
        return images, torch.tensor(ds.targets).long()
    from torchvision.io import decode_image
    images = torch.stack([decode_image(path) for path, _ in ds.samples]).float().div(255)  # (N, 3, 32, 32)
    return images, torch.tensor(ds.targets).long()


def limited_indices(labels: torch.Tensor, n: int) -> list[int]:
    """`--limit-train n`: n images taken round-robin over the classes, each class in stored order, returned in
    stored order. A split stored sorted by class (the CIFAR-10 JPEG copy) still gives every class (its first 2,000
    would be airplanes only); an unsorted one (MNIST) gives about its first n."""
    classes = int(labels.max()) + 1
    rank = torch.zeros(len(labels), dtype=torch.long)  # each image's position within its class
    for c in range(classes):
        at = torch.nonzero(labels == c)[:, 0]
        rank[at] = torch.arange(len(at))
    order = torch.argsort(rank * classes + labels)  # 1st of class 0, 1st of class 1, ..., 2nd of class 0, ...
    return sorted(order[:n].tolist())


def load_images(dataset: str, split: str, root: str | Path = "data") -> tuple[torch.Tensor, torch.Tensor]:
    """All images of a split as float [N, C, H, W] in [0, 1] and labels [N], via torchvision's loaders.

    Decoding 60,000 CIFAR JPEGs takes a while, so the decoded split is cached next to the data as a .pt file.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset '{dataset}', choose from {', '.join(DATASETS)}")
    if split not in ("train", "test"):
        raise ValueError(f"unknown split '{split}', choose train or test")
    root = Path(root)
    cache = root / f"{dataset}-{split}.pt"
    if cache.is_file():  # written atomically below, so an unreadable one was damaged later: name it
        from minimfm.checkpoint import CheckpointError, load_plain
        blob = load_plain(cache, "dataset cache", fix="delete it and it is rebuilt from the dataset")
        if not isinstance(blob, dict) or not {"images", "labels"} <= blob.keys():
            raise CheckpointError(f"{cache} is not a dataset cache (no images and labels); delete it and it is "
                                  f"rebuilt from the dataset")
        return blob["images"].float().div(255), blob["labels"]
    loader = _mnist if dataset == "mnist" else _cifar10
    images, labels = loader(root, train=split == "train")
    root.mkdir(parents=True, exist_ok=True)
    from minimfm.checkpoint import save_atomic  # two processes filling the cache at once never mix their bytes
    save_atomic({"images": images.mul(255).round().to(torch.uint8), "labels": labels}, cache)
    return images, labels


# -------------------------------------------------------------------------------------------- attributes

def stroke_thickness(images: torch.Tensor) -> torch.Tensor:
    """Mean stroke width in pixels of grayscale digits [N, 1, H, W] (or [H, W]) in [0, 1].

    A stroke of width w and length L has ink area ~ w·L and a boundary of ~ 2·L pixels, so w ~ 2·area/boundary.
    Boundary pixels are ink pixels with at least one background 4-neighbour.
    """
    x = images.reshape(-1, 1, *images.shape[-2:]) > 0.5  # (N, 1, H, W) binary ink
    padded = torch.nn.functional.pad(x.float(), (1, 1, 1, 1))
    neighbours_min = torch.minimum(
        torch.minimum(padded[..., :-2, 1:-1], padded[..., 2:, 1:-1]),
        torch.minimum(padded[..., 1:-1, :-2], padded[..., 1:-1, 2:]))
    boundary = (x & (neighbours_min < 0.5)).flatten(1).sum(1).float()
    area = x.flatten(1).sum(1).float()
    return 2 * area / boundary.clamp(min=1)


def slant(images: torch.Tensor) -> torch.Tensor:
    """Horizontal shear of the ink from second-order image moments: positive when the top leans right.

    With x to the right and y downwards, slant = -mu11 / mu02 is the dx/dy of the least-squares line through
    the ink, with the sign flipped so that "top to the right" is positive.
    """
    x = images.reshape(-1, *images.shape[-2:]).float()  # (N, H, W)
    H, W = x.shape[-2:]
    ys = torch.arange(H, dtype=x.dtype).view(1, H, 1)
    xs = torch.arange(W, dtype=x.dtype).view(1, 1, W)
    mass = x.sum((1, 2)).clamp(min=1e-6)
    cy = (x * ys).sum((1, 2)) / mass
    cx = (x * xs).sum((1, 2)) / mass
    dy, dx = ys - cy.view(-1, 1, 1), xs - cx.view(-1, 1, 1)
    mu11 = (x * dx * dy).sum((1, 2)) / mass
    mu02 = (x * dy * dy).sum((1, 2)) / mass
    return -mu11 / mu02.clamp(min=1e-6)


def brightness(images: torch.Tensor) -> torch.Tensor:
    """Mean luminance (ITU-R 601 weights) of RGB images [N, 3, H, W] in [0, 1]."""
    w = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype).view(1, 3, 1, 1)
    return (images.reshape(-1, 3, *images.shape[-2:]) * w).sum(1).mean((1, 2))


THICKNESS_WORDS = ("thin", "regular", "bold")
BRIGHTNESS_WORDS = ("dark", "medium", "bright")
COLOUR_HUES = (("red", 0), ("orange", 30), ("yellow", 60), ("green", 120), ("blue", 220), ("purple", 280))


def colour_words() -> tuple[str, ...]:
    return ("grey",) + tuple(word for word, _ in COLOUR_HUES)


def dominant_colour(images: torch.Tensor) -> list[str]:
    """The hue word nearest to the hue of each image's mean colour, or "grey" when it is nearly unsaturated."""
    mean = images.reshape(-1, 3, *images.shape[-2:]).mean((2, 3))  # (N, 3)
    words = []
    for r, g, b in mean.tolist():
        mx, mn = max(r, g, b), min(r, g, b)
        if mx - mn < GREY_SATURATION:
            words.append("grey")
            continue
        if mx == r:
            hue = (60 * (g - b) / (mx - mn)) % 360
        elif mx == g:
            hue = 60 * (b - r) / (mx - mn) + 120
        else:
            hue = 60 * (r - g) / (mx - mn) + 240
        words.append(min(COLOUR_HUES, key=lambda w: min(abs(hue - w[1]), 360 - abs(hue - w[1])))[0])
    return words


def _bucket(values: torch.Tensor, low: float, high: float, names: tuple[str, str, str]) -> list[str]:
    return [names[0] if v < low else names[2] if v > high else names[1] for v in values.tolist()]


def attributes(dataset: str, images: torch.Tensor) -> list[dict[str, str]]:
    """Pixel-derived attributes of a batch: MNIST {thickness, slant}; CIFAR-10 {brightness, colour}."""
    if dataset == "mnist":
        thick = _bucket(stroke_thickness(images), THIN_BELOW, BOLD_ABOVE, THICKNESS_WORDS)
        lean = _bucket(slant(images), LEFT_BELOW, RIGHT_ABOVE, ("left", "upright", "right"))
        return [{"thickness": t, "slant": s} for t, s in zip(thick, lean)]
    if dataset == "cifar10":
        light = _bucket(brightness(images), DARK_BELOW, LIGHT_ABOVE, BRIGHTNESS_WORDS)
        return [{"brightness": b, "colour": c} for b, c in zip(light, dominant_colour(images))]
    raise ValueError(f"unknown dataset '{dataset}', choose from {', '.join(DATASETS)}")


# ---------------------------------------------------------------------------------------------- captions

_SLANT_PHRASE = {"left": "leaning left", "upright": "standing upright", "right": "leaning right"}
MNIST_TEMPLATES = (
    "a {thickness} {word} {slant_phrase}",
    "the digit {digit}, written {thickness}",
    "a handwritten {word}, {thickness} and {slant_phrase}",
    "{thickness} {word} {slant_phrase}",
    "the number {word} {slant_phrase}, drawn {thickness}",
)
CIFAR_TEMPLATES = (
    "a photo of a {brightness} {colour} {name}",
    "a {name}, mostly {colour}",
    "a {brightness} picture of a {name}",
    "this {name} is {colour} and {brightness}",
)


def class_words(dataset: str) -> tuple[tuple[str, ...], ...]:
    """For each class, the words that name it in a caption (used to score generated captions)."""
    if dataset == "mnist":
        return tuple((w, str(i)) for i, w in enumerate(MNIST_WORDS))
    return tuple((name,) for name in CIFAR_CLASSES)


def make_caption(dataset: str, label: int, attrs: dict[str, str], index: int, seed: int = 0) -> str:
    """A caption for one sample; the template is drawn from an RNG seeded by (seed, index)."""
    rng = random.Random(seed * 1_000_003 + index)
    if dataset == "mnist":
        template = rng.choice(MNIST_TEMPLATES)
        return template.format(word=MNIST_WORDS[label], digit=label, thickness=attrs["thickness"],
                               slant_phrase=_SLANT_PHRASE[attrs["slant"]])
    template = rng.choice(CIFAR_TEMPLATES)
    return template.format(name=CIFAR_CLASSES[label], **attrs)


def mentioned_attributes(caption: str, dataset: str) -> dict[str, str]:
    """The attributes a caption asks for: not every template names every attribute ("the digit 7, written bold"
    says nothing about slant), and evaluation must only score what the prompt asked for."""
    words = caption.replace(",", " ").split()
    found: dict[str, str] = {}
    if dataset == "mnist":
        found.update({"thickness": w for w in words if w in THICKNESS_WORDS})
        found.update({"slant": value for value, phrase in _SLANT_PHRASE.items() if phrase in caption})
    else:
        found.update({"brightness": w for w in words if w in BRIGHTNESS_WORDS})
        found.update({"colour": w for w in words if w in colour_words()})
    return found


def caption_vocabulary(dataset: str) -> list[str]:
    """Every word the caption grammar can produce, in a fixed order (the text tokenizer's vocabulary)."""
    words: list[str] = []
    templates = MNIST_TEMPLATES if dataset == "mnist" else CIFAR_TEMPLATES
    fillers = (list(MNIST_WORDS) + [str(i) for i in range(10)] + list(THICKNESS_WORDS)
               + [w for p in _SLANT_PHRASE.values() for w in p.split()]) if dataset == "mnist" else \
        (list(CIFAR_CLASSES) + list(BRIGHTNESS_WORDS) + list(colour_words()))
    for t in templates:
        words += [w for w in t.replace(",", " , ").split() if not w.startswith("{")]
    words += fillers
    return list(dict.fromkeys(words))  # ordered, de-duplicated


def prompt_for(dataset: str, label: int, attrs: dict[str, str] | None = None, template: int = 0) -> str:
    """A canonical prompt for a class (and optionally attributes), used by evaluation and the notebooks."""
    if attrs is None:
        attrs = {"thickness": "regular", "slant": "upright"} if dataset == "mnist" else \
            {"brightness": "medium", "colour": "grey"}
    templates = MNIST_TEMPLATES if dataset == "mnist" else CIFAR_TEMPLATES
    if dataset == "mnist":
        return templates[template].format(word=MNIST_WORDS[label], digit=label, thickness=attrs["thickness"],
                                          slant_phrase=_SLANT_PHRASE[attrs["slant"]])
    return templates[template].format(name=CIFAR_CLASSES[label], **attrs)


class CaptionedDataset(torch.utils.data.Dataset):
    """A torchvision dataset with a caption and pixel attributes for every image.

    `ds[i]` is a dict: image [C, H, W] float in [0, 1], caption str, label int, attributes dict.
    Attributes are computed once for the whole split (vectorised); captions are drawn on access from
    (index, seed), so they are deterministic without being stored.

    split "validation" is the validation images of the training split (`validation_mask`), each with the caption
    it has there; `holdout=True` leaves them out of split "train" (every other image keeps its caption).
    """

    def __init__(self, dataset: str = "mnist", split: str = "train", root: str | Path = "data", seed: int = 0,
                 limit: int | None = None, holdout: bool = False):
        if split not in ("train", "test", "validation"):
            raise ValueError(f"unknown split '{split}', choose train, validation or test")
        self.dataset, self.split, self.seed = dataset, split, seed
        self.images, self.labels = load_images(dataset, "test" if split == "test" else "train", root)
        self.index = None  # each image's index in the stored split, where it is not its position: its caption's seed
        if split == "validation" or (split == "train" and holdout):
            keep = validation_mask(self.labels) == (split == "validation")
            self.index = torch.nonzero(keep)[:, 0].tolist()
            self.images, self.labels = self.images[keep], self.labels[keep]
        if limit is not None:
            keep = limited_indices(self.labels, limit)
            self.index = keep if self.index is None else [self.index[i] for i in keep]
            self.images, self.labels = self.images[keep], self.labels[keep]
        self.attributes = attributes(dataset, self.images)

    def __len__(self) -> int:
        return len(self.labels)

    def caption(self, index: int) -> str:
        stored = index if self.index is None else self.index[index]
        return make_caption(self.dataset, int(self.labels[index]), self.attributes[index], stored, self.seed)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "caption": self.caption(index), "label": int(self.labels[index]),
                "attributes": self.attributes[index]}


def validation_mask(labels: torch.Tensor) -> torch.Tensor:
    """(N,) bool over a training split's labels: its validation images, the last VALIDATION_IMAGES // classes of
    each class (deterministic; the rest of the split is what --holdout-validation trains on)."""
    classes = int(labels.max()) + 1
    per = VALIDATION_IMAGES // classes
    mask = torch.zeros(len(labels), dtype=torch.bool)
    for c in range(classes):
        members = torch.nonzero(labels == c)[:, 0]
        if len(members) <= per:
            raise ValueError(f"class {c} has {len(members)} training images: holding out {per} for validation "
                             f"leaves none to train on")
        mask[members[-per:]] = True
    return mask
