"""Diffusion mode (Transfusion): schedule math, sampler contract (NFE, KV cache, CFG, inpainting), training step."""
import math

import pytest
import torch

from helpers import tiny_latent_model
from minimfm.modes.schedules import DDPMSchedule, FlowSchedule, cosine_alpha_bar

S = 5  # the smoke preset's diffusion_steps


def tiny_model(seed=0, randomise_zero_layers=True, **overrides):
    """A 7x7 grid of 16-dim patch latents (MNIST-shaped), a 2-layer width-32 transformer."""
    return tiny_latent_model("diffusion", seed, randomise_zero_layers, **{"diffusion_steps": S, **overrides})


def prompts(m):
    return [m.tok.encode("a bold seven leaning right"), m.tok.encode("the digit 3, written thin")]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


VARIANTS = [dict(), dict(objective="ddpm"), dict(time_cond="adaln"), dict(image_attention="causal"),
            dict(patch_encoder="conv", objective="ddpm", time_cond="adaln")]


# ------------------------------------------------------------------------------------------ schedule math
def test_ddpm_forward_noising_matches_cosine_closed_form():
    sch = DDPMSchedule()
    x0, eps = torch.randn(4, 49, 16), torch.randn(4, 49, 16)
    t = torch.tensor([0, 250, 500, 998])
    s = 0.008
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    ab = torch.tensor([f((i + 1) / 1000) / f(0) for i in t.tolist()])  # ᾱ after step i, no β clipping needed
    expected = ab.sqrt()[:, None, None] * x0 + (1 - ab).sqrt()[:, None, None] * eps
    torch.testing.assert_close(sch.add_noise(x0, eps, t), expected, atol=1e-6, rtol=1e-5)
    assert sch.alpha_bar[0] > 0.9999 and sch.alpha_bar[-1] < 1e-8  # from (almost) clean to (almost) pure noise
    assert torch.all(sch.alpha_bar[1:] < sch.alpha_bar[:-1])
    assert torch.equal(sch.target(x0, eps), eps)
    torch.testing.assert_close(cosine_alpha_bar(torch.tensor([0.0, 1.0])), torch.tensor([1.0, 0.0]))


def test_flow_forward_noising_is_the_straight_line():
    sch = FlowSchedule()
    x0, eps = torch.randn(3, 49, 16), torch.randn(3, 49, 16)
    t = torch.tensor([0.0, 0.3, 1.0])
    expected = torch.stack([x0[0], 0.7 * x0[1] + 0.3 * eps[1], eps[2]])
    torch.testing.assert_close(sch.add_noise(x0, eps, t), expected)
    assert torch.equal(sch.target(x0, eps), eps - x0)


@pytest.mark.parametrize("sch, sampler", [(DDPMSchedule(), "ddim"), (FlowSchedule(), "euler")])
def test_deterministic_samplers_with_an_oracle_recover_x0(sch, sampler):
    """Given the true ε (or v) of one noise draw, DDIM and Euler stay on the path and land on x0."""
    x0, eps = torch.randn(2, 49, 16), torch.randn(2, 49, 16)
    times = sch.sampling_times(S)
    assert len(times) == S + 1
    x = sch.add_noise(x0, eps, torch.tensor([times[0]] * 2))  # flow: pure noise; DDPM: ᾱ(800) is still 0.1
    for t, t_next in zip(times[:-1], times[1:]):
        x = sch.step(x, sch.target(x0, eps), t, t_next, None, sampler)
    torch.testing.assert_close(x, x0, atol=1e-5, rtol=0)


def test_ddpm_sampling_grid_and_ancestral_noise():
    sch = DDPMSchedule()
    assert sch.sampling_times(4) == [958, 719, 479, 239, -1]  # trailing: always from t_max = 958
    x, eps = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    a = sch.step(x, eps, 500, 250, gen(1), "ancestral")
    assert torch.equal(a, sch.step(x, eps, 500, 250, gen(1), "ancestral"))
    assert not torch.equal(a, sch.step(x, eps, 500, 250, gen(2), "ancestral"))
    assert not torch.equal(a, sch.step(x, eps, 500, 250, None, "ddim"))
    # the last step to clean data adds no noise: both samplers return the predicted x0
    torch.testing.assert_close(sch.step(x, eps, 0, -1, gen(1), "ancestral"), sch.step(x, eps, 0, -1, None, "ddim"))


