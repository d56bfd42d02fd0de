"""Benchmark helpers: interleaved timing and one JSON line per figure.

Targets are ratios measured side by side in one run: every round calls each
variant once (the order reversed every other round), so a noisy shared machine
slows both sides alike. A ratio is the median over rounds of the per-round
ratio, which cancels load that drifts between rounds.
"""

from __future__ import annotations

import json
import statistics
import time


def _round_samples(variants: dict, rounds: int, warmup: int, self_timed: bool = False) -> dict[str, list[float]]:
    """Seconds of each call per round; ``self_timed``: each call returns its own seconds (e.g. timed inside
    worker processes, without their start-up)."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    samples = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            seconds = variants[name]()
            samples[name].append(seconds if self_timed else time.perf_counter() - start)
    return samples


def interleaved_times(variants: dict, rounds: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each ``variants[name]()``, calls interleaved round by round."""
    return {name: statistics.median(v) for name, v in _round_samples(variants, rounds, warmup).items()}


def paired_ratios(variants: dict, baseline: str, rounds: int, warmup: int = 1,
                  self_timed: bool = False) -> tuple[dict, dict]:
    """``({name: median_r(t_name[r] / t_baseline[r])}, {name: median seconds})`` over interleaved rounds
    (``self_timed``: each call returns its own seconds)."""
    samples = _round_samples(variants, rounds, warmup, self_timed)
    base = samples[baseline]
    ratios = {name: statistics.median(t / b for t, b in zip(v, base)) for name, v in samples.items()}
    return ratios, {name: statistics.median(v) for name, v in samples.items()}


def report(figure: str, value: float, **details) -> dict:
    """Print ``{"figure": ..., "value": ..., **details}`` as one JSON line and return it."""
    record = {"figure": figure, "value": round(float(value), 6), **details}
    print(json.dumps(record), flush=True)
    return record


def saved_tensor_bytes(fn) -> int:
    """Bytes of distinct storages autograd saves for backward while ``fn()`` runs (its activation memory).

    Deterministic and device-independent, so two variants compare exactly even on a busy CPU.
    """
    import torch

    seen: dict = {}

    def pack(t):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def peak_device_memory(fn) -> float | None:
    """Peak CUDA memory (MiB) allocated during ``fn()``; None on the CPU."""
    import torch

    if not torch.cuda.is_available():
        fn()
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20
