"""guided-diffusion's ``TrainLoop`` with an end, epochs, a non-finite guard and safe checkpoints.

``SeamTrainLoop`` keeps upstream's step (``forward_backward``, the
``MixedPrecisionTrainer``, EMA, lr annealing, logging) and adds:

- ``max_steps``: stop after that many optimizer steps in total (resume included)
  and write the last checkpoint;
- epochs: when ``data`` is a sized iterable of ``(batch, cond)`` (e.g. a
  ``DataLoader``), one pass over it is an epoch; ``data.set_epoch(e)`` is called
  when present, and every ``epoch_callbacks`` entry runs as ``cb(loop, epoch)``
  after the epoch's last step, and the python, numpy and torch generators are then put back where
  training left them (a validation callback's loaders and samplers draw from them), so how often a run
  validates never changes its weights. An endless iterator (upstream's ``load_data``)
  works too, without epochs;
- a non-finite guard: a step whose loss or gradient norm is NaN/Inf is skipped (grads
  zeroed, no optimizer or EMA update) and counted in ``skipped_steps``;
  ``max_consecutive_skips`` skips in a row stop the run with
  :class:`NonFiniteLossError` (fp16 keeps upstream's loss-scale skipping);
- ``ema_warmup``: the EMA decay follows diffusers' warm-up schedule (:mod:`patches.ema`) instead of
  upstream's constant rate, so the EMA means something after a few thousand steps;
- ``grad_clip > 0``: clip the total gradient norm before the optimizer step;
- without fp16 the step's checks and logged norms come from fused reductions synced once
  (``_step_norms``) instead of upstream's two ``.item()`` per parameter; the logged ``grad_norm`` is the
  total before clipping (upstream's is after), ``param_norm`` unchanged;
- ``use_bf16``: the forward and loss under ``torch.autocast(dtype=bfloat16)``;
- DDP over gloo on the CPU when the world has more than one rank (upstream
  only synchronises gradients on CUDA);
- checkpoints written atomically (``modelNNNNNN.pt`` last, so its presence
  implies ``opt``/``ema``/``state`` files), NNNNNN = optimizer steps done;
  the ``state`` file holds the step, skip counts, fp16 loss scale and the python, numpy and torch
  RNG states; a data iterable with ``iter_from(k)`` starts a resumed epoch at batch ``k`` itself
  (without loading the skipped batches); every
  parameter on the model (plugin modules, heads, loss parameters) is saved;
- resume from a checkpoint file, a run directory (its latest checkpoint), or
  ``"latest"`` (the run's own directory; nothing there means a fresh start),
  loading with ``weights_only=True``; ``init_from_checkpoint=True`` loads the
  weights only and starts a new run at step 0 with a fresh optimizer (e.g. the
  next stage of a staged training);
- the optimizer holds only parameters with ``requires_grad`` (frozen modules
  stay out of it; the count is logged at start); it and the EMA update run torch's multi-tensor
  (``foreach``) kernels, which torch picks by default only on CUDA: the same arithmetic, fewer kernel
  launches on the CPU (``scripts/bench_seams.py``);
- ``backward_fn(loop, loss)``: replaces the backward of each (micro)batch loss,
  e.g. gradient surgery or a gradient probe; it must leave the gradients in
  ``p.grad`` and may call ``loop.backward_default(loss)`` (upstream's backward).
  Under DDP (``loop.use_ddp``) gradients are averaged over the ranks only by a
  real backward reaching every trainable parameter (DDP's hooks);
  ``torch.autograd.grad`` and assigning ``p.grad`` bypass them (see the
  surrogate backward in ``plugins/segdiff/gradients.py``).

With ``grad_clip=0``, ``use_bf16=False``, ``ema_warmup=False`` and a single rank, losses and
parameters equal upstream's ``TrainLoop``, bit for bit, for the same seed.
"""

from __future__ import annotations

import glob
import os
import random
import re
import resource
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.optim import AdamW
from guided_diffusion import logger
from guided_diffusion.train_util import TrainLoop

from patches.checkpoints import CheckpointError, CheckpointWriteError, atomic_save, load_checkpoint
from patches.errors import SeamError
from patches.ema import ema_decay

_MODEL_FILE = re.compile(r"model(\d{6,})\.pt$")


class NonFiniteLossError(SeamError, RuntimeError):
    """Too many consecutive steps had a NaN/Inf loss or gradient."""


def latest_checkpoint(run_dir: str) -> str | None:
    """The ``modelNNNNNN.pt`` with the largest step in ``run_dir`` (None if there is none)."""
    found = [(int(m.group(1)), p) for p in glob.glob(os.path.join(run_dir, "model*.pt"))
             if (m := _MODEL_FILE.search(os.path.basename(p)))]
    return max(found)[1] if found else None


