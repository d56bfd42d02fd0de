"""Segmentation diffusion end to end on the demo cohort: the seed's stages 1-2-3 (stage 1 without the head)
with resume and stage checks, joint training (bf16, PCGrad) with per-epoch and end-of-run validation of the
sampled masks, ensemble sampling, and every refused input."""

import json
import os
import subprocess
import sys

import pytest
import torch

from patches.checkpoints import atomic_save, load_checkpoint
from plugins.common.run_log import read_case_table, read_jsonl
from plugins.segdiff.validation import EPOCH_KEYS

TINY = ["--image_size", "32", "--num_channels", "32", "--num_res_blocks", "1", "--attention_resolutions", "8",
        "--num_heads", "1", "--batch_size", "40", "--diffusion_steps", "30", "--log_interval", "1",
        "--modalities", "flair,t2", "--val_timestep_respacing", "ddim3", "--val_num_ensemble", "2"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "CUDA_VISIBLE_DEVICES")


def _staged_script(root, cohort):
    """``config/run_train_brats_medsegdiff_staged.sh``: the seed's plan at tiny size (2 steps a stage)."""
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1",
           "DATA_DIR": str(cohort), "OUT_DIR": str(root), "IMAGE_SIZE": "32", "NUM_CHANNELS": "32",
           "NUM_RES_BLOCKS": "1", "DIFFUSION_STEPS": "30", "BATCH_SIZE": "40",
           "STAGE1_STEPS": "2", "STAGE2_STEPS": "2", "STAGE3_STEPS": "2"}
    i = TINY.index("--log_interval")
    tiny = TINY[:i] + TINY[i + 2:]  # the plan's intervals
    done = subprocess.run(["bash", os.path.join(REPO, "config", "run_train_brats_medsegdiff_staged.sh"),
                           "--attention_resolutions", "8", "--num_heads", "1", *tiny[tiny.index("--modalities"):]],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(run_script, tiny_cohort, tmp_path_factory):
    """The staged shell script (stage 1 without the head, as in the seed's table; 2 steps = 1 epoch a stage)
    and a joint bf16 + PCGrad run (3 steps: the run ends inside its second epoch); the env restored after."""
    saved = {k: os.environ.get(k) for k in _DIST_ENV}
    root = tmp_path_factory.mktemp("segdiff")
    csv = tiny_cohort / "name_mapping.csv"
    common = ["--data_dir", tiny_cohort, *TINY, "--max_steps", "2"]
    out = {"root": root, "csv": csv, "common": common}
    _staged_script(root, tiny_cohort)
    for stage in (1, 2, 3):
        out[f"stage{stage}"] = root / f"stage{stage}"
    out["joint"] = root / "joint"
    assert run_script("segmentation_train", *common[:-1], "3", "--csv_path", csv, "--out_dir", out["joint"],
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
    head = [k for k in s2 if k.startswith("heads.cls.")]
    sigmas = [k for k in s2 if k.startswith("loss_parameters.")]
    backbone = [k for k in s2 if k not in head + sigmas]
    assert head and set(s1) == set(backbone) and set(s2) == set(s3)  # stage 1 ran without the head
    assert all(torch.equal(s1[k], s2[k]) for k in backbone)  # stage 2 froze the backbone
    assert all(float(s2[k]) == 0.0 for k in sigmas)  # stage 2: no uncertainty weighting
    assert any(not torch.equal(s2[k], s3[k]) for k in backbone)
    # stage 3: the log-sigmas at --uw_lr (the stage-1 rate 1e-4): two Adam steps move them ~2e-4, not ~2e-5
    assert abs(float(s3["loss_parameters.log_sigma_cls"])) > 1.5e-4
    groups = load_checkpoint(str(runs["stage3"] / "opt000002.pt"))["param_groups"]
    assert [g["lr"] for g in groups] == pytest.approx([1e-5, 1e-4]) and len(groups[1]["params"]) == 2
    head_params = sum(s2[k].numel() for k in head)
    total = sum(v.numel() for v in s2.values())
    stage1 = total - head_params - 2
    assert _optimizer_line(runs["stage1"]).startswith(f"optimizer: {stage1} of {stage1}")
    assert _optimizer_line(runs["stage2"]).startswith(f"optimizer: {head_params} of {total}")
    assert _optimizer_line(runs["stage3"]).startswith(f"optimizer: {total} of {total}")
    configs = [json.loads((runs[f"stage{i}"] / "config.json").read_text()) for i in (1, 2, 3)]
    assert [c["lr"] for c in configs] == pytest.approx([1e-4, 1e-3, 1e-5])
    assert [c["save_interval"] for c in configs] == [5000, 2000, 1000]  # the seed's plan
    assert [c["log_interval"] for c in configs] == [100, 50, 50]
    assert [c["use_cls_head"] for c in configs] == [False, True, True]
    assert [json.loads((runs[f"stage{i}"] / "stage.json").read_text())["stage"] for i in (1, 2, 3)] == [1, 2, 3]
    assert configs[2]["init_checkpoint"].endswith("model000002.pt")
    log = (runs["stage1"] / "log.txt").read_text()
    assert log.count("training split: n_LGG=") == 1  # the class counts go through the run's logger


def test_validation_every_epoch_and_at_the_end(runs):
    for name in ("stage1", "stage2", "stage3", "joint"):
        records = read_jsonl(str(runs[name] / "metrics_epoch.jsonl"))
        assert [r.get("final", False) for r in records] == [False, True]
        record = records[-1]
        assert set(EPOCH_KEYS) <= set(record) and record["weights"] == "raw"
        assert 0 <= record["dice"] <= 1 and 0 <= record["calib_dice"] <= 1 and record["L_seg"] > 0
        assert record["auc"] is None  # one validation subject: a single grade
        metrics = json.loads((runs[name] / "validation" / "metrics.json").read_text())
        assert metrics["sampler"] == "ddim" and metrics["sampling_steps"] == 3 and metrics["num_ensemble"] == 2
        assert 0 < metrics["reference_flair"] <= 1 and metrics["reference_flair_threshold"] is not None
        cases = read_case_table(str(runs[name] / "validation" / "cases.csv"))
        assert len(cases) == 1 and cases[0]["case"] == cases[0]["subject"]
        assert cases[0]["dice"] == pytest.approx(metrics["dice"])
        assert cases[0]["reference_flair"] == pytest.approx(metrics["reference_flair"])
    stage1 = read_jsonl(str(runs["stage1"] / "metrics_epoch.jsonl"))
    assert stage1[0]["step"] == stage1[1]["step"] == 2  # the run ended with the epoch: same record
    joint = read_jsonl(str(runs["joint"] / "metrics_epoch.jsonl"))
    assert [r["step"] for r in joint] == [2, 3]  # ended inside epoch 1: validated at the last step
    assert joint[-1]["alpha_LGG"] == pytest.approx(2.0) and joint[-1]["sigma_seg"] > 0
    assert joint[-1]["acc"] is not None and joint[-1]["f1"] is not None and joint[-1]["acc_slice"] is not None
    steps = read_jsonl(str(runs["joint"] / "metrics_step.jsonl"))
    assert all(-1 <= s["grad_cos_seg_cls"] <= 1 for s in steps) and "pcgrad_conflicts" in steps[-1]
    assert any(f.startswith("events") for f in os.listdir(runs["joint"] / "tb"))


def test_validation_interval_skips_epochs_but_not_the_end(run_script, runs):
    """Interval 2 validates after epoch 1 only; validating after epoch 0 too leaves the weights as they are."""
    out, every = runs["root"] / "every_second_epoch", runs["root"] / "every_epoch"
    common = [*runs["common"][:-1], "4", "--use_cls_head", "False"]
    assert run_script("segmentation_train", *common, "--val_interval", "2", "--out_dir", out) == 0
    assert run_script("segmentation_train", *common, "--val_interval", "1", "--out_dir", every) == 0
    records = read_jsonl(str(out / "metrics_epoch.jsonl"))
    assert [(r["epoch"], r["step"], r.get("final", False)) for r in records] == [(1, 4, False), (1, 4, True)]
    assert json.loads((out / "validation" / "metrics.json").read_text())["step"] == 4
    assert [r["epoch"] for r in read_jsonl(str(every / "metrics_epoch.jsonl"))] == [0, 1, 1]
    weights, weights_every = (load_checkpoint(str(d / "model000004.pt")) for d in (out, every))
    assert all(torch.equal(weights[k], weights_every[k]) for k in weights)


def test_stage_resumes_its_own_run(run_script, runs):
    i = runs["common"].index("--log_interval")
    plan = runs["common"][:i] + runs["common"][i + 2:-1]  # as the shell script ran it: the plan's intervals
    assert run_script("segmentation_train_staged", "--stage", "2", *plan, "3", "--csv_path", runs["csv"],
                      "--resume_checkpoint", runs["stage1"], "--out_dir", runs["stage2"]) == 0
    assert "model000003.pt" in os.listdir(runs["stage2"])
    assert "loading optimizer state" in (runs["stage2"] / "log.txt").read_text()


@pytest.mark.parametrize("script, flags, message", [
    ("segmentation_train_staged", ["--stage", "2", "--out_dir", "stage1", "--resume_checkpoint", "stage1"],
     "a checkpoint of stage 1; this run is stage 2"),
    ("segmentation_train_staged", ["--stage", "1", "--out_dir", "stage3", "--resume_checkpoint", "latest"],
     "a checkpoint of stage 3; this run is stage 1"),
    ("segmentation_train", ["--out_dir", "stage2", "--resume_checkpoint", "latest"],
     "a checkpoint of stage 2; this run is an unstaged run"),
    ("segmentation_train_staged", ["--stage", "2", "--out_dir", "NEW", "--resume_checkpoint", "stage3"],
     "a checkpoint of stage 3; stage 2 starts from an earlier stage"),
])
def test_checkpoint_of_another_stage_is_refused(run_script, runs, capsys, script, flags, message):
    flags = [runs["root"] / f if f in ("stage1", "stage2", "stage3", "NEW") else f for f in flags]
    before = {name: (runs[name] / "config.json").read_text() for name in ("stage1", "stage2", "stage3")}
    assert run_script(script, *runs["common"], "--csv_path", runs["csv"], *flags) == 2
    assert message in _error(capsys)
    assert before == {name: (runs[name] / "config.json").read_text() for name in ("stage1", "stage2", "stage3")}
    assert not (runs["root"] / "NEW").exists()


def test_sampling_ensemble_staple_and_grades(run_script, runs, tmp_path):
    out = tmp_path / "eval"
    assert run_script("segmentation_sample_v2", "--model_path", runs["joint"] / "model000003.pt",
                      "--num_ensemble", "2", "--timestep_respacing", "ddim3", "--num_eval_cases", "1",
                      "--batch_size", "32", "--out_dir", out, "--num_res_blocks", "1") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sampler"] == "ddim" and metrics["sampling_steps"] == 3 and metrics["subjects"] == 1
    for key in ("dice", "dice_slice", "staple_dice", "staple_iou", "calib_dice", "acc", "f1_slice",
                "reference_flair", "slices_per_second"):
        assert metrics[key] is not None
    cases = read_case_table(str(out / "cases.csv"))
    assert len(cases) == 1 and {"case", "subject", "dice", "staple_dice", "calib_dice", "hgg_prob", "hgg_pred",
                                "grade", "reference_flair"} <= set(cases[0])
    assert "grid.png" in os.listdir(out)


def test_ancestral_sampling_is_reproducible_by_seed(run_script, runs, tmp_path):
    tables = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert run_script("segmentation_sample_v2", "--model_path", runs["joint"] / "model000003.pt",
                          "--num_ensemble", "2", "--timestep_respacing", "3", "--num_eval_cases", "1", "--batch_size",
                          "32", "--out_dir", out, "--num_res_blocks", "1", "--seed", "5") == 0
        assert json.loads((out / "metrics.json").read_text())["sampler"] == "ancestral"
        tables.append((out / "cases.csv").read_text())
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
    ("segmentation_train", ["--use_cls_head", "False", "--val_timestep_respacing", "ddim7"],
     "--val_timestep_respacing 'ddim7'"),
    ("segmentation_train", ["--use_cls_head", "False", "--val_timestep_respacing", "5"], "expected ddimN"),
    ("segmentation_train", ["--use_cls_head", "False", "--val_num_ensemble", "0"], "--val_num_ensemble"),
    ("segmentation_train", ["--use_cls_head", "False", "--uw_lr", "-1"], "--uw_lr"),
    ("segmentation_train", ["--use_cls_head", "False", "--val_interval", "-1"], "--val_interval"),
    ("segmentation_train_staged", ["--stage", "3", "--csv_path", "X", "--use_cls_head", "False",
                                   "--resume_checkpoint", "X"], "--stage 3 --use_cls_head False"),
])
def test_bad_input_exits_2_with_one_line(run_script, tiny_cohort, tmp_path, capsys, script, flags, message):
    assert run_script(script, "--data_dir", tiny_cohort, *TINY, "--max_steps", "1",
                      "--out_dir", tmp_path / "bad", *flags) == 2
    assert message in _error(capsys)
    assert not (tmp_path / "bad").exists()


def test_checkpoint_of_another_architecture_is_named(run_script, runs, tiny_cohort, tmp_path, capsys):
    other = tmp_path / "other"
    state = {k: v for k, v in load_checkpoint(str(runs["stage1"] / "model000002.pt")).items()
             if not k.startswith("calib_head.")}
    atomic_save(state, str(other / "model000002.pt"))
    assert run_script("segmentation_train_staged", "--stage", "2", *runs["common"], "--csv_path", runs["csv"],
                      "--resume_checkpoint", other, "--out_dir", tmp_path / "bad") == 2
    line = _error(capsys)
    assert "another architecture" in line and "missing: calib_head" in line
    assert not (tmp_path / "bad").exists()
    assert run_script("segmentation_sample_v2", "--model_path", runs["joint"] / "model000003.pt",
                      "--num_channels", "64") == 2
    assert "--num_channels 64 (the checkpoint has 32)" in _error(capsys)
