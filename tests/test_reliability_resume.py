"""Exact resume at the script level, one test per trainer: N straight steps == N/2 steps + ``latest``.

Each run goes through the real script and data path; weights must be bit-equal on the CPU and the
step metrics of the resumed run hold every step once (the replayed steps are truncated).
"""

import json
import os
import shutil

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
        assert torch.equal(x, y) or torch.equal(x.isnan(), y.isnan()) and torch.equal(x.nan_to_num(), y.nan_to_num()), where
    else:
        assert x == y, where


def _assert_same_files(a, b, names):
    for name in names:
        assert_equal_trees(torch.load(os.path.join(a, name), weights_only=True),
                           torch.load(os.path.join(b, name), weights_only=True), name)


def test_bea_resume_equals_straight_run(load_script, tiny_cohort, tmp_path):
    """BEA dual loss, label dropout on: 6 straight steps == 5 steps killed before the step-5 checkpoint, then
    ``latest`` (step 3, mid-epoch) to 6; steps 3 and 4 are replayed and logged once."""
    common = ["--data_dir", tiny_cohort, *BEA_TINY, "--save_interval", 3]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert _gd_script(load_script, "train_bea_dual_loss", [*common, "--out_dir", straight, "--max_steps", 6]) == 0
    assert _gd_script(load_script, "train_bea_dual_loss", [*common, "--out_dir", split, "--max_steps", 5]) == 0
    release_run_dir(split)
    for path in split.glob("*000005.pt"):  # killed after step 5 was logged, before its checkpoint
        path.unlink()
    release_run_dir(straight)
    assert _gd_script(load_script, "train_bea_dual_loss",
                      [*common, "--out_dir", split, "--max_steps", 6, "--resume_checkpoint", "latest"]) == 0
    release_run_dir(split)
    _assert_same_files(straight, split, ["model000006.pt", "ema_0.9_000006.pt", "opt000006.pt"])
    assert _steps(split / "metrics_step.jsonl") == _steps(straight / "metrics_step.jsonl") == list(range(6))
    losses = [json.loads(l)["loss"] for l in open(split / "metrics_step.jsonl")]
    assert losses == [json.loads(l)["loss"] for l in open(straight / "metrics_step.jsonl")]


@pytest.fixture(scope="module")
def sr_env(tmp_path_factory):
    from tests.test_sr_fixtures import tiny_backbones_yaml, tiny_vae, write_pairs

    root = tmp_path_factory.mktemp("sr_resume")
    return {"data": write_pairs(str(root / "data")), "vae": tiny_vae(str(root / "vae")),
            "yaml": tiny_backbones_yaml(str(root / "bb.yaml"))}


@pytest.mark.parametrize("script", ["train_sr", "train_sr_pixel"])
def test_sr_resume_equals_straight_run(load_script, sr_env, tmp_path, script):
    """6 straight steps == 5 steps killed before the step-5 checkpoint + ``latest`` (step 3, mid-epoch at
    batch 2): weights, EMA and optimizer bit-equal; steps 4 and 5 logged once."""
    from tests.test_sr_fixtures import train_argv

    entry = load_script(script)
    main = entry.pixel_main if script == "train_sr_pixel" else entry.main
    extra = ["--batch_size", "2", "--checkpointing_steps", "3", "--pixel_loss_max_t", "1.0"]

    def run(out, steps, *more):
        argv = train_argv(sr_env["data"], sr_env["vae"], sr_env["yaml"], str(out), steps, *extra, *more)
        assert run_main(main, argv) == 0
        release_run_dir(out)

    run(tmp_path / "straight", 6)
    run(tmp_path / "split", 5)
    shutil.rmtree(tmp_path / "split" / "checkpoints" / "checkpoint-5")  # killed before the step-5 checkpoint
    run(tmp_path / "split", 6, "--resume_from_checkpoint", "latest")
    for name in ("model.safetensors", "ema.pt", "optimizer.bin"):
        a = tmp_path / "straight" / "checkpoints" / "checkpoint-6" / name
        b = tmp_path / "split" / "checkpoints" / "checkpoint-6" / name
        if name.endswith(".safetensors"):
            from safetensors.torch import load_file
            assert_equal_trees(load_file(a), load_file(b), name)
        else:
            assert_equal_trees(torch.load(a, weights_only=True), torch.load(b, weights_only=True), name)
    assert _steps(tmp_path / "split" / "metrics_step.jsonl") == [1, 2, 3, 4, 5, 6]