@pytest.mark.parametrize("S", [1, 2, 5])
def test_ddpm_few_steps_start_from_the_noisiest_step(S):
    """Trailing spacing: every S starts at t_max (ᾱ ≈ 4e-3), so S = 1 is one jump from noise to x0, not the
    leading grid's [0, -1], which treats pure noise as nearly clean data and returns it unchanged."""
    sch = DDPMSchedule()
    times = sch.sampling_times(S)
    assert times[0] == sch.t_max and times[-1] == -1 and len(times) == S + 1
    assert 3e-3 < float(sch.alpha_bar_at(torch.tensor(sch.t_max))) < 5e-3


def test_ddpm_sampling_with_the_exact_denoiser_approaches_the_data_as_S_grows():
    """Data N(0, σ²) has the exact denoiser ε̂(x_t) = sqrt(1 − ᾱ) x_t / (ᾱσ² + 1 − ᾱ). DDIM from pure noise gives
    the posterior mean at S = 1 (std far below 1: not noise) and approaches std σ as S grows."""
    sch, sigma = DDPMSchedule(), 0.5
    stds = []
    for S in (1, 2, 5, 25):
        x = torch.randn(4000, 4, generator=gen(0))
        times = sch.sampling_times(S)
        for t, t_next in zip(times[:-1], times[1:]):
            ab = float(sch.alpha_bar_at(torch.tensor(t)))
            x = sch.step(x, (1 - ab) ** 0.5 * x / (ab * sigma ** 2 + 1 - ab), t, t_next, None, "ddim")
        stds.append(x.std().item())
    assert stds[0] < 0.1  # the leading grid's S = 1 returned std ≈ 1.0 (the noise)
    assert stds == sorted(stds) and abs(stds[-1] - sigma) < 0.05, stds


# ------------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("overrides", VARIANTS + [dict(patch_encoder="conv"), dict(objective="flow",
                                                                                  time_cond="adaln")])
