"""Backbone registry: every backbone builds from YAML, maps shapes, saves/loads inside the SR pipeline."""

import os

import pytest
import torch

from plugins.backbones import BACKBONES, build_backbone, count_parameters, load_backbone_params, output_layer_weight
from plugins.backbones.registry import check_denoiser_fits
from plugins.common.errors import InputError
from plugins.latent_sr.pipeline import SRFlowPipeline, default_scheduler
from tests.test_sr_fixtures import TINY_BACKBONES, tiny_backbones_yaml, tiny_vae

torch.set_num_threads(1)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_backbone_shapes_and_pipeline_round_trip(name, tmp_path):
    from diffusers import AutoencoderKL
    params = load_backbone_params(tiny_backbones_yaml(str(tmp_path / "bb.yaml")), name)
    model = build_backbone(name, latent_channels=4, latent_size=8, params=params).eval()
    x, t = torch.randn(2, 8, 8, 8), torch.tensor([1.0, 999.0])
    out = model(x, t).sample
    assert out.shape == (2, 4, 8, 8) and count_parameters(model) > 0
    assert output_layer_weight(model).requires_grad
    out.sum().backward()
    assert output_layer_weight(model).grad is not None
    vae = AutoencoderKL.from_pretrained(tiny_vae(str(tmp_path / "vae")))
    pipe = SRFlowPipeline(model, vae, default_scheduler(2.0), pixel_range="signed", scale=2)
    pipe.save_pretrained(str(tmp_path / "pipe"))
    loaded = SRFlowPipeline.from_pretrained(str(tmp_path / "pipe"))
    assert type(loaded.denoiser) is type(model) and loaded.scheduler.config.shift == 2.0
    assert torch.allclose(loaded.denoiser.eval()(x, t).sample, model(x, t).sample, atol=1e-6)
    sr = loaded(torch.rand(1, 1, 8, 8), num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert sr.shape == (1, 1, 16, 16) and 0 <= sr.min() and sr.max() <= 1


def test_unknown_backbone_lists_the_valid_ones(tmp_path):
    with pytest.raises(InputError, match="unet, dit, hybrid"):
        load_backbone_params(tiny_backbones_yaml(str(tmp_path / "bb.yaml")), "vit")


def test_unknown_parameter_and_channel_mismatch_are_refused():
    with pytest.raises(InputError, match="unknown unet parameter"):
        build_backbone("unet", 4, 8, {**TINY_BACKBONES["unet"], "depth": 3})
    with pytest.raises(InputError, match="in_channels 6 .* latent_channels 4"):
        build_backbone("dit", 4, 8, {**TINY_BACKBONES["dit"], "in_channels": 6})
    model = build_backbone("unet", 4, 8, TINY_BACKBONES["unet"])
    with pytest.raises(InputError, match="takes 8 channels in and 4 out.*latent_channels 3"):
        check_denoiser_fits(model, 3)


def _param_counts(backbones: dict, latent_channels: int) -> dict:
    return {name: count_parameters(build_backbone(name, latent_channels, 32, params))
            for name, params in backbones.items()}


@pytest.mark.parametrize("latent_channels", [4, 16])
def test_matched_sets_are_within_ten_percent_and_the_seed_ratio_set_has_the_dit_at_2_5x(latent_channels):
    import yaml

    from plugins.backbones.registry import TINY_BACKBONES as tiny, TINY_SEED_RATIO_BACKBONES as tiny_ratio
    def load(name):
        with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config", name)) as f:
            return yaml.safe_load(f)

    matched = [tiny, load("sr_backbones.yaml")]
    for backbones in matched:
        counts = _param_counts(backbones, latent_channels)
        assert set(counts) == set(BACKBONES)
        assert max(counts.values()) <= 1.1 * min(counts.values()), counts
    for backbones in (tiny_ratio, load("sr_backbones_seed_ratio.yaml")):
        counts = _param_counts(backbones, latent_channels)
        assert 2.3 <= counts["dit"] / counts["unet"] <= 2.7, counts  # seed 004: 45.8 M / 18.5 M
        assert abs(counts["hybrid"] / counts["unet"] - 1) <= 0.1


def test_benchmark_prints_the_matched_and_seed_ratio_tables(tmp_path, capsys, load_script):
    """Both sets' tables; a configuration shared by the sets is trained once; per-set files."""
    import json

    import yaml

    from plugins.backbones.registry import TINY_SEED_RATIO_BACKBONES
    from plugins.common.run_log import read_case_table
    from tests.test_sr_fixtures import write_pairs
    ratio = tmp_path / "ratio.yaml"
    ratio.write_text(yaml.safe_dump(TINY_SEED_RATIO_BACKBONES))
    out = tmp_path / "bench"
    argv = ["--vae_path", tiny_vae(str(tmp_path / "vae")), "--data_dir", write_pairs(str(tmp_path / "data")),
            "--out_dir", str(out), "--backbone_config", tiny_backbones_yaml(str(tmp_path / "bb.yaml")),
            "--seed_ratio_config", str(ratio), "--backbones", "unet", "--train_steps", "1",
            "--num_inference_steps", "1", "--time_steps", "1", "--time_rounds", "3", "--batch_size", "2",
            "--max_samples", "2"]
    load_script("benchmark_backbones").main(argv)
    text = capsys.readouterr().out
    assert "Matched parameters" in text and "Seed 004's ratio" in text
    rows = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert [(r["set"], r["backbone"]) for r in rows] == [("matched", "unet"), ("seed_ratio", "unet")]
    assert rows[0]["run_dir"] == rows[1]["run_dir"]  # the same configuration in both sets: trained once
    assert (out / "seed_ratio" / "unet" / "config.json").read_text() == (out / "matched" / "unet" / "config.json").read_text()
    for r in rows:
        assert r["inference_s_per_image"] > 0 and r["peak_memory_mb"] > 100  # a whole process: torch alone is more
        metrics = json.load(open(out / r["set"] / r["backbone"] / "benchmark" / "metrics.json"))
        assert set(metrics["reference_bicubic"]) >= {"psnr", "nrmse", "ms_ssim"}
        cases = read_case_table(str(out / r["set"] / r["backbone"] / "benchmark" / "cases.csv"))
        assert len(cases) == 2 and metrics["psnr"] == pytest.approx(sum(c["psnr"] for c in cases) / 2, rel=1e-6)
        rounds = read_case_table(str(out / r["set"] / r["backbone"] / "benchmark" / "timing" / "cases.csv"))
        assert [c["case"] for c in rounds] == ["round1", "round2", "round3"]  # the rounds pair the backbones
        median = sorted(c["inference_s_per_image"] for c in rounds)[1]
        assert metrics["inference_s_per_image"] == pytest.approx(median)


def test_benchmark_trained_apart_then_timed_reuses_each_measurement(tmp_path, capsys, load_script):
    """``--train_only`` trains and scores, writes no table; the call that times reuses its figures and weights
    untouched (no second training); a call under other flags is refused naming the measurement."""
    import json

    from plugins.common.errors import run_main
    from tests.test_sr_fixtures import write_pairs
    out = tmp_path / "bench"
    argv = ["--vae_path", tiny_vae(str(tmp_path / "vae")), "--data_dir", write_pairs(str(tmp_path / "data")),
            "--out_dir", str(out), "--backbone_config", tiny_backbones_yaml(str(tmp_path / "bb.yaml")),
            "--seed_ratio_config", "", "--backbones", "unet,dit", "--train_steps", "1", "--num_inference_steps", "1",
            "--time_steps", "1", "--time_rounds", "2", "--batch_size", "2", "--max_samples", "2"]
    script = load_script("benchmark_backbones")
    for name in ("unet", "dit"):
        script.main([*argv, "--backbones", name, "--train_only", "True"])
    trained = {json.loads(line)["backbone"]: json.loads(line) for line in capsys.readouterr().out.splitlines()
               if line.startswith("{")}
    assert set(trained) == {"unet", "dit"} and not list(out.glob("*/*/benchmark/metrics.json"))
    weights = {p: p.stat().st_mtime_ns for p in out.glob("matched/*/pipeline/**/*") if p.is_file()}
    script.main(argv)
    text = capsys.readouterr().out
    assert "Matched parameters" in text
    rows = {json.loads(line)["backbone"]: json.loads(line) for line in text.splitlines() if line.startswith("{")}
    for name, row in rows.items():
        assert {k: row[k] for k in trained[name]} == trained[name] and row["inference_s_per_image"] > 0
    assert weights and {p: p.stat().st_mtime_ns for p in weights} == weights
    before = (out / "matched" / "dit" / "benchmark" / "metrics.json").read_text()
    assert run_main(script.main, [*argv, "--lr", "1e-3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "measured.json: measured under other flags (lr 0.0001 -> 0.001)" in err[0]
    assert (out / "matched" / "dit" / "benchmark" / "metrics.json").read_text() == before


def test_benchmark_refuses_a_missing_seed_ratio_config(tmp_path, capsys, load_script):
    from plugins.common.errors import run_main
    argv = ["--backbone_config", tiny_backbones_yaml(str(tmp_path / "bb.yaml")), "--seed_ratio_config",
            str(tmp_path / "none.yaml"), "--out_dir", str(tmp_path / "bench")]
    assert run_main(load_script("benchmark_backbones").main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --seed_ratio_config:") and "none.yaml not found" in err[0]
    assert not (tmp_path / "bench").exists()
