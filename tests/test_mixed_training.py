"""Training on mixed-modal segment batches (#15): per-image corruption in every mode, the data bridge, the grown
vocabulary of the edit fine-tune (Transfusion §4.3) and a short mixed run per mode.

What is invariant when a row holds two images: with attention switched off, every position's output depends on
its own input only, so a two-image row must give EXACTLY the image loss of the same two images in two one-image
rows (same draws): that checks each image's own positions, offsets, timestep / mask ratio and its weight in the
mean. With attention on, the second image sees the first (that is the point), but the first never sees what
follows it, and the loss reaches only the positions it should (gradient test).
"""
import json
import math
import re

import pytest
import torch
import torch.nn.functional as F

from conftest import DATA, needs_mnist
from helpers import install_random_vq, tiny_config, tiny_latent_model, tiny_model, tiny_vq
from minimfm.checkpoint import load_checkpoint, save_atomic
from minimfm.config import ConfigError, make_config, parse_task_weights
from minimfm.edits import INSTRUCTIONS
from minimfm.finetune import grow_vocabulary, init_from
from minimfm.interleaved import mixed_vocabulary
from minimfm.mixed_data import MixedTrainingData, text_tokenizer
from minimfm.modes.sampling import training_mask
from minimfm.runs import build_model, model_checkpoint
from minimfm.segments import IMAGE, check, image_to_text, pack, text_to_image, wrap
from minimfm.tokenizers.latent import PatchLatent
from minimfm.tokenizers.store import tokenizer_path
from minimfm.tokenizers.text import TextTokenizer
from minimfm.tokenizers.training import tokenizer_to_checkpoint

MODES = ("ar", "masked", "diffusion", "mar")


def model_for(mode, **overrides):
    if mode in ("ar", "masked"):
        return tiny_model(mode, **overrides).train()
    return tiny_latent_model(mode, **overrides).train()


def images_for(model, M, seed=0):
    g = torch.Generator().manual_seed(seed)
    if model.mode in ("ar", "masked"):
        return torch.randint(model.image_tokenizer.codebook_size, (M, model.n_image), generator=g)
    return torch.randn(M, model.n_image, model.latent_dim, generator=g)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def captions(model):
    tok = model.tok
    return [tok.encode("a bold seven leaning right"), tok.encode("the digit 3"), tok.encode("thin 8"),
            tok.encode("a regular one")]


# ------------------------------------------------------------------ the losses before #15, copied from git
def old_loss(model, caps, rep, t2i, drop, g):
    """Each mode's training_loss as it was (one image per row, `.view(B, N)`, one image_start, one t per row)."""
    m, (B, N) = model, rep.shape[:2]
    batch = m.pack(caps, t2i, drop)
    if m.mode == "ar":
        h = m.hidden(batch, m.embed_images(rep))
        idx = batch.image_start[:, None] - 1 + torch.arange(N)[None]
        h_img = h.gather(1, idx[..., None].expand(-1, -1, h.shape[-1]))
        image_loss = F.cross_entropy(m.code_head(h_img).flatten(0, 1).float(), rep.flatten())
    elif m.mode == "masked":
        hide = training_mask(t2i, N, m.cfg.mask_schedule, g)
        h = m.hidden(batch, m.embed_images(rep.masked_fill(hide, m.mask_code)))
        logits = m.code_head(h[batch.modality == 1].view(B, N, -1)[hide]).float()
        image_loss = F.cross_entropy(logits, rep[hide], reduction="sum") / hide.sum().clamp(min=1)
    elif m.mode == "diffusion":
        t = m.schedule.sample_t(torch.where(t2i, 1.0, 0.5 if m.cfg.i2t_noise_limit else 1.0), g)
        eps = torch.randn(rep.shape, generator=g)
        h = m.hidden(batch, m.embed_images(m.schedule.add_noise(rep, eps, t), t),
                     **m.transformer_kwargs(batch.modality, t))
        out = m.patch_out(h[batch.modality == 1].view(B, N, -1))
        image_loss = F.mse_loss(out.float(), m.schedule.target(rep, eps).float())
    else:
        hide = training_mask(t2i, N, m.cfg.mask_schedule, g)
        h = m.hidden(batch, m.embed_images(rep, hide))
        image_loss = m.head_loss(h[batch.modality == 1].view(B, N, -1)[hide], rep[hide], g)
    return m.combine(m.text_loss(h, batch), image_loss)


