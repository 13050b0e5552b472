"""evaluate() plumbing: a model that 'generates' the very test images its prompts were written from, and reads
back their true captions, must score attribute match 1, caption accuracy 1, and the judge's own accuracy."""
import pytest
import torch

from conftest import DATA, needs_mnist
from helpers import tiny_config
from minimfm.data import MNIST_WORDS, CaptionedDataset
from minimfm.evaluate import balanced_indices, caption_attributes_right, caption_class, evaluate
from minimfm.judge import Judge
from minimfm.tokenizers.text import TextTokenizer


class Oracle:
    """Returns, for each prompt, a real test image that prompt was written from; captions each image truly."""

    mode, last_nfe, default_steps = "oracle", 1, None

    def __init__(self, cfg, test: CaptionedDataset):
        self.cfg, self.device, self.tok = cfg, torch.device("cpu"), TextTokenizer.for_dataset(cfg.dataset)
        self.by_caption = {test.caption(i): test.images[i] for i in range(len(test))}
        self.caption_of = {test.images[i].numpy().tobytes(): test.caption(i) for i in range(len(test))}

    def generate_images(self, prompts, cfg_scale=None, seed=0):
        return torch.stack([self.by_caption[p] for p in prompts])

    def encode_images(self, images):
        return images  # the "representation" is the image itself

    def caption_ids(self, images):
        return [self.tok.encode(self.caption_of[img.numpy().tobytes()]) for img in images]

    def caption_nll(self, images, captions):
        return torch.zeros(len(captions)), torch.ones(len(captions))  # perplexity exp(0) = 1


@needs_mnist
def test_an_oracle_scores_perfect_attributes_and_captions():
    cfg = tiny_config("ar", data_root=str(DATA))
    test = CaptionedDataset("mnist", "test", cfg.data_root, seed=cfg.seed)
    torch.manual_seed(0)
    judge = Judge(1).eval()  # random weights: prompted accuracy must still equal ITS accuracy on these images
    oracle = Oracle(cfg, test)
    r = evaluate(oracle, judge, n_samples=40, n_captions=30, verbose=False, batch_size=16)
    idx = balanced_indices(test.labels, 40)
    with torch.no_grad():  # an image with the same caption: same class and attributes, maybe not the same pixels
        images = oracle.generate_images([test.caption(i) for i in idx])
        expected = (judge(images).argmax(-1) == test.labels[idx]).float().mean()
    assert r["prompted_accuracy"] == float(expected)
    assert r["attribute_match"] == 1.0 and r["caption_accuracy"] == 1.0 and r["caption_perplexity"] == 1.0
    assert r["caption_attribute_accuracy"] == 1.0
    assert r["caption_attribute_accuracy_thickness"] == r["caption_attribute_accuracy_slant"] == 1.0
    assert r["n_samples"] == 40 and r["n_captions"] == 30 and r["nfe_per_image"] == 1
    skipped = evaluate(Oracle(cfg, test), judge, n_samples=20, n_captions=0, verbose=False)
    assert skipped["caption_accuracy"] is None and skipped["n_captions"] == 0
    assert skipped["caption_attribute_accuracy"] is None


class Liar(Oracle):
    """Names the right class but calls every bold digit thin."""

    def caption_ids(self, images):
        return [self.tok.encode(self.tok.decode(ids).replace("bold", "thin")) for ids in super().caption_ids(images)]


class Terse(Oracle):
    """Names the right class and nothing else: nothing checkable beyond the class."""

    def __init__(self, cfg, test: CaptionedDataset):
        super().__init__(cfg, test)
        self.label_of = {test.images[i].numpy().tobytes(): int(test.labels[i]) for i in range(len(test))}

    def caption_ids(self, images):
        return [self.tok.encode(f"a {MNIST_WORDS[self.label_of[img.numpy().tobytes()]]}") for img in images]


@needs_mnist
def test_caption_attribute_accuracy_needs_every_named_attribute_right():
    cfg = tiny_config("ar", data_root=str(DATA))
    test = CaptionedDataset("mnist", "test", cfg.data_root, seed=cfg.seed)
    judge = Judge(1).eval()
    r = evaluate(Liar(cfg, test), judge, n_samples=10, n_captions=60, verbose=False)
    bold = sum(test.attributes[i]["thickness"] == "bold" for i in balanced_indices(test.labels, 60))
    assert 0 < bold < 60  # the check below can fail
    assert r["caption_accuracy"] == 1.0  # the class word is still right
    assert r["caption_attribute_accuracy"] == pytest.approx((60 - bold) / 60)
    assert r["caption_attribute_accuracy_thickness"] == pytest.approx((60 - bold) / 60)  # every template names it
    assert r["caption_attribute_accuracy_slant"] == 1.0
    r = evaluate(Terse(cfg, test), judge, n_samples=10, n_captions=20, verbose=False)
    assert r["caption_accuracy"] == 1.0 and r["caption_attribute_accuracy"] == 0.0
    assert r["caption_attribute_accuracy_thickness"] is None  # no caption named it


def test_caption_attributes_score_only_what_a_caption_names():
    truth = {"thickness": "bold", "slant": "right"}
    assert caption_attributes_right("the digit 7, written bold", truth, "mnist") == {"thickness": True}
    assert caption_attributes_right("a thin seven leaning right", truth, "mnist") == {"thickness": False,
                                                                                       "slant": True}
    assert caption_attributes_right("a seven", truth, "mnist") == {}


def test_balanced_indices_interleave_classes():
    labels = torch.tensor([0, 0, 1, 2, 1, 2, 0, 1, 2])
    assert balanced_indices(labels, 6) == [0, 2, 3, 1, 4, 5]
    assert caption_class("a bold seven leaning right", "mnist") == 7
    assert caption_class("the digit 7 or the digit 1", "mnist") is None
