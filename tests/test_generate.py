import pytest
import torch

from helpers import tiny_latent_model, tiny_model
from minimfm.generate import Context, decode, encode_prompt, generate
from minimfm.segments import IMAGE, check, pack
from minimfm.tokenizers.text import TextTokenizer

tok = TextTokenizer.for_dataset("mnist")
BOS, EOS, BOI, EOI, PAD = tok.bos_id, tok.eos_id, tok.boi_id, tok.eoi_id, tok.pad_id


def w(word):
    return tok.index[word]


class Scripted:
    """A context whose next-token preferences follow a script (first = most likely): the loop's only view of a
    model, so every call the loop makes is recorded in `events`."""

    def __init__(self, script, n_image=3):
        self.tok, self.n_image = tok, n_image
        self.script, self.events, self.length = list(script), [], 0

    def feed_text(self, ids):
        if ids:
            self.events.append(("text", list(ids)))
            self.length += len(ids)

    def feed_image(self, rep):
        self.events.append(("image", rep))
        self.length += self.n_image

    def logits(self):
        logits = torch.zeros(len(tok))
        for rank, t in enumerate(self.script.pop(0)):
            logits[t] = 10.0 - rank
        return logits

    def draw(self):
        self.events.append(("draw", self.length))  # where the image starts: right after the [BOI] just fed
        return torch.full((self.n_image,), len(self.events))


def kinds(ctx):
    return [e[0] for e in ctx.events]


def test_loop_switches_to_an_image_only_on_boi():
    # the model prefers [EOI] (never allowed after text) over [BOI], and [BOS] (never allowed) over [EOS]
    ctx = Scripted([[w("three")], [EOI, BOI], [BOS, EOS]])
    g = decode(ctx, [[BOS, w("a")]])
    assert ctx.events[:3] == [("text", [BOS, w("a")]), ("text", [w("three")]), ("text", [BOI])]
    assert ctx.events[3] == ("draw", 4)  # the sampler continues the whole sequence, [BOI] included
    assert kinds(ctx)[4:] == ["image", "text", "text"] and ctx.events[5:] == [("text", [EOI]), ("text", [EOS])]
    assert torch.equal(ctx.events[4][1], g.images[0]) and g.drawn == [0]
    assert g.chosen == [w("three"), BOI, EOS] and g.finished(tok)
    assert g.segments == [[BOS, w("a"), w("three"), BOI], IMAGE, [EOI, EOS]]
    assert g.read_at == [1, 2, 3 + 3 + 1]  # after "a", after "three", after [EOI] (3 image positions between)
    assert g.text(tok) == "[BOS] a three [BOI] <image 1> [EOI] [EOS]"
    check(g.segments, tok)


def test_no_image_without_boi_and_the_length_limit_stops():
    ctx = Scripted([[EOI, w("a")]] * 10)  # [EOI] top every time: it is never taken as a switch
    g = decode(ctx, [[BOS]], max_tokens=5)
    assert "draw" not in kinds(ctx) and "image" not in kinds(ctx)
    assert g.chosen == [w("a")] * 5 and not g.finished(tok) and g.images == []


def test_max_images_and_where_each_image_is_drawn():
    ctx = Scripted([[w("seven")], [BOI], [BOI, w("thin")], [EOS]])
    g = decode(ctx, [[BOS, w("a"), w("bold"), w("one"), BOI]], max_images=2)
    draws = [e[1] for e in ctx.events if e[0] == "draw"]
    assert draws == [5, 5 + 3 + 3]  # after the prompt; after image 1, [EOI], "seven", [BOI]
    assert g.chosen == [w("seven"), BOI, w("thin"), EOS]  # the third [BOI] is over max_images: next choice
    assert g.segments.count(IMAGE) == 2 and len(g.images) == 2 and g.drawn == [0, 1]


def test_a_boi_inside_the_prompt_draws_there_and_the_given_text_goes_on():
    # "a three, [BOI] the number seven [BOI]": two requests given, both images drawn, then [EOS] chosen
    ctx = Scripted([[EOS]])
    prompt = [BOS, w("a"), w("three"), w(","), BOI, w("the"), w("number"), w("seven"), BOI]
    g = decode(ctx, [prompt])
    assert kinds(ctx) == ["text", "draw", "image", "text", "draw", "image", "text", "text"]
    assert ctx.events[3] == ("text", [EOI, w("the"), w("number"), w("seven"), BOI])  # given, read in one pass
    assert [e[1] for e in ctx.events if e[0] == "draw"] == [5, 5 + 3 + 5]
    assert g.chosen == [EOS] and g.drawn == [0, 1]  # nothing chosen before the end: every [BOI] was given
    assert g.segments == [prompt[:5], IMAGE, [EOI] + prompt[5:], IMAGE, [EOI, EOS]]
    check(g.segments, tok)
    g = decode(Scripted([[w("thin")], [EOS]]), [[BOS, w("a"), BOI, w("the")]])  # given text after, then chosen
    assert g.chosen == [w("thin"), EOS] and g.segments[-1] == [EOI, w("the"), w("thin"), EOS]


