"""BEA end to end: baselines bit for bit, training + FPDM through the scripts, bad input."""

import argparse
import json
import os
import shutil

import pytest
import torch
from guided_diffusion import logger
from guided_diffusion.unet import UNetModel

from patches.guided_diffusion import create_seam_diffusion, create_seam_model
from plugins.bea.plugin import BEA_DEFAULTS, NUM_CLASSES, attach_bea, bea_loss_terms
from plugins.common.errors import run_main
from plugins.common.run_log import read_case_table
from tests.gd_tiny import TINY_DIFFUSION, TINY_MODEL, batches, close_logger, seam_loop

TINY = ["--image_size", "32", "--num_channels", "32", "--num_res_blocks", "1", "--attention_resolutions", "8",
        "--num_heads", "1", "--batch_size", "4", "--diffusion_steps", "30", "--log_interval", "1",
        "--val_fraction", "0.4"]
FPDM = ["--t_stride", "6", "--batch_size", "8", "--slice_step", "3"]
CLASS_MODEL = {**TINY_MODEL, "num_classes": NUM_CLASSES}


def _labelled(n, seed=0):
    return [(x, {"y": torch.tensor([i % 3, (i + 1) % 3])}) for i, (x, _) in enumerate(batches(n, seed))]


def _bea_loop(run_dir, weight):
    args = argparse.Namespace(**BEA_DEFAULTS)
    torch.manual_seed(0)
    model = create_seam_model(**CLASS_MODEL)
    attach_bea(model, args)
    diffusion = create_seam_diffusion(**TINY_DIFFUSION)
    if weight is not None:
        for term in bea_loss_terms(weight):
            diffusion.add_loss_term(term)
    loop = seam_loop(run_dir, _labelled(3), max_steps=3, model=model, diffusion=diffusion)
    loop.run_loop()
    close_logger()
    return loop


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in open(os.path.join(run_dir, "metrics_step.jsonl"))]


def test_zero_lambda_is_the_bea_mse_baseline_bit_for_bit(gd_dist, tmp_path):
    baseline = _bea_loop(tmp_path / "mse", None)
    zero = _bea_loop(tmp_path / "zero", 0.0)
    assert _losses(tmp_path / "zero") == _losses(tmp_path / "mse")
    assert all(torch.equal(a, b) for a, b in zip(baseline.model.parameters(), zero.model.parameters()))
    assert all(json.loads(line)["l_bea"] > 0 for line in open(tmp_path / "zero" / "metrics_step.jsonl"))
    dual = _bea_loop(tmp_path / "dual", 0.3)
    assert _losses(tmp_path / "dual") != _losses(tmp_path / "mse")


def test_without_bea_the_model_is_plain_guided_diffusion():
    args = argparse.Namespace(**{**BEA_DEFAULTS, "use_bea": False})
    torch.manual_seed(0)
    seam = create_seam_model(**CLASS_MODEL)
    attach_bea(seam, args)
    torch.manual_seed(0)
    plain = UNetModel(image_size=32, in_channels=2, model_channels=32, out_channels=2, num_res_blocks=1,
                      attention_resolutions=(4,), channel_mult=(1, 2, 2), num_heads=1, use_scale_shift_norm=True,
                      num_classes=NUM_CLASSES)
    with torch.no_grad():
        for p in plain.out.parameters():
            p.normal_()
    seam.load_state_dict(plain.state_dict())
    x, t, y = torch.randn(2, 2, 32, 32), torch.tensor([3, 20]), torch.tensor([0, 2])
    assert torch.equal(seam(x, t, y=y), plain(x, t, y=y))
    assert set(seam.features) == {"bea_enc", "bea_dec"} and len(seam.bottleneck_modules) == 0


def _run(load_script, name, argv):
    code = run_main(load_script(name).main, [str(a) for a in argv])
    logger.get_current().close() if name.startswith("train") else None
    return code


@pytest.fixture(scope="module")
def bea_run(tmp_path_factory, tiny_cohort, load_script):
    """A tiny BEA dual-loss run (3 steps) trained through the script; torn-down dist between scripts."""
    from guided_diffusion import dist_util
    import torch.distributed as dist

    run = tmp_path_factory.mktemp("bea") / "dual"
    saved = dict(os.environ)
    dist_util.setup_dist()
    try:
        code = _run(load_script, "train_bea_dual_loss",
                    ["--data_dir", tiny_cohort, "--out_dir", run, "--max_steps", 3, "--save_interval", 2, *TINY])
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        os.environ.clear()
        os.environ.update(saved)
    assert code == 0
    return run