def resolve_resume_checkpoint(spec: str, run_dir: str) -> str:
    """``""`` -> ``""``; ``"latest"`` -> newest in ``run_dir`` or ``""``; a directory -> its newest; a file -> itself."""
    if not spec:
        return ""
    if spec == "latest":
        return latest_checkpoint(run_dir) or ""
    if os.path.isdir(spec):
        found = latest_checkpoint(spec)
        if not found:
            raise CheckpointError(f"--resume_checkpoint {spec}: no modelNNNNNN.pt checkpoint in that directory")
        return found
    if not os.path.isfile(spec):
        raise CheckpointError(f"--resume_checkpoint {spec}: no such file or directory")
    if not _MODEL_FILE.search(os.path.basename(spec)):
        raise CheckpointError(f"--resume_checkpoint {spec}: expected a file named modelNNNNNN.pt")
    return spec


def checkpoint_step(path: str) -> int:
    return int(_MODEL_FILE.search(os.path.basename(path)).group(1))


def load_model_weights(model: torch.nn.Module, path: str) -> None:
    """Load a checkpoint into ``model``, naming missing/unexpected/mis-shaped keys if it does not fit."""
    state = load_checkpoint(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if keys:
                parts.append(f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''} ({len(keys)})")
        raise CheckpointError(f"{path}: checkpoint of another architecture; " + "; ".join(parts))
    model.load_state_dict(state)


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        "python": torch.tensor(internal, dtype=torch.int64),
        "python_gauss": torch.tensor(float("nan") if gauss is None else gauss, dtype=torch.float64),
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
        "numpy_pos": pos, "numpy_has_gauss": has_gauss, "numpy_cached": cached,
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    if "python" in state:
        gauss = float(state["python_gauss"])
        random.setstate((3, tuple(int(v) for v in state["python"].tolist()), None if gauss != gauss else gauss))
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _LossRecorder:
    """Delegates to upstream's ``MixedPrecisionTrainer`` and keeps every loss passed to ``backward``."""

    def __init__(self, trainer, backward_fn=None):
        self.trainer = trainer
        self.backward_fn = backward_fn
        self.losses = []

    def __getattr__(self, name):
        return getattr(self.trainer, name)

    def zero_grad(self):
        self.losses = []
        self.trainer.zero_grad()

    def backward(self, loss):
        self.losses.append(loss.detach())
        if self.backward_fn is None:
            self.trainer.backward(loss)
        else:
            self.backward_fn(loss)


class SeamTrainLoop(TrainLoop):
    """Upstream ``TrainLoop`` plus the extension points listed in the module docstring."""

    def __init__(self, *, max_steps: int = 0, epoch_callbacks=(), max_consecutive_skips: int = 10,
                 grad_clip: float = 0.0, use_bf16: bool = False, find_unused_parameters: bool = False,
                 init_from_checkpoint: bool = False, run_dir: str | None = None, backward_fn=None,
                 ema_warmup: bool = False, **upstream_kwargs):
        if grad_clip < 0:
            raise SeamError(f"grad_clip must be >= 0, got {grad_clip}")
        if upstream_kwargs.get("use_fp16") and (use_bf16 or grad_clip):
            raise SeamError("use_fp16 cannot be combined with use_bf16 or grad_clip (fp16 keeps upstream's loss scaling)")
        if use_bf16 and upstream_kwargs.get("use_fp16"):
            raise SeamError("choose one of use_fp16 and use_bf16")
        self.run_dir = run_dir or logger.get_dir()
        upstream_kwargs["resume_checkpoint"] = resolve_resume_checkpoint(
            upstream_kwargs.get("resume_checkpoint", ""), self.run_dir)
        self.init_from_checkpoint = init_from_checkpoint
        self.max_steps = max_steps
        self.epoch_callbacks = list(epoch_callbacks)
        self.max_consecutive_skips = max_consecutive_skips
        self.grad_clip = grad_clip
        self.use_bf16 = use_bf16
        self.ema_warmup = ema_warmup
        self.skipped_steps = 0
        self.consecutive_skips = 0
        self.epoch = 0
        self._optimizer_built = False
        super().__init__(**upstream_kwargs)
        self._optimise_trainable_only()
        self.mp_trainer = _LossRecorder(
            self.mp_trainer, None if backward_fn is None else (lambda loss: backward_fn(self, loss)))
        self.steps_per_epoch = len(self.data) if hasattr(self.data, "__len__") else 0
        if self.steps_per_epoch:
            self.epoch = self.resume_step // self.steps_per_epoch
        if self.resume_step:
            self._load_train_state()
        if not self.use_ddp and dist.get_world_size() > 1:
            self.ddp_model = DDP(self.model, broadcast_buffers=False, bucket_cap_mb=128,
                                 find_unused_parameters=find_unused_parameters)
            self.use_ddp = True
            logger.log("seam: gradients are synchronised by DDP over gloo on the CPU")
        self._batches = None

    def backward_default(self, loss):
        """Upstream's backward of ``loss`` (loss scaling under fp16)."""
        self.mp_trainer.trainer.backward(loss)

    def _param_groups(self, trainable: list) -> list:
        """What the optimizer holds: the ``trainable`` master parameters, one group (a subclass may split them)."""
        return trainable

    def _optimise_trainable_only(self):
        params = self.mp_trainer.master_params
        trainable = [p for p in params if p.requires_grad]
        if len(trainable) < len(params) and self.use_fp16:
            raise SeamError("frozen parameters are not supported with use_fp16 (fp16 flattens master weights)")
        # upstream's AdamW, with the multi-tensor kernels torch uses only on CUDA by default (the same arithmetic)
        self.opt = AdamW(self._param_groups(trainable), lr=self.lr, weight_decay=self.weight_decay, foreach=True)
        self._optimizer_built = True
        if self.resume_step:
            self._load_optimizer_state()
        total = sum(p.numel() for p in params)
        logger.log(f"optimizer: {sum(p.numel() for p in trainable)} of {total} parameters trainable "
                   f"({len(trainable)} of {len(params)} tensors)")

    # ----- resume (weights_only everywhere) -------------------------------
    def _load_and_sync_parameters(self):
        if self.resume_checkpoint:
            if not self.init_from_checkpoint:
                self.resume_step = checkpoint_step(self.resume_checkpoint)
            logger.log(f"loading model from checkpoint: {self.resume_checkpoint}...")
            load_model_weights(self.model, self.resume_checkpoint)
        for p in self.model.parameters():
            with torch.no_grad():
                dist.broadcast(p, 0)

    def _sibling(self, name: str) -> str:
        return os.path.join(os.path.dirname(self.resume_checkpoint), f"{name}{self.resume_step:06d}.pt")

    def _load_ema_parameters(self, rate):
        path = self._sibling(f"ema_{rate}_")
        if not os.path.exists(path):
            logger.warn(f"no EMA checkpoint {path}: EMA restarts from the model weights")
            return [p.detach().clone() for p in self.mp_trainer.master_params]
        logger.log(f"loading EMA from checkpoint: {path}...")
        return self.mp_trainer.state_dict_to_master_params(load_checkpoint(path))

    def _load_optimizer_state(self):
        if not self._optimizer_built:
            return  # upstream's __init__ first builds an optimizer over every parameter; load into ours
        path = self._sibling("opt")
        if os.path.exists(path):
            logger.log(f"loading optimizer state from checkpoint: {path}")
            self.opt.load_state_dict(load_checkpoint(path))
        else:
            logger.warn(f"no optimizer checkpoint {path}: the optimizer restarts")

    def _load_train_state(self):
        path = self._sibling("state")
        if not os.path.exists(path):
            return
        state = load_checkpoint(path)
        self.skipped_steps = int(state["skipped_steps"])
        self.consecutive_skips = int(state.get("consecutive_skips", 0))
        if "lg_loss_scale" in state:
            self.mp_trainer.trainer.lg_loss_scale = float(state["lg_loss_scale"])
        _set_rng_state(state["rng"])

    def save(self):
        step = self.step + self.resume_step
        states = [(f"ema_{rate}_{step:06d}.pt", self.mp_trainer.master_params_to_state_dict(params))
                  for rate, params in zip(self.ema_rate, self.ema_params)]
        model_state = self.mp_trainer.master_params_to_state_dict(self.mp_trainer.master_params)
        if dist.get_rank() == 0:
            logger.log(f"saving checkpoint at step {step}...")
            files = [(f"opt{step:06d}.pt", self.opt.state_dict()),
                     (f"state{step:06d}.pt", {"step": step, "skipped_steps": self.skipped_steps,
                                              "consecutive_skips": self.consecutive_skips,
                                              "lg_loss_scale": self.mp_trainer.lg_loss_scale, "rng": _rng_state()}),
                     *states, (f"model{step:06d}.pt", model_state)]
            written = []
            try:
                for name, state in files:
                    written.append(os.path.join(self.run_dir, name))
                    atomic_save(state, written[-1])
            except CheckpointWriteError:
                for path in written[:-1]:  # no opt/state/ema file without its model file
                    os.remove(path)
                raise
        dist.barrier()

    # ----- the loop -------------------------------------------------------
    def _total_steps(self) -> int:
        return self.step + self.resume_step

    def _finished(self) -> bool:
        done = self._total_steps()
        return bool((self.max_steps and done >= self.max_steps)
                    or (self.lr_anneal_steps and done >= self.lr_anneal_steps))

    def _next_batch(self):
        if not self.steps_per_epoch:
            return next(self.data)
        if self._batches is None:
            if hasattr(self.data, "set_epoch"):
                self.data.set_epoch(self.epoch)
            seen = self._total_steps() - self.epoch * self.steps_per_epoch  # resume inside an epoch
            if hasattr(self.data, "iter_from"):
                self._batches = self.data.iter_from(seen)
            else:
                self._batches = iter(self.data)
                for _ in range(seen):
                    next(self._batches)
        return next(self._batches)

    def _end_epoch_if_due(self):
        if self.steps_per_epoch and self._total_steps() >= (self.epoch + 1) * self.steps_per_epoch:
            streams = _rng_state()
            for callback in self.epoch_callbacks:
                callback(self, self.epoch)
            _set_rng_state(streams)  # what a callback draws never shifts training's noise
            self.epoch += 1
            self._batches = None

    def run_loop(self):
        saved_at = None
        while not self._finished():
            batch, cond = self._next_batch()
            start = time.perf_counter()
            self.run_step(batch, cond)
            logger.logkv_mean("step_time_s", time.perf_counter() - start)
            if self.step % self.log_interval == 0:
                logger.logkv("peak_mem_mb", _peak_memory_mb())
                logger.dumpkvs()
            self.step += 1
            self._end_epoch_if_due()
            if self._total_steps() % self.save_interval == 0:
                self.save()
                saved_at = self._total_steps()
        if saved_at != self._total_steps():
            self.save()

    def forward_backward(self, batch, cond):
        with torch.autocast(device_type=batch.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            super().forward_backward(batch, cond)

    def _update_ema(self):
        """Upstream's update ``ema = ema * rate + p * (1 - rate)`` in multi-tensor kernels (the same arithmetic);
        with ``ema_warmup`` at the decay of the step this update completes."""
        step = self._total_steps() + 1
        with torch.no_grad():
            for rate, params in zip(self.ema_rate, self.ema_params):
                rate = ema_decay(rate, step, self.ema_warmup)
                torch._foreach_mul_(params, rate)
                torch._foreach_add_(params, self.mp_trainer.master_params, alpha=1 - rate)

    def _step_norms(self) -> tuple[bool, float, float]:
        """Clip (if asked); ``(finite, grad_norm, param_norm)`` in one sync: finite when this step's losses and
        total gradient norm are; grad_norm = ||all grads||_2 before clipping, param_norm = ||all params||_2."""
        params = self.mp_trainer.master_params
        grads = [p.grad for p in params if p.grad is not None]
        with torch.no_grad():
            loss = torch.stack(self.mp_trainer.losses).sum().float()
            if not grads:
                grad_norm = torch.zeros((), device=loss.device)
            elif self.grad_clip:
                grad_norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
            else:
                grad_norm = torch.nn.utils.get_total_norm(grads)
            param_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(params)))
            loss, grad_norm, param_norm = torch.stack([loss, grad_norm.float().to(loss.device),
                                                       param_norm.float().to(loss.device)]).tolist()
        return bool(np.isfinite(loss + grad_norm)), grad_norm, param_norm

    def run_step(self, batch, cond):
        self.forward_backward(batch, cond)
        if self.use_fp16:  # upstream's loss-scale skipping and norms
            if self.mp_trainer.optimize(self.opt):
                self._update_ema()
        else:
            self._guarded_step()
        self._anneal_lr()
        self.log_step()

    def _guarded_step(self):
        """Skip a non-finite step (count it; stop after ``max_consecutive_skips``), else step the optimizer."""
        finite, grad_norm, param_norm = self._step_norms()
        if not finite:
            self.mp_trainer.zero_grad()
            self.skipped_steps += 1
            self.consecutive_skips += 1
            logger.logkv("skipped_steps", self.skipped_steps)
            logger.warn(f"step {self._total_steps()}: non-finite loss or gradient, step skipped "
                        f"({self.consecutive_skips} in a row)")
            if self.consecutive_skips >= self.max_consecutive_skips:
                raise NonFiniteLossError(
                    f"stopped at step {self._total_steps()}: {self.consecutive_skips} consecutive steps had a "
                    "non-finite loss or gradient (lower --lr, enable --grad_clip, or check the data)")
        else:  # upstream's MixedPrecisionTrainer._optimize_normal, its norms from _step_norms
            self.consecutive_skips = 0
            logger.logkv_mean("grad_norm", grad_norm)
            logger.logkv_mean("param_norm", param_norm)
            self.opt.step()
            self._update_ema()