def test_known_images_are_read_not_drawn():
    known = torch.arange(3)
    ctx = Scripted([[BOI], [EOS]])
    g = decode(ctx, [[BOS, BOI], IMAGE, [EOI, w("the"), w("digit"), w("4")]], [known])
    assert kinds(ctx) == ["text", "image", "text", "text", "draw", "image", "text", "text"]
    assert ctx.events[4] == ("draw", 2 + 3 + 4 + 1)  # after the known image and its text
    assert g.drawn == [1] and torch.equal(g.images[0], known)
    g = decode(Scripted([[EOS]]), [[BOS, BOI], IMAGE], [known])  # a prompt ending in a known image is closed
    assert g.segments == [[BOS, BOI], IMAGE, [EOI, EOS]]


@pytest.mark.parametrize("prompt, known, message", [
    ([[BOS, BOI], IMAGE, [EOI]], [], "more IMAGE segments than known"),
    ([[BOS, w("a")]], [torch.zeros(3)], "known images left over"),
    ([[BOS, w("a"), EOS]], [], "must end in text"),
    ([[BOS], IMAGE], [torch.zeros(3)], "does not follow a \\[BOI\\]"),
    ([[BOS, w("a"), EOI]], [], "does not follow an image"),
    ([[BOS, w("a"), BOI, EOI, w("one")]], [], "does not follow an image"),  # [EOI] is forced, never given
    ([[BOS, BOI, w("a")], [w("one")]], [], "not followed by an image"),  # a [BOI] to draw at is in the last text
])
def test_bad_prompts_get_one_line_errors(prompt, known, message):
    with pytest.raises(ValueError, match=message):
        decode(Scripted([]), prompt, known)


def test_prompt_encoding():
    ar, mar = tiny_model("ar"), tiny_latent_model("mar")
    assert encode_prompt(ar, "a three") == [BOS, w("a"), w("three")]
    assert encode_prompt(mar, "[BOS] the digit 3,") == [tok.t2i_id, BOS, w("the"), w("digit"), w("3"), w(",")]
    assert encode_prompt(ar, "a three [BOI]")[-1] == BOI
    assert encode_prompt(mar, "[T2I] a") == encode_prompt(mar, "a") == [tok.t2i_id, BOS, w("a")]


# ------------------------------------------------------------------------------------ real models, four modes
def make(mode, **kw):
    return (tiny_model(mode, **kw) if mode in ("ar", "masked") else tiny_latent_model(mode, **kw)).eval()


def random_images(model, M, seed=0):
    g = torch.Generator().manual_seed(seed)
    if hasattr(model, "latent_dim"):
        return torch.randn(M, model.n_image, model.latent_dim, generator=g)
    return torch.randint(0, model.image_tokenizer.codebook_size, (M, model.n_image), generator=g)


@torch.no_grad()
def full_logits(model, segments, images):
    """(T, V) text logits of ONE full forward pass over the packed sequence (no cache)."""
    batch = pack([segments], model.tok, model.n_image)
    image_inputs = model.embed_images(torch.stack(images))  # (M, N, D), clean
    h = model.hidden(batch, image_inputs, **model.transformer_kwargs(batch.modality))
    return model.text_head(h)[0].float()


MODES = [("ar", {}), ("masked", {}), ("diffusion", {}), ("mar", {})]
TWO_IMAGES = [[BOS, w("a"), w("thin"), w("three"), BOI], IMAGE, [EOI, w("a"), w("seven"), BOI], IMAGE, [EOI, EOS]]


@pytest.mark.parametrize("mode, kw", MODES + [("diffusion", {"time_cond": "adaln"})])
@torch.no_grad()
def test_kv_cache_across_image_boundaries_equals_full_forward(mode, kw):
    model = make(mode, **kw)
    segments = TWO_IMAGES
    images = list(random_images(model, segments.count(IMAGE)))
    ctx, got, k = Context(model), {}, 0
    for seg in segments:  # the prompt in one chunk, then a word at a time, images as N positions at once
        if seg is IMAGE:
            ctx.feed_image(images[k])
            k += 1
            continue
        for ids in ([seg] if ctx.length == 0 else [[t] for t in seg]):
            ctx.feed_text(ids)
            got[ctx.length - 1] = ctx.logits()
    want = full_logits(model, segments, images)
    assert len(got) == sum(len(s) for s in segments if s is not IMAGE) - len(segments[0]) + 1
    for pos, logits in got.items():
        assert torch.allclose(logits, want[pos], atol=1e-5), (mode, pos)


