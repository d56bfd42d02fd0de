"""Seams on guided-diffusion: model, diffusion, train loop and logger extension points."""

from guided_diffusion.resample import create_named_schedule_sampler

from patches.guided_diffusion.distributed import setup_dist
from patches.guided_diffusion.diffusion import (DIFFUSION_DEFAULTS, DIFFUSION_HELP, LossContext, LossTerm, SeamDiffusion,
                                               create_seam_diffusion)
from patches.guided_diffusion.logging import configure_logger
from patches.guided_diffusion.model import MODEL_DEFAULTS, MODEL_HELP, create_seam_model
from patches.guided_diffusion.train_loop import NonFiniteLossError, SeamTrainLoop, latest_checkpoint, load_model_weights
from patches.guided_diffusion.unet import BOTTLENECK, ForwardContext, SeamUNetModel, unwrap

__all__ = [
    "BOTTLENECK", "DIFFUSION_DEFAULTS", "DIFFUSION_HELP", "ForwardContext", "LossContext", "LossTerm",
    "MODEL_DEFAULTS", "MODEL_HELP",
    "NonFiniteLossError", "SeamDiffusion", "SeamTrainLoop", "SeamUNetModel", "configure_logger",
    "create_named_schedule_sampler", "create_seam_diffusion", "create_seam_model", "latest_checkpoint",
    "load_model_weights", "setup_dist", "unwrap",
]
