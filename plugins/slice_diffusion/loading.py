"""Load a trained slice model for sampling or evaluation, from its checkpoint and saved config.

``--model_path`` is a ``modelNNNNNN.pt`` file or a run directory (its latest
checkpoint); with ``use_ema`` the EMA weights of the same step are loaded
(``ema_<rate>_NNNNNN.pt``); :func:`scored_weights` says which weights an evaluation scored.
The run's ``config.json`` defines the architecture;
architecture flags given on the command line must agree with it.
"""

from __future__ import annotations

import argparse
import glob
import os

from patches.guided_diffusion import latest_checkpoint, load_model_weights
from patches.ema import ema_summary
from patches.guided_diffusion.train_loop import checkpoint_step
from plugins.common.errors import InputError
from plugins.common.run_log import CONFIG_FILE, read_config
from plugins.slice_diffusion.training import build_model_and_diffusion


def resolve_model_path(model_path: str, use_ema: bool) -> tuple[str, str]:
    """``(weights file, run directory)`` for a checkpoint file or a run directory."""
    if not model_path:
        raise InputError("--model_path: expected a modelNNNNNN.pt checkpoint or a run directory")
    if os.path.isdir(model_path):
        found = latest_checkpoint(model_path)
        if not found:
            raise InputError(f"--model_path {model_path}: no modelNNNNNN.pt checkpoint in that directory")
        model_path = found
    if not os.path.isfile(model_path):
        raise InputError(f"--model_path {model_path}: no such file")
    run_dir = os.path.dirname(os.path.abspath(model_path))
    if not os.path.exists(os.path.join(run_dir, CONFIG_FILE)):
        raise InputError(f"--model_path {model_path}: no {CONFIG_FILE} beside it (expected a run directory of ours)")
    if use_ema:
        step = checkpoint_step(model_path)
        ema = sorted(glob.glob(os.path.join(run_dir, f"ema_*_{step:06d}.pt")))
        if not ema:
            raise InputError(f"--use_ema True: no EMA checkpoint of step {step} in {run_dir}")
        model_path = ema[0]
    return model_path, run_dir


def scored_weights(weights: str, config) -> dict:
    """What an evaluation scored: ``{"weights": "ema" | "raw", "checkpoint_step", ...}``; for EMA weights
    also ``ema_rate``, ``ema_warmup`` and :func:`ema_summary` (the initialisation's remaining weight and
    the mean age of the averaged weights, in steps)."""
    config = vars(config) if isinstance(config, argparse.Namespace) else config
    name = os.path.basename(weights)
    step = int(name.rsplit("_", 1)[-1][:-3]) if name.startswith("ema_") else checkpoint_step(weights)
    out = {"weights": "ema" if name.startswith("ema_") else "raw", "checkpoint_step": step}
    if out["weights"] == "ema":
        rate, warmup = float(name.split("_")[1]), bool(config.get("ema_warmup", False))
        out.update(ema_rate=rate, ema_warmup=warmup, **ema_summary(rate, step, warmup))
    return out


def saved_config(run_dir: str, args: argparse.Namespace, argv: list, keys) -> argparse.Namespace:
    """The run's config as a Namespace; refuse architecture flags in ``argv`` that differ from it."""
    saved = read_config(run_dir)
    differ = [f"--{k} {getattr(args, k)!r} (the checkpoint has {saved[k]!r})" for k in keys
              if f"--{k}" in argv and k in saved and getattr(args, k) != saved[k]]
    if differ:
        raise InputError(f"{os.path.join(run_dir, CONFIG_FILE)}: model flags disagree with the checkpoint: "
                         + "; ".join(differ))
    return argparse.Namespace(**saved)


def load_trained_model(weights: str, config: argparse.Namespace, channels: tuple[int, int], attach=None):
    """Build model and diffusion from ``config``, apply ``attach(model, config)``, load ``weights``; eval mode."""
    model, diffusion = build_model_and_diffusion(config, *channels)
    if attach is not None:
        attach(model, config)
    load_model_weights(model, weights)
    return model.eval(), diffusion
