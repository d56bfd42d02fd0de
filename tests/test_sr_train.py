"""The accelerate SR trainer: end to end, the pixel entry's defaults, resume, sampling, bad input."""

import json
import os
import sys

import numpy as np
import pytest
import torch
import yaml

from plugins.common.errors import run_main
from plugins.common.run_log import read_case_table, read_jsonl
from plugins.data.sr_pairs import SRPairDataset
from plugins.latent_sr.trainer import main as train_main
from plugins.latent_sr.trainer import parse_config
from tests.test_sr_fixtures import tiny_backbones_yaml, tiny_vae, train_argv, write_pairs

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
import sample_sr  # noqa: E402
import train_sr_pixel  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("sr")
    return {"data": write_pairs(str(root / "data")), "vae": tiny_vae(str(root / "vae")),
            "yaml": tiny_backbones_yaml(str(root / "bb.yaml")), "root": root}


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_write_sr_pairs_layout_and_dataset(env):
    meta = json.load(open(os.path.join(env["data"], "meta.json")))
    assert meta["scale"] == 2 and meta["degradation"]["noise_std"] > 0
    train = SRPairDataset(env["data"], "train")
    val = SRPairDataset(env["data"], "val")
    assert len(train) + len(val) == 12 and val.num_paired() == len(val)
    assert train.num_paired() == len(train) - meta["counts"]["train"]["unpaired"] >= 1
    item = train[0]
    assert item["hr"].shape == (1, 32, 32) and item["lr"].shape == (1, 16, 16)


def test_pixel_entry_defaults_and_overrides():
    cfg = parse_config([], overrides=train_sr_pixel.PIXEL_DEFAULTS)
    assert (cfg["pixel_loss_weight"], cfg["pixel_loss_type"], cfg["pixel_loss_max_t"],
            cfg["pixel_loss_paired_only"]) == (0.05, "l2", 0.3, True)
    train_sr_alone = parse_config(["--pixel_loss_weight", "0.05"])  # the seed's gate unless told otherwise
    assert (train_sr_alone["pixel_loss_type"], train_sr_alone["pixel_loss_max_t"],
            train_sr_alone["pixel_loss_paired_only"]) == ("l2", 0.3, True)
    cfg = parse_config(["--pixel_loss_max_t", "0.2", "--pixel_loss_paired_only", "False"],
                       overrides=train_sr_pixel.PIXEL_DEFAULTS)
    assert cfg["pixel_loss_max_t"] == 0.2 and cfg["pixel_loss_paired_only"] is False
    plain = parse_config([])
    assert plain["pixel_loss_weight"] == 0.0
    aliased = parse_config(["--output_dir", "x", "--max_train_steps", "3", "--train_batch_size", "2"])
    assert (aliased["out_dir"], aliased["max_steps"], aliased["batch_size"]) == ("x", 3, 2)


