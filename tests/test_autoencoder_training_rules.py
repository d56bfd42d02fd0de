"""Autoencoder training rules: Dice leaves all-black, taming's adversarial weight, one GradScaler update,
per-volume validation tables."""

import csv
import json
import os

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from monai.losses import DiceLoss, PatchAdversarialLoss

from plugins.autoencoder.cli import resolve_config
from plugins.autoencoder.config import DEFAULTS
from plugins.autoencoder.losses import ReconstructionLoss, weighted_reconstruction_loss
from plugins.autoencoder.metrics import foreground_scores
from plugins.autoencoder.models import KLAutoencoder
from plugins.autoencoder.trainer import AutoencoderTrainer, step_optimizers
from plugins.data.filaments import make_filament_volume
from tests.test_autoencoder_trainer import TINY, filaments, local_hub  # noqa: F401 (fixtures)

torch.set_num_threads(1)

KW = dict(spatial_dims=3, in_channels=1, out_channels=1, num_channels=[4, 8], latent_channels=2, num_res_blocks=1,
          attention_levels=[False, False], norm_num_groups=4, with_encoder_nonlocal_attn=False,
          with_decoder_nonlocal_attn=False)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield


def test_dice_mode_leaves_the_all_black_start_on_filaments():
    x = torch.stack([torch.from_numpy(make_filament_volume((16,) * 3, seed=s)[0])[None] for s in range(4)])
    torch.manual_seed(0)
    model = KLAutoencoder(KW)
    last = model.net.decoder.blocks[-1].conv
    with torch.no_grad():  # every output voxel -0.5: the all-black (below-zero) failure of seed 001
        last.weight.zero_()
        last.bias.fill_(-0.5)
    black = model.decode(model.encode(x)[0])
    assert foreground_scores(black, x > 0.1, 0.1)["fg_volume_ratio"] == 0.0
    # the former clamp(pred, 0, 1) Dice has no gradient there: it could never leave
    clamped = black.detach().requires_grad_(True)
    DiceLoss(batch=True)(clamped.clamp(0, 1), x).backward()
    assert clamped.grad.abs().max() == 0
    loss = ReconstructionLoss({**DEFAULTS["autoencoder"]["training"]["loss"], "reconstruction_loss_type": "dice"})
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for i in range(30):
        recon, _, _ = model(x, generator=torch.Generator().manual_seed(i))
        opt.zero_grad()
        loss(recon, x).backward()
        opt.step()
    with torch.no_grad():
        scores = foreground_scores(model.decode(model.encode(x)[0]), x > 0.1, 0.1)
    assert scores["fg_recall"] > 0.5 and scores["fg_dice"] > 0.1


def test_one_scaler_update_per_iteration_with_two_optimizers():
    a, b = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
    opts = [torch.optim.SGD(a.parameters(), lr=0.1), torch.optim.SGD(b.parameters(), lr=0.1)]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8, growth_factor=2.0, growth_interval=1)
    x = torch.ones(2, 3)
    before = [m.weight.detach().clone() for m in (a, b)]
    for _ in range(3):
        for m in (a, b):
            scaler.scale(m(x).sum()).backward()
        step_optimizers(opts, scaler)
        for opt in opts:
            opt.zero_grad()
    assert scaler.get_scale() == 2.0 ** 11  # grows once per iteration, not once per optimizer
    # unscaled steps: 3 x lr x grad (grad of sum over 2 rows of ones = 2)
    for m, w0 in zip((a, b), before):
        assert torch.allclose(m.weight, w0 - 3 * 0.1 * 2.0)


def test_adversarial_weight_is_tamings_rule_with_the_perceptual_term(filaments, local_hub, tmp_path):  # noqa: F811
    trainer = AutoencoderTrainer(resolve_config([
        "--data_dir", filaments, "--out_dir", str(tmp_path / "run"), *TINY,
        "--autoencoder.training.loss.reconstruction_loss_type", "weighted",
        "--autoencoder.training.perceptual_weight", "0.5", "--autoencoder.training.perceptual.weights",
        local_hub[0]]))
    x = trainer.train_set[0]["image"][None]
    model = trainer.accelerator.unwrap_model(trainer.model)
    recon, mu, logvar = model(x, generator=torch.Generator().manual_seed(0))
    _, logs = trainer._generator_losses(x, recon, mu, logvar, adv_on=True)
    weight = model.last_layer_weight()
    pixel = weighted_reconstruction_loss(recon, x, "l1", 20.0, 1.0, 0.1)
    nll = pixel + 0.5 * trainer.perceptual(recon, x)
    adv = PatchAdversarialLoss(criterion="least_squares")(trainer.disc(recon)[-1], target_is_real=True,
                                                          for_discriminator=False)

    def norm(loss):
        return torch.autograd.grad(loss, weight, retain_graph=True)[0].norm()

    expected = norm(nll) / (norm(adv) + 1e-4)
    assert logs["lambda_adv"].item() == pytest.approx(expected.item(), rel=1e-4)
    assert expected.item() != pytest.approx((norm(pixel) / (norm(adv) + 1e-4)).item(), rel=1e-3)


def test_validation_writes_one_row_per_volume_and_the_black_reference(filaments, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    AutoencoderTrainer(resolve_config(["--data_dir", filaments, "--out_dir", str(out), "--max_steps", "2",
                                       *TINY])).train()
    with open(out / "eval" / "cases.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == ["filament_003"] and rows[0]["subject"] == "filament_003"
    assert {"psnr", "fg_dice", "fg_volume_ratio", "mask_dice", "black_psnr"} <= set(rows[0])
    metrics = json.load(open(out / "eval" / "metrics.json"))
    assert metrics["num_volumes"] == 1 and metrics["fg_dice"] == pytest.approx(float(rows[0]["fg_dice"]))
    black = metrics["reference_black"]
    assert black["fg_dice"] == 0.0 and black["fg_volume_ratio"] == 0.0
    assert black["psnr"] == pytest.approx(float(rows[0]["black_psnr"]))
    assert os.path.isfile(out / "summary.json")
