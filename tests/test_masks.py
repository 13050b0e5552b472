"""Masks are checked pair by pair against the rule written out with plain Python loops."""
import pytest
import torch
import torch.nn.functional as F

from minimfm.masks import PAD, TEXT, attention_mask, causal_mask, flex_block_mask, omni_mask, plot_mask

T_, I1, I2, P_ = TEXT, 1, 2, PAD
LAYOUTS = {
    "text_then_image": [T_, T_, T_, I1, I1, I1, I1, T_],
    "image_then_text": [I1, I1, I1, I1, T_, T_, T_, T_],
    "two_images": [T_, I1, I1, I1, T_, I2, I2, I2],
    "left_padding": [P_, P_, T_, T_, I1, I1, I1, T_],
    "right_padding": [T_, I1, I1, I1, T_, T_, P_, P_],
    "pad_inside_image_gap": [T_, I1, I1, T_, I2, I2, P_, P_],
}


def brute_force(modality: list[int], kind: str) -> list[list[bool]]:
    """The spec, one (i, j) pair at a time."""
    T = len(modality)
    out = [[False] * T for _ in range(T)]
    for i in range(T):
        for j in range(T):
            if modality[i] == -1:
                out[i][j] = i == j
                continue
            if modality[j] == -1:
                continue
            ok = j <= i
            if kind == "omni" and modality[i] >= 1 and modality[i] == modality[j]:
                ok = True
            out[i][j] = ok
    return out


@pytest.mark.parametrize("kind", ["causal", "omni"])
@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_mask_matches_brute_force(kind, name):
    modality = torch.tensor([LAYOUTS[name]])
    mask = attention_mask(modality, kind)
    assert mask.dtype == torch.bool and mask.shape == (1, 8, 8)
    assert mask[0].tolist() == brute_force(LAYOUTS[name], kind)


@pytest.mark.parametrize("fn,kind", [(causal_mask, "causal"), (omni_mask, "omni")])
def test_batch_of_two_layouts(fn, kind):
    a, b = LAYOUTS["two_images"], LAYOUTS["left_padding"]
    mask = fn(torch.tensor([a, b]))
    assert mask[0].tolist() == brute_force(a, kind)
    assert mask[1].tolist() == brute_force(b, kind)


def test_omni_differs_from_causal_only_inside_images():
    modality = torch.tensor([LAYOUTS["two_images"]])
    extra = omni_mask(modality) & ~causal_mask(modality)
    assert extra.any()
    i, j = extra[0].nonzero(as_tuple=True)
    assert (modality[0, i] == modality[0, j]).all() and (modality[0, i] >= 1).all()
    # a later image never sees into an earlier image's future, nor image 1 into image 2
    assert not omni_mask(modality)[0, 1, 5]


def test_padding_rules():
    modality = torch.tensor([LAYOUTS["left_padding"], LAYOUTS["right_padding"]])
    for mask in (causal_mask(modality), omni_mask(modality)):
        pad = modality == PAD
        for b in range(2):
            for i in range(8):
                if pad[b, i]:  # pad query: only its own diagonal, so softmax has one finite logit
                    assert mask[b, i].tolist() == [j == i for j in range(8)]
                else:  # real query: never a pad key, and at least one key
                    assert not (mask[b, i] & pad[b]).any()
                    assert mask[b, i].any()


def test_no_nan_through_sdpa_with_padding():
    torch.manual_seed(0)
    modality = torch.tensor([LAYOUTS["left_padding"], LAYOUTS["right_padding"]])
    q, k, v = torch.randn(3, 2, 2, 8, 4).unbind(0)  # each (B, H, T, Dh)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=omni_mask(modality)[:, None])
    assert torch.isfinite(out).all()


def test_bad_kind_raises():
    with pytest.raises(ValueError, match="causal"):
        attention_mask(torch.zeros(1, 4, dtype=torch.long), "bidirectional")


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("kind", ["causal", "omni"])
def test_flex_attention_matches_dense(kind):
    torch.manual_seed(0)
    modality = torch.tensor([LAYOUTS["two_images"], LAYOUTS["left_padding"]])
    q, k, v = torch.randn(3, 2, 2, 8, 4).unbind(0)  # each (B, H, T, Dh)
    try:
        from torch.nn.attention.flex_attention import flex_attention
        block_mask = flex_block_mask(modality, kind)
        out = flex_attention(q, k, v, block_mask=block_mask)
    except Exception as e:  # no FlexAttention in this torch, or no CPU support for it
        pytest.skip(f"FlexAttention unavailable on CPU: {type(e).__name__}: {e}")
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask(modality, kind)[:, None])
    torch.testing.assert_close(out, dense, atol=1e-5, rtol=0)
    # the masks really differ, so matching the right one is informative
    other = "omni" if kind == "causal" else "causal"
    wrong = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask(modality, other)[:, None])
    assert (out - wrong).abs().max() > 1e-3


def test_plot_mask_returns_axes():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes

    modality = torch.tensor([LAYOUTS["two_images"], LAYOUTS["left_padding"]])
    ax = plot_mask(omni_mask(modality), modality, title="omni")
    assert isinstance(ax, Axes) and ax.get_title() == "omni"
    assert len(ax.images) == 1 and ax.images[0].get_array().shape == (8, 8)
    _, ax2 = plt.subplots()
    assert plot_mask(causal_mask(modality)[1], modality[1], ax=ax2) is ax2
    plt.close("all")