VARIANTS = [("ar", {}), ("masked", {}), ("diffusion", {}), ("diffusion", dict(time_cond="adaln")),
            ("diffusion", dict(objective="ddpm", image_attention="causal")), ("mar", {})]


@pytest.mark.parametrize("mode,overrides", VARIANTS)
def test_one_image_batches_give_exactly_the_old_losses(mode, overrides):
    model = model_for(mode, **overrides)
    caps, rep = captions(model), images_for(model, 4)
    t2i, drop = torch.tensor([True, False, True, False]), torch.tensor([False, False, True, False])
    old, _ = old_loss(model, caps, rep, t2i, drop, gen(3))
    new, _ = model(caps, rep, t2i, drop, gen(3))  # forward -> training_loss -> sequence_loss
    assert abs(new.item() - old.item()) <= 1e-6 and old.item() > 0
    # the same rows as segments (sequence.pack's special case) through the segment path give the same loss
    caps = [[] if d and f else c for c, d, f in zip(caps, drop.tolist(), t2i.tolist())]
    rows = [(text_to_image if f else image_to_text)(c, model.tok, model.task_tokens) for c, f in zip(caps, t2i)]
    batch = pack(rows, model.tok, model.n_image, flush_right=t2i, length=model.layout.length)
    seg, _ = model(batch, rep, t2i, gen(3))
    assert abs(seg.item() - old.item()) <= 1e-6


# ------------------------------------------------------------------------------- two images in one row
def two_image_rows(model, generate):
    """[a, IMAGE, b, IMAGE] in one row, and [a, IMAGE], [b, IMAGE] in two (each with its task token)."""
    tok, (a, b) = model.tok, captions(model)[:2]
    task = tok.t2i_id if model.task_tokens else None
    both = pack([wrap([a, IMAGE, b, IMAGE], tok, task=task)], tok, model.n_image)
    apart = pack([wrap([a, IMAGE], tok, task=task), wrap([b, IMAGE], tok, task=task)], tok, model.n_image)
    return both, apart, torch.tensor(generate)


def attention_off(model):
    for block in model.transformer.blocks:
        block.attn.proj.weight.data.zero_()  # every position's output now depends on its own input only
    return model


@pytest.mark.parametrize("generate", [(True, True), (False, True)])
@pytest.mark.parametrize("mode,overrides", VARIANTS)
def test_two_image_row_loss_is_the_loss_of_its_images_apart(mode, overrides, generate):
    """Attention off: a two-image row, the same images in two one-image segment rows, and the old one-image code
    give one image loss (mean over the images' own positions, each with its own draws)."""
    model = attention_off(model_for(mode, **overrides))
    both, apart, generate = two_image_rows(model, generate)
    rep = images_for(model, 2)
    _, logs_both = model(both, rep, generate, gen(5))
    _, logs_apart = model(apart, rep, generate, gen(5))
    # the reference: the code before #15 on two one-image rows (one time / mask ratio per row, so per image)
    a, b = captions(model)[:2]
    _, logs_old = old_loss(model, [a, b], rep, generate, torch.tensor([False, False]), gen(5))
    assert logs_both["image_loss"] > 0
    assert logs_both["image_loss"] == pytest.approx(logs_old["image_loss"], rel=1e-6, abs=1e-7)
    assert logs_apart["image_loss"] == pytest.approx(logs_old["image_loss"], rel=1e-6, abs=1e-7)
    # and it really depends on each image at its own offsets: the second image's values change it
    _, logs_other = model(both, torch.cat([rep[:1], images_for(model, 1, seed=9)]), generate, gen(5))
    assert logs_other["image_loss"] != pytest.approx(logs_both["image_loss"], rel=1e-6)


