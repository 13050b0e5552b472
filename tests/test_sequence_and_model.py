import torch

from helpers import tiny_model
from minimfm.masks import PAD, TEXT
from minimfm.sequence import IGNORE, Layout, pack
from minimfm.tokenizers.text import TextTokenizer

tok = TextTokenizer.for_dataset("mnist")


def test_pack_both_orders_by_hand():
    layout = Layout(max_text_len=4, n_image=3)
    cap = tok.encode("a bold seven")
    b = pack([cap, cap], torch.tensor([True, False]), tok, layout)
    P, I = tok.pad_id, None
    t2i = [P, tok.bos_id] + cap + [tok.boi_id, I, I, I, tok.eoi_id, tok.eos_id]
    i2t = [tok.bos_id, tok.boi_id, I, I, I, tok.eoi_id] + cap + [tok.eos_id, P]
    for row, want in enumerate([t2i, i2t]):
        assert b.tokens[row].tolist() == [P if w is None else w for w in want]
        assert b.modality[row].tolist() == [1 if w is None else PAD if w == P else TEXT for w in want]
    assert b.image_start.tolist() == [6, 2]
    # targets: caption words, [BOI] after the caption, [EOS] after [EOI]; nothing from or to image positions
    assert b.text_targets[0].tolist() == [IGNORE] + cap + [tok.boi_id, IGNORE, IGNORE, IGNORE, IGNORE,
                                                          tok.eos_id, IGNORE]
    assert b.text_targets[1].tolist() == [tok.boi_id, IGNORE, IGNORE, IGNORE, IGNORE] + cap + \
        [tok.eos_id, IGNORE, IGNORE]


def test_caption_dropout_empties_only_t2i_rows():
    m = tiny_model()
    cap = tok.encode("a bold seven")
    b = m.pack([cap, cap], torch.tensor([True, False]), drop=torch.tensor([True, True]))
    assert (b.modality[0] == TEXT).sum() == 4  # BOS BOI EOI EOS: the caption is gone
    assert set(cap) <= set(b.tokens[1].tolist())  # captioning rows keep their caption


def test_gradients_reach_text_head_and_image_hooks():
    m = tiny_model("ar")
    caps = [tok.encode("a bold seven leaning right"), tok.encode("the digit 3, written thin")]
    codes = torch.randint(0, 16, (2, m.n_image))
    loss, _ = m.training_loss(caps, codes, torch.tensor([True, False]), torch.tensor([False, False]),
                              torch.Generator().manual_seed(0))
    loss.backward()
    for name in ("text_head.weight", "text_emb.weight", "code_emb.weight", "code_head.weight", "row_emb.weight"):
        grad = dict(m.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert all(p.grad is None for p in m.image_tokenizer.parameters())  # the tokenizer stays frozen
