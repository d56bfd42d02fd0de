"""Tiny guided-diffusion set-ups shared by the seam tests and the two-rank worker."""

import os
import sys
import traceback

import numpy as np
import torch
import torch.distributed as dist
from guided_diffusion import logger

from patches.guided_diffusion import (DIFFUSION_DEFAULTS, MODEL_DEFAULTS, SeamTrainLoop, configure_logger,
                                      create_seam_diffusion, create_seam_model)

TINY_MODEL = {**MODEL_DEFAULTS, "image_size": 32, "in_channels": 2, "num_channels": 32, "num_res_blocks": 1,
              "num_heads": 1, "attention_resolutions": "8"}
TINY_DIFFUSION = {**DIFFUSION_DEFAULTS, "diffusion_steps": 50}


def batches(n, seed=0, batch_size=2):
    """``n`` fixed ``(x, cond)`` batches of shape [batch_size, 2, 32, 32]."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch_size, 2, 32, 32, generator=g), {}) for _ in range(n)]


def endless(items):
    while True:
        yield from items


def seed_all(seed=0):
    torch.manual_seed(seed)
    np.random.seed(seed)


def seam_loop(run_dir, data, *, max_steps, seed=0, model=None, diffusion=None, **kwargs):
    """A SeamTrainLoop on the tiny model, logging to ``run_dir`` every step."""
    configure_logger(str(run_dir), jsonl_name="metrics_step.jsonl", tensorboard=False)
    seed_all(seed)
    model = model or create_seam_model(**TINY_MODEL)
    diffusion = diffusion or create_seam_diffusion(**TINY_DIFFUSION)
    defaults = dict(batch_size=2, microbatch=-1, lr=1e-3, ema_rate="0.9", log_interval=1, save_interval=1000,
                    resume_checkpoint="")
    defaults.update(kwargs)
    return SeamTrainLoop(model=model, diffusion=diffusion, data=data, max_steps=max_steps, **defaults)


def close_logger():
    logger.get_current().close()


def run_worker(main, *args) -> None:
    """Run a multi-rank test worker's ``main(*args)``, tear down the process group and leave with ``os._exit``.

    Skipping the C++ static destructors matters: with mpi4py + gloo about one exit in eight aborted there
    ("terminate called without an active exception", exit 6) after every result was written.
    """
    failed = False
    try:
        torch.set_num_threads(1)
        main(*args)
    except BaseException:
        failed = True
        traceback.print_exc()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1 if failed else 0)
