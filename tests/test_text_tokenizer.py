import pytest

from minimfm.data import make_caption
from minimfm.tokenizers.text import SPECIAL_TOKENS, TextTokenizer, UnknownWordError


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_every_caption_round_trips(dataset):
    tok = TextTokenizer.for_dataset(dataset)
    attrs = {"thickness": "thin", "slant": "left"} if dataset == "mnist" else {"brightness": "dark",
                                                                               "colour": "blue"}
    for i in range(40):
        caption = make_caption(dataset, i % 10, attrs, index=i)
        ids = tok.encode(caption)
        assert all(i >= len(SPECIAL_TOKENS) for i in ids)
        assert tok.decode(ids) == caption


def test_special_ids_and_state_round_trip():
    tok = TextTokenizer.for_dataset("mnist")
    assert [tok.pad_id, tok.bos_id, tok.eos_id, tok.boi_id, tok.eoi_id, tok.mask_id, tok.t2i_id, tok.mmu_id] == \
        list(range(8))
    again = TextTokenizer.from_state_dict(tok.state_dict())
    assert again.vocab == tok.vocab
    assert tok.decode([tok.bos_id] + tok.encode("a bold seven") + [tok.eos_id]) == "a bold seven"


def test_unknown_word_names_it_and_suggests():
    tok = TextTokenizer.for_dataset("mnist")
    with pytest.raises(UnknownWordError) as e:
        tok.encode("a bold sevn leaning right")
    assert "'sevn'" in str(e.value) and "'seven'" in str(e.value)
