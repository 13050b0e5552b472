"""MAR mode: registry wiring, the diffusion loss on hidden tokens, the random-order sampler and its head."""
import math

import pytest
import torch

from helpers import tiny_latent_model
from minimfm.config import make_config
from minimfm.flops import matmul_parameters, step_flops
from minimfm.modes import MODE_NAMES, get_mode, image_tokenizer_kind
from minimfm.modes.mar import HEAD_BATCH_MUL, MARModel


def tiny_model(seed=0, randomise_zero_layers=True, **overrides):
    """A 7x7 grid of 16-dim patch latents (MNIST-shaped), a 2-layer width-32 transformer."""
    return tiny_latent_model("mar", seed, randomise_zero_layers, **{"mask_steps": 4, "diffusion_steps": 3, **overrides})


def prompts(m):
    return [m.tok.encode("a bold seven leaning right"), m.tok.encode("the digit 3, written thin")]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def batch(m, B=4, seed=0):
    g = gen(seed)
    captions = [m.tok.encode("a bold seven leaning right")] * B
    latents = torch.randn(B, m.n_image, m.latent_dim, generator=g)
    return captions, latents, torch.tensor([True, True, False, True][:B]), torch.tensor([False, True, False, False][:B])


def test_registry_names_mar_with_continuous_tokens():
    assert "mar" in MODE_NAMES and image_tokenizer_kind("mar") == "latent"
    spec = get_mode("mar")
    assert spec.model_class() is MARModel and spec.steps_field == "mask_steps" and spec.has_steps
    assert make_config("smoke", mode="mar").mode == "mar"


def test_training_loss_reaches_every_part():
    model = tiny_model(randomise_zero_layers=False).train()
    for _ in range(3):  # zero-initialised gates and output layers pass gradient back one level per step
        model.zero_grad()
        loss, logs = model.training_loss(*batch(model), gen(1))
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p -= 0.1 * p.grad
    assert math.isfinite(logs["image_loss"]) and logs["image_loss"] > 0
    for name in ("token_in.weight", "mask_emb.weight", "head.input_proj.weight", "head.cond_proj.weight",
                 "head.out.weight", "text_emb.weight", "transformer.blocks.0.attn.qkv.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_image_to_text_only_batch_has_zero_image_loss():
    model = tiny_model().train()
    captions, latents, _, drop = batch(model)
    loss, logs = model.training_loss(captions, latents, torch.zeros(4, dtype=torch.bool), drop, gen())
    assert logs["image_loss"] == 0.0 and torch.isfinite(loss)


def test_loss_is_a_function_of_the_generator():
    model = tiny_model().train()
    a = model.training_loss(*batch(model), gen(5))[0]
    b = model.training_loss(*batch(model), gen(5))[0]
    c = model.training_loss(*batch(model), gen(6))[0]
    assert a.item() == b.item() and a.item() != c.item()


def test_hidden_token_values_are_targets_not_inputs():
    """A hidden token's value enters only the head's target: the transformer sees [MASK] there."""
    model = tiny_model()
    captions, latents, t2i, _ = batch(model)
    hide = torch.zeros(4, model.n_image, dtype=torch.bool)
    hide[:, :10] = True
    changed = latents.clone()
    changed[:, :10] += 5.0
    assert torch.equal(model.embed_images(latents, hide), model.embed_images(changed, hide))
    assert not torch.equal(model.embed_images(latents), model.embed_images(changed))


@pytest.mark.parametrize("steps", [1, 4, 16])
def test_every_token_revealed_once_in_T_passes(steps):
    model = tiny_model()
    calls = []
    hook = model.transformer.register_forward_hook(lambda m, args, out: calls.append(tuple(args[0].shape)))
    try:
        x, nfe = model.sample_images(prompts(model), steps=steps, cfg_scale=2.0, generator=gen())
    finally:
        hook.remove()
    order = model.last_order
    assert x.shape == (2, model.n_image, model.latent_dim) and nfe == steps and torch.isfinite(x).all()
    assert bool((order >= 0).all()) and bool((order < steps).all())
    assert all(int((order[0] == t).sum()) >= 1 for t in range(steps))  # clamped schedule: no idle pass
    assert len(calls) == steps + 1  # the caption prefix once, then one pass per step, cond + uncond batched
    assert all(c[0] == 4 and c[1] == model.n_image for c in calls[1:])


def test_random_order_differs_between_rows_and_seeds():
    model = tiny_model()
    model.sample_images(prompts(model), steps=4, cfg_scale=0.0, generator=gen(0))
    first = model.last_order.clone()
    model.sample_images(prompts(model), steps=4, cfg_scale=0.0, generator=gen(1))
    assert not torch.equal(first[0], first[1]) and not torch.equal(first, model.last_order)


def test_sampling_is_deterministic_given_the_seed():
    model = tiny_model()
    a, _ = model.sample_images(prompts(model), cfg_scale=1.5, generator=gen(3))
    b, _ = model.sample_images(prompts(model), cfg_scale=1.5, generator=gen(3))
    assert torch.equal(a, b)


def test_inpainting_keeps_known_tokens_and_reveals_the_rest():
    model = tiny_model()
    known = torch.randn(2, model.n_image, model.latent_dim, generator=gen(9))
    known_mask = torch.zeros(2, model.n_image, dtype=torch.bool)
    known_mask[:, :21] = True
    x, _ = model.sample_images(prompts(model), steps=4, known=known, known_mask=known_mask, cfg_scale=2.0,
                               generator=gen())
    assert torch.equal(x[known_mask], known[known_mask])
    assert bool((model.last_order[known_mask] == -1).all()) and bool((model.last_order[~known_mask] >= 0).all())


def test_head_sampler_with_an_oracle_lands_on_the_token():
    """With the exact velocity of a point mass at c (flow: v = (x_t − c)/t), any head step count returns c."""
    model = tiny_model()
    c = torch.randn(1, model.latent_dim, generator=gen(4))
    model.head.forward = lambda x_t, time_input, z: (x_t - c) / (time_input[:, None] / 1000)
    for S in (1, 2, 7):
        out = model.sample_tokens(torch.zeros(3, 32), 0.0, gen(), steps=S, temperature=1.0)
        torch.testing.assert_close(out, c.expand(3, -1), atol=1e-5, rtol=1e-5)


def test_bad_sampler_arguments():
    model = tiny_model()
    with pytest.raises(ValueError, match="--steps"):
        model.sample_images(prompts(model), steps=0, cfg_scale=0.0, generator=gen())
    with pytest.raises(ValueError, match="known_mask"):
        model.sample_images(prompts(model), known=torch.zeros(2, 49, 16), cfg_scale=0.0, generator=gen())


def test_flops_count_the_head_per_hidden_token():
    model = tiny_model()
    head = sum(p.numel() for p in model.head.parameters())
    mean_gamma = 2 / math.pi  # E[cos(πu/2)], u ~ U(0, 1)
    expected = 6 * head * HEAD_BATCH_MUL * 8 * model.cfg.t2i_ratio * mean_gamma * model.n_image
    assert model.extra_step_flops(8) == pytest.approx(expected, rel=1e-4)
    T, cfg = model.layout.length, model.cfg
    assert step_flops(model, 8) == 8 * T * (6 * matmul_parameters(model) + 12 * cfg.n_layer * cfg.d_model * T) \
        + model.extra_step_flops(8)
    assert head > 0 and all(id(p) not in {id(q) for q in model.head.parameters()}
                            for p in [model.token_in.weight])


def test_captioning_reads_clean_latents():
    model = tiny_model()
    texts = model.caption(torch.rand(2, 1, 28, 28))
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