def test_autoencoder_resume_equals_straight_run(load_script, tmp_path):
    """Adversarial on, denoising on: 5 straight steps == 4 steps killed before the step-4 checkpoint +
    ``latest`` (step 2, mid-epoch) to 5; weights, both optimizers; step and epoch metrics once each."""
    from accelerate.state import AcceleratorState, GradientState

    from plugins.data.filaments import write_filament_set
    from tests.test_autoencoder_trainer import TINY

    data = tmp_path / "filaments"
    write_filament_set(str(data), num_volumes=5, shape=(16, 16, 16), seed=0)
    script = load_script("train_autoencoder")
    common = ["--data_dir", data, *TINY, "--autoencoder.training.save_interval", "100", "--batch_size", "1"]

    def run(out, steps, *more):
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        assert run_main(script.main, [str(a) for a in [*common, "--out_dir", out, "--max_steps", steps, *more]]) == 0
        release_run_dir(out)

    straight, split = tmp_path / "straight", tmp_path / "split"
    run(straight, 5)
    run(split, 2)
    run(split, 4, "--resume_checkpoint", "latest")
    shutil.rmtree(split / "checkpoints" / "checkpoint-4")  # killed before the step-4 checkpoint
    run(split, 5, "--resume_checkpoint", "latest")
    from safetensors.torch import load_file
    for name in ("model.safetensors", "model_1.safetensors", "optimizer.bin", "optimizer_1.bin"):
        a, b = straight / "checkpoints" / "checkpoint-5" / name, split / "checkpoints" / "checkpoint-5" / name
        load = load_file if name.endswith(".safetensors") else (lambda p: torch.load(p, weights_only=True))
        assert_equal_trees(load(a), load(b), name)
    assert _steps(split / "metrics_step.jsonl") == [1, 2, 3, 4, 5]
    epochs = [json.loads(line)["epoch"] for line in open(split / "metrics_epoch.jsonl")]
    assert epochs == sorted(epochs)


def test_segmentation_resume_equals_straight_run(load_script, tiny_cohort, tmp_path):
    """Joint segmentation + grade head, 2-3 steps an epoch, validation after each: 4 straight steps == 4
    steps killed before the step-4 checkpoint + ``latest`` (step 2) to 4; each epoch logged once."""
    from tests.test_segdiff_train import TINY

    common = ["--data_dir", tiny_cohort, *TINY, "--csv_path", tiny_cohort / "name_mapping.csv", "--save_interval", 2,
              "--ema_rate", "0.9", "--batch_size", 27,
              "--image_size", 16, "--channel_mult", "1,2", "--attention_resolutions", "4"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert _gd_script(load_script, "segmentation_train", [*common, "--out_dir", straight, "--max_steps", 4]) == 0
    assert _gd_script(load_script, "segmentation_train", [*common, "--out_dir", split, "--max_steps", 4]) == 0
    for path in split.glob("*000004.pt"):
        path.unlink()
    assert _gd_script(load_script, "segmentation_train",
                      [*common, "--out_dir", split, "--max_steps", 4, "--resume_checkpoint", "latest"]) == 0
    for run in (straight, split):
        release_run_dir(run)
    _assert_same_files(straight, split, ["model000004.pt", "ema_0.9_000004.pt", "opt000004.pt"])
    assert _steps(split / "metrics_step.jsonl") == _steps(straight / "metrics_step.jsonl")
    epochs = [json.loads(line)["epoch"] for line in open(split / "metrics_epoch.jsonl")]
    assert epochs == [json.loads(line)["epoch"] for line in open(straight / "metrics_epoch.jsonl")]
    assert epochs and len(set(epochs)) == len(epochs)

