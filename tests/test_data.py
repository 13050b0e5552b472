import pytest
import torch

from conftest import DATA, needs_mnist
from minimfm import data
from minimfm.data import (CaptionedDataset, DatasetMissingError, attributes, brightness, dominant_colour,
                          make_caption, slant, stroke_thickness)


def bar(width: int, shear: float = 0.0, size: int = 28) -> torch.Tensor:
    """A vertical bar `width` px wide; with shear, its top moves right by shear px per px of height."""
    img = torch.zeros(1, 1, size, size)
    for y in range(4, size - 4):
        x0 = int(round(size / 2 - width / 2 + shear * (size / 2 - y)))
        img[0, 0, y, x0:x0 + width] = 1.0
    return img


def test_thickness_orders_thin_and_thick_bars():
    thin, thick = stroke_thickness(bar(1)), stroke_thickness(bar(5))
    assert thin.item() < data.THIN_BELOW < data.BOLD_ABOVE < thick.item()
    assert attributes("mnist", bar(1))[0]["thickness"] == "thin"
    assert attributes("mnist", bar(5))[0]["thickness"] == "bold"


def test_slant_sign_and_buckets():
    assert abs(slant(bar(3)).item()) < 0.01
    right, left = slant(bar(3, shear=0.5)).item(), slant(bar(3, shear=-0.5)).item()
    assert right == pytest.approx(0.5, abs=0.08) and left == pytest.approx(-0.5, abs=0.08)
    assert [attributes("mnist", bar(3, s))[0]["slant"] for s in (-0.5, 0.0, 0.5)] == ["left", "upright", "right"]


def test_cifar_attributes_on_flat_colours():
    red = torch.zeros(1, 3, 32, 32); red[:, 0] = 0.9
    grey = torch.full((1, 3, 32, 32), 0.5)
    blue = torch.zeros(1, 3, 32, 32); blue[:, 2] = 0.8; blue[:, 1] = 0.3
    assert dominant_colour(torch.cat([red, grey, blue])) == ["red", "grey", "blue"]
    assert brightness(torch.zeros(1, 3, 32, 32)).item() == 0.0
    assert brightness(torch.ones(1, 3, 32, 32)).item() == pytest.approx(1.0)
    assert [a["brightness"] for a in attributes("cifar10", torch.cat([red * 0.1, grey, grey + 0.4]))] == \
        ["dark", "medium", "bright"]


def test_caption_is_deterministic_and_varied():
    attrs = {"thickness": "bold", "slant": "right"}
    assert make_caption("mnist", 7, attrs, index=3, seed=0) == make_caption("mnist", 7, attrs, index=3, seed=0)
    many = {make_caption("mnist", 7, attrs, index=i, seed=0) for i in range(50)}
    assert len(many) >= 4, many  # several templates are used
    assert all("seven" in c or "7" in c for c in many) and all("bold" in c for c in many)
    assert [make_caption("mnist", 7, attrs, i, seed=1) for i in range(20)] != \
        [make_caption("mnist", 7, attrs, i, seed=0) for i in range(20)]


def test_missing_dataset_error_names_the_folder(tmp_path, monkeypatch):
    from torchvision.datasets import MNIST
    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])  # no network: fail fast, offline or not
    with pytest.raises(DatasetMissingError) as e:
        data.load_images("mnist", "test", root=tmp_path)
    assert str(tmp_path / "MNIST" / "raw") in str(e.value) and "\n" not in str(e.value)


def test_a_bug_in_the_loader_is_not_reported_as_a_missing_dataset(tmp_path, monkeypatch):
    from torchvision.datasets import MNIST

    def broken(*args, **kwargs):
        raise TypeError("a bug, not a download failure")
    monkeypatch.setattr(MNIST, "__init__", broken)
    with pytest.raises(TypeError, match="a bug"):
        data.load_images("mnist", "test", root=tmp_path)


def test_limit_takes_every_class_even_from_a_class_sorted_split():
    sorted_labels = torch.arange(10).repeat_interleave(50)  # stored sorted by class, as the CIFAR-10 JPEG copy
    keep = data.limited_indices(sorted_labels, 25)
    assert len(keep) == 25 and keep == sorted(keep)
    assert torch.bincount(sorted_labels[keep], minlength=10).tolist() == [3] * 5 + [2] * 5
    mixed = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 0])  # no class sorting: about the first n
    assert data.limited_indices(mixed, 10) == [0, 1, 2, 4, 5, 6, 7, 11, 13, 14]


def test_unknown_dataset():
    with pytest.raises(ValueError, match="cifar10"):
        data.load_images("svhn", "train")


@needs_mnist
def test_captioned_mnist_sample():
    ds = CaptionedDataset("mnist", "test", root=DATA, seed=0, limit=100)
    s = ds[0]
    assert s["image"].shape == (1, 28, 28) and 0 <= s["image"].min() and s["image"].max() <= 1
    assert s["label"] == 7  # the first MNIST test digit is a seven
    assert set(s["attributes"]) == {"thickness", "slant"}
    assert s["caption"] == CaptionedDataset("mnist", "test", root=DATA, seed=0, limit=100)[0]["caption"]


@needs_mnist
def test_attribute_balance_on_mnist():
    """The thresholds split real digits into roughly equal thirds (what data.py's constants promise)."""
    images, _ = data.load_images("mnist", "test", DATA)
    for key in ("thickness", "slant"):
        values = [a[key] for a in attributes("mnist", images)]
        shares = [values.count(v) / len(values) for v in set(values)]
        assert len(shares) == 3 and min(shares) > 0.2, (key, shares)


def test_mentioned_attributes_are_exactly_what_the_caption_names():
    from minimfm.data import mentioned_attributes
    assert mentioned_attributes("a bold seven leaning right", "mnist") == {"thickness": "bold", "slant": "right"}
    assert mentioned_attributes("the digit 7, written thin", "mnist") == {"thickness": "thin"}
    assert mentioned_attributes("the number one standing upright, drawn regular", "mnist") == \
        {"thickness": "regular", "slant": "upright"}
    assert mentioned_attributes("a bright picture of a ship", "cifar10") == {"brightness": "bright"}
    assert mentioned_attributes("this cat is grey and dark", "cifar10") == {"colour": "grey", "brightness": "dark"}
    for i in range(50):  # every generated caption names the attributes it was written from, and only those
        attrs = {"thickness": ("thin", "regular", "bold")[i % 3], "slant": ("left", "upright", "right")[i % 3]}
        named = mentioned_attributes(make_caption("mnist", 7, attrs, i), "mnist")
        assert named and all(attrs[k] == v for k, v in named.items())