def test_pixel_run_end_to_end_then_sample(env, capsys):
    out = str(env["root"] / "pixel")
    argv = train_argv(env["data"], env["vae"], env["yaml"], out, 3, "--pixel_loss_max_t", "0.6",
                      "--pixel_adaptive_weight", "True", "--lpl_weight", "0.1", "--lpl_max_t", "0.6",
                      "--validation_steps", "2", "--validation_samples", "3", "--validation_inference_steps", "2")
    assert run_main(train_sr_pixel.pixel_main, argv) == 0
    records = read_jsonl(os.path.join(out, "metrics_step.jsonl"))
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(0.0 <= r["pixel_fraction"] <= 1.0 and "loss_pixel" in r and "loss_lpl" in r for r in records)
    assert all(0.0 <= r["pixel_grad_share"] <= 1.0 for r in records)
    assert [r["step"] for r in records if "val_psnr" in r] == [2, 3]  # every 2 steps and at the end
    assert json.load(open(os.path.join(out, "config.json")))["pixel_loss_type"] == "l2"
    eval_dir = str(env["root"] / "eval")
    assert run_main(sample_sr.main, ["--model_path", out, "--data_dir", env["data"], "--out_dir", eval_dir,
                                     "--num_inference_steps", "2"]) == 0
    scores = json.load(open(os.path.join(eval_dir, "metrics.json")))
    metrics = {"psnr", "ssim", "ms_ssim", "nrmse", "psnr_pooled"}
    assert metrics <= set(scores) and set(scores["reference_bicubic"]) == set(scores["reference_vae"]) == metrics
    rows = read_case_table(os.path.join(eval_dir, "cases.csv"))
    assert len(rows) == scores["num_images"] == SRPairDataset(env["data"], "val").num_paired()
    assert {"case", "subject", "psnr", "ssim", "nrmse", "bicubic_psnr", "bicubic_ssim", "bicubic_nrmse"} <= set(rows[0])
    for key in ("psnr", "nrmse"):  # the metric is the mean of the per-image values
        assert scores[key] == pytest.approx(np.mean([r[key] for r in rows]), rel=1e-6)
        assert scores["reference_bicubic"][key] == pytest.approx(np.mean([r[f"bicubic_{key}"] for r in rows]), rel=1e-6)
        assert scores["reference_vae"][key] == pytest.approx(np.mean([r[f"vae_{key}"] for r in rows]), rel=1e-6)
    # the last validation scored what sample_sr scores: the saved (EMA) weights on the same pairs and noise
    check_dir = str(env["root"] / "eval_check")
    assert run_main(sample_sr.main, ["--model_path", out, "--data_dir", env["data"], "--out_dir", check_dir,
                                     "--num_inference_steps", "2", "--max_samples", "3", "--batch_size", "4"]) == 0
    check = json.load(open(os.path.join(check_dir, "metrics.json")))
    assert records[-1]["val_psnr"] == pytest.approx(check["psnr"], rel=1e-5)
    assert records[-1]["val_ssim"] == pytest.approx(check["ssim"], rel=1e-5)
    assert scores["sampling_s_per_image"] > 0
    assert os.path.getsize(os.path.join(eval_dir, "sr_grid.png")) > 0
    weights = scores["scored_weights"]  # diffusers' EMAModel after 3 updates: decays 0, 2/11, 3/12
    assert weights["weights"] == "ema" and weights["train_steps"] == 3
    assert weights["ema_init_weight"] == 0.0 and weights["ema_mean_age_steps"] == pytest.approx(
        (3 / 12) * ((2 / 11) * 1 + 1))


def test_resume_latest_continues_exactly(env):
    """4 straight steps == 2 steps, then ``--resume_from_checkpoint latest`` to 4 (weights and EMA)."""
    straight = train_main(train_argv(env["data"], env["vae"], env["yaml"], str(env["root"] / "a"), 4))
    out_b = str(env["root"] / "b")
    first = train_main(train_argv(env["data"], env["vae"], env["yaml"], out_b, 2))
    assert first["step"] == 2 and os.path.isdir(os.path.join(out_b, "checkpoints", "checkpoint-2"))
    resumed = train_main(train_argv(env["data"], env["vae"], env["yaml"], out_b, 4,
                                    "--resume_from_checkpoint", "latest"))
    assert resumed["step"] == 4
    a, b = _weights(straight["denoiser"]), _weights(resumed["denoiser"])
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    ema_a = torch.load(os.path.join(env["root"], "a", "checkpoints", "checkpoint-4", "ema.pt"), weights_only=True)
    ema_b = torch.load(os.path.join(out_b, "checkpoints", "checkpoint-4", "ema.pt"), weights_only=True)
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(ema_a["shadow_params"], ema_b["shadow_params"]))
    steps = [r["step"] for r in read_jsonl(os.path.join(out_b, "metrics_step.jsonl"))]
    assert steps == [1, 2, 3, 4]


def test_cosine_schedule_decays_to_zero_at_max_steps(env):
    """diffusers' cosine schedule after 1 warm-up step: lr(s) = lr * (1 + cos(pi * (s - 1) / 3)) / 2 for s >= 1."""
    out = str(env["root"] / "cosine")
    train_main(train_argv(env["data"], env["vae"], env["yaml"], out, 4, "--lr", "1e-3", "--lr_warmup_steps", "1",
                          "--lr_scheduler", "cosine"))
    lrs = [r["lr"] for r in read_jsonl(os.path.join(out, "metrics_step.jsonl"))]
    assert lrs == pytest.approx([1e-3, 7.5e-4, 2.5e-4, 0.0], abs=1e-9)