@pytest.mark.parametrize("mode", ["masked", "mar"])
def test_first_image_does_not_see_what_follows(mode):
    """With attention on: the first image's loss (second image read, so unscored) is the loss it has alone,
    with a read image in a second row so that both batches draw M = 2 mask ratios from the same stream."""
    model = model_for(mode)
    tok, (a, b) = model.tok, captions(model)[:2]
    rep, generate = images_for(model, 2), torch.tensor([True, False])
    both = pack([wrap([a, IMAGE, b, IMAGE], tok, task=tok.t2i_id)], tok, model.n_image)
    alone = pack([wrap([a, IMAGE], tok, task=tok.t2i_id), wrap([IMAGE, b], tok, task=tok.mmu_id)], tok,
                 model.n_image)
    _, logs_both = model(both, rep, generate, gen(2))
    _, logs_alone = model(alone, rep, generate, gen(2))
    assert logs_both["image_loss"] == pytest.approx(logs_alone["image_loss"], rel=1e-6)


def recorded(model, monkeypatch):
    """The per-image corruption the loss drew: times (diffusion) or the hidden positions (masked, mar)."""
    seen = {}
    if model.mode == "diffusion":
        draw = model.training_times
        monkeypatch.setattr(model, "training_times", lambda *a: seen.setdefault("t", draw(*a)))
    elif model.mode == "masked":
        draw = model.training_mask
        monkeypatch.setattr(model, "training_mask", lambda *a: seen.setdefault("hide", draw(*a)))
    elif model.mode == "mar":
        import minimfm.modes.mar as mar
        monkeypatch.setattr(mar, "training_mask", lambda *a: seen.setdefault("hide", training_mask(*a)))
    return seen


@pytest.mark.parametrize("mode", ["masked", "diffusion", "mar"])
def test_each_image_draws_its_own_corruption(mode, monkeypatch):
    model = model_for(mode)
    both, _, generate = two_image_rows(model, (True, True))
    rep, differ = images_for(model, 2), 0
    for seed in range(8):
        seen = recorded(model, monkeypatch)
        model(both, rep, generate, gen(seed))
        drawn = seen.get("t", seen.get("hide"))
        assert drawn.shape[0] == 2  # one per image, not one per row
        counts = drawn if mode == "diffusion" else drawn.sum(1)
        differ += int(counts[0] != counts[1])
        monkeypatch.undo()
    assert differ >= 6  # two images of one row get different times / mask ratios (ties are rare, not banned)


@pytest.mark.parametrize("mode", MODES)
def test_image_loss_reaches_only_its_positions(mode, monkeypatch):
    """d(image loss)/dh is non-zero exactly where the mode reads its predictions: ar the position before each
    code, masked / mar the hidden positions of the generated image, diffusion every position of every image."""
    model = model_for(mode, text_loss_weight=0.0)
    both, _, generate = two_image_rows(model, (False, True))  # the first image read, the second generated
    seen, outputs = recorded(model, monkeypatch), {}

    def keep(module, args, out):
        out.retain_grad()
        outputs["h"] = out

    model.transformer.register_forward_hook(keep)
    loss, _ = model(both, images_for(model, 2), generate, gen(4))
    loss.backward()
    touched = outputs["h"].grad[0].abs().sum(-1) > 0  # (T,)
    is_image = both.modality[0] >= 1
    want = torch.zeros_like(touched)
    if mode == "ar":
        for start in both.image_start[0].tolist():
            want[start - 1:start - 1 + model.n_image] = True
    elif mode == "diffusion":
        want = is_image
    else:
        want[is_image] = seen["hide"].flatten()
        assert not seen["hide"][0].any() and seen["hide"][1].any()
    assert torch.equal(touched, want)


