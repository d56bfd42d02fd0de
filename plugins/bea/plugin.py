"""The BEA slice plugin: classifier-free guided training with BEA and the dual loss.

Classes: 0 healthy, 1 unhealthy (the slice label), 2 the null class. Each
training label is replaced by the null class with probability
``label_dropout``, so one network learns the conditional and the
unconditional model (classifier-free guidance, Ho & Salimans 2022).

``use_bea`` inserts :class:`~plugins.bea.gate.BoundaryGate` at the bottleneck;
``boundary_loss_weight`` (lambda) adds ``lambda * L_bea`` to upstream's MSE
under the log key ``l_bea``, on the features of ``input_blocks[bea_enc_block]`` and
``output_blocks[bea_dec_block]`` (-1: :func:`~plugins.bea.dual_loss.default_pair`; a decoder
block fed by the encoder block as its skip input is refused). ``bea_norm_ratio``
(``rms(f_enc) / rms(f_dec)``) and ``bea_enc_rms`` are logged beside it, without gradient.
With lambda = 0, ``l_bea`` is still logged (computed without gradient) and the loss is
bit for bit the MSE-only loss. After every ``val_loss_interval``-th epoch, ``val_mse``
(:mod:`plugins.bea.validation`) is the run's validation curve.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Subset

from patches.guided_diffusion import LossTerm
from plugins.bea.dual_loss import boundary_consistency_loss, default_pair, feature_norms, skip_partner
from plugins.bea.gate import BoundaryGate
from plugins.bea.validation import ValidationLoss
from plugins.common.errors import InputError
from plugins.data.brats_layout import check_modalities
from plugins.slice_diffusion.training import SlicePlugin, build_model_and_diffusion

HEALTHY, UNHEALTHY, NULL_CLASS = 0, 1, 2
NUM_CLASSES = 3

BEA_DEFAULTS = dict(
    use_bea=True,
    boundary_loss_weight=0.3,
    label_dropout=0.1,
    bea_enc_block=-1,
    bea_dec_block=-1,
    val_loss_interval=1,
    val_loss_slices=256,
)
BEA_HELP = dict(
    use_bea="insert the boundary-enhanced attention gate at the bottleneck",
    boundary_loss_weight="lambda of the boundary-aware consistency term (0 = MSE only)",
    label_dropout="probability of replacing a label by the null class (classifier-free guidance)",
    bea_enc_block="input_blocks index of the encoder feature of L_bea (-1 = a mid-level block)",
    bea_dec_block="output_blocks index of the decoder feature of L_bea, same shape, not fed by the "
                  "encoder block's skip (-1 = the nearest such block)",
    val_loss_interval="epochs between validation-curve points: the denoising MSE val_mse on validation slices "
                      "(0 = off)",
    val_loss_slices="validation slices val_mse averages over, evenly spaced over the split (0 = all)",
)


def check_bea_args(args) -> None:
    """Refuse a negative lambda, a label dropout outside [0, 1), a class count other than 3, a negative
    validation interval or slice count."""
    for key in ("val_loss_interval", "val_loss_slices"):
        if getattr(args, key) < 0:
            raise InputError(f"--{key}: got {getattr(args, key)}; expected an integer >= 0")
    if args.boundary_loss_weight < 0:
        raise InputError(f"--boundary_loss_weight: got {args.boundary_loss_weight}; expected >= 0 "
                         "(0.1 to 0.5 advised; above that training can become unstable)")
    if args.num_classes != NUM_CLASSES:
        raise InputError(f"--num_classes: got {args.num_classes}; classifier-free guidance needs {NUM_CLASSES} "
                         "(healthy, unhealthy, null)")
    if not 0.0 <= args.label_dropout < 1.0:
        raise InputError(f"--label_dropout: got {args.label_dropout}; expected 0 <= value < 1")


@torch.no_grad()
def block_shapes(model) -> tuple[list, list]:
    """[C, h, w] output shape of every ``input_blocks``/``output_blocks`` entry (one dummy forward)."""
    shapes = {"input": {}, "output": {}}
    hooks = [block.register_forward_hook(lambda _m, _i, out, k=kind, n=i: shapes[k].__setitem__(n, tuple(out.shape[1:])))
             for kind, blocks in (("input", model.input_blocks), ("output", model.output_blocks))
             for i, block in enumerate(blocks)]
    training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        x = torch.zeros(1, model.in_channels, model.image_size, model.image_size, device=p.device, dtype=p.dtype)
        y = torch.zeros(1, dtype=torch.long, device=p.device) if model.num_classes else None
        model(x, torch.zeros(1, dtype=torch.long, device=p.device), y=y)
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    return [shapes["input"][i] for i in range(len(model.input_blocks))], \
        [shapes["output"][i] for i in range(len(model.output_blocks))]


def bea_pair(model, enc: int = -1, dec: int = -1) -> tuple[int, int]:
    """The (encoder, decoder) block indices of ``L_bea``; -1/-1 picks :func:`default_pair`."""
    enc_shapes, dec_shapes = block_shapes(model)
    if enc == -1 and dec == -1:
        try:
            return default_pair(enc_shapes, dec_shapes, len(model.channel_mult), model.num_res_blocks)
        except ValueError as err:
            raise InputError(f"--bea_enc_block/--bea_dec_block: {err}") from None
    if not (0 <= enc < len(enc_shapes) and 0 <= dec < len(dec_shapes)):
        raise InputError(f"--bea_enc_block/--bea_dec_block: got {enc}/{dec}; expected 0..{len(enc_shapes) - 1} and "
                         f"0..{len(dec_shapes) - 1} (or both -1)")
    if enc_shapes[enc] != dec_shapes[dec]:
        raise InputError(f"--bea_enc_block/--bea_dec_block: input_blocks[{enc}] gives {list(enc_shapes[enc])}, "
                         f"output_blocks[{dec}] gives {list(dec_shapes[dec])}; expected the same shape")
    if skip_partner(len(enc_shapes), dec) == enc:
        raise InputError(f"--bea_enc_block/--bea_dec_block: output_blocks[{dec}] takes input_blocks[{enc}] as its "
                         "skip input, so L_bea collapses by copying it; pick another decoder block")
    return enc, dec


def attach_bea(model, args) -> None:
    """Insert the BEA gate and the encoder/decoder feature taps the dual loss reads (model building only)."""
    if args.use_bea:
        model.add_bottleneck_module(BoundaryGate(model.middle_block[-1].out_channels))
    enc, dec = bea_pair(model, getattr(args, "bea_enc_block", -1), getattr(args, "bea_dec_block", -1))
    model.add_feature_tap("bea_enc", ("input", enc))
    model.add_feature_tap("bea_dec", ("output", dec))


def bea_loss_terms(weight: float) -> list[LossTerm]:
    """``l_bea`` on the tapped features and ``x_start`` (detached when ``weight == 0``), and the
    monitors ``bea_norm_ratio`` and ``bea_enc_rms`` (weight 0, no gradient)."""

    def l_bea(ctx):
        with torch.set_grad_enabled(weight > 0 and torch.is_grad_enabled()):
            return boundary_consistency_loss(ctx.features["bea_enc"], ctx.features["bea_dec"], ctx.x_start)

    def norms(ctx):
        with torch.no_grad():
            return feature_norms(ctx.features["bea_enc"], ctx.features["bea_dec"])

    return [LossTerm("l_bea", l_bea, weight), LossTerm("bea_norm_ratio", lambda ctx: norms(ctx)[0], 0.0),
            LossTerm("bea_enc_rms", lambda ctx: norms(ctx)[1], 0.0)]


class BeaPlugin(SlicePlugin):
    """Class-conditional (3 classes) guided-diffusion UNet with optional BEA and dual loss."""

    def __init__(self, args):
        check_bea_args(args)
        self.label_dropout = args.label_dropout
        if (args.bea_enc_block, args.bea_dec_block) != (-1, -1):  # refuse a bad pair before the run starts
            channels = self.channels(len(check_modalities(args.modalities)))
            bea_pair(build_model_and_diffusion(args, *channels)[0], args.bea_enc_block, args.bea_dec_block)

    def extend(self, model, diffusion, data, args) -> None:
        attach_bea(model, args)
        for term in bea_loss_terms(args.boundary_loss_weight):
            diffusion.add_loss_term(term)
        self.callbacks = []
        if args.val_loss_interval > 0 and len(data.val):
            n = len(data.val) if args.val_loss_slices == 0 else min(args.val_loss_slices, len(data.val))
            picked = Subset(data.val, np.linspace(0, len(data.val) - 1, n).round().astype(int).tolist())
            self.callbacks.append(ValidationLoss(diffusion, picked, args.batch_size, args.seed,
                                                 args.val_loss_interval, args.out_dir))

    def epoch_callbacks(self) -> list:
        return self.callbacks

    def batch(self, batch: dict) -> tuple:
        labels = batch["slice_label"].long()
        drop = torch.rand(labels.shape) < self.label_dropout
        return batch["image"], {"y": torch.where(drop, torch.full_like(labels, NULL_CLASS), labels)}
