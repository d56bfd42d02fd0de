"""The per-sample training objective of segmentation diffusion, installed as the diffusion's total.

With ``x_start`` the mask in [-1, 1] (target ``g = x_start > 0``), ``z`` the calibration
logits and ``c`` the classification logits of the image pass (``heads.image_heads``: the same
UNet on the image with the mask channel zeroed at ``t = T - 1``; a second forward, so no head
reads ``x_t``):

    L_seg   = L_diffusion + Dice(z, g) + seg_focal_lambda * focal(z, g; seg_focal_gamma)
    L_cls   = alpha[y] * focal(c, y; focal_gamma)            (alpha from the training split)
    L_total = L_seg                                           mode "seg"   (seg-only, stage 1)
            = L_cls                                           mode "cls"   (stage 2)
            = exp(-2 s_seg) L_seg / 2 + s_seg + exp(-2 s_cls) L_cls / 2 + s_cls   mode "uw"

``L_diffusion`` is upstream's ``terms["loss"]`` (MSE, plus VB with ``learn_sigma``). Every
quantity is per sample ([N]) and logged under ``dice``, ``seg_focal``, ``L_seg``, ``L_cls``;
``terms["loss"]`` becomes ``L_total``. The two task terms of the latest call stay in
``objective.tasks`` (``{"seg": [N], "cls": [N]}``, summing to ``L_total``) for the
gradient probe and PCGrad.
"""

from __future__ import annotations

import torch

from plugins.segdiff.heads import image_heads, image_timesteps
from plugins.segdiff.losses import calibration_loss, multiclass_focal_loss, uncertainty_weighted

MODES = ("seg", "cls", "uw")


class SegDiffObjective:
    """Callable ``(ctx) -> L_total [N]`` for :meth:`SeamDiffusion.set_total`."""

    def __init__(self, mode: str, *, seg_focal_gamma: float = 1.5, seg_focal_lambda: float = 0.5,
                 focal_gamma: float = 2.0, alpha=None):
        if mode not in MODES:
            raise ValueError(f"objective mode {mode!r}: expected one of {MODES}")
        if mode != "seg" and alpha is None:
            raise ValueError(f"objective mode {mode!r} needs the class weights alpha")
        self.mode = mode
        self.seg_focal_gamma = seg_focal_gamma
        self.seg_focal_lambda = seg_focal_lambda
        self.focal_gamma = focal_gamma
        self.alpha = None if alpha is None else torch.as_tensor(alpha, dtype=torch.float32)
        self.tasks: dict = {}

    @property
    def uses_cls(self) -> bool:
        return self.mode != "seg"

    def install(self, diffusion) -> None:
        diffusion.set_total(self)

    def __call__(self, ctx) -> torch.Tensor:
        terms = ctx.terms
        target = (ctx.x_start > 0).float()
        image = ctx.model_kwargs["concat"]
        cls_logits, calib = image_heads(ctx.model, image, image_timesteps(ctx.diffusion, image.shape[0], image.device))
        dice, focal = calibration_loss(calib, target, self.seg_focal_gamma)
        l_seg = terms["loss"].float() + dice + self.seg_focal_lambda * focal
        terms.update(dice=dice, seg_focal=focal, L_seg=l_seg)
        if not self.uses_cls:
            self.tasks = {"seg": l_seg}
            return l_seg
        labels = ctx.model_kwargs.get("labels")
        if labels is None:
            raise ValueError("the classification loss needs model_kwargs['labels'] (the grades, 0 LGG / 1 HGG)")
        l_cls = multiclass_focal_loss(cls_logits, labels, self.focal_gamma, self.alpha)
        terms["L_cls"] = l_cls
        if self.mode == "cls":
            self.tasks = {"cls": l_cls}
            return l_cls
        params = ctx.model.loss_parameters
        task_seg, task_cls = uncertainty_weighted(l_seg, l_cls, params["log_sigma_seg"], params["log_sigma_cls"])
        self.tasks = {"seg": task_seg, "cls": task_cls}
        return task_seg + task_cls
