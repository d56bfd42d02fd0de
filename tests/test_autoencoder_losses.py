"""Each reconstruction loss against a hand-computed value; registry, adaptive weights, metrics, noise, config."""

import math

import pytest
import torch
import torch.nn.functional as F

from plugins.autoencoder.adaptive import adaptive_weights
from plugins.autoencoder.config import DEFAULTS, load_config, set_path, validate
from plugins.autoencoder.denoising import corrupt
from plugins.autoencoder.losses import (RECONSTRUCTION_LOSSES, ReconstructionLoss, combined_loss, dice_loss,
                                        kl_loss, l1_loss, mse_loss, weighted_reconstruction_loss)
from plugins.autoencoder.metrics import foreground_scores, mean_over_cases, psnr
from plugins.common.errors import InputError
from plugins.data.filaments import make_filament_volume

torch.set_num_threads(1)

# pred/target of shape [1, 1, 2, 2]; foreground (target > 0.1) = the two voxels at 1.0
PRED = torch.tensor([0.0, 0.5, 1.0, 0.2]).view(1, 1, 2, 2)
TARGET = torch.tensor([0.0, 1.0, 1.0, 0.0]).view(1, 1, 2, 2)


def test_l1_mse():
    assert l1_loss(PRED, TARGET).item() == pytest.approx((0 + 0.5 + 0 + 0.2) / 4)
    assert mse_loss(PRED, TARGET).item() == pytest.approx((0 + 0.25 + 0 + 0.04) / 4)


def test_weighted():
    # weights [1, 20, 20, 1]; errors [0, .5, 0, .2]
    assert weighted_reconstruction_loss(PRED, TARGET, "l1", 20.0, 1.0, 0.1).item() == pytest.approx(10.2 / 4)
    assert weighted_reconstruction_loss(PRED, TARGET, "mse", 20.0, 1.0, 0.1).item() == pytest.approx(5.04 / 4)
    # threshold above every target voxel: all background, weight 2
    assert weighted_reconstruction_loss(PRED, TARGET, "l1", 20.0, 2.0, 1.5).item() == pytest.approx(2 * 0.7 / 4)


def test_dice_3d_and_sigmoid():
    p, t = PRED.view(1, 1, 1, 2, 2), TARGET.view(1, 1, 1, 2, 2)
    # sum(p t) = 1.5, sum p^2 = 1.29, sum t^2 = 2
    assert dice_loss(p, t, smooth=1e-5).item() == pytest.approx(1 - (3.0 + 1e-5) / (3.29 + 1e-5), rel=1e-6)
    s = torch.sigmoid(PRED).flatten()
    expected = 1 - (2 * (s[1] + s[2]) + 1e-5) / (s.square().sum() + 2 + 1e-5)
    assert dice_loss(PRED, TARGET, 1e-5, sigmoid=True).item() == pytest.approx(expected.item(), rel=1e-6)


def test_dice_sums_over_the_batch():
    p = torch.stack([PRED[0], torch.zeros_like(PRED[0])])
    t = torch.stack([TARGET[0], torch.zeros_like(TARGET[0])])
    assert dice_loss(p, t, smooth=0.0).item() == pytest.approx(1 - 3.0 / 3.29, rel=1e-6)


def _filament(size=24):
    image, _ = make_filament_volume((size,) * 3, seed=0)
    return torch.from_numpy(image)[None, None]


def test_dice_is_minimal_at_the_perfect_reconstruction():
    t = _filament()
    perturbed = {"brighter": 1.5 * t, "saturated": (3 * t).clamp(0, 1), "darker": 0.5 * t,
                 "binarised": (t > 0.1).float(), "blurred": F.avg_pool3d(t, 3, 1, 1),
                 "shifted": torch.roll(t, 1, dims=2), "noisy": t + 0.05 * torch.randn_like(t),
                 "negative background": torch.where(t > 0.1, t, torch.full_like(t, -0.2))}
    assert dice_loss(t, t).item() == pytest.approx(0.0, abs=1e-6)
    for name, p in perturbed.items():
        assert dice_loss(p, t).item() > 0.01, name
    sparse = torch.rand(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0)) ** 4  # the case
    assert dice_loss(sparse, sparse).item() < dice_loss((3 * sparse).clamp(0, 1), sparse).item()


@pytest.mark.parametrize("level", [0.0, -0.5])
def test_all_black_prediction_has_a_dice_gradient_towards_the_foreground(level):
    t = _filament(16)
    black = torch.full_like(t, level).requires_grad_(True)
    dice_loss(black, t).backward()
    fg = t > 0.1
    assert black.grad[fg].abs().min() > 0 and (black.grad[fg] < 0).all()  # descent raises the foreground


def test_combined():
    dice = 1 - (3.0 + 1e-5) / (3.29 + 1e-5)
    value = combined_loss(PRED, TARGET, dice_weight=1.0, recon_weight=2.0, recon_loss_type="l1",
                          foreground_weight=20.0, background_weight=1.0, threshold=0.1, dice_smooth=1e-5)
    assert value.item() == pytest.approx(dice + 2 * 10.2 / 4, rel=1e-6)


def test_kl():
    mu = torch.tensor([1.0, 0.0]).view(1, 2, 1)
    logvar = torch.tensor([0.0, math.log(2.0)]).view(1, 2, 1)
    assert kl_loss(mu, logvar).item() == pytest.approx(0.5 * (1.0 + 1.0 - math.log(2.0)))


