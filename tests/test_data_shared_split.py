"""Every arm and stage of a comparison trains and validates on the cohort's one split (the real scripts)."""

import json
import os

TINY = ["--image_size", "32", "--num_channels", "32", "--num_res_blocks", "1", "--attention_resolutions", "8",
        "--num_heads", "1", "--batch_size", "4", "--diffusion_steps", "30", "--modalities", "flair,t2",
        "--max_steps", "1", "--val_fraction", "0.4"]


def _subjects(run):
    split = json.loads((run / "split.json").read_text())
    return split["train"], split["val"], split["source"]


def test_all_arms_and_stages_share_one_split(run_script, tiny_cohort, tmp_path, dist_env, capsys):
    csv = tiny_cohort / "name_mapping.csv"
    common = ["--data_dir", tiny_cohort, *TINY, "--cache_dir", tmp_path / "cache"]
    seg = [*common, "--val_timestep_respacing", "ddim3", "--val_num_ensemble", "1"]
    runs = {name: tmp_path / name for name in ("seg_only", "joint", "stage1", "stage2", "stage3", "plain", "dual")}
    assert run_script("segmentation_train", *seg, "--use_cls_head", "False", "--out_dir", runs["seg_only"]) == 0
    assert run_script("segmentation_train", *seg, "--csv_path", csv, "--out_dir", runs["joint"]) == 0
    assert run_script("segmentation_train_staged", "--stage", 1, *seg, "--out_dir", runs["stage1"]) == 0
    for stage in (2, 3):
        assert run_script("segmentation_train_staged", "--stage", stage, *seg, "--csv_path", csv,
                          "--resume_checkpoint", runs[f"stage{stage - 1}"], "--out_dir", runs[f"stage{stage}"]) == 0
    assert run_script("train_bea_dual_loss", *common, "--use_bea", "False", "--boundary_loss_weight", "0",
                      "--out_dir", runs["plain"]) == 0
    assert run_script("train_bea_dual_loss", *common, "--out_dir", runs["dual"]) == 0
    splits = {name: _subjects(run) for name, run in runs.items()}
    assert len({json.dumps(s) for s in splits.values()}) == 1, splits
    train, val, source = splits["seg_only"]
    assert source == str(tiny_cohort / "splits" / "split_val0.4_seed0.json")
    cohort = json.loads(open(source).read())
    assert cohort["stratified_by_grade"] and len(cohort["grades"]) == 5  # also for the runs without --csv_path

    # a stage initialised from a checkpoint of another split is refused, naming both files
    capsys.readouterr()
    assert run_script("segmentation_train_staged", "--stage", 2, *seg, "--csv_path", csv,
                      "--split_seed", 1, "--resume_checkpoint", runs["stage1"], "--out_dir", tmp_path / "other") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "stage1" in err and "split_val0.4_seed1.json" in err
    # so is a run continued from another folder's checkpoint (the plain trainer's own check)
    assert run_script("train_bea_dual_loss", *common, "--split_seed", 1, "--resume_checkpoint",
                      runs["plain"] / "model000001.pt", "--out_dir", tmp_path / "other_plain") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "plain" in err and "split_val0.4_seed1.json" in err
