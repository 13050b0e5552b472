"""Judge classifier, its features and the Fréchet distance."""
import pytest
import torch

from minimfm.checkpoint import CheckpointError, load_checkpoint, save_atomic
from minimfm.judge import Judge, frechet_distance, judge_accuracy, judge_features
from minimfm.tokenizers.training import random_shift, tokenizer_from_checkpoint, tokenizer_to_checkpoint, train_judge

torch.set_num_threads(2)


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_judge_shapes(channels, size):
    torch.manual_seed(0)
    judge = Judge(channels).eval()
    x = torch.rand(5, channels, size, size)
    assert judge(x).shape == (5, 10)
    assert judge.features(x).shape == (5, 128)
    feats = judge_features(judge, x, batch_size=2)  # batching must not change the result
    torch.testing.assert_close(feats, judge.features(x))


def test_frechet_distance_of_a_set_with_itself_is_zero():
    torch.manual_seed(0)
    a = torch.randn(500, 16) @ torch.randn(16, 16)  # correlated features
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_of_shifted_gaussians_is_mean_gap():
    torch.manual_seed(0)
    a = torch.randn(400, 8) @ torch.randn(8, 8)
    shift = torch.tensor([3.0, -1.0, 0, 0, 2.0, 0, 0, 0])
    assert frechet_distance(a, a + shift) == pytest.approx(shift.pow(2).sum().item(), rel=1e-6)


def test_frechet_distance_matches_closed_form_for_diagonal_covariances():
    # For diagonal covariances the trace term is sum (s_a - s_b)^2 over standard deviations.
    torch.manual_seed(0)
    base = torch.randn(20000, 3)
    base = (base - base.mean(0)) / base.std(0)
    sa, sb = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([3.0, 2.0, 1.0])
    # exact only if the two samples are uncorrelated in the fitted covariances, so reuse the same base
    expected = (sa - sb).pow(2).sum().item()
    assert frechet_distance(base * sa, base * sb) == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])  # colour images also take the mirror augmentation
def test_train_judge_learns_a_separable_task_deterministically(channels, size):
    torch.manual_seed(0)
    labels = torch.arange(64) % 2
    images = torch.zeros(64, channels, size, size)
    images[labels == 0, :, 4:24, 10:14] = 1  # class 0: vertical bar
    images[labels == 1, :, 10:14, 4:24] = 1  # class 1: horizontal bar
    kw = dict(steps=30, batch_size=16, lr=3e-3, seed=0, progress=False)
    judge = train_judge(images, labels, **kw)
    assert judge_accuracy(judge, images, labels, batch_size=20) == 1.0
    other = train_judge(images, labels, **kw)
    assert torch.equal(judge_features(judge, images), judge_features(other, images))


def test_vgg_recipe_trains_a_cifar_shaped_judge_deterministically():
    # the CIFAR-10 judge recipe (4 stages, global max pool, SGD one-cycle, label smoothing, bf16 autocast)
    torch.manual_seed(0)
    labels = torch.arange(64) % 2
    images = torch.rand(64, 3, 32, 32) * 0.2
    images[labels == 0, 0, 4:28, 12:20] = 1  # class 0: a red vertical bar
    images[labels == 1, 2, 12:20, 4:28] = 1  # class 1: a blue horizontal bar
    kw = dict(steps=25, batch_size=16, lr=0.05, seed=0, recipe="vgg", progress=False)
    judge = train_judge(images, labels, **kw)
    assert judge.config["stages"] == 4 and judge.features(images[:2]).shape == (2, 128)
    assert judge_accuracy(judge, images, labels, batch_size=20) == 1.0
    assert torch.equal(judge_features(judge, images), judge_features(train_judge(images, labels, **kw), images))
    with pytest.raises(ValueError, match="unknown judge recipe"):
        train_judge(images, labels, **{**kw, "recipe": "resnet"})


def test_mnist_judge_keeps_its_original_architecture():
    # the MNIST (lenet) judge must stay the network the README's MNIST figures were measured with
    judge = Judge(1)
    assert sum(p.numel() for p in judge.parameters()) == 421834
    assert [k for k in judge.state_dict() if k.endswith("weight")][:3] == ["convs.0.0.weight", "convs.0.1.weight",
                                                                           "convs.2.0.weight"]


def test_random_shift_moves_each_image_at_most_two_pixels():
    x = torch.zeros(50, 1, 28, 28)
    x[:, :, 13, 13] = 1
    y = random_shift(x, 2, torch.Generator().manual_seed(0))
    pos = y.flatten(1).argmax(1)
    rows, cols = pos // 28, pos % 28
    assert y.sum() == 50 and (rows - 13).abs().max() <= 2 and (cols - 13).abs().max() <= 2
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 5  # shifts differ between images


def test_judge_checkpoint_round_trip_and_refusal(tmp_path):
    torch.manual_seed(0)
    judge = Judge(3).eval()
    x = torch.rand(4, 3, 32, 32)
    path = tmp_path / "judge.pt"
    save_atomic(tokenizer_to_checkpoint(judge, kind="judge", dataset="cifar10", config={"steps": 1},
                                        metrics={"test_accuracy": 0.5}), path)
    ckpt = load_checkpoint(path, kind="judge", dataset="cifar10")
    assert ckpt["metrics"] == {"test_accuracy": 0.5} and ckpt["config"]["steps"] == 1
    loaded = tokenizer_from_checkpoint(ckpt)
    assert torch.equal(loaded(x), judge(x))
    with pytest.raises(CheckpointError, match="trained on 'cifar10', expected 'mnist'"):
        load_checkpoint(path, kind="judge", dataset="mnist")
    with pytest.raises(CheckpointError, match="is a 'judge' checkpoint, expected 'latent'"):
        load_checkpoint(path, kind="latent")