def _refused(env, capsys, extra, match, yaml_path=None, data=None, vae=None):
    out = str(env["root"] / "refused")
    argv = train_argv(data or env["data"], env["vae"] if vae is None else vae, yaml_path or env["yaml"], out, 1,
                      *extra)
    assert run_main(train_main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and all(m in err[0] for m in match), err
    assert not os.path.exists(out)


@pytest.mark.parametrize("extra, match", [
    (["--pixel_loss_max_t", "0"], ["--pixel_loss_max_t", "(0, 1]"]),
    (["--pixel_loss_max_t", "1.2"], ["--pixel_loss_max_t", "(0, 1]"]),
    (["--pixel_loss_type", "huber"], ["--pixel_loss_type", "l1, l2"]),
    (["--backbone", "vit"], ["--backbone", "unet, dit, hybrid"]),
    (["--validation_steps", "-1"], ["--validation_steps", ">= 0"]),
    (["--validation_inference_steps", "0"], ["--validation_inference_steps", "positive"]),
    (["--lr_scheduler", "step"], ["--lr_scheduler", "cosine", "constant_with_warmup"]),
])
def test_bad_flags_are_refused(env, capsys, extra, match):
    _refused(env, capsys, extra, match)


def test_missing_vae_points_at_the_autoencoder_trainer(env, capsys):
    _refused(env, capsys, [], ["--vae_path", "scripts/train_autoencoder.py"], vae="")


def test_vae_that_does_not_fit_the_denoiser(env, capsys, tmp_path):
    bad = tmp_path / "bb.yaml"
    bad.write_text(yaml.safe_dump({"unet": {"block_out_channels": [16, 32], "norm_num_groups": 8,
                                            "out_channels": 8}}))
    _refused(env, capsys, [], ["out_channels 8", "latent_channels 4"], yaml_path=str(bad))


def test_sizes_that_disagree_with_the_scale(env, capsys, tmp_path):
    data = write_pairs(str(tmp_path / "data"), n=4)
    name = sorted(os.listdir(os.path.join(data, "train", "lr")))[0]
    np.save(os.path.join(data, "train", "lr", name), np.zeros((12, 12), np.float32))
    _refused(env, capsys, [], [name, "(16, 16)", "scale 2"], data=data)


def test_yaml_config_sits_between_defaults_and_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("max_steps: 7\npixel_loss_max_t: 0.2\n")
    cfg = parse_config(["--config", str(path), "--max_steps", "9"], overrides=train_sr_pixel.PIXEL_DEFAULTS)
    assert cfg["max_steps"] == 9 and cfg["pixel_loss_max_t"] == 0.2 and cfg["pixel_loss_weight"] == 0.05
    path.write_text("max_step: 7\n")
    with pytest.raises(Exception, match="unknown key"):
        parse_config(["--config", str(path)])
    demo = os.path.join(os.path.dirname(__file__), "..", "config", "sr_demo.yaml")
    assert parse_config(["--config", demo])["max_steps"] == 300


def test_sample_sr_refuses_a_pipeline_whose_vae_does_not_fit(env, capsys, tmp_path):
    from diffusers import AutoencoderKL

    from plugins.backbones import build_backbone
    from plugins.latent_sr.pipeline import SRFlowPipeline, default_scheduler
    from tests.test_sr_fixtures import TINY_BACKBONES
    assert run_main(sample_sr.main, ["--model_path", str(tmp_path), "--data_dir", env["data"]]) == 2
    assert "model_index.json" in capsys.readouterr().err
    vae = AutoencoderKL.from_pretrained(tiny_vae(str(tmp_path / "vae3"), latent_channels=3))
    denoiser = build_backbone("unet", 4, 16, TINY_BACKBONES["unet"])
    SRFlowPipeline(denoiser, vae, default_scheduler(), "unit", 2).save_pretrained(str(tmp_path / "pipe"))
    out = str(tmp_path / "eval")
    assert run_main(sample_sr.main, ["--model_path", str(tmp_path / "pipe"), "--data_dir", env["data"],
                                     "--out_dir", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "8 channels in and 4 out" in err[0] and "latent_channels 3" in err[0]
    assert not os.path.exists(out)


def test_pixel_term_reaches_the_denoiser_gradient(env):
    """Same batch, ``t`` and noise through the objective with pixel weights 0, lambda, 2 lambda: the
    gradient difference is non-zero and linear in lambda (the term is backpropagated, not detached),
    and vanishes when nothing is gated (only unpaired samples, or ``t`` above the gate)."""
    from torch.utils.data import default_collate

    from plugins.latent_sr.objective import SRFlowObjective
    from plugins.latent_sr.trainer import build_components
    cfg = parse_config(train_argv(env["data"], env["vae"], env["yaml"], str(env["root"] / "grad"), 1,
                                  "--pixel_loss_max_t", "1.0"), overrides=train_sr_pixel.PIXEL_DEFAULTS)
    dataset, vae, denoiser = build_components(cfg)
    batch = default_collate([dataset[i] for i in range(4)])
    assert batch["paired"].any()

    def grad(weight, batch=batch, max_t=1.0):
        objective = SRFlowObjective(vae, {**cfg, "pixel_loss_weight": weight, "pixel_loss_max_t": max_t},
                                    dataset.scale, cfg["vae_pixel_range"])
        torch.manual_seed(0)
        denoiser.zero_grad()
        loss, logs = objective(denoiser, batch)
        loss.backward()
        return torch.cat([p.grad.flatten() for p in denoiser.parameters()]), logs

    flow, _ = grad(0.0)
    g1, logs = grad(0.05)
    g2, _ = grad(0.1)
    assert logs["pixel_fraction"] == pytest.approx(float(batch["paired"].float().mean()))
    assert float(logs["loss"]) == pytest.approx(float(logs["loss_diff"]) + 0.05 * float(logs["loss_pixel"]), rel=1e-5)
    d1, d2 = g1 - flow, g2 - flow
    assert d1.norm() > 1e-4 * flow.norm() and (d2 - 2 * d1).norm() < 1e-2 * d1.norm()
    unpaired = {**batch, "paired": torch.zeros_like(batch["paired"])}
    assert torch.equal(grad(0.05, unpaired)[0], grad(0.0, unpaired)[0])
    above, logs = grad(0.05, max_t=1e-6)
    assert logs["pixel_fraction"] == 0.0 and torch.equal(above, flow)


def test_pixel_grad_share_is_the_pixel_terms_part_of_the_output_gradient(env):
    """The logged share equals |g(lambda) - g(0)| / (|g(lambda) - g(0)| + |g(0)|), with g the gradient at the
    denoiser's output read from two separate runs (weight lambda and weight 0, same t and noise)."""
    from torch.utils.data import default_collate

    from plugins.latent_sr.objective import SRFlowObjective
    from plugins.latent_sr.trainer import build_components
    cfg = parse_config(train_argv(env["data"], env["vae"], env["yaml"], str(env["root"] / "share"), 1,
                                  "--pixel_loss_max_t", "1.0"), overrides=train_sr_pixel.PIXEL_DEFAULTS)
    dataset, vae, denoiser = build_components(cfg)
    batch = default_collate([dataset[i] for i in range(4)])
    seen = {}

    def watch(module, inputs, out):
        out.sample.register_hook(lambda g: seen.__setitem__("g", g))

    denoiser.register_forward_hook(watch)

    def run(weight):
        objective = SRFlowObjective(vae, {**cfg, "pixel_loss_weight": weight}, dataset.scale, cfg["vae_pixel_range"])
        torch.manual_seed(0)
        denoiser.zero_grad()
        loss, logs = objective(denoiser, batch)
        loss.backward()
        return seen["g"].clone(), {**logs, **objective.grad_logs()}

    g0, logs0 = run(0.0)
    g1, logs1 = run(0.5)
    assert "pixel_grad_share" not in logs0
    pix, rest = (g1 - g0).norm(), g0.norm()
    assert logs1["pixel_grad_share"] == pytest.approx(float(pix / (pix + rest)), rel=1e-3)
    assert 0 < logs1["pixel_grad_share"] < 1