def test_training_step_all_variants(overrides):
    model = tiny_model(randomise_zero_layers=False, **overrides).train()
    assert model.mask_kind == ("causal" if overrides.get("image_attention") == "causal" else "omni")
    assert model.uses_adaln() == (overrides.get("time_cond") == "adaln")
    B = 4
    captions = [model.tok.encode("a bold seven leaning right")] * B
    latents = torch.randn(B, model.n_image, model.latent_dim)
    t2i, drop = torch.tensor([True, True, False, False]), torch.tensor([False, True, False, False])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    # two steps: the zero-initialised output layer (and adaLN) pass no gradient back until they have moved once
    for step in range(2):
        opt.zero_grad()
        loss, logs = model.training_loss(captions, latents, t2i, drop, gen(step))
        assert torch.isfinite(loss) and set(logs) >= {"loss", "text_loss", "image_loss"}
        loss.backward()
        opt.step()
    for name in ("patch_in", "patch_out", "time_emb", "text_head"):
        grads = [p.grad for p in getattr(model, name).parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert any(g.abs().sum() > 0 for g in grads), name


def test_training_loss_is_a_function_of_the_generator():
    model = tiny_model().train()
    captions = [model.tok.encode("a bold seven leaning right")] * 2
    latents, t2i, drop = torch.randn(2, 49, 16), torch.tensor([True, False]), torch.tensor([False, False])
    a, _ = model.training_loss(captions, latents, t2i, drop, gen(5))
    b, _ = model.training_loss(captions, latents, t2i, drop, gen(5))
    c, _ = model.training_loss(captions, latents, t2i, drop, gen(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("objective, half", [("ddpm", 500), ("flow", 0.5)])
def test_i2t_noise_limit(objective, half):
    t2i = torch.arange(4000) % 2 == 0
    limited = tiny_model(objective=objective).training_times(t2i, gen(0))
    assert limited[~t2i].max() < half and limited[~t2i].max() > 0.9 * half
    assert limited[t2i].max() > 1.8 * half  # text-to-image rows use the whole schedule
    free = tiny_model(objective=objective, i2t_noise_limit=False).training_times(t2i, gen(0))
    assert free[~t2i].max() > 1.8 * half


def test_logit_normal_times_concentrate_at_mid_noise_and_keep_the_limit():
    limit = torch.ones(20000)
    uniform = FlowSchedule("uniform").sample_t(limit, gen(0))
    logit = FlowSchedule("logit-normal").sample_t(limit, gen(0))
    mid = lambda t: ((t > 0.25) & (t < 0.75)).float().mean().item()  # noqa: E731
    assert abs(mid(uniform) - 0.5) < 0.02
    assert abs(mid(logit) - 0.73) < 0.02  # P(|n| < logit(0.75) = 1.0986) for n ~ N(0, 1)
    assert abs(logit.mean().item() - 0.5) < 0.01
    half = FlowSchedule("logit-normal").sample_t(torch.full((4000,), 0.5), gen(1))
    assert 0 < half.min() and half.max() < 0.5
    model = tiny_model(time_sampling="logit-normal")
    assert model.schedule.time_sampling == "logit-normal"  # the config reaches the mode


def test_time_sampling_is_checked():
    from minimfm.config import ConfigError, make_config
    with pytest.raises(ConfigError, match="--time-sampling logit-normal: defined for --objective flow only"):
        make_config("smoke", objective="ddpm", time_sampling="logit-normal")
    with pytest.raises(ValueError, match="unknown time sampling"):
        FlowSchedule("beta")


# ------------------------------------------------------------------------------------------ sampling
def count_transformer_calls(model):
    calls = []
    forward = model.transformer.forward
    model.transformer.forward = lambda *a, **k: calls.append(a[0].shape) or forward(*a, **k)
    return calls


@pytest.mark.parametrize("objective", ["ddpm", "flow"])
def test_nfe_is_steps_with_cfg_batched_in_one_call(objective):
    model = tiny_model(objective=objective)
    calls = count_transformer_calls(model)
    x, nfe = model.sample_images(prompts(model), cfg_scale=2.0, generator=gen())
    assert x.shape == (2, 49, 16) and nfe == S and torch.isfinite(x).all()
    assert len(calls) == S + 1  # the caption prefix once, then one call per step
    P = model.layout.prompt_length()
    assert calls[0] == (4, P, 32) and all(c == (4, 49, 32) for c in calls[1:])  # cond + uncond in one batch
    calls.clear()
    _, nfe = model.sample_images(prompts(model), cfg_scale=2.0, generator=gen(), steps=3, use_cache=False)
    assert nfe == 3 and len(calls) == 3 and calls[0] == (4, P + 49, 32)


@pytest.mark.parametrize("overrides", VARIANTS)
def test_prefix_cache_equals_full_recomputation(overrides):
    model = tiny_model(**overrides)
    for scale in (0.0, 2.0):
        a, _ = model.sample_images(prompts(model), cfg_scale=scale, generator=gen(3))
        b, _ = model.sample_images(prompts(model), cfg_scale=scale, generator=gen(3), use_cache=False)
        # float reassociation only; DDPM's first x0 estimate is scaled by 1/sqrt(ᾱ) ≈ 16, hence the relative part
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        assert a.abs().max() > 0


@pytest.mark.parametrize("overrides, sampler", [(dict(objective="ddpm"), "ddim"),
                                                (dict(objective="ddpm"), "ancestral"),
                                                (dict(objective="flow"), "euler")])
def test_sampling_is_deterministic_given_the_seed(overrides, sampler):
    model = tiny_model(**overrides)
    a, _ = model.sample_images(prompts(model), cfg_scale=1.0, generator=gen(7), sampler=sampler)
    b, _ = model.sample_images(prompts(model), cfg_scale=1.0, generator=gen(7), sampler=sampler)
    c, _ = model.sample_images(prompts(model), cfg_scale=1.0, generator=gen(8), sampler=sampler)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_unknown_sampler_is_an_error():
    model = tiny_model(objective="flow")
    with pytest.raises(ValueError, match="unknown sampler 'ddim'"):
        model.sample_images(prompts(model), cfg_scale=0.0, generator=gen(), sampler="ddim")


@pytest.mark.parametrize("objective", ["ddpm", "flow"])
def test_cfg_zero_is_the_unguided_model(objective):
    """cfg 0 equals a hand-written loop over the conditional model alone (full sequence, no cache)."""
    model = tiny_model(objective=objective)
    x_model, _ = model.sample_images(prompts(model)[:1], cfg_scale=0.0, generator=gen(4))
    sch = model.schedule
    batch = model.pack(prompts(model)[:1], torch.tensor([True]))
    x = torch.randn(1, 49, 16, generator=gen(4))
    times = sch.sampling_times(S)
    for t, t_next in zip(times[:-1], times[1:]):
        tt = torch.full((1,), t)
        h = model.hidden(batch, model.embed_images(x, tt), **model.transformer_kwargs(batch.modality, tt))
        out = model.patch_out(h[batch.image_positions][None])
        x = sch.step(x, out, t, t_next, None, sch.samplers[0])
    torch.testing.assert_close(x_model, x, atol=1e-5, rtol=0)
    guided_run, _ = model.sample_images(prompts(model)[:1], cfg_scale=3.0, generator=gen(4))
    assert (guided_run - x_model).abs().max() > 1e-3  # guidance does change the result


@pytest.mark.parametrize("objective", ["ddpm", "flow"])
def test_inpainting_keeps_the_known_region_exactly(objective):
    model = tiny_model(objective=objective)
    known = torch.randn(2, 49, 16)
    known_mask = torch.zeros(2, 49, dtype=torch.bool)
    known_mask[0, :21] = True  # top three rows of the 7x7 grid
    known_mask[1, 7::7] = True  # the first column except the corner
    x, _ = model.sample_images(prompts(model), cfg_scale=2.0, generator=gen(), known=known, known_mask=known_mask)
    assert torch.equal(x[known_mask], known[known_mask])
    free, _ = model.sample_images(prompts(model), cfg_scale=2.0, generator=gen())
    assert not torch.equal(x[~known_mask], free[~known_mask])  # the known part steered the rest


# ------------------------------------------------------------------------------------------ reading
@pytest.mark.parametrize("overrides", [dict(), dict(time_cond="adaln")])
def test_captioning_reads_clean_latents(overrides):
    model = tiny_model(**overrides)
    latents = torch.randn(2, 49, 16)
    inputs, kwargs = model.reading_inputs(latents)
    assert inputs.shape == (2, 49, 32)
    if model.uses_adaln():
        image = model.pack([[], []], torch.tensor([False, False])).image_positions
        assert torch.equal(kwargs["cond_mask"], image)
        torch.testing.assert_close(kwargs["cond"][:, 0], model.time_emb(torch.zeros(2)))
    else:
        assert kwargs == {}
        torch.testing.assert_close(inputs, model.patch_in(latents) + model.time_emb(torch.zeros(2))[:, None])
    ids = model.caption_ids(latents, max_len=4)
    assert len(ids) == 2 and all(len(r) <= 4 for r in ids)
    nll, count = model.caption_nll(latents, prompts(model))
    assert torch.isfinite(nll).all() and (count > 0).all()


def test_generate_images_end_to_end():
    model = tiny_model()
    images = model.generate_images(["a bold seven leaning right"], cfg_scale=1.0, steps=2)
    assert images.shape == (1, 1, 28, 28) and 0 <= images.min() and images.max() <= 1
    assert model.last_nfe == 2 and model.default_steps == S
    assert isinstance(model.caption(images)[0], str)
