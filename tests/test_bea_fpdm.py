"""FPDM pieces by hand (guided clip, t_e and aggregation, thresholds, components, Dice), the DDIM
inversion against its closed form, and the dual loss that cannot collapse."""

import argparse

import numpy as np
import pytest
import torch
from torch import nn

from patches.guided_diffusion import create_seam_diffusion, create_seam_model
from plugins.bea.dual_loss import boundary_consistency_loss
from plugins.bea.evaluation import (FpdmSettings, SliceOutputs, halve_subjects, per_slice_overlap,
                                    remove_small_components, scaled_median_size, tune, tune_and_test_subjects)
from plugins.bea.fpdm import (combined_map, forward_process, mask_thresholds, quantile_levels, tune_sim_cut)
from plugins.bea.plugin import BEA_DEFAULTS, HEALTHY, NUM_CLASSES, attach_bea
from plugins.data.splits import keep_run_split, stratified_split
from tests.gd_tiny import TINY_MODEL


class Scripted(nn.Module):
    """Returns the eps that decodes to ``x0[y][k]`` at the k-th call (``x0``: {class: [K, B, C, S, S]}).

    ``abar``: the schedule of the timesteps the model receives (the unrespaced one)."""

    def __init__(self, abar, x0):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))
        self.abar, self.x0, self.k, self.inputs = torch.tensor(abar).float(), x0, 0, []

    def forward(self, x, t, y=None):
        b = x.shape[0] // 2
        self.inputs.append(x[:b].clone())
        target = torch.cat([self.x0["c"][self.k], self.x0["u"][self.k]])
        self.k += 1
        abar = self.abar[t.long()].view(-1, 1, 1, 1)
        assert (y[:b] == HEALTHY).all() and (y[b:] != HEALTHY).all()
        return (x - abar.sqrt() * target) / (1 - abar).sqrt()


def test_guided_prediction_is_clipped_as_in_the_issue_example():
    # x0 = 0.9, x0_c = -0.5, x0_u = 0.9, w = 3: unclipped guided x0 = -4.7; clipped -1, map (-1 - 0.9)^2 = 3.61
    diffusion = create_seam_diffusion(diffusion_steps=100)
    x0 = torch.full((1, 1, 4, 4), 0.9)
    model = Scripted(diffusion.alphas_cumprod, {"c": torch.full((1, 1, 1, 4, 4), -0.5), "u": torch.full((1, 1, 1, 4, 4), 0.9)})
    stats = forward_process(model, diffusion, x0, [0], [5], w=3.0, protocol="fast", generator=torch.Generator())
    assert torch.allclose(stats.maps, torch.full_like(stats.maps, 3.61), atol=1e-4)
    assert torch.allclose(stats.m, torch.full_like(stats.m, 0.25), atol=1e-5)   # (-1 - (-0.5))^2


def test_t_e_per_modality_and_aggregation_up_to_it():
    diffusion = create_seam_diffusion(diffusion_steps=100)
    x0 = torch.zeros(1, 2, 4, 4)
    cond = torch.zeros(3, 1, 2, 4, 4)
    cond[0] += 0.1
    cond[1, :, 0] += 0.5      # modality 0 peaks at step 1
    cond[2, :, 1] += 0.3      # modality 1 peaks at step 2
    model = Scripted(diffusion.alphas_cumprod, {"c": cond, "u": torch.zeros_like(cond)})
    stats = forward_process(model, diffusion, x0, [0, 1], [0, 10, 20], w=1.0, protocol="fast",
                            generator=torch.Generator())
    assert stats.t_e.tolist() == [[1, 2]]
    guided = 2 * cond          # (1 + w) x0_c - w x0_u with x0_u = 0
    assert torch.allclose(stats.maps[0, 0], (guided[:2, 0, 0] ** 2).mean(0), atol=1e-5)
    assert torch.allclose(stats.maps[0, 1], (guided[:3, 0, 1] ** 2).mean(0), atol=1e-5)
    assert torch.allclose(stats.m_te, torch.tensor([[0.25, 0.09]]), atol=1e-5)       # (x0_g - x0_c)^2 = cond^2
    assert torch.allclose(stats.err_ref, (cond ** 2).mean(dim=(2, 3, 4)).t(), atol=1e-5)


