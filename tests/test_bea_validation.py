"""The BEA runs' validation curve: an oracle for val_mse, and a trained run that logs it every epoch."""

import json
import os

import numpy as np
import pytest
import torch

from patches.guided_diffusion import create_seam_diffusion
from plugins.bea.validation import validation_mse
from tests.gd_tiny import TINY_DIFFUSION

TINY = ["--image_size", "32", "--num_channels", "32", "--num_res_blocks", "1", "--attention_resolutions", "8",
        "--num_heads", "1", "--batch_size", "4", "--diffusion_steps", "30", "--log_interval", "1",
        "--val_fraction", "0.4"]


class NoisePredictor(torch.nn.Module):
    """Stand-in denoiser for x0 = 0: x_t = sqrt(1 - abar_t) eps, so eps = x_t / sqrt(1 - abar_t) exactly
    (``scale`` = 0 predicts zeros instead); a second, learn-sigma half of the output is junk."""

    def __init__(self, diffusion, scale: float = 1.0):
        super().__init__()
        self.register_buffer("sigma", torch.tensor(np.sqrt(1.0 - diffusion.alphas_cumprod), dtype=torch.float32))
        self.scale = scale
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t, y=None):
        eps = self.scale * x / self.sigma[t.long()].view(-1, 1, 1, 1)
        return torch.cat([eps, torch.full_like(x, 7.0)], dim=1)


def test_val_mse_oracle():
    """Exact eps: 0; zeros: E[eps^2] = 1; the same noise every call; the model's mode restored."""
    diffusion = create_seam_diffusion(**TINY_DIFFUSION)
    data = [{"image": torch.zeros(2, 8, 8), "slice_label": torch.tensor(i % 2)} for i in range(12)]
    exact = NoisePredictor(diffusion).train()
    assert validation_mse(exact, diffusion, data, 5, seed=0) == pytest.approx(0.0, abs=1e-9)
    assert exact.training
    zeros = NoisePredictor(diffusion, scale=0.0)
    first = validation_mse(zeros, diffusion, data, 5, seed=0)
    assert first == validation_mse(zeros, diffusion, data, 5, seed=0)
    assert first == pytest.approx(1.0, abs=0.05)  # 12 slices x 5 levels x 128 pixels of N(0, 1)


def test_training_logs_the_validation_curve_every_epoch(tiny_cohort, run_script, tmp_path):
    """The curve is logged, and looking at it leaves training alone: the same weights without it."""
    from guided_diffusion import dist_util
    import torch.distributed as dist

    from patches.checkpoints import load_checkpoint

    run, blind = tmp_path / "run", tmp_path / "blind"
    saved = dict(os.environ)
    dist_util.setup_dist()
    try:
        common = ["--data_dir", tiny_cohort, "--max_steps", 40, "--save_interval", 40, "--val_loss_slices", 6, *TINY]
        code = run_script("train_bea_dual_loss", *common, "--out_dir", run)
        code_blind = run_script("train_bea_dual_loss", *common, "--out_dir", blind, "--val_loss_interval", 0)
        assert run_script("train_bea_dual_loss", "--data_dir", tiny_cohort, "--out_dir", tmp_path / "bad",
                          "--val_loss_interval", -1, *TINY) == 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        os.environ.clear()
        os.environ.update(saved)
    assert code == code_blind == 0 and not (tmp_path / "bad").exists()
    weights, weights_blind = (load_checkpoint(str(d / "model000040.pt")) for d in (run, blind))
    assert all(torch.equal(weights[k], weights_blind[k]) for k in weights)
    records = [json.loads(line) for line in open(run / "metrics_epoch.jsonl")]
    curve = [r for r in records if "val_mse" in r]
    assert len(curve) >= 2 and [r["epoch"] for r in curve] == sorted({r["epoch"] for r in curve})
    assert all(0.0 < r["val_mse"] < 2.0 and 0 < r["step"] <= 40 for r in curve)
