"""The boundary-aware consistency term of the dual loss, on features that cannot collapse.

    L = L_diff + lambda * L_bea
    L_bea[n] = mean_{c,i,j}( w[n,i,j] * |IN(sg(f_enc))[n,c,i,j] - IN(f_dec)[n,c,i,j]| )
    w[n] = g[n] / (mean(g[n]) + 1e-6),   g = edge_map(x0, feature grid)
    IN(f)[n,c] = (f[n,c] - mean_ij f[n,c]) / sqrt(var_ij f[n,c] + 1e-5)      # instance norm, no affine

``g`` is the Sobel magnitude of the clean image ``x0`` (channels combined), area-resized to
the feature grid, so ``w`` averages to about 1 per sample and weights boundaries up.

Three guards against the collapse of the seed's ``|f_enc - f_dec|`` (measured: 0.115 -> 0.0056 in
150 steps while the encoder feature shrank 0.091 -> 0.025):

- the pair: ``f_enc`` is ``input_blocks[i]``, ``f_dec`` is ``output_blocks[j]`` of the same shape,
  and ``output_blocks[j]`` must not take ``input_blocks[i]`` as its skip input (then the block
  minimises the loss by copying its skip through). :func:`default_pair` picks, as AnoFPDM's BEA
  fork does, a mid-level encoder block and a different decoder block of the same shape;
- the scale: both features are standardised per channel (instance norm), so shrinking them
  (GroupNorm downstream makes their scale free) or a shared constant does not lower ``L_bea``;
- the target: the encoder feature is a stop-gradient (``sg``) target the decoder feature must
  match, so the encoder block is not pulled towards features that are easy to copy.

Measured on the tiny test model, L_bea alone, 150 Adam steps at lr 1e-3: with both features
RMS-normalised but no stop-gradient it still fell to 2% of its start (features smooth enough to
copy through the downsample/upsample path); with instance norm alone also 2%; with instance norm
and the stop-gradient it stays near half its start. :func:`feature_norms` gives the logged values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from plugins.bea.edges import edge_map


def boundary_weights(x0: torch.Tensor, size) -> torch.Tensor:
    """[B, C, H, W] -> [B, 1, h, w] weights ``g / (mean(g) + 1e-6)`` per sample."""
    g = edge_map(x0, size)
    return g / (g.mean(dim=(1, 2, 3), keepdim=True) + 1e-6)


def _rms(f: torch.Tensor) -> torch.Tensor:
    return (f.pow(2).mean(dim=(1, 2, 3), keepdim=True) + 1e-12).sqrt()


def _standardise(f: torch.Tensor) -> torch.Tensor:
    return F.instance_norm(f, eps=1e-5)


def boundary_consistency_loss(feat_enc: torch.Tensor, feat_dec: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """``L_bea`` per sample: [B]. ``feat_enc``, ``feat_dec``: [B, C, h, w] of equal shape; ``x0``: [B, K, H, W]."""
    if feat_enc.shape != feat_dec.shape:
        raise ValueError(f"encoder features {tuple(feat_enc.shape)} and decoder features "
                         f"{tuple(feat_dec.shape)} must have the same shape")
    w = boundary_weights(x0.to(feat_enc.dtype), feat_enc.shape[-2:])
    return (w * (_standardise(feat_enc.detach()) - _standardise(feat_dec)).abs()).mean(dim=(1, 2, 3))


def feature_norms(feat_enc: torch.Tensor, feat_dec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample [B]: ``rms(f_enc) / rms(f_dec)`` and ``rms(f_enc)`` (logged as ``bea_norm_ratio``, ``bea_enc_rms``)."""
    enc, dec = _rms(feat_enc).flatten(), _rms(feat_dec).flatten()
    return enc / dec, enc


def skip_partner(num_input_blocks: int, dec: int) -> int:
    """The ``input_blocks`` index whose output ``output_blocks[dec]`` concatenates as its skip input."""
    return num_input_blocks - 1 - dec


def default_pair(enc_shapes: list, dec_shapes: list, num_levels: int, num_res_blocks: int) -> tuple[int, int]:
    """``(i, j)``: encoder and decoder blocks of the same [C, h, w] output shape, ``j`` not fed by ``i``.

    Preferred, in order: pairs where every skip input of ``output_blocks[j]`` and of the decoder
    blocks before it comes from deeper encoder blocks at a LOWER resolution than ``f_enc`` (the
    decoder sees the encoder feature only downsampled, so it cannot copy it); then the encoder
    block nearest the middle level, its last res block first; then the decoder block nearest its
    skip partner. ``enc_shapes``/``dec_shapes``: the output shape of every input/output block.
    """
    mid = num_levels // 2
    preferred = mid * (num_res_blocks + 1) + num_res_blocks
    n = len(enc_shapes)

    def level(i):
        return (i - 1) // (num_res_blocks + 1) if i else 0

    def copyable(i, j):  # a skip at f_enc's resolution from i or later reaches output_blocks[j]
        return any(skip_partner(n, k) >= i and enc_shapes[skip_partner(n, k)][-1] >= enc_shapes[i][-1]
                   for k in range(j + 1))

    pairs = [(copyable(i, j), abs(level(i) - mid), abs(i - preferred), abs(j - skip_partner(n, i)), i, j)
             for i in range(1, n) for j in range(len(dec_shapes))
             if enc_shapes[i] == dec_shapes[j] and skip_partner(n, j) != i]
    if not pairs:
        raise ValueError("no encoder/decoder block pair of equal shape outside the skip connections; "
                         "pass --bea_enc_block and --bea_dec_block")
    return min(pairs)[4:]
