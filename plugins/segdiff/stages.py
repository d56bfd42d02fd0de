"""Staged training (seed 002, section 6): which parameters train, which loss, which learning rate.

========  =============================================  ========  ==================
stage     trainable parameters                           loss      learning rate
========  =============================================  ========  ==================
1         everything but the classification head and     ``seg``   ``--lr``
          the log-sigmas (segmentation only)
2         the classification head only (backbone,        ``cls``   ``--lr x 10``
          calibration head and log-sigmas frozen)
3         everything (uncertainty weighting on)          ``uw``    ``--lr x 0.1``
========  =============================================  ========  ==================

Stage 1 may run without the classification head (``--use_cls_head False``, as in the seed's
table); the next stage then starts from its weights with a fresh head and log-sigmas
(:func:`load_stage_weights`). Every run directory records its stage in ``stage.json``
(:func:`record_stage`; 0 = unstaged training), beside its checkpoints, so a run resumes only
from a checkpoint of its own stage and a stage starts only from an earlier one.

The seed's plan (``STAGE_PLAN``, section 6 / table 7.3): stage 1 10-20K steps (save 5000, log
100), stage 2 2-5K (save 2000, log 50), stage 3 1-2K (save 1000, log 50).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from patches.checkpoints import load_checkpoint
from plugins.common.errors import InputError
from plugins.common.run_log import CONFIG_FILE, is_main_process, write_json_atomic
from plugins.segdiff.heads import CLS_HEAD

HEAD_PREFIX = f"heads.{CLS_HEAD}."
SIGMA_PREFIX = "loss_parameters."


@dataclass(frozen=True)
class Stage:
    number: int
    mode: str
    lr_factor: float

    def trainable(self, name: str) -> bool:
        """Whether parameter ``name`` (a ``named_parameters`` key) trains in this stage."""
        if self.number == 1:
            return not name.startswith((HEAD_PREFIX, SIGMA_PREFIX))
        if self.number == 2:
            return name.startswith(HEAD_PREFIX)
        return True


STAGES = {1: Stage(1, "seg", 1.0), 2: Stage(2, "cls", 10.0), 3: Stage(3, "uw", 0.1)}

#: The seed's steps, save and log intervals per stage (each overridable by the flags).
STAGE_PLAN = {1: {"max_steps": 20000, "save_interval": 5000, "log_interval": 100},
              2: {"max_steps": 5000, "save_interval": 2000, "log_interval": 50},
              3: {"max_steps": 2000, "save_interval": 1000, "log_interval": 50}}
STAGE_FILE = "stage.json"


def apply_stage(model, stage: Stage) -> dict:
    """Set ``requires_grad`` per ``stage``; returns ``{"trainable": n, "frozen": n}`` parameter counts."""
    counts = {"trainable": 0, "frozen": 0}
    for name, param in model.named_parameters():
        param.requires_grad_(stage.trainable(name))
        counts["trainable" if param.requires_grad else "frozen"] += param.numel()
    return counts


def record_stage(run_dir: str, number: int) -> None:
    """Write ``run_dir/stage.json`` (``{"stage": number}``, 0 = unstaged) on rank 0."""
    if is_main_process():
        os.makedirs(run_dir, exist_ok=True)
        write_json_atomic(os.path.join(run_dir, STAGE_FILE), {"stage": number})


def recorded_stage(run_dir: str) -> int | None:
    """The stage recorded in ``run_dir`` (``stage.json``, else config.json's ``stage``, else 0 for a run with a
    config and None for a folder without one)."""
    path = os.path.join(run_dir, STAGE_FILE)
    if os.path.isfile(path):
        with open(path) as f:
            return int(json.load(f)["stage"])
    config = os.path.join(run_dir, CONFIG_FILE)
    if os.path.isfile(config):
        with open(config) as f:
            return int(json.load(f).get("stage", 0))
    return None


def describe(number: int | None) -> str:
    return "an unstaged run" if number == 0 else "an unknown stage" if number is None else f"stage {number}"


def check_resume_stage(checkpoint: str, number: int) -> None:
    """Refuse to resume ``checkpoint`` as stage ``number`` (0 = unstaged) if a run of another stage wrote it."""
    found = recorded_stage(os.path.dirname(os.path.abspath(checkpoint)))
    if found is not None and found != number:
        raise InputError(f"{checkpoint}: a checkpoint of {describe(found)}; this run is {describe(number)} "
                         f"(choose another --out_dir for {describe(number)})")


def check_init_stage(checkpoint: str, number: int) -> int | None:
    """Refuse to start stage ``number`` from a checkpoint of the same or a later stage; its stage otherwise."""
    found = recorded_stage(os.path.dirname(os.path.abspath(checkpoint)))
    if found is not None and found >= number:
        raise InputError(f"--resume_checkpoint {checkpoint}: a checkpoint of {describe(found)}; stage {number} "
                         f"starts from an earlier stage (stage {number - 1})")
    return found


def load_stage_weights(model, path: str) -> list[str]:
    """Load ``path`` into ``model``; the classification head and log-sigmas may be absent (a stage-1 run
    without the head) and keep their initial values. Returns those absent keys; any other mismatch is refused,
    naming the keys."""
    state = load_checkpoint(path)
    own = model.state_dict()
    fresh = sorted(k for k in set(own) - set(state) if k.startswith((HEAD_PREFIX, SIGMA_PREFIX)))
    missing = sorted(set(own) - set(state) - set(fresh))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        parts = [f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''} ({len(keys)})"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes))
                 if keys]
        raise InputError(f"{path}: checkpoint of another architecture; " + "; ".join(parts))
    model.load_state_dict({**own, **state})
    return fresh
