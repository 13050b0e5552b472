"""Continuous latents: patchify is lossless, both kinds are normalised to unit variance, checkpoints round-trip."""
import pytest
import torch

from minimfm.checkpoint import CheckpointError, load_checkpoint, save_atomic
from minimfm.tokenizers.latent import AutoencoderLatent, PatchLatent, fit_normalisation
from minimfm.tokenizers.training import (make_patch_latent, reconstruction_metrics, tokenizer_from_checkpoint,
                                         tokenizer_to_checkpoint, train_autoencoder)
from helpers import squares

torch.set_num_threads(2)


@pytest.mark.parametrize("channels,size,grid,dim", [(1, 28, 7, 16), (3, 32, 8, 48)])
def test_patch_latent_shapes_and_exact_round_trip(channels, size, grid, dim):
    torch.manual_seed(0)
    x = torch.rand(5, channels, size, size)
    lat = make_patch_latent(x, patch=4)
    assert lat.grid == (grid, grid) and lat.latent_dim == dim
    z = lat.encode(x)
    assert z.shape == (5, grid * grid, dim)
    torch.testing.assert_close(lat.decode(z), x, atol=1e-6, rtol=0)


def test_patch_latent_token_is_a_patch():
    x = torch.arange(2 * 28 * 28, dtype=torch.float32).view(2, 1, 28, 28)
    z = PatchLatent(1, patch=4).raw_encode(x)  # unnormalised: mean 0, std 1 buffers
    # token 1 of image 0 is the patch in rows 0..3, columns 4..7, flattened row-major
    assert torch.equal(z[0, 1], x[0, 0, 0:4, 4:8].flatten())
    assert torch.equal(z[1, 7], x[1, 0, 4:8, 0:4].flatten())  # second row of the 7x7 grid


@pytest.mark.parametrize("channels,size,grid", [(1, 28, 7), (3, 32, 8)])
def test_autoencoder_latent_shapes(channels, size, grid):
    torch.manual_seed(0)
    ae = AutoencoderLatent(channels, latent_channels=4, hidden=16).eval()
    x = torch.rand(3, channels, size, size)
    z = ae.encode(x)
    assert ae.grid == (grid, grid) and ae.latent_dim == 4 and z.shape == (3, grid * grid, 4)
    y = ae.decode(z)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1


@pytest.mark.parametrize("make", [lambda: PatchLatent(1, patch=4),
                                  lambda: AutoencoderLatent(1, latent_channels=4, hidden=16)])
def test_normalisation_gives_unit_variance_on_fit_data(make):
    torch.manual_seed(0)
    x = torch.rand(64, 1, 28, 28) * 0.3 + 0.5  # nonzero mean, small spread: raw latents are far from N(0, 1)
    lat = make().eval()
    with torch.no_grad():
        raw = lat.encode(x).reshape(-1, lat.latent_dim)
        assert raw.std(0).sub(1).abs().max() > 0.2 or raw.mean(0).abs().max() > 0.2
        fit_normalisation(lat, x)
        z = lat.encode(x).reshape(-1, lat.latent_dim)
    torch.testing.assert_close(z.mean(0), torch.zeros(lat.latent_dim), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(lat.latent_dim), atol=1e-3, rtol=0)


def test_train_autoencoder_deterministic_normalised_and_learns():
    torch.manual_seed(1)
    images = squares(48)
    kw = dict(latent_channels=4, steps=30, batch_size=16, lr=3e-3, seed=3, hidden=16, progress=False)
    a, b = train_autoencoder(images, **kw), train_autoencoder(images, **kw)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    with torch.no_grad():
        z = a.encode(images).reshape(-1, 4)
    torch.testing.assert_close(z.std(0), torch.ones(4), atol=1e-3, rtol=0)
    torch.manual_seed(3)
    untrained = fit_normalisation(AutoencoderLatent(1, 4, hidden=16), images)
    assert reconstruction_metrics(a, images)["mse"] < 0.7 * reconstruction_metrics(untrained, images)["mse"]


def test_checkpoint_round_trip_and_refusals(tmp_path):
    torch.manual_seed(0)
    x = torch.rand(8, 1, 28, 28)
    ae = fit_normalisation(AutoencoderLatent(1, latent_channels=4, hidden=16), x).eval()
    patch = make_patch_latent(x)
    for i, model in enumerate([ae, patch]):
        path = tmp_path / f"latent{i}.pt"
        save_atomic(tokenizer_to_checkpoint(model, kind="latent", dataset="mnist", config={}, metrics={}), path)
        loaded = tokenizer_from_checkpoint(load_checkpoint(path, kind="latent", dataset="mnist"))
        assert type(loaded) is type(model)
        with torch.no_grad():
            assert torch.equal(loaded.encode(x), model.encode(x))
            assert torch.equal(loaded.decode(model.encode(x)), model.decode(model.encode(x)))
    with pytest.raises(CheckpointError, match="trained on 'mnist', expected 'cifar10'"):
        load_checkpoint(tmp_path / "latent0.pt", kind="latent", dataset="cifar10")
    with pytest.raises(CheckpointError, match="is a 'latent' checkpoint, expected 'vq'"):
        load_checkpoint(tmp_path / "latent0.pt", kind="vq")
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable minimfm checkpoint"):
        load_checkpoint(tmp_path / "broken.pt", kind="latent")