def test_diffusion_adaln_condition_is_per_image():
    model = model_for("diffusion", time_cond="adaln")
    both, apart, _ = two_image_rows(model, (True, True))
    t = torch.tensor([0.2, 0.9])
    cond = model.training_condition(both, t)["cond"][0]  # (T, D)
    emb = model.time_embedding(t)  # (2, D)
    for k, start in enumerate(both.image_start[0].tolist()):
        assert torch.equal(cond[start:start + model.n_image], emb[k].expand(model.n_image, -1))
    assert model.training_condition(apart, t)["cond"].shape[1] == 1  # one image per row: one row of cond each


# ------------------------------------------------------------------------------ growing the vocabulary
@pytest.mark.parametrize("mode", ["ar", "diffusion"])
def test_grown_vocabulary_keeps_old_ids_and_logits(mode):
    model = model_for(mode).eval()
    new_tok = TextTokenizer(mixed_vocabulary("mnist"))
    grown = grow_vocabulary(model, new_tok).eval()
    V, V_new = len(model.tok), len(new_tok)
    assert V_new > V and all(new_tok.index[w] == i for i, w in enumerate(model.tok.vocab))
    assert grown.text_emb.weight.shape[0] == grown.text_head.weight.shape[0] == V_new
    assert grown.text_head.weight[V:].abs().sum() > 0  # new rows initialised, not left at 0
    caps, rep = captions(model), images_for(model, 4)
    t2i = torch.tensor([True, False, True, False])
    batch = model.pack(caps, t2i)
    inputs, kwargs = model.reading_inputs(rep)
    with torch.no_grad():
        old = model.text_head(model.hidden(batch, inputs, **kwargs))
        new = grown.text_head(grown.hidden(batch, grown.reading_inputs(rep)[0], **kwargs))
    assert torch.equal(new[..., :V], old)
    with pytest.raises(ValueError, match="does not extend"):
        grow_vocabulary(grown, model.tok)


def test_init_from_a_base_checkpoint_grows_it(tmp_path):
    base = model_for("ar").eval()
    cfg = base.cfg
    path = tmp_path / "base.pt"
    torch.save(model_checkpoint(base, tokenizer_to_checkpoint(base.image_tokenizer, kind="vq", dataset="mnist"),
                                step=1), path)
    torch.manual_seed(1)
    fine = build_model(cfg, tiny_vq(cfg), TextTokenizer(mixed_vocabulary("mnist")))
    init_from(fine, str(path))
    V = len(base.tok)
    assert torch.equal(fine.text_emb.weight[:V], base.text_emb.weight)
    assert torch.equal(fine.code_head.weight, base.code_head.weight)
    other = tiny_model("masked")
    with pytest.raises(Exception, match="'ar' model"):
        init_from(other, str(path))


def test_tasks_flag_is_checked():
    assert make_config("smoke").tasks == "caption"
    for bad, match in (("caption,banana", "not one of"), ("edit,edit", "twice"), ("", "not one of")):
        with pytest.raises(ConfigError, match=f"--tasks: .*{match}"):
            make_config("smoke", tasks=bad)
    with pytest.raises(ConfigError, match="MNIST"):
        make_config("smoke", dataset="cifar10", tasks="caption,edit")
    assert text_tokenizer(make_config("smoke")).vocab == TextTokenizer.for_dataset("mnist").vocab
    assert len(text_tokenizer(make_config("smoke", tasks="edit"))) == len(mixed_vocabulary("mnist")) + 8
    for bad in ("1,2", "1,0,1", "1,x,1", "1,1,1,1"):
        with pytest.raises(ConfigError, match="--task-weights: .* one per task of --tasks caption,interleaved,edit"):
            make_config("smoke", tasks="caption,interleaved,edit", task_weights=bad)
    assert parse_task_weights("", ("caption", "edit")) == (1, 1)
    assert parse_task_weights(" 1, 3", ("caption", "edit")) == (1, 3)


