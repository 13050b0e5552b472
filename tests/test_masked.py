import math

import pytest
import torch

from helpers import tiny_model
from minimfm.masks import omni_mask
from minimfm.modes.sampling import gumbel_noise, mask_schedule, masked_counts
from minimfm.transformer import KVCache


@pytest.fixture(scope="module")
def model():
    return tiny_model("masked").eval()


def prompts(m):
    return [m.tok.encode("a bold seven leaning right"), m.tok.encode("the digit 3, written thin")]


def training_batch(m, seed=0, B=6):
    g = torch.Generator().manual_seed(seed)
    captions = [m.tok.encode("a bold seven leaning right")] * B
    codes = torch.randint(0, m.image_tokenizer.codebook_size, (B, m.n_image), generator=g)
    t2i = torch.tensor([True, True, False, True, False, True][:B])
    drop = torch.tensor([False, False, False, True, False, False][:B])
    return captions, codes, t2i, drop


def plain_floor_fixed(n, steps, kind):
    """Codes fixed at each step by the plain schedule floor(n·γ(t/T)), computed independently of the module."""
    gamma = {"cosine": lambda u: math.cos(math.pi / 2 * u) if u < 1 else 0.0,
             "linear": lambda u: 1 - u, "sqrt": lambda u: 1 - math.sqrt(u)}[kind]
    left = [n] + [math.floor(n * gamma((t + 1) / steps)) for t in range(steps)]
    return [a - b for a, b in zip(left, left[1:])]


def expected_fixed(n, steps, kind):
    """The plain schedule with MaskGIT's clamp: at least one code per step while n >= T, written as a loop."""
    gamma = {"cosine": lambda u: math.cos(math.pi / 2 * u) if u < 1 else 0.0,
             "linear": lambda u: 1 - u, "sqrt": lambda u: 1 - math.sqrt(u)}[kind]
    left, fixed = n, []
    for t in range(steps):
        planned = math.floor(n * gamma((t + 1) / steps))
        now = max(min(max(planned, min(steps - 1 - t, n)), left - 1), 0)
        fixed.append(left - now)
        left = now
    return fixed


def test_every_decoding_step_fixes_a_code():
    """T = 16 over 49 codes: the plain floor leaves a step with nothing to fix; the clamped counts never do."""
    assert 0 in plain_floor_fixed(49, 16, "cosine")
    counts = masked_counts(torch.tensor([49, 20]), 16, "cosine")  # (T, B)
    fixed = torch.cat([torch.tensor([[49, 20]]), counts])[:-1] - counts
    assert bool((fixed >= 1).all()) and counts[-1].tolist() == [0, 0]
    assert fixed[:, 0].tolist() == expected_fixed(49, 16, "cosine")
    assert masked_counts(torch.tensor([49]), 8, "cosine")[:, 0].tolist() == [48, 45, 40, 34, 27, 18, 9, 0]


def test_more_steps_than_codes_fixes_one_per_step_then_idles():
    counts = masked_counts(torch.tensor([3]), 5, "cosine")[:, 0].tolist()
    assert counts == [2, 1, 0, 0, 0]


def test_mask_counts_are_integers_on_the_input_device():
    counts = masked_counts(torch.tensor([49]), 8, "linear")
    assert counts.dtype == torch.long and counts.device == torch.device("cpu")  # no float64 reaches a device


@pytest.mark.parametrize("kind", ["cosine", "linear", "sqrt"])
def test_schedules_are_monotone_from_one_to_zero(kind):
    u = torch.linspace(0, 1, 101, dtype=torch.float64)
    g = mask_schedule(u, kind)
    assert g[0] == 1 and g[-1] == 0
    assert bool((g[1:] <= g[:-1]).all()) and bool((g[1:-1] < 1).all() and (g[1:-1] > 0).all())


def test_gumbel_noise_is_finite_and_standard():
    g = gumbel_noise((200_000,), torch.Generator().manual_seed(0), "cpu")
    assert bool(torch.isfinite(g).all())
    # standard Gumbel: mean = Euler–Mascheroni constant, variance = π²/6
    assert abs(g.mean().item() - 0.5772) < 0.01 and abs(g.var().item() - math.pi ** 2 / 6) < 0.03


