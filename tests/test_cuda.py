"""The GPU path (skipped without CUDA; scripts/gpu_check.sh runs it): same losses as on CPU, FlexAttention equal to
the dense mask, torch.compile equal to eager, and every sampler on the device."""
import pytest
import torch

from helpers import tiny_config
from minimfm.bench import random_tokenizer, synthetic_batch
from minimfm.runs import build_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
MODES = ["ar", "masked", "diffusion"]


def model_and_batch(mode, **overrides):
    cfg = tiny_config(mode, latent_kind="patch", batch_size=8, **overrides)
    torch.manual_seed(0)
    model = build_model(cfg, random_tokenizer(cfg))
    with torch.no_grad():  # the zero-initialised output layers would make every comparison trivially equal
        for p in model.parameters():
            if p.requires_grad and not p.any():
                p.normal_(0, 0.05)
    return model, synthetic_batch(model, cfg, torch.Generator().manual_seed(0))


def loss_on(model, batch, device, autocast=False):
    captions, rep, t2i, drop = batch
    context = torch.autocast("cuda", dtype=torch.bfloat16) if autocast else torch.autocast("cuda", enabled=False)
    with context:
        loss, _ = model.to(device)(captions, rep.to(device), t2i, drop, torch.Generator().manual_seed(1))
    return float(loss)


@pytest.mark.parametrize("mode", MODES)
def test_gpu_loss_matches_cpu(mode):
    model, batch = model_and_batch(mode)
    cpu = loss_on(model, batch, "cpu")
    assert loss_on(model, batch, "cuda") == pytest.approx(cpu, rel=1e-4)  # fp32 (TF32 off by default)
    assert loss_on(model, batch, "cuda", autocast=True) == pytest.approx(cpu, rel=3e-2)  # bf16 autocast


@pytest.mark.parametrize("mode", ["masked", "diffusion", "ar"])
def test_flex_attention_training_loss_matches_dense(mode):
    model, batch = model_and_batch(mode)
    dense = loss_on(model, batch, "cuda")
    model.cfg.attention = "flex"
    assert loss_on(model, batch, "cuda") == pytest.approx(dense, rel=1e-4)


def test_compiled_training_step_matches_eager():
    model, batch = model_and_batch("diffusion")
    eager = loss_on(model, batch, "cuda")
    compiled = torch.compile(model.cuda())
    captions, rep, t2i, drop = batch
    loss, _ = compiled(captions, rep.cuda(), t2i, drop, torch.Generator().manual_seed(1))
    assert float(loss) == pytest.approx(eager, rel=1e-3)


@pytest.mark.parametrize("mode,nfe", [("ar", 49), ("masked", 4), ("diffusion", 5)])
def test_samplers_run_on_the_gpu(mode, nfe):
    model, _ = model_and_batch(mode)
    model = model.cuda().eval()
    images = model.generate_images(["a bold seven leaning right", "the digit 3, written thin"], seed=0)
    assert images.device.type == "cuda" and images.shape == (2, 1, 28, 28) and model.last_nfe == nfe
    assert len(model.caption(images)) == 2
