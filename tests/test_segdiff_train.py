"""Segmentation diffusion end to end on the demo cohort: stages 1-2-3 with resume across stages, joint
training (bf16, PCGrad) with per-epoch metrics, ensemble sampling, and every refused input."""

import json
import os

import pytest
import torch
from guided_diffusion import logger

from patches.checkpoints import atomic_save, load_checkpoint
from plugins.common.errors import run_main
from plugins.common.run_log import read_jsonl
from plugins.segdiff.validation import EPOCH_KEYS

TINY = ["--image_size", "32", "--num_channels", "32", "--num_res_blocks", "1", "--attention_resolutions", "8",
        "--num_heads", "1", "--batch_size", "40", "--diffusion_steps", "30", "--log_interval", "1",
        "--modalities", "flair,t2"]
_DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "CUDA_VISIBLE_DEVICES")


def _run(load_script, script, *argv):
    code = run_main(load_script(script).main, [str(a) for a in argv])
    if logger.get_current() is not None:
        logger.get_current().close()
    return code


@pytest.fixture(scope="module")
def runs(load_script, tiny_cohort, tmp_path_factory):
    """Stages 1, 2, 3 (2 steps = 1 epoch each) and a joint bf16 + PCGrad run; the env restored after."""
    saved = {k: os.environ.get(k) for k in _DIST_ENV}
    root = tmp_path_factory.mktemp("segdiff")
    csv = tiny_cohort / "name_mapping.csv"
    common = ["--data_dir", tiny_cohort, *TINY, "--max_steps", "2"]
    out = {"root": root, "csv": csv, "common": common}
    for stage in (1, 2, 3):
        extra = [] if stage == 1 else ["--csv_path", csv, "--resume_checkpoint", root / f"stage{stage - 1}"]
        out[f"stage{stage}"] = root / f"stage{stage}"
        assert _run(load_script, "segmentation_train_staged", "--stage", stage, *common, *extra,
                    "--out_dir", root / f"stage{stage}") == 0
    out["joint"] = root / "joint"
    assert _run(load_script, "segmentation_train", *common, "--csv_path", csv, "--out_dir", out["joint"],
                "--use_bf16", "True", "--grad_surgery", "pcgrad") == 0
    yield out
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _optimizer_line(run_dir):
    return next(line for line in (run_dir / "log.txt").read_text().splitlines() if line.startswith("optimizer:"))


def test_stages_freeze_train_and_resume_from_each_other(runs):
    s1, s2, s3 = (load_checkpoint(str(runs[f"stage{i}"] / "model000002.pt")) for i in (1, 2, 3))
    head = [k for k in s1 if k.startswith("heads.cls.")]
    backbone = [k for k in s1 if not k.startswith(("heads.cls.", "loss_parameters."))]
    assert head and set(s1) == set(s2) == set(s3)
    assert all(torch.equal(s1[k], s2[k]) for k in backbone + ["loss_parameters.log_sigma_seg"])  # stage 2 froze them
    assert any(not torch.equal(s1[k], s2[k]) for k in head)
    assert float(s1["loss_parameters.log_sigma_seg"]) == 0.0  # stage 1: no uncertainty weighting
    assert any(not torch.equal(s2[k], s3[k]) for k in backbone)
    assert float(s3["loss_parameters.log_sigma_cls"]) != 0.0
    head_params = sum(s1[k].numel() for k in head)
    total = sum(v.numel() for v in s1.values())
    assert _optimizer_line(runs["stage1"]).startswith(f"optimizer: {total - head_params - 2} of {total}")
    assert _optimizer_line(runs["stage2"]).startswith(f"optimizer: {head_params} of {total}")
    assert _optimizer_line(runs["stage3"]).startswith(f"optimizer: {total} of {total}")
    lrs = [json.loads((runs[f"stage{i}"] / "config.json").read_text())["lr"] for i in (1, 2, 3)]
    assert lrs == pytest.approx([1e-4, 1e-3, 1e-5])


def test_per_epoch_metrics_with_undefined_auc(runs):
    for name in ("stage1", "stage2", "stage3", "joint"):
        records = read_jsonl(str(runs[name] / "metrics_epoch.jsonl"))
        assert len(records) == 1 and set(EPOCH_KEYS) <= set(records[0])
        record = records[0]
        assert 0 <= record["dice"] <= 1 and record["L_seg"] > 0
        assert record["auc"] is None  # one validation subject: a single grade
    joint = read_jsonl(str(runs["joint"] / "metrics_epoch.jsonl"))[0]
    assert joint["alpha_LGG"] == pytest.approx(2.0) and joint["sigma_seg"] > 0 and joint["acc"] is not None
    steps = read_jsonl(str(runs["joint"] / "metrics_step.jsonl"))
    assert all(-1 <= s["grad_cos_seg_cls"] <= 1 for s in steps) and "pcgrad_conflicts" in steps[-1]
    assert any(f.startswith("events") for f in os.listdir(runs["joint"] / "tb"))


