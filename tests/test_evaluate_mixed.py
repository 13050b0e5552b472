import pytest
import torch

from conftest import DATA, needs_mnist
from helpers import tiny_config, tiny_vq
from minimfm.data import load_images
from minimfm.edits import build_edits
from minimfm.evaluate_mixed import (check_vocabulary, evaluate_edits, evaluate_interleaved, run_interleaved,
                                    score_edits, score_edits_with_baseline, score_interleaved)
from minimfm.interleaved import DRAWN, build_interleaved, mixed_vocabulary
from minimfm.judge import Judge
from minimfm.runs import build_model
from minimfm.tokenizers.text import TextTokenizer


class Oracle(torch.nn.Module):
    """A judge that reads every image as the digit it is told (its `answers`, in call order, one per image)."""

    def __init__(self, answers):
        super().__init__()
        self.answers, self.dummy = list(answers), torch.nn.Parameter(torch.zeros(1))

    def forward(self, images):
        digits = torch.tensor([self.answers.pop(0) for _ in range(len(images))])
        return torch.nn.functional.one_hot(digits, 10).float()


@pytest.fixture(scope="module")
def test_split():
    images, labels = load_images("mnist", "test", DATA)
    return images[:500], labels[:500]


def test_interleaved_scoring_on_made_up_outputs():
    records = [
        {"template": "then", "images": [(3, 3), (7, 7)], "texts": []},           # both drawn right
        {"template": "then", "images": [(3, 3), (7, 1)], "texts": []},           # the second wrong
        {"template": "next", "images": [(5, 5)], "texts": []},
        {"template": "captions", "images": [], "texts": [("the digit 2, written thin", 2, False),
                                                         ("a seven and a one", 7, True)]},  # two digits: wrong
        {"template": "captions", "images": [], "texts": [("a four", 4, False),
                                                         ("an upright eight", 3, True)]},  # the wrong digit
        {"template": "captions", "images": [], "texts": [("a four", 4, False), ("a thin one", 1, True)]},
    ]
    s = score_interleaved(records)
    assert s["n_sequences"] == 6 and s["n_images"] == 5 and s["n_texts"] == 6 and s["n_texts_after_drawn"] == 3
    assert s["image_accuracy"] == 4 / 5 and s["image_accuracy_then"] == 3 / 4 and s["image_accuracy_next"] == 1
    assert s["text_consistency"] == 4 / 6 and s["text_consistency_captions"] == 4 / 6
    assert s["text_consistency_after_drawn"] == 1 / 3
    assert s["image_accuracy_captions"] is None and s["text_consistency_then"] is None
    assert s["text_consistency_next"] is None


@needs_mnist
def test_edit_scoring_a_perfect_editor_and_the_copy_baseline(test_split):
    images, labels = test_split
    triples = build_edits(images, labels, 20, seed=0)  # every instruction, twice
    sources, targets = torch.stack([t.source for t in triples]), torch.stack([t.target for t in triples])
    instructions, digits = [t.instruction for t in triples], torch.tensor([t.label for t in triples])
    perfect = score_edits(sources, targets, targets, instructions, digits, judged=digits)
    assert perfect["moved"] == 1.0 and perfect["mse"] == 0.0 and perfect["identity_kept"] == 1.0
    assert all(perfect[ins]["moved"] == 1.0 and perfect[ins]["n"] == 2 for ins in set(instructions))
    copy = score_edits(sources, targets, sources, instructions, digits, judged=digits)
    assert copy["moved"] == 0.0 and copy["mse"] > 0 and all(copy[ins]["moved"] == 0.0 for ins in set(instructions))
    wrong_digit = score_edits(sources, targets, targets, instructions, digits, judged=(digits + 1) % 10)
    assert wrong_digit["identity_kept"] == 0.0
    both = score_edits_with_baseline(sources, targets, targets, instructions, digits, Oracle(digits.tolist() * 2))
    assert both["model"]["moved"] == 1.0 and both["copy_source"]["moved"] == 0.0
    with pytest.raises(ValueError, match="differ in length"):
        score_edits(sources, targets, targets[:3], instructions, digits, digits)


def mixed_model(mode="ar"):
    cfg = tiny_config(mode)
    torch.manual_seed(0)
    return build_model(cfg, tiny_vq(cfg), TextTokenizer(mixed_vocabulary("mnist"))).eval()


@needs_mnist
def test_the_runner_opens_each_template_as_training_does(test_split, monkeypatch):
    """The first token fed is the task token training opened that template's rows with ([MMU] for "captions",
    whose images training reads; a first run fed [T2I] there and the model wrote nothing: text 0.04)."""
    from minimfm.generate import Context
    from minimfm.mixed_data import interleaved_example
    images, labels = test_split
    model, judge = mixed_model("masked"), Judge(1).eval()
    assert model.task_tokens
    fed, feed = [], Context.feed_text
    monkeypatch.setattr(Context, "feed_text", lambda self, ids: (fed.append(list(ids)), feed(self, ids))[1])
    openings = []
    for s in build_interleaved(images, labels, 3, seed=0):  # then, next, captions
        fed.clear()
        run_interleaved(model, judge, s)
        openings.append(fed[0][:2])
        assert fed[0][:2] == interleaved_example(s, model.tok).segments(model.tok, True)[0][:2]
    tok = model.tok
    assert openings == [[tok.t2i_id, tok.bos_id], [tok.t2i_id, tok.bos_id], [tok.mmu_id, tok.bos_id]]


def test_a_caption_vocabulary_is_refused_in_one_line():
    from helpers import tiny_model
    with pytest.raises(ValueError, match="vocabulary lacks 'make': it was not trained on interleaved"):
        check_vocabulary(tiny_model("ar"))


@needs_mnist
def test_the_runners_walk_each_template_and_score(test_split):
    """A random-weight model: figures in [0, 1] with the right counts, and each template does what it should
    (draw its DRAWN images, score the NAMED ones, write the captions of "captions", read the rest)."""
    images, labels = test_split
    model, judge = mixed_model(), Judge(1).eval()
    samples = build_interleaved(images, labels, 3, seed=0)  # then, next, captions
    scored, written = [], []
    for s in samples:
        record, pictures = run_interleaved(model, judge, s)
        scored.append(len(record["images"]))
        written.append([drawn for _, _, drawn in record["texts"]])
        assert len(pictures) == 2 and all(p.shape == (1, 28, 28) for p in pictures)
        given = [seg.image for seg in s.segments if seg.kind == "image"]
        assert [torch.equal(p, g.float()) for p, g in zip(pictures, given)] == [not d for d in DRAWN[s.template]]
    assert scored == [2, 1, 0] and written == [[], [], [False, True]]
    s = evaluate_interleaved(model, judge, images, labels, 3)
    assert s["n_images"] == 3 and s["n_texts"] == 2 and s["n_texts_after_drawn"] == 1 and 0 <= s["image_accuracy"] <= 1
    e = evaluate_edits(model, judge, images, labels, 2)
    assert e["model"]["n_edits"] == e["copy_source"]["n_edits"] == 2 and e["copy_source"]["moved"] == 0.0
    assert e["cfg_scale"] == 1.0 != model.cfg.cfg_scale  # edits sample without guidance unless asked
    assert evaluate_edits(model, judge, images, labels, 1, cfg_scale=2.5)["cfg_scale"] == 2.5
