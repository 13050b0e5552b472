import pytest
import torch

from conftest import DATA, needs_mnist
from minimfm.data import MNIST_WORDS, CaptionedDataset, attributes, mentioned_attributes
from minimfm.interleaved import INTERLEAVED_WORDS_V1, TEMPLATES, build_interleaved, mixed_vocabulary
from minimfm.tokenizers.text import TextTokenizer

KINDS = {"then": ["text", "image", "text", "image"], "next": ["text", "image", "text", "image"],
         "captions": ["image", "text", "image", "text"]}


def fake_digits(n: int = 40):
    """Synthetic 'digits' (a bar whose width depends on the label) so the builder runs without MNIST."""
    labels = torch.arange(n) % 10
    images = torch.zeros(n, 1, 28, 28)
    for i, lab in enumerate(labels.tolist()):
        images[i, 0, 6:22, 12:13 + lab // 3] = 1.0
    return images, labels


@pytest.fixture(scope="module")
def split():
    return CaptionedDataset("mnist", "test", DATA, seed=3)  # not the default 0: caption_seed must be passed on


def test_every_template_appears_with_its_layout():
    samples = build_interleaved(*fake_digits(), n=9, seed=0)
    assert [s.template for s in samples] == list(TEMPLATES) * 3
    for s in samples:
        assert [g.kind for g in s.segments] == KINDS[s.template]
        assert all((g.image is None) == (g.kind == "text") for g in s.segments)


def test_no_two_templates_open_alike():
    """What follows an opening is what the model learns to write there, so "next" must not open like "captions"
    (an image first), nor an edit (its instruction) or a caption row (a caption, no comma) like either."""
    from minimfm.edits import INSTRUCTIONS
    for s in build_interleaved(*fake_digits(), n=30, seed=1):
        first = s.segments[0].text if s.segments[0].kind == "text" else ""  # the text before the first image
        assert (first.endswith(","), first.startswith("this is "), first == "") == tuple(
            s.template == t for t in TEMPLATES), (s.template, first)
    assert not any(i.endswith(",") or i.startswith("this is") or not i for i in INSTRUCTIONS)


def test_deterministic_from_the_seed():
    images, labels = fake_digits()
    a, b, c = (build_interleaved(images, labels, 12, seed=s) for s in (5, 5, 6))
    assert [x.describe() for x in a] == [x.describe() for x in b]
    assert [[g.index for g in x.segments] for x in a] == [[g.index for g in x.segments] for x in b]
    assert [[g.index for g in x.segments] for x in a] != [[g.index for g in x.segments] for x in c]


def test_bad_arguments_are_one_line_value_errors():
    images, labels = fake_digits()
    for kwargs, msg in ((dict(n=0), "n must be at least 1"), (dict(n=3, templates=("poem",)), "unknown template")):
        with pytest.raises(ValueError, match=msg) as e:
            build_interleaved(images, labels, **kwargs)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="no digit 9"):
        build_interleaved(images[labels != 9], labels[labels != 9], 3)


def test_texts_are_encodable_and_vocabulary_only_appends():
    samples = build_interleaved(*fake_digits(), n=60, seed=1)
    tok = TextTokenizer(mixed_vocabulary("mnist"))
    base = TextTokenizer.for_dataset("mnist")
    assert tok.vocab[:len(base)] == base.vocab and set(INTERLEAVED_WORDS_V1) <= set(tok.vocab)
    for s in samples:
        for g in s.segments:
            if g.kind == "text":
                assert tok.decode(tok.encode(g.text)) == g.text


@needs_mnist
def test_labels_and_attributes_match_the_digits_used(split):
    samples = build_interleaved(split.images, split.labels, 60, seed=0)
    assert {s.template for s in samples} == set(TEMPLATES)
    for s in samples:
        imgs = [g for g in s.segments if g.kind == "image"]
        texts = [g for g in s.segments if g.kind == "text"]
        for g in imgs:
            assert torch.equal(g.image, split.images[g.index]) and g.label == int(split.labels[g.index])
            real = attributes("mnist", g.image)[0]
            assert {k: real[k] for k in g.attributes} == g.attributes  # what is asked, the real digit has
        for g in texts:  # a text names its digit and states exactly its attributes
            if g.text == "now draw the next digit":
                continue  # names it through the digit before it
            words = TextTokenizer.split(g.text)
            assert MNIST_WORDS[g.label] in words or str(g.label) in words
            assert mentioned_attributes(g.text, "mnist") == g.attributes
        if s.template == "next":
            assert imgs[1].label == (imgs[0].label + 1) % 10 and texts[0].label == imgs[0].label
            assert texts[1].text == "now draw the next digit" and texts[1].label == imgs[1].label
        else:
            assert imgs[0].label != imgs[1].label
            assert all(t.label == i.label for t, i in zip(texts, imgs))  # in order: text k is about image k


@needs_mnist
def test_captions_are_the_training_captions(split):
    samples = build_interleaved(split.images, split.labels, 30, seed=2, caption_seed=split.seed)
    for s in samples:
        seg = s.segments
        if s.template == "then":
            assert seg[0].text == split.caption(seg[1].index) + "," and seg[2].text == "then " + split.caption(
                seg[3].index)
        elif s.template == "captions":
            assert seg[1].text == split.caption(seg[0].index) and seg[3].text == split.caption(seg[2].index)
