"""Gradient conflict between the segmentation and classification tasks: a probe and PCGrad.

- ``gradient_cosine(g1, g2)``: ``<g1, g2> / (|g1| |g2|)`` over lists of tensors (None = 0).
- ``pcgrad(g1, g2)`` (Yu et al., NeurIPS 2020, two tasks): when ``<g1, g2> < 0`` each gradient
  loses its component along the other, ``g1' = g1 - <g1, g2> / |g2|^2 g2`` (and symmetrically,
  both from the original gradients); returns ``g1' + g2'`` (``g1 + g2`` without conflict).
- ``rank_average(task_grads, params)``: each task gradient averaged over the ranks,
  ``mean_r g^r = (sum_r g^r) / R`` (one ``all_reduce`` of the flattened gradients; an entry
  None on some ranks only counts as zeros there).
- :class:`TaskGradients`: the ``backward_fn`` of :class:`SeamTrainLoop`. It reads the task
  terms of the latest loss (``objective.tasks``; ``task_seg + task_cls = L_total``) and

  * every ``log_interval`` steps (the probe) logs ``grad_cos_seg_cls``, the cosine of the
    two task gradients on the shared encoder (``input_blocks`` and ``middle_block``), at the
    cost of two extra backward passes through the encoder (this rank's gradients under DDP);
  * logs ``sigma_seg`` and ``sigma_cls`` (with the classification head) every step;
  * with ``surgery="pcgrad"`` replaces the backward: both task gradients over every trainable
    parameter (``torch.autograd.grad``, which DDP's reducer does not see), projected by
    ``pcgrad``; ``pcgrad_conflicts`` counts the (micro)batches whose gradients conflicted.
    On one process the projected sum is added to ``p.grad``. Under DDP (R ranks) the
    projection is that of the global gradients, identical on every rank,

        g = pcgrad(mean_r g_seg^r, mean_r g_cls^r),

    delivered by one real backward of the surrogate ``sum_p <p, g_p>`` (``g_p = 0`` where a
    parameter has no gradient) over every trainable parameter of the DDP-wrapped module: it
    adds exactly ``g`` to ``p.grad`` and fires DDP's hooks, whose average of identical
    gradients leaves ``g`` as it is, so the reducer finishes its reduction as after any
    backward. With microbatches each microbatch is projected on its own (its rank average),
    as on one process; the non-final ones run under ``no_sync`` and their surrogate only
    accumulates. Needs DDP's ``find_unused_parameters=False`` (the default).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from guided_diffusion import logger

from plugins.segdiff.heads import sigmas

SURGERIES = ("none", "pcgrad")


def _dot(a, b) -> torch.Tensor:
    parts = [(x.double() * y.double()).sum() for x, y in zip(a, b) if x is not None and y is not None]
    return torch.stack(parts).sum().cpu() if parts else torch.zeros((), dtype=torch.float64)


def _fill(a, b):
    """``a``, or zeros shaped like ``b`` where only ``b`` has a gradient."""
    return a if a is not None or b is None else torch.zeros_like(b)


def gradient_cosine(g1, g2) -> float:
    """Cosine between two gradients given as lists of tensors (None entries count as zeros); NaN if one is 0."""
    norm = (_dot(g1, g1) * _dot(g2, g2)).sqrt()
    return float(_dot(g1, g2) / norm) if norm > 0 else float("nan")


def pcgrad(g1, g2) -> tuple[list, bool]:
    """``(projected sum, conflicted)`` of two task gradients (lists of tensors or None)."""
    g1, g2 = [_fill(a, b) for a, b in zip(g1, g2)], [_fill(b, a) for a, b in zip(g1, g2)]
    dot = _dot(g1, g2)
    if dot >= 0:
        return [None if a is None else a + b for a, b in zip(g1, g2)], False
    c1, c2 = float(dot / _dot(g2, g2)), float(dot / _dot(g1, g1))
    return [None if a is None else (a - c1 * b) + (b - c2 * a) for a, b in zip(g1, g2)], True


def rank_average(task_grads, params) -> list[list]:
    """Each task's gradient (a list aligned with ``params``, None = no gradient) averaged over the ranks.

    Every rank must call it (collectives). An entry None on every rank stays None; one None on some
    ranks only counts as zeros there. A single rank gets its lists back unchanged.
    """
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world == 1:
        return [list(grads) for grads in task_grads]
    device = params[0].device
    present = torch.tensor([[g is not None for g in grads] for grads in task_grads], dtype=torch.int32,
                           device=device)
    dist.all_reduce(present, op=dist.ReduceOp.MAX)  # the same None pattern on every rank
    filled = [[None if not keep else (g if g is not None else torch.zeros_like(p))
               for g, p, keep in zip(grads, params, row)] for grads, row in zip(task_grads, present.tolist())]
    flat_parts = [g.reshape(-1) for grads in filled for g in grads if g is not None]
    if not flat_parts:
        return filled
    flat = torch.cat(flat_parts)
    dist.all_reduce(flat)
    flat.div_(world)
    pieces = iter(flat.split([part.numel() for part in flat_parts]))
    return [[None if g is None else next(pieces).view_as(g).to(g.dtype) for g in grads] for grads in filled]


def backward_surrogate(ddp_model, grads: dict) -> None:
    """Add ``grads[id(p)]`` (zeros where absent) to ``p.grad`` of every trainable parameter of ``ddp_model``.

    One real backward of ``sum_p <p, g_p>``: DDP's hooks fire for every parameter, so its reducer
    finishes the iteration (averaging gradients that are identical on every rank changes nothing).
    """
    if getattr(ddp_model, "find_unused_parameters", False):
        raise RuntimeError("grad_surgery under DDP needs find_unused_parameters=False "
                           "(the surrogate backward reaches every trainable parameter)")
    params = [p for p in ddp_model.module.parameters() if p.requires_grad]
    with torch.autocast(device_type=params[0].device.type, enabled=False):
        terms = [(p * grads[id(p)].detach()).sum() if id(p) in grads else (p * torch.zeros_like(p)).sum()
                 for p in params]
        torch.stack(terms).sum().backward()


def shared_encoder_parameters(model) -> list:
    """Trainable parameters of the encoder and bottleneck (what both task gradients reach)."""
    return [p for block in (model.input_blocks, model.middle_block) for p in block.parameters() if p.requires_grad]


class TaskGradients:
    """``backward_fn(loop, loss)`` for :class:`SeamTrainLoop`: the conflict probe and optional PCGrad."""

    def __init__(self, objective, model, surgery: str = "none", probe: bool = True):
        if surgery not in SURGERIES:
            raise ValueError(f"grad_surgery {surgery!r}: expected one of {SURGERIES}")
        self.objective = objective
        self.model = model
        self.surgery = surgery
        self.probe = probe
        self.conflicts = 0

    def _tasks(self):
        tasks = self.objective.tasks
        return (tasks["seg"].mean(), tasks["cls"].mean()) if {"seg", "cls"} <= set(tasks) else None

    def probe_cosine(self, tasks) -> float:
        """The cosine of the task gradients on the shared encoder (keeps the graph for the real backward)."""
        shared = shared_encoder_parameters(self.model)
        g_seg = torch.autograd.grad(tasks[0], shared, retain_graph=True, allow_unused=True)
        g_cls = torch.autograd.grad(tasks[1], shared, retain_graph=True, allow_unused=True)
        return gradient_cosine(g_seg, g_cls)

    def __call__(self, loop, loss: torch.Tensor) -> None:
        for name, value in sigmas(self.model).items():
            logger.logkv(name, value)
        tasks = self._tasks()
        if tasks is None:
            loop.backward_default(loss)
            return
        if self.probe and loop.step % loop.log_interval == 0 and shared_encoder_parameters(self.model):
            logger.logkv("grad_cos_seg_cls", self.probe_cosine(tasks))
        if self.surgery == "none":
            loop.backward_default(loss)
            return
        params = [p for p in self.model.parameters() if p.requires_grad]
        g_seg = torch.autograd.grad(tasks[0], params, retain_graph=True, allow_unused=True)
        g_cls = torch.autograd.grad(tasks[1], params, allow_unused=True)
        distributed = bool(getattr(loop, "use_ddp", False))
        if distributed:
            g_seg, g_cls = rank_average([g_seg, g_cls], params)
        grads, conflicted = pcgrad(g_seg, g_cls)
        self.conflicts += conflicted
        logger.logkv("pcgrad_conflicts", self.conflicts)
        if distributed:
            backward_surrogate(loop.ddp_model, {id(p): g for p, g in zip(params, grads) if g is not None})
            return
        for p, g in zip(params, grads):
            if g is not None:
                p.grad = g.detach() if p.grad is None else p.grad + g
