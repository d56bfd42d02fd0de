"""The seam's training loop with the log-sigmas of uncertainty weighting at their own learning rate.

:class:`SegDiffTrainLoop` gives the seam's AdamW two parameter groups over the trainable parameters:
the log-sigmas (``model.loss_parameters``) at ``uw_lr``, everything else at ``lr``, when the log-sigmas
train (joint training, stage 3; the stages that freeze a part also freeze the log-sigmas). With
``uw_lr == lr`` it is the seam's loop unchanged. Stage 3 trains the backbone at ``0.1 x --lr``; at
that rate Adam moves a log-sigma by about 1e-5 per step, so without ``--uw_lr`` uncertainty weighting
stays at its start. Lr annealing scales each group from its own base rate. Both groups live in one
optimizer, so its checkpoint and resume are the seam's.
"""

from __future__ import annotations

from patches.guided_diffusion import SeamTrainLoop

SIGMA_PREFIX = "loss_parameters."


class SegDiffTrainLoop(SeamTrainLoop):
    """``SeamTrainLoop(..., uw_lr=r)``: log-sigmas at ``r`` (0 = ``lr``), the rest at ``lr``."""

    def __init__(self, *, uw_lr: float = 0.0, **kwargs):
        self.uw_lr = uw_lr or kwargs["lr"]
        super().__init__(**kwargs)

    def _param_groups(self, trainable: list) -> list:
        sigmas = {id(p) for name, p in self.model.named_parameters() if name.startswith(SIGMA_PREFIX)
                  and p.requires_grad}
        if self.uw_lr == self.lr or not sigmas or self.use_fp16:  # fp16 flattens the master weights
            return trainable
        return [{"params": [p for p in trainable if id(p) not in sigmas], "base_lr": self.lr},
                {"params": [p for p in trainable if id(p) in sigmas], "lr": self.uw_lr, "base_lr": self.uw_lr}]

    def _anneal_lr(self):
        if not self.lr_anneal_steps:
            return
        frac_done = (self.step + self.resume_step) / self.lr_anneal_steps
        for group in self.opt.param_groups:
            group["lr"] = group.get("base_lr", self.lr) * (1 - frac_done)