@pytest.mark.parametrize("mode, kw", MODES)
def test_generate_with_each_mode_reads_back_what_it_drew(mode, kw):
    model = make(mode, **kw)
    g = generate(model, "[BOS] a thin three [BOI]", max_tokens=3, seed=1)
    assert g.segments[0] == encode_prompt(model, "a thin three [BOI]") and g.segments[1] is IMAGE
    check(g.segments, tok)
    shape = (model.n_image, model.latent_dim) if hasattr(model, "latent_dim") else (model.n_image,)
    assert all(tuple(r.shape) == shape for r in g.images) and g.drawn[0] == 0 and len(g.images) >= 1
    assert model.last_nfe >= 1
    want = full_logits(model, g.segments, g.images)  # what the loop chose from == a full forward pass
    for pos, logits in zip(g.read_at, g.logits):
        assert torch.allclose(logits, want[pos], atol=1e-5), (mode, pos)
    pictures = model.decode_images(torch.stack(g.images))
    assert pictures.shape[0] == len(g.images) and 0 <= float(pictures.min()) <= float(pictures.max()) <= 1


# --------------------------------------------------------------------------- the sampler continues the loop's cache
PROMPT = "a bold seven leaning right"


@pytest.mark.parametrize("scale", [0.0, 2.0])
@pytest.mark.parametrize("mode, kw", MODES + [("diffusion", {"time_cond": "adaln"})])
@torch.no_grad()
def test_sampling_after_the_cached_prefix_equals_sample_images(mode, kw, scale):
    """One image after `[T2I]? [BOS] caption [BOI]` read by the loop == sample_images([caption]), same seed.

    The random draws are the same ones in the same order (sample_images is sample_after on prompt_prefix); only
    the layout differs (the loop's prefix starts at position 0, the packed prompt is left-padded, and the
    unconditional row is the null prompt read separately), so the transformer's outputs agree to float
    rounding, not bit for bit: codes are equal, latents within 1e-5."""
    model = make(mode, **kw)
    steps = None if mode == "ar" else 3
    ctx = Context(model, cfg_scale=scale, steps=steps, generator=torch.Generator().manual_seed(7))
    ctx.feed_text(encode_prompt(model, PROMPT) + [BOI])
    before = [t.clone() for t in ctx.cache.k + ctx.cache.v]
    got = ctx.draw()
    want, nfe = model.sample_images([tok.encode(PROMPT)], steps=steps, cfg_scale=scale,
                                    generator=torch.Generator().manual_seed(7))
    assert ctx.nfe == nfe
    if got.dtype == torch.long:
        assert torch.equal(got, want[0])
    else:
        assert torch.allclose(got, want[0], atol=1e-5), (got - want[0]).abs().max()
    after = ctx.cache.k + ctx.cache.v
    assert ctx.cache.length == ctx.length and all(torch.equal(a, b) for a, b in zip(before, after))


STEP_ONE = {"ar": "code_head", "masked": "code_head", "diffusion": "patch_out", "mar": "head"}  # logits, v, head v


@pytest.mark.parametrize("mode, kw", MODES)
@torch.no_grad()
def test_the_second_image_attends_to_the_first(mode, kw):
    """`... [BOI] image 1 [EOI] a seven [BOI]`: the second image's step-1 output (code logits, velocity, the MAR
    head's output) changes with image 1 in the conditional row, and not in the unconditional (null prompt) row."""
    model = make(mode, **kw)
    prompt = TWO_IMAGES[:3]  # [BOS] a thin three [BOI], IMAGE, [EOI] a seven [BOI]

    def step_one(first):
        ctx = Context(model, cfg_scale=2.0, steps=None if mode == "ar" else 2,
                      generator=torch.Generator().manual_seed(0))
        ctx.feed_text(prompt[0])
        ctx.feed_image(first)
        ctx.feed_text(prompt[2])
        outputs = []
        handle = getattr(model, STEP_ONE[mode]).register_forward_hook(lambda m, i, o: outputs.append(o))
        try:
            image = ctx.draw()
        finally:
            handle.remove()
        return outputs[0].chunk(2), image  # (cond, uncond) of the first call

    one, two = random_images(model, 2, seed=3)
    (cond_a, uncond_a), image_a = step_one(one)
    (cond_b, uncond_b), _ = step_one(two)
    (cond_c, _), image_c = step_one(one.clone())
    assert (cond_a - cond_b).abs().max() > 1e-3  # image 1 reaches the second image's first step
    assert torch.allclose(uncond_a, uncond_b, atol=1e-6)  # the unconditional branch sees only the null prompt
    assert torch.equal(cond_a, cond_c) and torch.equal(image_a, image_c)  # and nothing else changed