def test_ddim_inversion_follows_the_deterministic_trajectory():
    """A null model that always answers x0 keeps the DDIM eps: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps_0."""
    diffusion = create_seam_diffusion(diffusion_steps=1000, timestep_respacing="50")
    x0 = torch.rand(2, 2, 8, 8) * 1.6 - 0.8
    steps = list(range(0, 30, 3))
    same = x0[None].expand(len(steps), *x0.shape)
    model = Scripted(create_seam_diffusion(diffusion_steps=1000).alphas_cumprod, {"c": same, "u": same})
    forward_process(model, diffusion, x0, [0, 1], steps, w=2.0, protocol="anofpdm", generator=torch.Generator())
    abar = torch.tensor(diffusion.alphas_cumprod).float()
    eps0 = (model.inputs[0] - abar[0].sqrt() * x0) / (1 - abar[0]).sqrt()
    for k, step in enumerate(steps):
        expected = abar[step].sqrt() * x0 + (1 - abar[step]).sqrt() * eps0
        assert torch.allclose(model.inputs[k], expected, atol=1e-3), step


def test_quantile_rule_thresholds_and_sim_cut():
    q = quantile_levels(torch.tensor([[0.0, 0.5], [2.0, 0.256]]), torch.tensor([1.0, 1.0]))
    assert torch.allclose(q, torch.tensor([[0.98, 0.94], [0.90, 0.98 - 0.08 * 0.26]]))
    maps = torch.arange(2 * 100, dtype=torch.float32).reshape(1, 2, 10, 10)
    thr = mask_thresholds(maps, torch.tensor([[0.9, 0.5]]))
    assert torch.allclose(thr, torch.tensor([(89.1 + 149.5) / 2]))
    assert combined_map(maps, 1).shape == (1, 10, 10)
    healthy = torch.linspace(0.95, 1.0, 101)
    cut = tune_sim_cut(healthy, torch.tensor([0.5, 0.6, 0.955]))
    # catching the 0.955 slice would put 10 healthy slices below the cut: the 0.5% quantile wins (2 errors)
    assert cut == pytest.approx(float(torch.quantile(healthy.double(), 0.005)))
    cut = tune_sim_cut(healthy, torch.tensor([0.5, 0.6, 0.9504]))
    assert 0.9504 <= cut <= 0.9505  # one healthy slice below the cut (0.95), none missed


def test_component_filter_and_per_slice_overlap():
    masks = torch.zeros(2, 20, 20, dtype=torch.bool)
    masks[0, :7, :7] = True            # 49 pixels: kept
    masks[0, 10:16, 10:16] = True      # 36 pixels: removed
    masks[0, 12:14, 12:14] = False     # a hole: filled area still 36
    masks[1, 0, 0] = True
    kept = remove_small_components(masks, 40)
    assert kept[0].sum() == 49 and kept[1].sum() == 0
    gt = torch.zeros_like(masks)
    gt[0, :7, :14] = True
    dice, iou = per_slice_overlap(kept, gt)
    assert torch.allclose(dice, torch.tensor([2 * 49 / (49 + 98), 1.0], dtype=torch.float64), atol=1e-6)
    assert torch.allclose(iou, torch.tensor([0.5, 1.0], dtype=torch.float64), atol=1e-6)


