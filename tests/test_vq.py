"""VQ tokenizer: shapes, code range, EMA codebook with dead-code restarts, stats, checkpoints."""
import math

import pytest
import torch

from minimfm.checkpoint import CheckpointError, load_checkpoint, save_atomic
from minimfm.tokenizers.training import (reconstruction_metrics, tokenizer_from_checkpoint,
                                         tokenizer_to_checkpoint, train_vq)
from minimfm.tokenizers.vq import VectorQuantizerEMA, VQTokenizer, codebook_stats
from helpers import squares

torch.set_num_threads(2)


@pytest.mark.parametrize("channels,size,grid", [(1, 28, 7), (3, 32, 8)])
def test_encode_decode_shapes_and_code_range(channels, size, grid):
    torch.manual_seed(0)
    vq = VQTokenizer(channels, codebook_size=16, code_dim=8, hidden=16)
    x = torch.rand(3, channels, size, size)
    vq.train()
    recon, commitment, codes = vq(x)  # first training pass seeds the codebook from data
    assert vq.grid == (grid, grid) and vq.codebook_size == 16
    assert recon.shape == x.shape and commitment.ndim == 0 and codes.shape == (3, grid, grid)
    vq.eval()
    codes = vq.encode(x)
    assert codes.dtype == torch.long and codes.shape == (3, grid, grid)
    assert codes.min() >= 0 and codes.max() < 16
    images = vq.decode(codes)
    assert images.shape == x.shape and images.min() >= 0 and images.max() <= 1


def test_encode_matches_training_forward_codes():
    torch.manual_seed(0)
    vq = VQTokenizer(1, codebook_size=16, code_dim=8, hidden=16)
    x = torch.rand(4, 1, 28, 28)
    vq.train()
    vq(x)
    vq.eval()
    _, _, codes = vq(x)
    assert torch.equal(codes, vq.encode(x))


def test_straight_through_gradient_reaches_encoder():
    torch.manual_seed(0)
    vq = VQTokenizer(1, codebook_size=16, code_dim=8, hidden=16).train()
    recon, commitment, _ = vq(torch.rand(2, 1, 28, 28))
    (recon.mean() + commitment).backward()
    assert vq.encoder.net[0].weight.grad.abs().sum() > 0


def test_dead_code_restart_revives_unused_code():
    torch.manual_seed(0)
    q = VectorQuantizerEMA(codebook_size=8, code_dim=4).train()
    z = torch.randn(2, 4, 5, 5)
    q(z)  # initialises the codebook from z
    with torch.no_grad():  # make code 3 dead: far from all data and with zero usage
        q.embed[3] = 100.0
        q.embed_sum[3] = 0.0
        q.cluster_size[3] = 0.0
    before = q.embed[3].clone()
    q(z)
    assert not torch.allclose(q.embed[3], before), "dead code was not restarted"
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    assert torch.cdist(q.embed[3:4], flat).min() < 1e-4, "restarted code should sit on an encoder vector"
    assert q.cluster_size[3] >= q.dead_threshold


def test_ema_moves_code_towards_its_assigned_vectors():
    q = VectorQuantizerEMA(codebook_size=2, code_dim=1, decay=0.5, dead_threshold=0.0).train()
    q.initialized.fill_(True)
    with torch.no_grad():
        q.embed.copy_(torch.tensor([[0.0], [10.0]]))
        q.embed_sum.copy_(q.embed)
        q.cluster_size.fill_(1.0)
    q(torch.full((1, 1, 2, 2), 2.0))  # four vectors at 2.0, all nearest to code 0
    assert 0.0 < q.embed[0].item() < 2.0 and q.embed[1].item() == pytest.approx(10.0, rel=1e-3)


def test_codebook_stats_uniform_and_single():
    uniform = codebook_stats(torch.arange(8).repeat(4), 8)
    assert uniform["usage"] == 1.0 and uniform["perplexity"] == pytest.approx(8.0)
    single = codebook_stats(torch.zeros(10, dtype=torch.long), 8)
    assert single["usage"] == 1 / 8 and single["perplexity"] == pytest.approx(1.0)
    half = codebook_stats(torch.tensor([0, 1, 0, 1]), 4)
    assert half["perplexity"] == pytest.approx(math.exp(math.log(2)))


def test_train_vq_is_deterministic_and_lowers_error():
    torch.manual_seed(1)
    images = squares(64)
    kw = dict(codebook_size=16, steps=30, batch_size=16, lr=3e-3, seed=5, code_dim=8, hidden=16, progress=False)
    a, b = train_vq(images, **kw), train_vq(images, **kw)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    untrained = VQTokenizer(1, codebook_size=16, code_dim=8, hidden=16)
    untrained.train()(images[:16])
    m = reconstruction_metrics(a, images)
    assert m["mse"] < 0.7 * reconstruction_metrics(untrained, images)["mse"]
    assert set(m) == {"mse", "usage", "perplexity"} and 0 < m["usage"] <= 1


def test_checkpoint_round_trip_and_refusals(tmp_path):
    torch.manual_seed(0)
    vq = VQTokenizer(3, codebook_size=16, code_dim=8, hidden=16)
    x = torch.rand(2, 3, 32, 32)
    vq.train()(x)
    vq.eval()
    ckpt = tokenizer_to_checkpoint(vq, kind="vq", dataset="cifar10", config={"steps": 3}, metrics={"mse": 0.1})
    path = tmp_path / "vq.pt"
    save_atomic(ckpt, path)
    loaded = tokenizer_from_checkpoint(load_checkpoint(path, kind="vq", dataset="cifar10"))
    assert isinstance(loaded, VQTokenizer) and loaded.config == vq.config
    assert torch.equal(loaded.encode(x), vq.encode(x))
    assert torch.equal(loaded.decode(vq.encode(x)), vq.decode(vq.encode(x)))
    with pytest.raises(CheckpointError, match="trained on 'cifar10', expected 'mnist'"):
        load_checkpoint(path, kind="vq", dataset="mnist")
    with pytest.raises(CheckpointError, match="is a 'vq' checkpoint, expected 'judge'"):
        load_checkpoint(path, kind="judge")
    with pytest.raises(ValueError, match="'vq' checkpoint, not 'latent'"):
        tokenizer_to_checkpoint(vq, kind="latent", dataset="cifar10")
    with pytest.raises(CheckpointError, match="should be 'vq'"):
        tokenizer_from_checkpoint({**ckpt, "kind": "judge"})
