"""SR evaluation: per-image PSNR, SSIM, MS-SSIM, NRMSE (torchmetrics) of SR and bicubic against HR,
sampling time apart from the metrics, and a PNG grid.

Images are [N, 1, H, W] in [0, 1] (``data_range = 1``). Every figure is computed per image and
averaged over the images (the per-case table's rows): PSNR = 10 log10(1 / MSE_i), NRMSE =
RMSE_i / (max - min of HR image i). ``psnr_pooled`` is the data-set PSNR (squared error pooled over
all images). MS-SSIM uses the first scales of the standard ``(0.0448, 0.2856, 0.3001, 0.2363, 0.1333)``
that fit the image size (re-normalised). The bicubic reference's figures sit under
``reference_bicubic`` (and as ``bicubic_*`` columns of the case table); the frozen VAE's own
reconstruction of the high-res image, ``decode(encode(hr))`` (the ceiling of any latent SR model), under
``reference_vae`` (``vae_*`` columns).
``sampling_s_per_image`` times the pipeline calls alone (``torch.cuda.synchronize`` around each call on a
GPU; data reads, bicubic and metrics outside the timer; the first call's start-up included:
``scripts/benchmark_backbones.py`` times warmed-up, interleaved calls).
:func:`sampling_peak_mb` is the total peak memory of sampling, weights included.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from safetensors import SafetensorError  # noqa: E402
from diffusers.training_utils import EMAModel  # noqa: E402
from diffusers.utils import logging as diffusers_logging  # noqa: E402
from torchmetrics.functional.image import (multiscale_structural_similarity_index_measure,  # noqa: E402
                                           peak_signal_noise_ratio, structural_similarity_index_measure)
from torchmetrics.functional.regression import normalized_root_mean_squared_error  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from patches.ema import ema_summary  # noqa: E402
from plugins.backbones.registry import check_denoiser_fits  # noqa: E402
from plugins.common.errors import InputError  # noqa: E402
from plugins.common.run_log import CONFIG_FILE, STEP_METRICS, read_config, read_jsonl  # noqa: E402
from plugins.latent_sr import codec  # noqa: E402
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


def image_scores(pred: torch.Tensor, target: torch.Tensor) -> dict[str, list[float]]:
    """{psnr, ssim, ms_ssim, nrmse, mse}: one value per image of ``pred``/``target`` [N, 1, H, W]."""
    pred, target = pred.float().cpu(), target.float().cpu()
    betas, kernel = ms_ssim_settings(target.shape[-1])
    ms_ssim = multiscale_structural_similarity_index_measure(  # Gaussian window 2 int(3.5 sigma + .5) + 1
        pred, target, data_range=1.0, betas=betas, kernel_size=kernel, sigma=1.5 * kernel / 11, reduction="none")
    scores = {
        "psnr": peak_signal_noise_ratio(pred, target, data_range=1.0, reduction="none", dim=(1, 2, 3)),
        "ssim": structural_similarity_index_measure(pred, target, data_range=1.0, reduction="none"),
        "ms_ssim": ms_ssim,
        "nrmse": torch.stack([normalized_root_mean_squared_error(p.flatten(), t.flatten(), normalization="range")
                              for p, t in zip(pred, target)]),
        "mse": (pred - target).square().flatten(1).mean(1),
    }
    return {k: [float(x) for x in v] for k, v in scores.items()}


def summarise(scores: dict[str, list[float]]) -> dict:
    """Means over the images of :func:`image_scores` lists, plus ``psnr_pooled`` (the data-set PSNR)."""
    out = {k: sum(v) / len(v) for k, v in scores.items() if k in METRICS}
    mse = sum(scores["mse"]) / len(scores["mse"])
    out["psnr_pooled"] = math.inf if mse == 0 else 10 * math.log10(1.0 / mse)
    return out


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


def scored_weights(model_path: str) -> dict:
    """Which denoiser weights a run's pipeline holds: ``{"weights": "ema" | "raw", "train_steps"}``, for the
    EMA also its decay and :func:`~patches.guided_diffusion.ema.ema_summary` under diffusers' ``EMAModel``
    schedule (``min(decay, (1 + s) / (10 + s))``); ``{"weights": "unknown"}`` for a pipeline outside a run."""
    if not os.path.isfile(os.path.join(model_path, CONFIG_FILE)):
        return {"weights": "unknown"}
    config, steps = read_config(model_path), read_jsonl(os.path.join(model_path, STEP_METRICS))
    out = {"weights": "ema" if config.get("use_ema") else "raw", "train_steps": steps[-1]["step"] if steps else 0}
    if out["weights"] == "ema":
        decay = float(config["ema_decay"])
        schedule = EMAModel([], decay=decay)
        out.update(ema_decay=decay, **ema_summary(decay, out["train_steps"], False, decay_fn=schedule.get_decay))
    return out


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def evaluate_pipeline(pipe, dataset, num_inference_steps: int = 20, batch_size: int = 8, seed: int = 0,
                      max_samples: int = 0, progress: bool = True) -> tuple[dict, list[dict], dict]:
    """Per-image metrics of SR and bicubic on ``dataset``'s paired samples, the case rows, the first batch.

    Returns ``(metrics, rows, images)``: ``metrics`` = the SR means (module docstring), ``psnr_pooled``,
    ``reference_bicubic``, ``reference_vae``, ``num_images``, ``sampling_s_per_image``; ``rows`` one dict per
    image (``case`` = the pair's file name, ``subject`` = the same, SR, ``bicubic_*`` and ``vae_*`` metrics); ``images``
    the first batch's ``low_res``, ``bicubic``, ``sr``, ``high_res``.
    """
    if dataset.scale != pipe.config.scale:
        raise InputError(f"--data_dir: pairs have scale {dataset.scale} but the pipeline was trained for scale "
                         f"{pipe.config.scale}")
    indices = [i for i in range(len(dataset)) if dataset[i]["paired"]]
    if max_samples > 0:
        indices = indices[:max_samples]
    if not indices:
        raise InputError("--data_dir: the split has no paired samples to evaluate")
    batches = [indices[start:start + batch_size] for start in range(0, len(indices), batch_size)]
    device = pipe.denoiser.device
    generator = torch.Generator().manual_seed(seed)
    pixel_range = pipe.config.pixel_range
    sr_scores, bic_scores, vae_scores, names, first, seconds = {}, {}, {}, [], {}, 0.0
    for idx in tqdm(batches, desc="sample_sr", disable=not progress):
        items = [dataset[i] for i in idx]
        low = torch.stack([it["lr"] for it in items])
        high = torch.stack([it["hr"] for it in items])
        _sync(device)
        start = time.perf_counter()
        sr = pipe(low, num_inference_steps=num_inference_steps, generator=generator)
        _sync(device)
        seconds += time.perf_counter() - start
        sr = sr.cpu()
        bicubic = upsample(low, dataset.scale)
        autoencoded = codec.decode(pipe.vae, codec.encode(pipe.vae, high.to(device), pixel_range), pixel_range)
        for store, pred in ((sr_scores, sr), (bic_scores, bicubic), (vae_scores, autoencoded.clamp(0.0, 1.0))):
            for k, v in image_scores(pred, high).items():
                store.setdefault(k, []).extend(v)
        names.extend(os.path.splitext(dataset.names[i])[0] for i in idx)
        if not first:
            first = {"low_res": upsample_nearest(low, dataset.scale), "bicubic": bicubic, "sr": sr, "high_res": high}
    rows = [{"case": name, "subject": name, **{k: sr_scores[k][j] for k in METRICS},
             **{f"bicubic_{k}": bic_scores[k][j] for k in METRICS}, **{f"vae_{k}": vae_scores[k][j] for k in METRICS}}
            for j, name in enumerate(names)]
    metrics = {**summarise(sr_scores), "reference_bicubic": summarise(bic_scores),
               "reference_vae": summarise(vae_scores), "num_images": len(indices),
               "sampling_s_per_image": seconds / len(indices)}
    return metrics, rows, first


def sample_batch(pipe, low: torch.Tensor, steps: int, seed: int = 0) -> torch.Tensor:
    """``pipe(low)`` with ``steps`` Euler steps and a generator seeded ``seed``."""
    return pipe(low, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed))


def _cpu_peak_child(pipeline_dir, low, steps, seed, conn):
    pipe = load_pipeline(pipeline_dir)
    sample_batch(pipe, low, steps, seed)
    with open("/proc/self/status") as f:
        conn.send(next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024)


def sampling_peak_mb(pipe, pipeline_dir: str, low: torch.Tensor, steps: int, seed: int = 0) -> float:
    """Total peak memory (MB) of sampling ``low`` [B, 1, h, w], weights included: on a GPU the peak allocation
    (``pipe`` already there); on the CPU the peak RSS (``VmHWM``) of a fresh spawned process that loads the
    pipeline from ``pipeline_dir`` and samples (memory freed earlier in this one cannot hide the peak)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        sample_batch(pipe, low, steps, seed)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2 ** 20
    ctx = multiprocessing.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_cpu_peak_child, args=(pipeline_dir, low, steps, seed, send))
    proc.start()
    send.close()  # the child holds the only writer: its death ends recv() with EOFError
    try:
        peak = recv.recv()
    except EOFError:
        raise RuntimeError(f"the memory-measuring process failed (exit {proc.join() or proc.exitcode})") from None
    proc.join()
    return peak


def upsample_nearest(low_res: torch.Tensor, scale: int) -> torch.Tensor:
    """Nearest-neighbour upsampling, to show the low-res input at the grid's size."""
    return torch.nn.functional.interpolate(low_res, scale_factor=scale, mode="nearest")