def test_median_filter_keeps_its_extent_in_the_brain():
    assert [scaled_median_size(5, s) for s in (32, 48, 64, 128, 256)] == [1, 1, 3, 5, 9]
    assert scaled_median_size(1, 32) == 1 and scaled_median_size(3, 128) == 3
    lesion = torch.zeros(1, 1, 32, 32)
    lesion[0, 0, 10:13, 10:13] = 1.0  # 9 px: a small demo lesion at 32 px
    assert combined_map(lesion, 5).max() == 0  # AnoFPDM's 5 x 5 at 32 px erases it
    assert combined_map(lesion, scaled_median_size(5, 32)).sum() == 9


def test_dual_loss_alone_does_not_collapse():
    """L_bea alone, 150 Adam steps: stays above 20% of its start; the encoder feature keeps half its norm."""
    torch.manual_seed(0)
    model = create_seam_model(**{**TINY_MODEL, "image_size": 16, "channel_mult": "1,2,2", "num_classes": NUM_CLASSES,
                                 "attention_resolutions": "-1"})
    attach_bea(model, argparse.Namespace(**BEA_DEFAULTS))
    diffusion = create_seam_diffusion(diffusion_steps=50)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 2, 16, 16, generator=g) * 2 - 1
    y = torch.tensor([0, 2])
    losses, norms = [], []
    for _ in range(150):
        t = torch.randint(0, 50, (2,), generator=g)
        model(diffusion.q_sample(x0, t, noise=torch.randn(x0.shape, generator=g)), t, y=y)
        loss = boundary_consistency_loss(model.features["bea_enc"], model.features["bea_dec"], x0).mean()
        losses.append(loss.item())
        norms.append(model.features["bea_enc"].detach().pow(2).mean().sqrt().item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert np.mean(losses[-10:]) > 0.2 * losses[0]
    assert norms[-1] > 0.5 * norms[0]


def test_flair_threshold_is_the_exact_quantile_of_every_healthy_brain_pixel():
    """More than 2^24 healthy brain pixels (torch.quantile's limit): all of them count, in float64."""
    side = 4200  # 17.6M pixels in the healthy slice; the last 0.9M (> 1%) are its brightest
    flair = torch.zeros(2, side, side)
    flat = flair[0].view(-1)
    flat.uniform_(0.0, 0.5, generator=torch.Generator().manual_seed(0))
    flat[2**24:] += 0.5
    brain = torch.ones(2, side, side, dtype=torch.bool)
    out = SliceOutputs(m_te=torch.ones(2, 1), sim=torch.tensor([0.9, 0.1]), gt=brain, brain=brain, flair=flair,
                       images=flair, labels=torch.tensor([0, 1]), subjects=["A", "A"], slice_index=[0, 1])
    settings = FpdmSettings(name="fast", w=2.0, t_max=30, t_stride=10, timesteps=[10, 20, 30], modalities=["flair"],
                            channels=[0], flair_channel=0, q_lo=0.9, q_hi=0.98, median_size=5, median_size_px=5,
                            min_component=40, min_component_px=40, flair_quantile=0.99)
    threshold = tune(out, settings, "tune").flair_threshold
    assert threshold == np.quantile(flat.numpy().astype(np.float64), 0.99) and threshold > 0.5


def test_every_seed_is_scored_on_the_split_seeds_test_half(tmp_path):
    """The tune/test halving follows the split file's seed, so the runs of every seed share their test subjects."""
    val = [f"BraTS20_Training_{i:03d}" for i in range(1, 13)]
    split = stratified_split(val + ["BraTS20_Training_099"], None, 12 / 13, seed=3)
    keep_run_split(str(tmp_path), split, "test")
    tune_subjects, test_subjects = tune_and_test_subjects(str(tmp_path))
    assert (tune_subjects, test_subjects) == halve_subjects(split["val"], 3)
    assert len(tune_subjects) == 6 and not set(tune_subjects) & set(test_subjects)
    assert set(tune_subjects) | set(test_subjects) == set(split["val"])
    assert tune_and_test_subjects(str(tmp_path), num_eval_cases=2)[1] == test_subjects[:2]