def test_stage_resumes_its_own_run(load_script, runs):
    assert _run(load_script, "segmentation_train_staged", "--stage", "2", *runs["common"][:-1], "3",
                "--csv_path", runs["csv"], "--resume_checkpoint", runs["stage1"], "--out_dir", runs["stage2"]) == 0
    assert "model000003.pt" in os.listdir(runs["stage2"])
    assert "loading optimizer state" in (runs["stage2"] / "log.txt").read_text()


def test_sampling_ensemble_staple_and_grades(load_script, runs, tmp_path):
    out = tmp_path / "eval"
    assert _run(load_script, "segmentation_sample_v2", "--model_path", runs["joint"] / "model000002.pt",
                "--num_ensemble", "2", "--timestep_respacing", "ddim3", "--num_eval_cases", "1", "--batch_size", "32",
                "--out_dir", out, "--num_res_blocks", "1") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sampler"] == "ddim" and metrics["sampling_steps"] == 3 and metrics["subjects"] == 1
    for key in ("slice_dice_mean", "slice_dice_staple", "volume_iou_staple", "subject_acc", "slices_per_second"):
        assert metrics[key] is not None
    assert {"per_slice.csv", "per_volume.csv", "grid.png"} <= set(os.listdir(out))


def test_ancestral_sampling_is_reproducible_by_seed(load_script, runs, tmp_path):
    tables = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert _run(load_script, "segmentation_sample_v2", "--model_path", runs["joint"] / "model000002.pt",
                    "--num_ensemble", "2", "--timestep_respacing", "3", "--num_eval_cases", "1", "--batch_size",
                    "32", "--out_dir", out, "--num_res_blocks", "1", "--seed", "5") == 0
        assert json.loads((out / "metrics.json").read_text())["sampler"] == "ancestral"
        tables.append((out / "per_slice.csv").read_text())
    assert tables[0] == tables[1]


def _error(capsys):
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1
    return lines[0]


@pytest.mark.parametrize("script, flags, message", [
    ("segmentation_train", ["--use_cls_head", "True"], "--use_cls_head True needs --csv_path"),
    ("segmentation_train_staged", ["--stage", "2", "--csv_path", "X"], "--stage 2 needs --resume_checkpoint"),
    ("segmentation_train", ["--use_cls_head", "False", "--num_channels", "48"], "num_channels=48"),
    ("segmentation_train", ["--use_cls_head", "False", "--use_fp16", "True"], "fp16 training needs a CUDA GPU"),
    ("segmentation_train", ["--use_cls_head", "False", "--grad_surgery", "pcgrad"], "needs both tasks"),
])
def test_bad_input_exits_2_with_one_line(load_script, tiny_cohort, tmp_path, capsys, script, flags, message):
    assert _run(load_script, script, "--data_dir", tiny_cohort, *TINY, "--max_steps", "1",
                "--out_dir", tmp_path / "bad", *flags) == 2
    assert message in _error(capsys)
    assert not (tmp_path / "bad").exists()


def test_checkpoint_of_another_architecture_is_named(load_script, runs, tiny_cohort, tmp_path, capsys):
    seg_only = tmp_path / "seg_only"
    state = {k: v for k, v in load_checkpoint(str(runs["stage1"] / "model000002.pt")).items()
             if not k.startswith(("heads.", "loss_parameters."))}
    atomic_save(state, str(seg_only / "model000002.pt"))
    assert _run(load_script, "segmentation_train_staged", "--stage", "2", *runs["common"], "--csv_path", runs["csv"],
                "--resume_checkpoint", seg_only, "--out_dir", tmp_path / "bad") == 2
    line = _error(capsys)
    assert "another architecture" in line and "heads.cls" in line and "log_sigma" in line
    assert not (tmp_path / "bad").exists()
    assert _run(load_script, "segmentation_sample_v2", "--model_path", runs["joint"] / "model000002.pt",
                "--num_channels", "64") == 2
    assert "--num_channels 64 (the checkpoint has 32)" in _error(capsys)
