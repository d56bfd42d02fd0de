"""What an exact resume needs beyond the checkpoint files.

- :func:`loader_generator`: a DataLoader's own generator. Without one, creating a DataLoader iterator
  draws its worker base seed from torch's global generator, so a run resumed mid-epoch (a new
  iterator where the straight run kept its old one) draws one number more and every later noise
  sample shifts. With it, iterators never touch the global generators; the shuffle order comes from
  the sampler's seed and epoch (accelerate's ``SeedableRandomSampler``, ``DistributedSampler``).
  Datasets draw no random numbers of their own (crops are keyed by seed, epoch and index), so worker
  seeds do not change a sample.
"""

from __future__ import annotations

import numpy as np
import torch


def loader_generator(*key: int) -> torch.Generator:
    """A CPU generator seeded from ``key`` (e.g. the run's seed, or seed and epoch)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([int(k) for k in key]).generate_state(1)[0]))
