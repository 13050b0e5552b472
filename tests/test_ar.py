import pytest
import torch

from helpers import tiny_model
from minimfm.modes.sampling import filter_logits, guided
from minimfm.tokenizers.text import UnknownWordError


@pytest.fixture(scope="module")
def model():
    return tiny_model("ar").eval()


def prompts(m):
    return [m.tok.encode("a bold seven leaning right"), m.tok.encode("the digit 3, written thin")]


def test_kv_cache_sampling_equals_recompute(model):
    for scale in (0.0, 2.0):
        a, _ = model.sample_images(prompts(model), cfg_scale=scale, generator=torch.Generator().manual_seed(3))
        b, _ = model.sample_images(prompts(model), cfg_scale=scale, generator=torch.Generator().manual_seed(3),
                                   use_cache=False)
        assert torch.equal(a, b)


def test_exactly_49_codes_and_nfe(model):
    codes, nfe = model.sample_images(prompts(model), cfg_scale=1.0, generator=torch.Generator().manual_seed(0))
    assert codes.shape == (2, 49) and nfe == 49
    assert 0 <= codes.min() and codes.max() < model.image_tokenizer.codebook_size


def test_cfg_zero_is_the_unguided_model(model):
    logits = torch.randn(4, 16)
    assert torch.equal(guided(logits, 0.0), logits)
    assert torch.allclose(guided(logits, 2.0), 3 * logits[:2] - 2 * logits[2:])
    # greedy decoding with cfg 0 equals greedy decoding by hand with the conditional model alone
    codes, _ = model.sample_images(prompts(model)[:1], cfg_scale=0.0, generator=torch.Generator(),
                                   temperature=0)
    batch = model.pack(prompts(model)[:1], torch.tensor([True]))
    P, mask = model.layout.prompt_length(), model.mask(batch.modality)
    x = model.text_emb(batch.tokens[:, :P])
    for j in range(model.n_image):
        h = model.transformer(x, mask[:, :P + j, :P + j], batch.positions[:, :P + j])
        code = model.code_head(h[:, -1]).argmax(-1)
        assert code.item() == codes[0, j].item()
        x = torch.cat([x, (model.code_emb(code) + model.image_grid_embedding()[j])[:, None]], 1)


def test_completion_keeps_known_codes(model):
    known = torch.randint(0, 16, (2, model.n_image))
    known_mask = torch.zeros(2, model.n_image, dtype=torch.bool)
    known_mask[:, :14] = True  # the top two rows of a 7x7 grid
    codes, _ = model.sample_images(prompts(model), cfg_scale=1.0, generator=torch.Generator().manual_seed(0),
                                   known=known, known_mask=known_mask)
    assert torch.equal(codes[:, :14], known[:, :14])
    assert not torch.equal(codes[:, 14:], known[:, 14:])


def test_ar_refuses_a_step_count(model):
    """ar makes one code per evaluation: a step count is a clear ValueError (one CLI line), not a TypeError."""
    with pytest.raises(ValueError, match="--steps: the ar mode has no step count"):
        model.sample_images(prompts(model), steps=8, cfg_scale=0.0, generator=torch.Generator())
    assert model.default_steps is None


def test_top_k_top_p_filtering():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    probs = logits.softmax(-1)[0]  # 0.64, 0.24, 0.09, 0.03
    kept = ~torch.isinf(filter_logits(logits, top_p=0.8))
    assert kept.tolist() == [[True, True, False, False]] and probs[:2].sum() > 0.8


def test_unknown_prompt_word(model):
    with pytest.raises(UnknownWordError, match="'sevn'"):
        model.generate_images(["a bold sevn"])


def test_generate_and_caption_shapes(model):
    images = model.generate_images(["a bold seven leaning right"], cfg_scale=0.0)
    assert images.shape == (1, 1, 28, 28) and 0 <= images.min() and images.max() <= 1
    assert isinstance(model.caption(images)[0], str)
