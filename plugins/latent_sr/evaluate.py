"""SR evaluation: torchmetrics PSNR, SSIM, MS-SSIM, NRMSE of SR and bicubic against HR, and a PNG grid.

Images are [N, 1, H, W] in [0, 1] (``data_range = 1``). NRMSE is ``RMSE / (max - min)`` of
the HR image, per image then averaged. MS-SSIM uses the first scales of the standard
``(0.0448, 0.2856, 0.3001, 0.2363, 0.1333)`` that fit the image size (re-normalised).
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from safetensors import SafetensorError  # noqa: E402
from diffusers.utils import logging as diffusers_logging  # noqa: E402
from torchmetrics.functional.regression import normalized_root_mean_squared_error  # noqa: E402
from torchmetrics.image import (MultiScaleStructuralSimilarityIndexMeasure, PeakSignalNoiseRatio,  # noqa: E402
                                StructuralSimilarityIndexMeasure)
from tqdm.auto import tqdm  # noqa: E402

from plugins.backbones.registry import check_denoiser_fits  # noqa: E402
from plugins.common.errors import InputError  # noqa: E402
from plugins.latent_sr.pipeline import SRFlowPipeline, upsample  # noqa: E402

MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
METRICS = ("psnr", "ssim", "ms_ssim", "nrmse")


def ms_ssim_settings(size: int) -> tuple[tuple[float, ...], int]:
    """(betas, kernel_size): the largest Gaussian window (11 first), then the most scales ``n``
    that fit torchmetrics' rule ``size >= (kernel - 1) * max(1, n - 1)^2``, ``size >= 2^n``."""
    for kernel in (11, 9, 7, 5, 3):
        for n in range(len(MS_SSIM_BETAS), 0, -1):
            if size >= (kernel - 1) * max(1, n - 1) ** 2 and size >= 2 ** n and size // 2 ** (n - 1) >= kernel:
                betas = MS_SSIM_BETAS[:n]
                return tuple(b / sum(betas) for b in betas), kernel
    raise ValueError(f"images of {size} px are too small for MS-SSIM")


class SRMetrics:
    """Accumulates ``update(pred, target)`` over batches; ``compute()`` -> {psnr, ssim, ms_ssim, nrmse}."""

    def __init__(self, size: int):
        betas, kernel = ms_ssim_settings(size)
        self.psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
        self.ms_ssim = MultiScaleStructuralSimilarityIndexMeasure(  # Gaussian window size 2 int(3.5 sigma + .5) + 1
            data_range=1.0, betas=betas, kernel_size=kernel, sigma=1.5 * kernel / 11)
        self.nrmse: list[torch.Tensor] = []

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        pred, target = pred.float().cpu(), target.float().cpu()
        self.psnr.update(pred, target)
        self.ssim.update(pred, target)
        self.ms_ssim.update(pred, target)
        for p, t in zip(pred, target):
            self.nrmse.append(normalized_root_mean_squared_error(p.flatten(), t.flatten(), normalization="range"))

    def compute(self) -> dict:
        return {"psnr": float(self.psnr.compute()), "ssim": float(self.ssim.compute()),
                "ms_ssim": float(self.ms_ssim.compute()), "nrmse": float(torch.stack(self.nrmse).mean())}


def save_grid(path: str, low_res, bicubic, sr, high_res, max_rows: int = 8) -> str:
    """PNG with one row per sample: low-res, bicubic, SR, high-res, |SR - HR| error map."""
    n = min(max_rows, sr.shape[0])
    columns = [("low-res", low_res), ("bicubic", bicubic), ("SR", sr), ("high-res", high_res),
               ("|SR - HR|", (sr - high_res).abs())]
    fig, axes = plt.subplots(n, len(columns), figsize=(2.2 * len(columns), 2.2 * n), squeeze=False)
    for row in range(n):
        for col, (title, images) in enumerate(columns):
            ax = axes[row][col]
            is_error = col == len(columns) - 1
            ax.imshow(images[row, 0].cpu().numpy(), cmap="magma" if is_error else "gray",
                      vmin=0.0, vmax=None if is_error else 1.0)
            ax.set_axis_off()
            if row == 0:
                ax.set_title(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def load_pipeline(model_path: str):
    """An :class:`SRFlowPipeline` from a pipeline folder or a run directory holding ``pipeline/``."""
    folder = os.path.join(model_path, "pipeline") if os.path.isdir(os.path.join(model_path, "pipeline")) \
        else model_path
    if not os.path.isfile(os.path.join(folder, "model_index.json")):
        raise InputError(f"--model_path: {model_path} holds no SR pipeline (model_index.json); expected a run "
                         f"directory of scripts/train_sr.py or its pipeline/ folder")
    diffusers_logging.disable_progress_bar()  # three small components: no loading bar on stderr
    try:
        pipe = SRFlowPipeline.from_pretrained(folder)
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        raise InputError(f"--model_path: {folder} could not be loaded ({str(err).splitlines()[0]}); a file of the "
                         "pipeline is truncated or not ours") from None
    finally:
        diffusers_logging.enable_progress_bar()
    check_denoiser_fits(pipe.denoiser, pipe.vae.config.latent_channels, source=folder)
    return pipe


@torch.no_grad()
def evaluate_pipeline(pipe, dataset, num_inference_steps: int = 20, batch_size: int = 8, seed: int = 0,
                      max_samples: int = 0) -> tuple[dict, dict]:
    """Metrics of SR and bicubic on ``dataset``'s paired samples, and the images of the first batch.

    Returns ``({"sr": {...}, "bicubic": {...}, "num_images": n}, {"low_res", "bicubic", "sr", "high_res"})``.
    """
    if dataset.scale != pipe.config.scale:
        raise InputError(f"--data_dir: pairs have scale {dataset.scale} but the pipeline was trained for scale "
                         f"{pipe.config.scale}")
    indices = [i for i in range(len(dataset)) if dataset[i]["paired"]]
    if max_samples > 0:
        indices = indices[:max_samples]
    if not indices:
        raise InputError("--data_dir: the split has no paired samples to evaluate")
    generator = torch.Generator().manual_seed(seed)
    sr_metrics, bic_metrics = SRMetrics(dataset.hr_size), SRMetrics(dataset.hr_size)
    first: dict = {}
    for start in tqdm(range(0, len(indices), batch_size), desc="sample_sr"):
        items = [dataset[i] for i in indices[start:start + batch_size]]
        low = torch.stack([it["lr"] for it in items])
        high = torch.stack([it["hr"] for it in items])
        sr = pipe(low, num_inference_steps=num_inference_steps, generator=generator).cpu()
        bicubic = upsample(low, dataset.scale)
        sr_metrics.update(sr, high)
        bic_metrics.update(bicubic, high)
        if not first:
            first = {"low_res": upsample_nearest(low, dataset.scale), "bicubic": bicubic, "sr": sr, "high_res": high}
    return {"sr": sr_metrics.compute(), "bicubic": bic_metrics.compute(), "num_images": len(indices)}, first


def upsample_nearest(low_res: torch.Tensor, scale: int) -> torch.Tensor:
    """Nearest-neighbour upsampling, to show the low-res input at the grid's size."""
    return torch.nn.functional.interpolate(low_res, scale_factor=scale, mode="nearest")