@needs_mnist
def test_task_weights_set_each_tasks_share_of_the_rows():
    cfg = tiny_config("ar", tasks="caption,interleaved,edit", data_root=str(DATA), limit_train=64,
                      task_examples=30, batch_size=8, task_weights="1,1,2")
    model = build_model(cfg, tiny_vq(cfg), text_tokenizer(cfg))
    data = MixedTrainingData(cfg, model, verbose=False)
    mb, _ = data.batch(0, cfg)
    is_edit = [model.tok.decode(row[0][1:-1]) in INSTRUCTIONS for row in mb.rows]  # an edit opens with its instruction
    assert is_edit == [False, False, True, True] * 2  # caption, interleaved, edit, edit, ...
    assert [len(i) for i in mb.images][::4] == [1, 1]  # the caption rows


# ---------------------------------------------------------------------------------- data and training
@needs_mnist
def test_mixed_batches_hold_every_task_with_its_images():
    cfg = tiny_config("ar", tasks="caption,interleaved,edit", data_root=str(DATA), limit_train=64,
                      task_examples=30, batch_size=6)
    model = build_model(cfg, tiny_vq(cfg), text_tokenizer(cfg))
    data = MixedTrainingData(cfg, model, verbose=False)
    mb, g = data.batch(3, cfg)
    assert [len(i) for i in mb.images] == [1, 2, 2, 1, 2, 2]  # caption, interleaved, edit, caption, ...
    for row in mb.rows:
        check(row, model.tok)
    batch, rep, generate = data.micro_batch([mb], 0, 6, "cpu")
    assert rep.shape == (10, model.n_image) and generate.shape == (10,)
    assert torch.equal(batch.image_start >= 0, torch.tensor([[1, 0], [1, 1], [1, 1]] * 2, dtype=torch.bool))
    assert generate[[3, 4]].tolist() == [False, True]  # the edit's source is read, its target generated
    tok = model.tok  # an edit opens with its instruction, so it never opens like "next" ([BOS] [BOI] image ...)
    assert mb.rows[2][0][0] == tok.bos_id and mb.rows[2][0][-1] == tok.boi_id
    assert tok.decode(mb.rows[2][0][1:-1]) in INSTRUCTIONS
    assert mb.rows[2][2] == [tok.eoi_id, tok.boi_id]  # source, then at once the edited image
    assert torch.equal(data.micro_batch([mb], 2, 3, "cpu")[1], rep[3:5])  # micro-batches slice images with their rows
    first_edit = data.examples["edit"]
    assert data.reps[first_edit[0].images[1]].shape == (model.n_image,) and len(data.reps) == 64 + 30
    assert data.batch(3, cfg)[0].rows == mb.rows != data.batch(4, cfg)[0].rows  # a function of the step
    from minimfm.interleaved import LEARNED, TEMPLATES  # templates in turn; "captions" reads both its images
    assert [e.generate for e in data.examples["interleaved"][:3]] == [[True, True], [False, True], [False, False]]
    assert [list(LEARNED[t]) for t in TEMPLATES] == [e.generate for e in data.examples["interleaved"][:3]]