@pytest.mark.parametrize("kind,steps", [("cosine", 8), ("cosine", 1), ("linear", 4), ("sqrt", 5), ("cosine", 16)])
def test_every_code_fixed_on_schedule(model, kind, steps):
    model.cfg.mask_schedule = kind
    try:
        codes, nfe = model.sample_images(prompts(model), cfg_scale=2.0, generator=torch.Generator().manual_seed(0),
                                         steps=steps)
    finally:
        model.cfg.mask_schedule = "cosine"
    K, N = model.image_tokenizer.codebook_size, model.n_image
    assert nfe == steps and codes.shape == (2, N)
    assert 0 <= codes.min() and codes.max() < K  # never [MASK] (index K)
    order = model.last_order
    for t, want in enumerate(expected_fixed(N, steps, kind)):
        assert (order == t).sum(1).tolist() == [want, want]
    assert bool((order >= 0).all())


def test_inpainting_never_changes_known_codes(model):
    g = torch.Generator().manual_seed(1)
    known_codes = torch.randint(0, 16, (2, model.n_image), generator=g)
    known_mask = torch.zeros(2, model.n_image, dtype=torch.bool)
    known_mask[0, :21] = True  # top three rows: extrapolate downwards
    known_mask[1, torch.randperm(model.n_image, generator=g)[:30]] = True  # scattered: inpaint
    codes, _ = model.sample_images(prompts(model), cfg_scale=2.0, generator=torch.Generator().manual_seed(0),
                                   steps=4, known=known_codes, known_mask=known_mask)
    assert torch.equal(codes[known_mask], known_codes[known_mask])
    order = model.last_order
    assert bool((order[known_mask] == -1).all()) and bool((order[~known_mask] >= 0).all())
    # the schedule runs over the unknown positions only
    for b, n in enumerate((~known_mask).sum(1).tolist()):
        assert [(order[b] == t).sum().item() for t in range(4)] == expected_fixed(n, 4, "cosine")


def test_cached_prefix_equals_recompute(model):
    batch = model.pack(prompts(model) + [[], []], torch.ones(4, dtype=torch.bool))
    full_mask = model.mask(batch.modality)
    P = model.layout.prompt_length()
    codes = torch.randint(0, 17, (4, model.n_image), generator=torch.Generator().manual_seed(0))  # some [MASK]
    with torch.no_grad():
        cache = KVCache(model.cfg.n_layer)
        model.transformer(model.text_emb(batch.tokens[:, :P]), full_mask[:, :P, :P], batch.positions[:, :P],
                          cache=cache)
        a1 = model.image_logits(codes, batch, full_mask, cache)
        a2 = model.image_logits(codes.flip(1), batch, full_mask, cache)  # second step reuses the cropped cache
        b1 = model.image_logits(codes, batch, full_mask, None)
        b2 = model.image_logits(codes.flip(1), batch, full_mask, None)
    assert cache.length == P
    assert torch.allclose(a1, b1, atol=1e-5) and torch.allclose(a2, b2, atol=1e-5)
    for scale in (0.0, 2.0):
        a, _ = model.sample_images(prompts(model), cfg_scale=scale, generator=torch.Generator().manual_seed(3))
        b, _ = model.sample_images(prompts(model), cfg_scale=scale, generator=torch.Generator().manual_seed(3),
                                   use_cache=False)
        assert torch.equal(a, b)


def test_nfe_is_T_and_prompt_is_read_once(model):
    calls = []
    handle = model.transformer.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[1]))
    try:
        _, nfe = model.sample_images(prompts(model), cfg_scale=2.0, generator=torch.Generator(), steps=6)
        cached = list(calls)
        calls.clear()
        model.sample_images(prompts(model), cfg_scale=2.0, generator=torch.Generator(), steps=6, use_cache=False)
    finally:
        handle.remove()
    P, N = model.layout.prompt_length(), model.n_image
    assert nfe == 6
    assert cached == [P] + [N] * 6  # the prompt once, then only the image positions
    assert calls == [P + N] * 6


