"""`generate` and `edit` on the command line: the CLI's promise (tests/test_cli_errors.py) for the two commands of
issue #15, plus one real run of each on a smoke model.

Bad input ends with one stderr line under MAX_MESSAGE characters, exit 2, no traceback, and every file under the
test folder (checkpoints, inputs) byte for byte what it was. The edit checkpoint is the smoke ar model with the
mixed vocabulary grown in (new rows random, as finetune.grow_vocabulary makes them), so it reads instructions
without having learnt to follow them: enough to test the plumbing, not the quality.
"""
from types import SimpleNamespace

import pytest
import torch
from torchvision.io import decode_image, encode_png

from minimfm.__main__ import main
from minimfm.checkpoint import load_checkpoint, save_atomic
from minimfm.interleaved import mixed_vocabulary
from test_cli_errors import SMOKE, assert_one_line_error, error_lines, run, smoke_world, snapshot


def write_png(path, image: torch.Tensor) -> None:
    path.write_bytes(encode_png((image * 255).round().to(torch.uint8)).numpy().tobytes())


def grow_vocabulary(ckpt: dict, words: list[str]) -> dict:
    """The checkpoint with `words` (which must extend its vocabulary) as its text vocabulary."""
    old = ckpt["text_tokenizer"]["vocab"]
    vocab = old + [w for w in words if w not in old]
    state = dict(ckpt["model"])
    for name in ("text_emb.weight", "text_head.weight"):
        new = torch.randn(len(vocab) - len(old), state[name].shape[1], generator=torch.Generator().manual_seed(0))
        state[name] = torch.cat([state[name], 0.02 * new])  # (V + n, D): old rows unchanged
    return {**ckpt, "text_tokenizer": {"vocab": vocab}, "model": state, "ema": None}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root, runs, inputs = smoke_world(tmp_path_factory, "cli-generate", ("ar",), 2)
    base = runs / "mnist-ar-smoke" / "ckpt.pt"
    edit = runs / "mnist-ar-edit" / "ckpt.pt"
    save_atomic(grow_vocabulary(load_checkpoint(base), mixed_vocabulary("mnist")), edit)
    inputs.mkdir()
    g = torch.Generator().manual_seed(0)
    write_png(inputs / "digit.png", torch.rand(1, 28, 28, generator=g))
    write_png(inputs / "big.png", torch.rand(1, 32, 32, generator=g))
    (inputs / "fake.png").write_text("not an image")
    (inputs / "folder").mkdir()
    torch.save({"images": torch.rand(3, 1, 28, 28, generator=g)}, inputs / "three.pt")
    return SimpleNamespace(root=root, inputs=inputs, base=base, edit=edit)


def generate(w, *extra, prompt="a three [BOI]", ckpt=None, out=None):
    return ["generate", "--ckpt", ckpt or w.base, "--prompt", prompt, "--out", out or w.root / "strip.png",
            "--max-tokens", "3", *extra]


def edit(w, *extra, image="digit.png", instruction="make it bolder", ckpt=None, out=None):
    return ["edit", "--ckpt", ckpt or w.edit, "--image", w.inputs / image, "--instruction", instruction,
            "--out", out or w.root / "edited.png", *extra]


