"""Transformer: the KV cache changes nothing numerically, adaLN-Zero starts as identity, init is sane."""
import math

import pytest
import torch

from minimfm.masks import causal_mask, flex_block_mask, omni_mask
from minimfm.transformer import (
    Block, KVCache, RMSNorm, RotaryEmbedding, Transformer, apply_rotary, count_parameters,
    flops_per_token, init_weights,
)

D, H = 16, 2


def make(n_layer=2, adaln=False, seed=0):
    torch.manual_seed(seed)
    model = Transformer(D, n_layer, H, adaln=adaln).eval()
    for block in model.blocks:
        # at GPT-2 init (std 0.02) attention is almost uniform, which would hide position/mask bugs
        torch.nn.init.normal_(block.attn.qkv.weight, std=0.3)
    return model


def arange_positions(B, T):
    return torch.arange(T).expand(B, T)


def test_kv_cache_token_by_token_equals_full_forward():
    model = make()
    B, T = 2, 10
    x = torch.randn(B, T, D)
    modality = torch.zeros(B, T, dtype=torch.long)
    mask = causal_mask(modality)
    positions = arange_positions(B, T)
    full = model(x, mask, positions)

    cache = KVCache(model.n_layer)
    assert cache.length == 0
    steps = []
    for t in range(T):
        steps.append(model(x[:, t:t + 1], mask[:, t:t + 1, :t + 1], positions[:, t:t + 1], cache=cache))
        assert cache.length == t + 1
    incremental = torch.cat(steps, dim=1)
    assert (incremental - full).abs().max() < 1e-5
    # the check is sensitive: forgetting the cache gives a different answer
    no_cache = model(x[:, -1:], mask[:, -1:, -1:], positions[:, -1:])
    assert (no_cache - full[:, -1:]).abs().max() > 1e-3


def test_crop_and_reuse_prefix_with_omni_mask():
    model = make()
    B, P, S = 2, 5, 4
    modality = torch.tensor([[0] * P + [1] * S] * B)
    mask = omni_mask(modality)
    positions = arange_positions(B, P + S)
    prefix = torch.randn(B, P, D)

    cache = KVCache(model.n_layer)
    model(prefix, mask[:, :P, :P], positions[:, :P], cache=cache)
    outs = []
    for seed in (1, 2):  # two different image drafts, e.g. two denoising steps
        suffix = torch.randn(B, S, D, generator=torch.Generator().manual_seed(seed))
        cache.crop(P)
        cached = model(suffix, mask[:, P:], positions[:, P:], cache=cache)
        assert cache.length == P + S
        full = model(torch.cat([prefix, suffix], dim=1), mask, positions)[:, P:]
        assert (cached - full).abs().max() < 1e-5
        outs.append(cached)
    assert (outs[0] - outs[1]).abs().max() > 1e-3