def test_cfg_zero_is_the_unguided_model(model):
    """Greedy, noise-free decoding with cfg 0 equals MaskGIT decoding by hand with the conditional rows only."""
    codes, _ = model.sample_images(prompts(model)[:1], cfg_scale=0.0, generator=torch.Generator(), steps=4,
                                   temperature=0, choice_temperature=0.0)
    batch = model.pack(prompts(model)[:1], torch.tensor([True]))
    N, mask_code = model.n_image, model.image_tokenizer.codebook_size
    current = torch.full((1, N), mask_code)
    left = N
    with torch.no_grad():
        for t, n_fix in enumerate(expected_fixed(N, 4, "cosine")):
            h = model.hidden(batch, model.embed_images(current))
            logp = model.code_head(h[batch.modality == 1]).float().log_softmax(-1)  # (N, K)
            conf, best = logp.max(-1)
            conf[current[0] != mask_code] = -float("inf")
            chosen = conf.argsort(descending=True)[:n_fix]
            current[0, chosen] = best[chosen]
            left -= n_fix
    assert left == 0 and torch.equal(codes, current)


def test_bad_sampler_arguments(model):
    with pytest.raises(ValueError, match="known_mask"):
        model.sample_images(prompts(model), cfg_scale=0.0, generator=torch.Generator(),
                            known=torch.zeros(2, model.n_image, dtype=torch.long))
    with pytest.raises(ValueError, match="steps"):
        model.sample_images(prompts(model), cfg_scale=0.0, generator=torch.Generator(), steps=0)


def test_training_mask_follows_the_schedule(model):
    _, _, t2i, _ = training_batch(model)
    hide = model.training_mask(t2i, torch.Generator().manual_seed(5))
    u = torch.rand(6, generator=torch.Generator().manual_seed(5))
    n = [max(1, math.ceil(math.cos(math.pi / 2 * x) * model.n_image)) for x in u.tolist()]
    assert hide.sum(1).tolist() == [k if f else 0 for k, f in zip(n, t2i.tolist())]  # i2t rows: none hidden


def test_loss_scores_only_masked_codes(model):
    captions, codes, t2i, drop = training_batch(model)
    hide = model.training_mask(t2i, torch.Generator().manual_seed(7))
    # make codes a and b indistinguishable as INPUTS, so swapping a -> b changes only a target
    a, b = 3, 11
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():
            model.code_emb.weight[b] = model.code_emb.weight[a]
        codes = codes.clone()
        codes[0, :] = a  # row 0 is text-to-image
        visible = (~hide[0]).nonzero()[0, 0]
        hidden = hide[0].nonzero()[0, 0]

        def loss(c):
            with torch.no_grad():
                return model.training_loss(captions, c, t2i, drop, torch.Generator().manual_seed(7))[1]

        base = loss(codes)
        swapped_visible = codes.clone()
        swapped_visible[0, visible] = b
        swapped_hidden = codes.clone()
        swapped_hidden[0, hidden] = b
        assert loss(swapped_visible) == base  # exact: same inputs, visible targets are not scored
        assert loss(swapped_hidden)["image_loss"] != base["image_loss"]
        # an image-to-text row has no image loss at all, whatever its codes are as targets
        swapped_i2t = codes.clone()
        swapped_i2t[2, :] = torch.where(codes[2] == a, b, codes[2])
        assert loss(swapped_i2t) == base
    finally:
        model.load_state_dict(state)


def test_gradient_reaches_codes_and_text(model):
    model.train()
    model.zero_grad()
    try:
        captions, codes, t2i, drop = training_batch(model)
        loss, logs = model.training_loss(captions, codes, t2i, drop, torch.Generator().manual_seed(0))
        loss.backward()
    finally:
        model.eval()
    assert logs["image_loss"] > 0 and logs["text_loss"] > 0
    K = model.image_tokenizer.codebook_size
    assert model.code_emb.weight.grad[K].abs().sum() > 0  # the [MASK] embedding is learnt
    for p in (model.code_emb.weight, model.code_head.weight, model.text_head.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    model.zero_grad()


def test_task_tokens_and_captioning(model):
    batch = model.pack(prompts(model)[:1] + [[]], torch.tensor([True, False]))
    tok = model.tok
    first = int((batch.modality[0] != -1).nonzero()[0, 0])  # after the left padding
    assert batch.tokens[0, first:first + 2].tolist() == [tok.t2i_id, tok.bos_id]
    assert batch.tokens[1, :3].tolist() == [tok.mmu_id, tok.bos_id, tok.boi_id] and batch.image_start[1] == 3
    assert torch.equal(model.mask(batch.modality), omni_mask(batch.modality))
    images = model.generate_images(["a bold seven leaning right"], cfg_scale=0.0)
    assert images.shape == (1, 1, 28, 28) and model.last_nfe == model.default_steps
    assert isinstance(model.caption(images)[0], str)