@needs_mnist
@pytest.mark.parametrize("mode", MODES)
def test_smoke_training_on_mixed_tasks(mode, tmp_path):
    from minimfm.train import train
    extra = dict(latent_kind="patch") if mode in ("diffusion", "mar") else {}
    cfg = tiny_config(mode, runs_dir=str(tmp_path), data_root=str(DATA), limit_train=64, batch_size=6,
                      max_steps=5, ckpt_every=100, log_every=1, warmup_steps=2, sample_every=0,
                      tasks="caption,interleaved,edit", task_examples=30, **extra)
    if mode in ("ar", "masked"):
        install_random_vq(cfg)
    else:  # the patch latent has no weights to train, but building it measures it with a judge (~25 s)
        save_atomic(tokenizer_to_checkpoint(PatchLatent(1, patch=4), kind="latent", dataset="mnist"),
                    tokenizer_path(cfg, "latent"))
    run = train(cfg, verbose=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert all(math.isfinite(r["loss"]) and r["image_loss"] > 0 for r in rows)


def mixed_run_config(tmp_path, mode="ar", **kw):
    base = dict(runs_dir=str(tmp_path), data_root=str(DATA), limit_train=64, batch_size=6, max_steps=4,
                ckpt_every=100, log_every=1, warmup_steps=2, sample_every=0, tasks="caption,interleaved,edit",
                task_examples=30)
    return tiny_config(mode, **{**base, **kw})


@needs_mnist
def test_mixed_run_resumes_exactly(tmp_path):
    from minimfm.train import train
    cfg = mixed_run_config(tmp_path, run_name="straight", micro_batch_size=3)  # each micro-batch packed alone
    install_random_vq(cfg)
    straight = load_checkpoint(train(cfg, verbose=False) / "ckpt.pt")
    cfg2 = mixed_run_config(tmp_path, run_name="resumed", micro_batch_size=3)
    train(cfg2, verbose=False, stop_after=2)
    resumed = load_checkpoint(train(cfg2, resume=True, verbose=False) / "ckpt.pt")
    assert resumed["step"] == straight["step"] == 4
    for name, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][name]), name


@needs_mnist
def test_fine_tune_from_a_base_run_and_its_one_line_errors(tmp_path, capsys):
    from minimfm.__main__ import main
    from minimfm.train import train
    base_cfg = mixed_run_config(tmp_path, run_name="base", tasks="caption", max_steps=2)
    install_random_vq(base_cfg)
    base = load_checkpoint(train(base_cfg, verbose=False) / "ckpt.pt")
    cfg = mixed_run_config(tmp_path, run_name="edit-ft", tasks="caption,edit", max_steps=2,
                           init_from=str(tmp_path / "base" / "ckpt.pt"))
    fine = load_checkpoint(train(cfg, verbose=False) / "ckpt.pt")
    assert fine["text_tokenizer"]["vocab"][:len(base["text_tokenizer"]["vocab"])] == base["text_tokenizer"]["vocab"]
    assert len(fine["text_tokenizer"]["vocab"]) == len(mixed_vocabulary("mnist")) + 8
    # in another runs folder the fine-tune reads images with its base's tokenizer, not one trained there
    elsewhere = mixed_run_config(tmp_path / "elsewhere", run_name="edit-ft", tasks="caption,edit", max_steps=1,
                                 init_from=str(tmp_path / "base" / "ckpt.pt"))
    moved = load_checkpoint(train(elsewhere, verbose=False) / "ckpt.pt")
    assert all(torch.equal(v, moved["image_tokenizer"]["state_dict"][k]) for k, v in base["image_tokenizer"]["state_dict"].items())
    smoke = ["train", "--preset", "smoke", "--runs-dir", str(tmp_path), "--data-root", str(DATA), "--limit-train",
             "64", "--vq-codebook-size", "16", "--vq-code-dim", "8", "--d-model", "32", "--n-layer", "2",
             "--n-head", "2", "--run-name", "bad"]
    for extra, pattern in ((["--tasks", "caption,banana"], "--tasks: 'banana' is not one of"),
                           (["--tasks", "edit", "--init-from", str(tmp_path / "missing.pt")], "not found"),
                           (["--mode", "masked", "--init-from", str(tmp_path / "base" / "ckpt.pt")], "'ar' model")):
        try:
            rc = main(smoke + extra)
        except SystemExit as e:
            rc = e.code
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert rc not in (0, None) and len(err) == 1 and re.search(pattern, err[0]), err
        assert not (tmp_path / "bad").exists()  # refused before the run folder is made
