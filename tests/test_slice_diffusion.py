"""scripts/image_train.py end to end on the demo cohort: run directory, resume, bad flags."""

import json
import os

import pytest
import torch
from guided_diffusion import logger

from patches.checkpoints import load_checkpoint
from plugins.common.errors import run_main
from plugins.common.run_log import read_jsonl

TINY = ["--image_size", "32", "--num_channels", "32", "--num_res_blocks", "1", "--attention_resolutions", "8",
        "--num_heads", "1", "--batch_size", "4", "--diffusion_steps", "30", "--log_interval", "1",
        "--modalities", "flair,t2"]


def _train(load_script, data_dir, run_dir, *extra):
    code = run_main(load_script("image_train").main, ["--data_dir", str(data_dir), "--out_dir", str(run_dir),
                                                      *TINY, *extra])
    logger.get_current().close()
    return code


def test_train_resume_and_run_directory(gd_dist, load_script, tiny_cohort, tmp_path):
    run = tmp_path / "plain"
    assert _train(load_script, tiny_cohort, run, "--max_steps", "2") == 0
    files = set(os.listdir(run))
    assert {"config.json", "metrics_step.jsonl", "progress.csv", "split.json", "model000002.pt", "tb"} <= files
    config = json.loads((run / "config.json").read_text())
    assert config["modalities"] == "flair,t2" and config["max_steps"] == 2
    assert _train(load_script, tiny_cohort, run, "--max_steps", "3", "--resume_checkpoint", "latest") == 0
    assert "model000003.pt" in os.listdir(run)
    assert [r["step"] for r in read_jsonl(str(run / "metrics_step.jsonl"))] == [0, 1, 2]


def test_same_seed_same_weights(gd_dist, load_script, tiny_cohort, tmp_path):
    for name in ("a", "b"):
        assert _train(load_script, tiny_cohort, tmp_path / name, "--max_steps", "2", "--seed", "3") == 0
    a, b = (load_checkpoint(str(tmp_path / name / "model000002.pt")) for name in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    logs = [[(r["loss"], r["grad_norm"]) for r in read_jsonl(str(tmp_path / name / "metrics_step.jsonl"))]
            for name in ("a", "b")]
    assert logs[0] == logs[1]


def test_channels_last_trains_the_same_weights(gd_dist, load_script, tiny_cohort, tmp_path):
    """--channels_last True: the same noise and losses, and every weight within half an Adam step (lr 1e-4) of the
    default layout's (Adam moves a weight by about lr whatever its gradient's size, so float rounding in a
    near-zero gradient shows at that scale)."""
    for name, flag in (("default", "False"), ("cl", "True")):
        assert _train(load_script, tiny_cohort, tmp_path / name, "--max_steps", "3", "--seed", "3",
                      "--channels_last", flag) == 0
    a, b = (load_checkpoint(str(tmp_path / name / "model000003.pt")) for name in ("default", "cl"))
    assert any(v.dim() == 4 for v in b.values())
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=5e-5) for k in a)
    losses = [[r["loss"] for r in read_jsonl(str(tmp_path / name / "metrics_step.jsonl"))] for name in ("default", "cl")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


@pytest.mark.parametrize("flags, message", [
    (["--lr", "-1"], "--lr: got -1.0"),
    (["--use_fp16", "True"], "--use_fp16 True: fp16 training needs a CUDA GPU"),
    (["--num_channels", "48"], "num_channels=48"),
    (["--modalities", "flair,dwi"], "dwi"),
])
def test_bad_flags_exit_2_with_one_line(gd_dist, load_script, tiny_cohort, tmp_path, capsys, flags, message):
    assert _train(load_script, tiny_cohort, tmp_path / "bad", "--max_steps", "1", *flags) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0]
    assert not (tmp_path / "bad").exists()  # refused before anything was written


def test_resume_with_other_architecture_is_refused(gd_dist, load_script, tiny_cohort, tmp_path, capsys):
    run = tmp_path / "arch"
    assert _train(load_script, tiny_cohort, run, "--max_steps", "1") == 0
    assert _train(load_script, tiny_cohort, run, "--max_steps", "2", "--resume_checkpoint", "latest",
                  "--num_res_blocks", "2") == 2
    assert "num_res_blocks: 1 -> 2" in capsys.readouterr().err
    assert _train(load_script, tiny_cohort, tmp_path / "none", "--max_steps", "1",
                  "--data_dir", str(tmp_path / "missing")) == 2
