"""Exact resume at the script level, one test per trainer: N straight steps == N/2 steps + ``latest``.

Each run goes through the real script and data path; weights must be bit-equal on the CPU and the
step metrics of the resumed run hold every step once (the replayed steps are truncated).
"""

import json
import os

import pytest
import torch
from guided_diffusion import logger

from plugins.common.errors import run_main
from plugins.common.run_dir import release_run_dir

BEA_TINY = ["--image_size", "32", "--num_channels", "32", "--num_res_blocks", "1", "--attention_resolutions", "8",
            "--num_heads", "1", "--batch_size", "4", "--diffusion_steps", "30", "--log_interval", "1",
            "--val_fraction", "0.4", "--seed", "3", "--ema_rate", "0.9"]


def _gd_script(load_script, name, argv):
    from guided_diffusion import dist_util
    import torch.distributed as dist

    saved = dict(os.environ)
    dist_util.setup_dist()
    try:
        code = run_main(load_script(name).main, [str(a) for a in argv])
    finally:
        logger.get_current().close()
        if dist.is_initialized():
            dist.destroy_process_group()
        os.environ.clear()
        os.environ.update(saved)
    return code


def _steps(path):
    return [json.loads(line)["step"] for line in open(path) if line.strip()]


def assert_equal_trees(x, y, where=""):
    """Nested dicts/lists of tensors and scalars, bit-equal."""
    if isinstance(x, dict):
        assert x.keys() == y.keys(), where
        for key in x:
            assert_equal_trees(x[key], y[key], f"{where}/{key}")
    elif isinstance(x, (list, tuple)):
        assert len(x) == len(y), where
        for i, (a, b) in enumerate(zip(x, y)):
            assert_equal_trees(a, b, f"{where}/{i}")
    elif isinstance(x, torch.Tensor):
        assert torch.equal(x, y), where
    else:
        assert x == y, where


def _assert_same_files(a, b, names):
    for name in names:
        assert_equal_trees(torch.load(os.path.join(a, name), weights_only=True),
                           torch.load(os.path.join(b, name), weights_only=True), name)


def test_bea_resume_equals_straight_run(load_script, tiny_cohort, tmp_path):
    """BEA dual loss, label dropout on: 6 straight steps == 3 + resume (a resumed epoch starts mid-way)."""
    common = ["--data_dir", tiny_cohort, *BEA_TINY, "--save_interval", 3]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert _gd_script(load_script, "train_bea_dual_loss", [*common, "--out_dir", straight, "--max_steps", 6]) == 0
    assert _gd_script(load_script, "train_bea_dual_loss", [*common, "--out_dir", split, "--max_steps", 3]) == 0
    release_run_dir(split)
    release_run_dir(straight)
    assert _gd_script(load_script, "train_bea_dual_loss",
                      [*common, "--out_dir", split, "--max_steps", 6, "--resume_checkpoint", "latest"]) == 0
    release_run_dir(split)
    _assert_same_files(straight, split, ["model000006.pt", "ema_0.9_000006.pt", "opt000006.pt"])
    assert _steps(split / "metrics_step.jsonl") == _steps(straight / "metrics_step.jsonl") == list(range(6))
    losses = [json.loads(l)["loss"] for l in open(split / "metrics_step.jsonl")]
    assert losses == [json.loads(l)["loss"] for l in open(straight / "metrics_step.jsonl")]
