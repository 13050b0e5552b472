"""The bench command: its figures are consistent with each other and with the FLOP count of the comparison."""
import pytest
import torch

from helpers import tiny_config
from minimfm.bench import bench, format_bench, matmul_peak
from minimfm.compare import step_flops
from minimfm.config import ConfigError


@pytest.mark.parametrize("mode", ["ar", "masked", "diffusion"])
def test_bench_figures_are_consistent(mode):
    cfg = tiny_config(mode, latent_kind="patch", batch_size=8, threads=1)
    r = bench(cfg, steps=2, warmup=1, verbose=False)
    assert r["tokens_per_second"] == pytest.approx(8 * r["sequence_length"] / r["seconds_per_step"])
    assert r["images_per_second"] == pytest.approx(8 / r["seconds_per_step"])
    assert r["mfu"] == pytest.approx(r["flops_per_step"] / r["seconds_per_step"] / r["peak_flops"])
    assert 0 < r["mfu"] < 1.5  # a measured peak, so a tiny model cannot plausibly exceed it by much
    assert "MFU" in format_bench(r)


def test_bench_flops_match_the_comparison_budget():
    from minimfm.bench import random_tokenizer
    from minimfm.runs import build_model
    cfg = tiny_config("masked", batch_size=8, threads=1)
    r = bench(cfg, steps=1, warmup=0, verbose=False)
    assert r["flops_per_step"] == step_flops(build_model(cfg, random_tokenizer(cfg)), 8)


def test_micro_batches_must_divide_the_batch():
    with pytest.raises(ValueError, match="must divide"):
        bench(tiny_config("ar", batch_size=8, micro_batch_size=3, threads=1), steps=1, warmup=0)


def test_flex_attention_training_is_refused_on_cpu_with_one_line():
    with pytest.raises(ConfigError, match="--attention flex"):
        bench(tiny_config("ar", attention="flex", threads=1), steps=1, warmup=0)


def test_matmul_peak_is_a_plausible_rate():
    peak = matmul_peak(torch.device("cpu"), sizes=(256,), repeats=2)
    assert 1e8 < peak < 1e14  # between 0.1 GFLOP/s and 100 TFLOP/s on any CPU
