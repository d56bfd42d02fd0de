"""The BEA runs' validation curve: the denoising MSE on the validation slices, after every N-th epoch.

``val_mse = mean_{slices, t in T} ||eps - eps_hat(x_t, t, y)||^2`` (per-pixel mean), ``x_t`` =
``q_sample(x0, t, eps)``, ``y`` the slice's true class (healthy 0 / unhealthy 1, no label dropout), at the
fixed levels ``T = {round((k + 1/2) / K * steps)}``, k < K (K = :data:`LEVELS`), with noise drawn from a
generator seeded by ``seed`` (the same noise at every validation, so the curve compares epochs). It is the
training objective's MSE term on held-out slices: a learning curve, never used to pick weights or
thresholds. Rank 0 computes it from the raw (trained) weights and appends ``{"epoch", "step", "val_mse"}``
to ``metrics_epoch.jsonl``; every rank waits.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from plugins.common.run_log import MetricsLog, is_main_process

LEVELS = 5


@torch.no_grad()
def validation_mse(model, diffusion, dataset, batch_size: int, seed: int) -> float:
    """The module docstring's ``val_mse`` of ``model`` over ``dataset`` (items with "image" [C, S, S] and
    "slice_label")."""
    was_training = model.training
    model.eval()
    wrapped = diffusion._wrap_model(model)  # upstream's timestep map and scaling, as in training_losses
    device = next(model.parameters()).device
    levels = [round((k + 0.5) / LEVELS * diffusion.num_timesteps) for k in range(LEVELS)]
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        x0 = batch["image"].to(device)
        y = batch["slice_label"].long().to(device)
        for level in levels:
            t = torch.full((x0.shape[0],), level, dtype=torch.long, device=device)
            eps = torch.randn(x0.shape, generator=generator).to(device)
            eps_hat = wrapped(diffusion.q_sample(x0, t, noise=eps), t, y=y)[:, :x0.shape[1]]
            total += float((eps - eps_hat).square().mean(dim=(1, 2, 3)).sum())
            count += x0.shape[0]
    model.train(was_training)
    return total / count


class ValidationLoss:
    """Epoch callback ``cb(loop, epoch)``: :func:`validation_mse` after every ``interval``-th epoch."""

    def __init__(self, diffusion, dataset, batch_size: int, seed: int, interval: int, run_dir: str):
        self.diffusion, self.dataset, self.batch_size = diffusion, dataset, batch_size
        self.seed, self.interval = seed, interval
        self.metrics = MetricsLog(run_dir)

    def __call__(self, loop, epoch: int) -> None:
        if (epoch + 1) % self.interval:
            return
        if is_main_process():
            value = validation_mse(loop.model, self.diffusion, self.dataset, self.batch_size, self.seed)
            self.metrics.log_epoch(epoch, {"step": loop.step + loop.resume_step, "val_mse": value})
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
