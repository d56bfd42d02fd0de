"""EMA decay per optimizer step: guided-diffusion's constant rate, or diffusers' warm-up schedule.

Upstream updates ``ema = d * ema + (1 - d) * w`` with a constant ``d = rate`` (0.9999): after
n steps a fraction ``rate ** n`` of the EMA is still the initialisation (90% after 1,000 steps).
With the warm-up, the decay at optimizer step s (1-based) is diffusers' ``EMAModel.get_decay(s)``
with ``use_ema_warmup=True``, ``inv_gamma=1``:

    d_s = min(rate, 1 - s ** -power)   (d_1 = 0: the EMA starts as the weights after the first step)

(power 2/3: d = 0.99 at step 1,000, 0.9966 at 5,000; capped at ``rate``). What the EMA holds after
n steps is summarised by ``ema_summary``: the initialisation's weight ``I_n = prod_k d_k`` and the
mean age of the weights it averages ``A_n`` (in steps, the initialisation counted at age n), from ``A_k = d_k (A_{k-1} + 1)``, ``A_0 = 0``.
"""

from __future__ import annotations

from functools import lru_cache

from diffusers.training_utils import EMAModel

EMA_POWER = 2 / 3


@lru_cache(maxsize=8)
def _schedule(rate: float, power: float) -> EMAModel:
    return EMAModel([], decay=rate, use_ema_warmup=True, inv_gamma=1.0, power=power)


def ema_decay(rate: float, step: int, warmup: bool, power: float = EMA_POWER) -> float:
    """The decay of the update that completes optimizer step ``step`` (1-based)."""
    return float(_schedule(float(rate), float(power)).get_decay(step)) if warmup else float(rate)


def ema_summary(rate: float, steps: int, warmup: bool, power: float = EMA_POWER, decay_fn=None) -> dict:
    """``{"ema_init_weight": I_n, "ema_mean_age_steps": A_n}`` after ``steps`` EMA updates; ``decay_fn(s)``
    replaces :func:`ema_decay` for another schedule (e.g. a diffusers ``EMAModel``'s ``get_decay``)."""
    decay_fn = decay_fn or (lambda s: ema_decay(rate, s, warmup, power))
    init_weight, age = 1.0, 0.0
    for d in (float(decay_fn(s)) for s in range(1, steps + 1)):
        init_weight, age = d * init_weight, d * (age + 1.0)
    return {"ema_init_weight": float(init_weight), "ema_mean_age_steps": float(age)}
