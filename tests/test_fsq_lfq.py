"""FSQ and LFQ quantizers: codes round-trip, values sit on the grid, straight-through gradients, code usage."""
import math

import pytest
import torch

from minimfm.config import make_config
from minimfm.tokenizers.fsq import FiniteScalarQuantizer, parse_levels
from minimfm.tokenizers.lfq import LookupFreeQuantizer
from minimfm.tokenizers.store import new_tokenizer, tokenizer_path
from minimfm.tokenizers.training import image_gradients, reconstruction_loss, reconstruction_metrics, train_vq
from minimfm.tokenizers.vq import VQTokenizer

torch.set_num_threads(2)

LEVELS = (8, 5, 3)  # an even level, an odd one, and the smallest odd one


def test_fsq_values_are_on_the_grid_and_codes_round_trip():
    torch.manual_seed(0)
    q = FiniteScalarQuantizer(LEVELS)
    assert q.codebook_size == 120 and q.code_dim == 3
    z = 3 * torch.randn(4, 3, 5, 5)  # large values too: the bound must keep them inside the grid
    values, _, codes = q(z)
    for i, L in enumerate(LEVELS):  # channel i takes exactly L values k / (L // 2), k = -(L//2) .. (L-1)//2
        allowed = torch.arange(-(L // 2), (L - 1) // 2 + 1) / (L // 2)
        assert torch.isin(values[:, i], allowed).all()
    assert codes.shape == (4, 5, 5) and codes.min() >= 0 and codes.max() < 120
    torch.testing.assert_close(q.lookup(codes), values, rtol=0, atol=1e-6)  # decode(encode) = the quantised z
    assert torch.equal(q.encode(z), codes)


def test_fsq_every_code_has_its_own_value():
    q = FiniteScalarQuantizer(LEVELS)
    all_codes = torch.arange(q.codebook_size)
    values = q.values_from_codes(all_codes)  # (120, 3)
    assert torch.equal(q.codes_from_values(values), all_codes)
    assert len(torch.unique(values, dim=0)) == q.codebook_size


def test_fsq_level_parsing():
    assert parse_levels("8, 5,5,5") == (8, 5, 5, 5)
    with pytest.raises(ValueError, match="comma-separated"):
        parse_levels("8x5")
    with pytest.raises(ValueError, match=">= 2"):
        parse_levels("8,1")


def test_lfq_codes_are_sign_bits_and_round_trip():
    torch.manual_seed(0)
    q = LookupFreeQuantizer(bits=4)
    z = torch.randn(3, 4, 2, 2)
    values, aux, codes = q(z)
    assert torch.equal(values, torch.where(z > 0, 1.0, -1.0))
    assert torch.equal(q.lookup(codes), values) and torch.equal(q.encode(z), codes)
    one = torch.tensor([[[1.0]], [[-1.0]], [[1.0]], [[-1.0]]])[None]  # bits 0 and 2 set -> 1 + 4
    assert q.encode(one).item() == 5
    assert torch.equal(q.codes_from_signs(q.signs_from_codes(torch.arange(16))), torch.arange(16))
    assert aux.ndim == 0


def test_lfq_entropy_loss_prefers_confident_and_spread_codes():
    q = LookupFreeQuantizer(bits=2, temperature=1.0)
    spread = torch.tensor([[3.0, 3.0], [-3.0, -3.0], [3.0, -3.0], [-3.0, 3.0]])  # confident, all four codes
    collapsed = torch.full((4, 2), 3.0)  # confident, one code
    unsure = torch.zeros(4, 2)  # every bit a coin flip
    assert q.entropy_loss(spread) < q.entropy_loss(collapsed)
    assert q.entropy_loss(spread) < q.entropy_loss(unsure)
    assert q.entropy_loss(spread).item() == pytest.approx(-2 * math.log(2), abs=1e-3)
    # both bits balanced but always equal: only codes 0 and 3 in use, which a per-bit entropy would not see
    copies = torch.tensor([[3.0, 3.0], [-3.0, -3.0], [3.0, 3.0], [-3.0, -3.0]])
    assert q.entropy_loss(copies).item() == pytest.approx(-math.log(2), abs=1e-3)


@pytest.mark.parametrize("quantizer,kw", [("vq", dict(codebook_size=16, code_dim=4)), ("fsq", dict(levels=LEVELS)),
                                          ("lfq", dict(code_dim=4))])
def test_straight_through_gradient_reaches_the_encoder(quantizer, kw):
    torch.manual_seed(0)
    tok = VQTokenizer(3, hidden=16, quantizer=quantizer, **kw).train()
    recon, aux, codes = tok(torch.rand(2, 3, 32, 32))
    recon.mean().backward()  # the reconstruction alone: any encoder gradient came through the quantizer
    first = tok.encoder.net[0].weight.grad
    assert first is not None and first.abs().sum() > 0
    assert codes.shape == (2, 8, 8) and tok.grid == (8, 8)


@pytest.mark.parametrize("quantizer,kw", [("fsq", dict(levels=LEVELS)), ("lfq", dict(code_dim=4))])
def test_codes_of_a_batch_are_used_and_counted(quantizer, kw):
    torch.manual_seed(0)
    tok = VQTokenizer(3, hidden=16, quantizer=quantizer, **kw).eval()
    x = torch.rand(16, 3, 32, 32)
    codes = tok.encode(x)
    assert codes.dtype == torch.long and codes.min() >= 0 and codes.max() < tok.codebook_size
    assert len(codes.unique()) > 1  # even untrained, random images spread over several codes
    m = reconstruction_metrics(tok, x)
    assert set(m) == {"mse", "usage", "perplexity"}
    assert m["usage"] == pytest.approx(len(codes.unique()) / tok.codebook_size)
    assert 1 <= m["perplexity"] <= len(codes.unique()) + 1e-6


def test_finer_grid_and_l1grad_loss_train():
    torch.manual_seed(0)
    x = torch.rand(32, 3, 32, 32)
    tok = train_vq(x, quantizer="fsq", levels=LEVELS, downsample=2, hidden=16, loss="l1grad", steps=3, batch_size=8,
                   lr=1e-3, seed=0, progress=False)
    assert tok.grid == (16, 16) and tok.encode(x[:2]).shape == (2, 16, 16)
    assert tok.decode(tok.encode(x[:2])).shape == (2, 3, 32, 32)


def test_l1grad_loss_sees_edges_mse_misses():
    sharp = torch.zeros(1, 1, 8, 8)
    sharp[..., 4:] = 1
    blurred = sharp.clone()
    blurred[..., 3:5] = 0.5
    dy, dx = image_gradients(sharp)
    assert dy.shape == (1, 1, 7, 8) and dx.shape == (1, 1, 8, 7) and dx.abs().sum() == 8
    assert reconstruction_loss(sharp, sharp, "l1grad") == 0
    # same squared error, but the gradient term adds the smeared edge on top of the L1
    assert reconstruction_loss(blurred, sharp, "l1grad") > reconstruction_loss(blurred, sharp, "mse")
    with pytest.raises(ValueError, match="unknown tokenizer loss"):
        reconstruction_loss(sharp, sharp, "l2")


def test_config_selects_the_quantizer_and_names_never_collide():
    paths = set()
    for quantizer in ("vq", "fsq", "lfq"):
        cfg = make_config("smoke", dataset="cifar10", quantizer=quantizer, fsq_levels="8,5,3", lfq_bits=5)
        tok = new_tokenizer(cfg, "vq", 3)
        assert tok.config["quantizer"] == quantizer and tok.grid == (8, 8)
        assert tok.codebook_size == {"vq": cfg.vq_codebook_size, "fsq": 120, "lfq": 32}[quantizer]
        paths.add(tokenizer_path(cfg, "vq"))
        paths.add(tokenizer_path(make_config("smoke", dataset="cifar10", quantizer=quantizer, fsq_levels="8,5,3",
                                             lfq_bits=5, tokenizer_downsample=2, tokenizer_loss="l1grad"), "vq"))
    assert len(paths) == 6
    mnist = make_config("tiny")  # the defaults keep the names existing caches were written under
    assert tokenizer_path(mnist, "vq").name == "mnist-vq-256x32-2000steps.pt"
    assert tokenizer_path(mnist, "latent").name == "mnist-ae-4ch-2000steps.pt"
    assert tokenizer_path(mnist, "judge").name == "mnist-judge-2000steps.pt"