def test_cache_crop_is_a_view_and_checks_bounds():
    cache = KVCache(2)
    k = torch.randn(1, H, 6, D // H)
    for layer in range(2):
        cache.update(layer, k, k)
    cache.crop(4)
    assert cache.length == 4 and cache.k[0].data_ptr() == k.data_ptr()
    with pytest.raises(ValueError):
        cache.crop(5)


def test_mask_shape_is_checked_against_cache_length():
    model = make()
    cache = KVCache(model.n_layer)
    x = torch.randn(1, 3, D)
    model(x, causal_mask(torch.zeros(1, 3, dtype=torch.long)), arange_positions(1, 3), cache=cache)
    with pytest.raises(ValueError, match="cache length"):
        model(x[:, :1], torch.ones(1, 1, 1, dtype=torch.bool), torch.tensor([[3]]), cache=cache)


def test_rope_depends_only_on_relative_position():
    model = make()
    x = torch.randn(1, 6, D)
    mask = causal_mask(torch.zeros(1, 6, dtype=torch.long))
    base = model(x, mask, arange_positions(1, 6))
    shifted = model(x, mask, arange_positions(1, 6) + 37)
    assert (base - shifted).abs().max() < 1e-4
    spread = model(x, mask, arange_positions(1, 6) * 3)
    assert (base - spread).abs().max() > 1e-3
    cos, sin = RotaryEmbedding(8)(torch.tensor([[5, 9]]))
    q = torch.randn(1, 1, 2, 8)
    torch.testing.assert_close(apply_rotary(q, cos, sin).norm(dim=-1), q.norm(dim=-1))  # a rotation


def test_adaln_with_no_image_positions_equals_plain_block():
    torch.manual_seed(0)
    plain, ada = Block(D, H), Block(D, H, adaln=True)
    missing, unexpected = ada.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(name.startswith("modulation") for name in missing)
    torch.nn.init.normal_(ada.modulation[1].weight)  # non-zero, so ignoring cond_mask would show
    B, T = 2, 5
    x, cond = torch.randn(B, T, D), torch.randn(B, T, D)
    mask = causal_mask(torch.zeros(B, T, dtype=torch.long))
    rope = RotaryEmbedding(D // H)(arange_positions(B, T))
    expected = plain(x, mask, rope)
    torch.testing.assert_close(ada(x, mask, rope, cond=cond, cond_mask=torch.zeros(B, T, dtype=torch.bool)),
                               expected, atol=0, rtol=0)
    assert (ada(x, mask, rope, cond=cond, cond_mask=torch.ones(B, T, dtype=torch.bool))
            - expected).abs().max() > 1e-3


def test_adaln_zero_block_is_identity_on_image_positions_at_init():
    torch.manual_seed(0)
    block = Block(D, H, adaln=True)
    B, T = 2, 6
    x, cond = torch.randn(B, T, D), torch.randn(B, T, D)
    cond_mask = torch.tensor([[False, False, True, True, True, False]] * B)
    mask = omni_mask(cond_mask.long())
    out = block(x, mask, RotaryEmbedding(D // H)(arange_positions(B, T)), cond=cond, cond_mask=cond_mask)
    torch.testing.assert_close(out[cond_mask], x[cond_mask], atol=0, rtol=0)
    assert (out[~cond_mask] - x[~cond_mask]).abs().min() > 0  # text positions are a normal block


def test_gradients_reach_every_parameter():
    model = make(adaln=True).train()
    B, T = 2, 6
    x, cond = torch.randn(B, T, D), torch.randn(B, T, D)
    cond_mask = torch.tensor([[False, False, True, True, True, False]] * B)
    out = model(x, omni_mask(cond_mask.long()), arange_positions(B, T), cond=cond, cond_mask=cond_mask)
    (out * torch.randn_like(out)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_init_statistics():
    torch.manual_seed(0)
    n_layer, d = 4, 64
    model = Transformer(d, n_layer, 4, adaln=True)
    block = model.blocks[0]
    assert abs(block.attn.qkv.weight.std().item() - 0.02) < 0.002
    residual_std = 0.02 / math.sqrt(2 * n_layer)
    for w in (block.attn.proj.weight, block.mlp.down.weight):
        assert abs(w.std().item() - residual_std) < 0.1 * residual_std
    assert block.modulation[1].weight.abs().max() == 0 and block.modulation[1].bias.abs().max() == 0
    assert torch.equal(model.norm.weight, torch.ones(d))
    # re-applying init_weights from a model file must not break adaLN-Zero or the residual scaling
    model.apply(init_weights)
    assert block.modulation[1].weight.abs().max() == 0
    assert abs(block.mlp.down.weight.std().item() - residual_std) < 0.1 * residual_std
    emb = torch.nn.Embedding(1000, d)
    init_weights(emb)
    assert abs(emb.weight.std().item() - 0.02) < 0.002


def test_rmsnorm_unit_rms():
    x = torch.randn(3, 7, D) * 5
    y = RMSNorm(D)(x)
    torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(3, 7), atol=1e-4, rtol=0)


def test_parameter_and_flop_counts():
    model = Transformer(D, 2, H)
    # per block: qkv 3d² + proj d² + mlp 8d² + two norms; plus the final norm
    assert count_parameters(model) == 2 * (12 * D * D + 2 * D) + D
    assert flops_per_token(D, 2, 10) == 6 * 12 * 2 * D * D + 12 * 2 * D * 10


@pytest.mark.filterwarnings("ignore")
def test_block_mask_path_equals_dense_mask():
    model = make()
    modality = torch.tensor([[0, 0, 1, 1, 1, 0, 2, 2], [-1, -1, 0, 1, 1, 1, 1, 0]])
    x = torch.randn(2, 8, D)
    positions = arange_positions(2, 8)
    try:
        block_mask = flex_block_mask(modality, "omni")
        with torch.no_grad():  # eager FlexAttention on CPU has no backward
            flex = model(x, None, positions, block_mask=block_mask)
    except Exception as e:  # no FlexAttention in this torch, or no CPU support for it
        pytest.skip(f"FlexAttention unavailable on CPU: {type(e).__name__}: {e}")
    dense = model(x, omni_mask(modality), positions)
    assert (flex - dense).abs().max() < 1e-5
    assert (flex - model(x, causal_mask(modality), positions)).abs().max() > 1e-3
