"""FPDM end to end with a stand-in denoiser whose answers are known, and the FPDM maths by hand.

The oracle needs no training. For slice ``i`` with input ``x_in`` and its known healthy image
``x_h`` it predicts the noise ``eps = (x_t - sqrt(abar_t) x0_y) / sqrt(1 - abar_t)`` leading back to

    x0_healthy(t) = x_in + rho(t) (x_h - x_in) + beta(t) b_c     # forgets the lesion as noise rises
    x0_null(t)    = x_in + beta(t) b_u                           # the input
    rho(t) = smoothstep(t / T over 0.1..0.5),   beta(t) = sqrt(1 - abar_t)

where ``b_c``, ``b_u`` are small fixed error patterns inside the brain (a real model is imperfect
and unequal across classes). If the forward, the guidance, t_e, the aggregation or a threshold is
broken, the lesion is not localised or a call flips.
"""

import numpy as np
import pytest
import torch
from torch import nn

from patches.guided_diffusion import create_seam_diffusion
from plugins.bea.evaluation import (FPDM_DEFAULTS, brain_mask, per_slice_overlap, remove_small_components,
                                    resolve_settings, run_fpdm, score, tune)
from plugins.bea.fpdm import forward_process, quantile_levels, tune_sim_cut
from plugins.bea.plugin import HEALTHY
from plugins.data import BratsSliceDataset
from plugins.data.slice_preprocess import SliceSettings

MODALITIES = "t1,t1ce,t2,flair"
BASE = dict(diffusion_steps=1000, timestep_respacing="100")


def smoothstep(u):
    u = np.clip(u, 0.0, 1.0)
    return u * u * (3 - 2 * u)


class Oracle(nn.Module):
    """Per dataset index: ``x_in``, ``x_h``, ``b_c``, ``b_u`` [C, S, S]; rows follow the dataset's reads."""

    def __init__(self, abar: np.ndarray, table: dict):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.abar, self.table = abar, table
        self.queue, self.rows, self.seen = [], [], []

    def forward(self, x, t, y=None):
        if self.queue:
            self.rows, self.queue = self.queue, []
        b = len(self.rows)
        steps = t.long().tolist()
        self.seen.append((steps[0], x[:b].clone()))
        out = []
        for n in range(x.shape[0]):
            entry = self.table[self.rows[n % b]]
            abar = float(self.abar[steps[n]])
            beta = (1 - abar) ** 0.5
            if int(y[n]) == HEALTHY:
                x0 = entry["x_in"] + smoothstep((steps[n] / 1000 - 0.1) / 0.4) * (entry["x_h"] - entry["x_in"]) \
                    + beta * entry["b_c"]
            else:
                x0 = entry["x_in"] + beta * entry["b_u"]
            out.append((x[n] - abar ** 0.5 * x0) / (1 - abar) ** 0.5)
        return torch.stack(out)


class Slices(torch.utils.data.Dataset):
    """A list of slice dicts in [0, 1] that tells the oracle which rows it reads."""

    settings = SliceSettings(image_size=32, modalities=MODALITIES, value_range=(0.0, 1.0))

    def __init__(self, items, oracle):
        self.items, self.oracle = items, oracle

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        self.oracle.queue.append(self.items[i]["key"])
        return self.items[i]


def _pattern(gen, shape, brain, amplitude):
    field = torch.nn.functional.avg_pool2d(torch.randn(shape, generator=gen)[None], 5, 1, 2)[0]
    return amplitude * field / field.std() * brain


def _lesion(image, flair, t2, centre, radius):
    s = image.shape[-1]
    yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    disk = ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) <= radius ** 2
    out = image.clone()
    out[flair][disk] = 0.95
    out[t2][disk] = 0.9
    return out, disk


@pytest.fixture(scope="module")
def demo_slices(tiny_cohort):
    data = BratsSliceDataset(str(tiny_cohort), None, None, SliceSettings(image_size=32, modalities=MODALITIES),
                             progress=False)
    healthy = [data[i] for i in range(len(data)) if data[i]["slice_label"] == 0]
    brains = [brain_mask(it["image"][None], (0.0, 1.0))[0] for it in healthy]
    return [(it, b) for it, b in zip(healthy, brains) if b.sum() > 300]


def _build(demo_slices, n_tune, seed=0):
    """(tune items, test items, table): each demo slice once healthy and once with a lesion."""
    gen = torch.Generator().manual_seed(seed)
    table, items = {}, []
    for k, (it, brain) in enumerate(demo_slices[:n_tune + 1]):
        ys, xs = torch.nonzero(brain, as_tuple=True)
        centre = (int(ys.float().mean()), int(xs.float().mean()))
        for label in (0, 1):
            x_h = it["image"]
            x_in, disk = _lesion(x_h, 3, 2, centre, 4) if label else (x_h, torch.zeros_like(brain))
            key = f"{k}:{label}"
            amp_c, amp_u = 0.01 + 0.02 * torch.rand(2, generator=gen)
            table[key] = {"x_in": x_in, "x_h": x_h, "b_c": _pattern(gen, x_h.shape, brain, float(amp_c)),
                          "b_u": _pattern(gen, x_h.shape, brain, float(amp_u))}
            items.append({"key": key, "image": x_in, "seg": disk.float()[None], "slice_label": label,
                          "subject": f"S{k}", "slice_index": label})
    return items[:-2], items[-2:], table


def _settings(protocol="anofpdm", **overrides):
    import argparse

    args = argparse.Namespace(**{**FPDM_DEFAULTS, "protocol": protocol, **overrides})
    return resolve_settings(args, argparse.Namespace(modalities=MODALITIES, image_size=32), 100)


@pytest.mark.parametrize("protocol", ["anofpdm", "fast"])
def test_oracle_localises_the_lesion_and_calls_the_healthy_slice_healthy(demo_slices, protocol):
    diffusion = create_seam_diffusion(**BASE)
    abar = create_seam_diffusion(diffusion_steps=1000).alphas_cumprod
    tune_items, test_items, table = _build(demo_slices, n_tune=8)
    oracle = Oracle(abar, table)
    settings = _settings(protocol)
    assert settings.t_max == 60 and len(settings.timesteps) == (60 if protocol == "anofpdm" else 6)
    kwargs = dict(settings=settings, batch_size=4, seed=0)
    tuned = tune(run_fpdm(oracle, diffusion, Slices(tune_items, oracle), **kwargs), settings, "tune")
    out = run_fpdm(oracle, diffusion, Slices(test_items, oracle), tuned=tuned, **kwargs)
    scored = score(out, tuned, settings.min_component_px)
    labels = out.labels.tolist()
    sick, healthy = labels.index(1), labels.index(0)
    assert scored.calls[sick] == 1 and scored.calls[healthy] == 0
    assert scored.metrics["unhealthy"]["auprc"] > 0.9
    assert scored.rows[sick]["dice_ungated"] > 0.5
    assert 0 < scored.reference_random_auprc < 0.2
    assert scored.reference_all_healthy_accuracy == labels.count(0) / len(labels)
    assert scored.reference_flair["unhealthy"]["auprc"] is not None