CASES = [
    ("generate: interleaved words on a caption checkpoint",
     lambda w: generate(w, prompt="a three, then a seven"), "not trained on interleaved sequences: .*lacks 'then'"),
    ("generate: an unknown word", lambda w: generate(w, prompt="a purple three"), "unknown word 'purple'"),
    ("generate: [EOI] after text", lambda w: generate(w, prompt="a three [EOI]"), "does not follow an image"),
    ("generate: a prompt ending in [EOS]", lambda w: generate(w, prompt="a three [EOS]"), "ends in \\[EOS\\]"),
    ("generate: a 5,000-word prompt", lambda w: generate(w, prompt=" ".join(["three"] * 5000)), "at most 256"),
    ("generate: --out whose .pt is the checkpoint", lambda w: generate(w, out=w.base.with_suffix(".png")),
     "is also this command's input"),
    ("generate: --out the checkpoint", lambda w: generate(w, out=w.base), "--out must end in .png"),
    ("generate: --out a folder", lambda w: generate(w, out=w.inputs / "folder"), "is a folder"),
    ("generate: --out under a file", lambda w: generate(w, out=w.inputs / "digit.png" / "x.png"), "is a file"),
    ("generate: --n 0", lambda w: generate(w, "--n", "0"), "--n: must be a whole number in \\[1, 16\\]"),
    ("generate: --n 17", lambda w: generate(w, "--n", "17"), "--n"),
    ("generate: --steps for ar", lambda w: generate(w, "--steps", "4"), "--steps: the ar mode has no step count"),
    ("generate: --cfg-scale nan", lambda w: generate(w, "--cfg-scale", "nan"), "--cfg-scale"),
    ("generate: a missing checkpoint", lambda w: generate(w, ckpt=w.root / "nothere.pt"), "nothere.pt"),
    ("edit: a caption checkpoint", lambda w: edit(w, ckpt=w.base),
     "this checkpoint was not trained for editing: its vocabulary lacks 'make', 'it', 'bolder'; fine-tune it "
     "with `python -m minimfm train --init-from \\S+ --tasks caption,edit`"),
    ("edit: an unknown instruction word", lambda w: edit(w, instruction="make it purple"), "unknown word 'purple'"),
    ("edit: an empty instruction", lambda w: edit(w, instruction=" "), "--instruction is empty"),
    ("edit: a missing image", lambda w: edit(w, image="nothere.png"), "--image .*nothere.png: not found"),
    ("edit: a folder as image", lambda w: edit(w, image="folder"), "--image .*: is a folder"),
    ("edit: a 32x32 PNG", lambda w: edit(w, image="big.png"), "32x32 pixels; a mnist model edits 28x28 images"),
    ("edit: a text file named .png", lambda w: edit(w, image="fake.png"), "not a PNG"),
    ("edit: three images to one PNG", lambda w: edit(w, image="three.pt"), "3 images; --out .png takes one"),
    ("edit: --out the input image", lambda w: edit(w, out=w.inputs / "digit.png"), "is also this command's input"),
    ("edit: --out its checkpoint", lambda w: edit(w, out=w.edit), "is also this command's input"),
    ("edit: --out another checkpoint", lambda w: edit(w, out=w.base), "is a minimfm checkpoint"),
    ("edit: --out .jpg", lambda w: edit(w, out=w.root / "y.jpg"), "--out must end in .png or .pt"),
    ("evaluate --mixed on a caption-only run",
     lambda w: ["evaluate", "--ckpt", w.base, "--mixed", "4", "--out", w.root / "e.json"],
     "--mixed: .* was trained on captions only \\(--tasks caption\\)"),
    ("evaluate --mixed 0", lambda w: ["evaluate", "--ckpt", w.base, "--mixed", "0"], "--mixed"),
]


@pytest.mark.parametrize("argv, pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_loses_nothing(world, capsys, argv, pattern):
    before = snapshot(world.root)
    rc, _, err = run(capsys, *argv(world))
    assert rc == 2
    assert_one_line_error(rc, err, pattern)
    assert snapshot(world.root) == before


def test_generate_writes_the_strip_and_the_tensors(world, capsys, tmp_path):
    out = tmp_path / "strips" / "three.png"
    rc, stdout, err = run(capsys, *generate(world, "--n", "2", "--seed", "5", out=out))
    assert rc == 0 and not error_lines(err), err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    blob = torch.load(out.with_suffix(".pt"), weights_only=True)
    assert len(blob["texts"]) == 2 and all(t.startswith("[BOS] a three [BOI] <image 1> [EOI]") for t in blob["texts"])
    images = blob["images"]
    assert images.dim() == 4 and images.shape[1:] == (1, 28, 28) and len(images) == len(blob["image_row"]) >= 2
    assert blob["image_row"][0] == 0 and blob["image_row"][-1] == 1 and 0 <= images.min() <= images.max() <= 1
    assert "wrote" in stdout and stdout.count("<image 1>") == 2  # the texts are printed too


def test_edit_writes_a_png_that_edit_reads_back(world, capsys, tmp_path):
    out = tmp_path / "edited.png"
    rc, stdout, err = run(capsys, *edit(world, out=out))
    assert rc == 0 and not error_lines(err), err
    image = decode_image(str(out))
    assert image.shape == (1, 28, 28) and image.dtype == torch.uint8  # the grey 28x28 PNG it reads
    rc, _, err = run(capsys, *edit(world, out=tmp_path / "again.pt", instruction="move it left"))
    assert rc == 0, err
    rc, _, err = run(capsys, *edit(world, image="three.pt", out=tmp_path / "three-edited.pt"))
    assert rc == 0, err
    blob = torch.load(tmp_path / "three-edited.pt", weights_only=True)
    assert blob["images"].shape == blob["sources"].shape == (3, 1, 28, 28)


def test_evaluate_mixed_scores_edits_beside_the_copy_baseline(world, capsys, tmp_path):
    runs = world.root / "runs"
    assert main(["train", *SMOKE, "--runs-dir", str(runs), "--mode", "ar", "--max-steps", "2", "--tasks",
                 "caption,edit", "--task-examples", "40", "--run-name", "mnist-ar-edit-trained"]) == 0
    out = tmp_path / "mixed.json"
    rc, stdout, err = run(capsys, "evaluate", "--ckpt", runs / "mnist-ar-edit-trained" / "ckpt.pt", "--n", "4",
                          "--mixed", "5", "--out", out)
    assert rc == 0 and not error_lines(err), err
    import json
    edits = json.loads(out.read_text())["edits"]
    assert "interleaved" not in json.loads(out.read_text())  # not a task this run trained
    assert edits["model"]["n_edits"] == edits["copy_source"]["n_edits"] == 5
    assert edits["copy_source"]["moved"] == 0.0  # copying moves nothing, by construction
    assert "edits (guidance 1.0): 5 triples" in stdout