def test_registry_matches_functions():
    loss_cfg = DEFAULTS["autoencoder"]["training"]["loss"]
    assert set(RECONSTRUCTION_LOSSES) == {"l1", "mse", "weighted", "dice", "combined"}
    for kind, fn in [("l1", l1_loss(PRED, TARGET)), ("mse", mse_loss(PRED, TARGET)),
                     ("weighted", weighted_reconstruction_loss(PRED, TARGET)), ("dice", dice_loss(PRED, TARGET)),
                     ("combined", combined_loss(PRED, TARGET))]:
        loss = ReconstructionLoss({**loss_cfg, "reconstruction_loss_type": kind})
        assert loss(PRED, TARGET).item() == pytest.approx(fn.item(), rel=1e-6)
    combined = ReconstructionLoss({**loss_cfg, "reconstruction_loss_type": "combined"})
    assert set(combined.terms(PRED, TARGET)) == {"recon", "dice"} and combined.reference == "recon"


def test_bad_loss_inputs():
    loss_cfg = DEFAULTS["autoencoder"]["training"]["loss"]
    with pytest.raises(InputError, match="reconstruction_loss_type: expected one of .*'combined'"):
        ReconstructionLoss({**loss_cfg, "reconstruction_loss_type": "focal"})
    with pytest.raises(InputError, match="foreground_weight: expected a weight >= 0"):
        weighted_reconstruction_loss(PRED, TARGET, foreground_weight=-1.0)
    with pytest.raises(InputError, match="loss_type: expected one of"):
        weighted_reconstruction_loss(PRED, TARGET, loss_type="huber")
    with pytest.raises(ValueError, match="differs from target shape"):
        l1_loss(PRED, TARGET[..., :1])


def test_adaptive_weight_is_the_gradient_norm_ratio():
    w = torch.ones(3, requires_grad=True)
    ref = (2.0 * w).sum()  # gradient 2 per entry, norm 2 sqrt(3)
    other = (0.5 * w).sum()  # norm 0.5 sqrt(3)
    lam = adaptive_weights(ref, {"dice": other}, w, max_weight=1e4, eps=0.0)
    assert lam["dice"].item() == pytest.approx(4.0)
    assert not lam["dice"].requires_grad
    assert adaptive_weights(ref, {"dice": other}, w, max_weight=3.0)["dice"].item() == 3.0


def test_foreground_scores_detect_all_black_and_over_painting():
    target = torch.zeros(1, 4, 4)
    target[:, 1, 1:3] = 1.0
    assert foreground_scores(torch.zeros_like(target), target > 0.1, 0.1) == {
        "fg_dice": 0.0, "fg_recall": 0.0, "fg_volume_ratio": 0.0}
    assert foreground_scores(target, target > 0.1, 0.1) == {"fg_dice": 1.0, "fg_recall": 1.0, "fg_volume_ratio": 1.0}
    painted = target.clone()
    painted[:, 2, :] = 1.0  # 2 true + 4 extra voxels
    assert foreground_scores(painted, target > 0.1, 0.1) == {"fg_dice": 4 / 8, "fg_recall": 1.0, "fg_volume_ratio": 3.0}
    assert foreground_scores(target, torch.zeros_like(target), 0.1, prefix="mask_")["mask_dice"] is None
    assert psnr(torch.zeros_like(target), target) == pytest.approx(10 * math.log10(16 / 2))  # MSE 2/16, range 1
    rows = [{"case": "a", "psnr": 10.0, "fg_dice": None}, {"case": "b", "psnr": 20.0, "fg_dice": 0.5}]
    assert mean_over_cases(rows) == {"psnr": 15.0, "fg_dice": 0.5}


def test_denoising_corruption():
    x = torch.ones(1, 1, 32, 32, 32)
    dropped = corrupt(x, "dropout", dropout_prob=0.25, generator=torch.Generator().manual_seed(0))
    assert (dropped == 0).float().mean().item() == pytest.approx(0.25, abs=0.01)
    noisy = corrupt(x, "gaussian", noise_std=0.1, generator=torch.Generator().manual_seed(0))
    assert (noisy - x).std().item() == pytest.approx(0.1, rel=0.02)
    mixed_a = corrupt(x, "mixed", generator=torch.Generator().manual_seed(1))
    mixed_b = corrupt(x, "mixed", generator=torch.Generator().manual_seed(1))
    assert torch.equal(mixed_a, mixed_b) and (mixed_a.abs() < 0.2).any()


def test_config_refuses_unknown_keys_and_bad_values(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("autoencoder:\n  training:\n    loss:\n      weigthed: {}\n")
    with pytest.raises(InputError, match="unknown key 'autoencoder.training.loss.weigthed'; valid keys .*weighted"):
        load_config(str(bad))
    cfg = load_config(None)
    set_path(cfg, "autoencoder.spatial_dims", 4)
    with pytest.raises(InputError, match=r"autoencoder.spatial_dims: expected one of \[2, 3\], got 4"):
        validate(cfg)
    cfg = load_config(None)
    set_path(cfg, "autoencoder.training.loss.combined.dice_weight", -0.5)
    with pytest.raises(InputError, match="combined.dice_weight: expected a value >= 0, got -0.5"):
        validate(cfg)
    cfg = load_config(None)
    set_path(cfg, "autoencoder.training.learning_rate", "1e-4")  # YAML 1.1 reads this as a string
    assert validate(cfg)["autoencoder"]["training"]["learning_rate"] == 1e-4
