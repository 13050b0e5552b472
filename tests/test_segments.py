import copy
import pickle

import pytest
import torch

from minimfm.masks import PAD, TEXT, causal_mask, omni_mask
from minimfm.segments import IMAGE, check, image_to_text, pack, text_to_image, unpack, wrap
from minimfm.sequence import Layout
from minimfm.sequence import pack as sequence_pack
from minimfm.tokenizers.text import TextTokenizer

tok = TextTokenizer.for_dataset("mnist")
BOS, EOS, BOI, EOI = tok.bos_id, tok.eos_id, tok.boi_id, tok.eoi_id
N = 3


def words(text):
    return tok.encode(text)


# text, image, text, image   and   image, text, image, text (an image always opens with [BOS] [BOI])
TEXT_FIRST = [[BOS, *words("a thin three"), BOI], IMAGE, [EOI, *words("a seven"), BOI], IMAGE, [EOI, EOS]]
IMAGE_FIRST = [[BOS, BOI], IMAGE, [EOI, *words("the digit 4"), BOI], IMAGE, [EOI, *words("a bold 5"), EOS]]
ONE_IMAGE = text_to_image(words("a 1"), tok)


def test_wrap_brackets_images_and_ends():
    assert wrap([words("a thin three"), IMAGE, words("a seven"), IMAGE], tok) == TEXT_FIRST
    assert wrap([IMAGE, words("the digit 4"), IMAGE, words("a bold 5")], tok) == IMAGE_FIRST
    assert wrap([words("a 1")], tok, task=tok.t2i_id, eos=False) == [[tok.t2i_id, BOS, *words("a 1")]]


@pytest.mark.parametrize("task_tokens", [False, True])
def test_sequence_pack_layouts_are_special_cases_byte_identical(task_tokens):
    layout = Layout(max_text_len=6, n_image=N, task_tokens=task_tokens)
    caps = [words("a bold seven leaning right"), words("the digit 3"), [], words("thin 8")]
    t2i = torch.tensor([True, False, True, False])
    want = sequence_pack(caps, t2i, tok, layout)
    rows = [(text_to_image if f else image_to_text)(c, tok, task_tokens) for c, f in zip(caps, t2i.tolist())]
    got = pack(rows, tok, N, flush_right=t2i, length=layout.length)
    for name in ("tokens", "modality", "positions", "text_targets"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert torch.equal(got.image_start[:, 0], want.image_start) and got.image_start.shape == (4, 1)


def test_image_marker_survives_copies():
    assert copy.deepcopy(TEXT_FIRST)[1] is IMAGE and pickle.loads(pickle.dumps(IMAGE_FIRST))[3] is IMAGE


@pytest.mark.parametrize("flush_right", [False, True])
def test_round_trip_mixed_layouts(flush_right):
    rows = [TEXT_FIRST, IMAGE_FIRST, ONE_IMAGE]
    batch = pack(rows, tok, N, flush_right=[flush_right] * 3)
    assert unpack(batch) == rows
    assert batch.image_start.shape == (3, 2) and batch.image_start[2, 1] == -1  # row 2 has one image
    assert batch.image_row.tolist() == [0, 0, 1, 1, 2]
    # every image is one block of N positions in reading order: h[image_positions].view(M, N, D) works
    starts = batch.positions[batch.image_positions].view(-1, N)  # (M, N)
    assert torch.equal(starts, batch.image_start[batch.image_start >= 0][:, None] + torch.arange(N))
    assert batch.modality[batch.image_positions].view(-1, N)[:, 0].tolist() == [1, 2, 1, 2, 1]


def test_layout_by_hand():
    a = words("a")
    b = pack([[[BOS, *a, BOI], IMAGE, [EOI, BOI], IMAGE], [[BOS, BOI], IMAGE, [EOI, EOS]]], tok, 2,
             flush_right=[False, True])
    I, P = None, tok.pad_id
    assert b.tokens.tolist() == [[BOS, *a, BOI, P, P, EOI, BOI, P, P], [P, P, P, BOS, BOI, P, P, EOI, EOS]]
    assert b.modality.tolist() == [[0, 0, 0, 1, 1, 0, 0, 2, 2], [PAD] * 3 + [0, 0, 1, 1, 0, 0]]
    assert b.image_start.tolist() == [[3, 7], [5, -1]]
    # scored: the caption word, [BOI] after it, [BOI] after [EOI] (the model learns when an image comes), [EOS]
    I = -100
    assert b.text_targets.tolist() == [[a[0], BOI, I, I, I, BOI, I, I, I], [I, I, I, BOI, I, I, I, EOS, I]]


@pytest.mark.parametrize("row, message", [
    ([[BOS], IMAGE, [EOI, EOS]], "does not follow a \\[BOI\\]"),
    ([[BOS, BOI], IMAGE, [EOS]], "other than \\[EOI\\]"),
    ([[BOS, BOI], IMAGE, IMAGE], "no \\[EOI\\] \\[BOI\\] between them"),
    ([[BOS, BOI, EOS]], "not followed by an image"),
    ([[BOS, EOI, EOS]], "does not follow an image"),
    ([[BOS], "image"], "not a list of ids or IMAGE"),
])
def test_bad_rows_get_one_line_errors(row, message):
    with pytest.raises(ValueError, match=message):
        check(row, tok)
    with pytest.raises(ValueError, match="row 0"):
        pack([row], tok, N)


def test_length_and_flags_are_checked():
    with pytest.raises(ValueError, match="more than length=4"):
        pack([TEXT_FIRST], tok, N, length=4)
    with pytest.raises(ValueError, match="flush_right has 2 entries for 1 rows"):
        pack([TEXT_FIRST], tok, N, flush_right=[True, False])


def test_two_image_masks():
    """Text causal; each image bidirectional within itself (omni) or causal (ar); a later image sees an earlier
    one, never the reverse; padding never seen."""
    b = pack([TEXT_FIRST, ONE_IMAGE], tok, N, flush_right=[False, True])
    mod = b.modality[0]
    T = len(mod)
    img1, img2 = (mod == 1).nonzero()[:, 0], (mod == 2).nonzero()[:, 0]
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    omni, plain = omni_mask(b.modality)[0], causal_mask(b.modality)[0]
    assert torch.equal(plain, causal)
    text = mod == TEXT
    assert torch.equal(omni[text], causal[text])  # text rows: exactly causal
    assert omni[img1][:, img1].all() and omni[img2][:, img2].all()  # bidirectional inside each image
    assert omni[img2][:, img1].all() and not omni[img1][:, img2].any()  # image 2 sees image 1, never the reverse
    assert not plain[img1][:, img2].any() and not plain[img1[0], img1[1]]  # causal within the image (ar)
    after = img2[-1] + 1  # [EOI] after image 2 sees everything before it
    assert omni[after, :after + 1].all() and not omni[after, after + 1:].any()
    pad = b.modality[1] == PAD  # flush-right row: pads on the left, never a key for a real query
    assert not omni_mask(b.modality)[1][~pad][:, pad].any()