def test_training_logs_each_term_and_fpdm_writes_every_output(bea_run, load_script, tmp_path):
    record = json.loads(open(bea_run / "metrics_step.jsonl").readlines()[-1])
    assert {"loss", "mse", "l_bea", "bea_norm_ratio", "bea_enc_rms", "step_time_s", "peak_mem_mb"} <= set(record)
    assert json.loads((bea_run / "config.json").read_text())["boundary_loss_weight"] == 0.3
    out = tmp_path / "fpdm"
    assert _run(load_script, "translation_FPDM_bea_dual_loss",
                ["--model_path", bea_run, "--out_dir", out, "--image_size", "32", *FPDM]) == 0
    assert {"maps.npz", "metrics.json", "metrics.csv", "cases.csv", "grid.png"} <= set(os.listdir(out))
    result = json.loads((out / "metrics.json").read_text())
    protocol = result["protocol"]
    assert protocol["name"] == "anofpdm" and protocol["w"] == 2.0 and protocol["t_max"] == 18  # 60% of 30 steps
    assert protocol["num_steps"] == 3 and len(result["tuned"]["m_max"]) == 2 and protocol["min_component_px"] == 2
    assert protocol["median_size"] == 5 and protocol["median_size_px"] == 1
    for table in (result["metrics"], result["reference_flair"]):
        assert {"auprc", "auroc", "dice", "iou", "image_accuracy", "num_slices"} <= set(table["mixed"])
    assert 0 <= result["reference_random_auprc"] < 1
    weights = result["scored_weights"]  # the EMA of step 3, warmed up: the initialisation is gone
    assert weights["weights"] == "ema" and weights["checkpoint_step"] == 3 and weights["ema_warmup"]
    assert weights["ema_init_weight"] == 0.0 and 0 < weights["ema_mean_age_steps"] < 3
    cases = read_case_table(str(out / "cases.csv"))
    assert len(cases) == result["metrics"]["mixed"]["num_slices"]
    healthy = sum(int(c["slice_label"]) == 0 for c in cases)
    assert result["reference_all_healthy_accuracy"] == healthy / len(cases)
    assert {"case", "subject", "slice_label", "call", "correct", "dice", "iou", "dice_ungated", "brain_pixels",
            "lesion_pixels", "flair_call", "flair_correct", "flair_dice", "flair_iou"} <= set(cases[0])
    help_text = load_script("translation_FPDM_bea_dual_loss").parser().format_help()
    assert "60% of them" in help_text and "DDIM inversion" in help_text


@pytest.mark.parametrize("argv, message", [
    (["--w=-1"], "--w: got -1.0"),
    (["--protocol", "slow"], "--protocol: got 'slow'"),
    (["--t_max", "31"], "--t_max: got 31; expected 1..30"),
    (["--t_stride", "40"], "--t_stride: got 40"),
    (["--bea_enc_block", "5", "--bea_dec_block", "0"], "--bea_enc_block 5"),
    (["--fpdm_modalities", "flair,dwi"], "dwi"),
    (["--image_size", "64"], "--image_size 64 (the checkpoint has 32)"),
    (["--use_ema", "False", "--model_path", "MISSING"], "no such file"),
])
def test_fpdm_bad_input(bea_run, load_script, tmp_path, capsys, argv, message):
    argv = [a.replace("MISSING", str(tmp_path / "nope.pt")) for a in argv]
    assert _run(load_script, "translation_FPDM_bea_dual_loss",
                ["--model_path", bea_run, "--out_dir", tmp_path / "o", *FPDM, *argv]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0]
    assert not (tmp_path / "o").exists()


def test_checkpoint_of_another_architecture_names_the_keys(bea_run, load_script, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(bea_run, other)
    state = torch.load(other / "model000003.pt", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("bottleneck_modules")}
    torch.save(state, other / "model000004.pt")
    assert _run(load_script, "translation_FPDM_bea_dual_loss",
                ["--model_path", other / "model000004.pt", "--use_ema", "False", *FPDM]) == 2
    assert "missing: bottleneck_modules.0.proj.bias" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--boundary_loss_weight", "-0.1"], "--boundary_loss_weight: got -0.1"),
    (["--label_dropout", "1.0"], "--label_dropout: got 1.0"),
    (["--num_classes", "2"], "--num_classes: got 2"),
    (["--bea_enc_block", "5", "--bea_dec_block", "0"], "skip input"),
])
def test_training_bad_input(load_script, tiny_cohort, tmp_path, capsys, argv, message):
    assert _run(load_script, "train_bea_dual_loss",
                ["--data_dir", tiny_cohort, "--out_dir", tmp_path / "r", "--max_steps", 1, *TINY, *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
