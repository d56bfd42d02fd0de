"""A guided-diffusion ``SpacedDiffusion`` whose ``training_losses`` takes extra loss terms.

``SeamDiffusion.training_losses`` draws the noise itself (the same single
``randn_like`` upstream would draw), calls upstream unchanged, then adds every
registered :class:`LossTerm`:

    terms[name] = fn(ctx)                      # shape [N]
    terms["loss"] = terms["loss"] + weight * terms[name]

and, when a total was set with ``set_total(fn)``, replaces the weighted sum:
``terms["loss"] = fn(ctx)`` ([N]; ``fn`` may add its own per-sample entries to
``ctx.terms`` for logging), e.g. uncertainty weighting of several task losses.

``ctx`` (:class:`LossContext`) carries the model (unwrapped from DDP) with its
``features``/``extras`` from this very forward pass, ``x_start``, ``x_t``,
``t``, ``noise``, the raw model output and the model kwargs. With no term
registered the result is upstream's, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from guided_diffusion import gaussian_diffusion as gd
from guided_diffusion.respace import SpacedDiffusion, space_timesteps

from patches.errors import SeamError
from patches.guided_diffusion.unet import unwrap

#: Upstream's ``diffusion_defaults`` keys, as flags: ``create_seam_diffusion(**these)``.
DIFFUSION_DEFAULTS = dict(
    diffusion_steps=1000,
    learn_sigma=False,
    sigma_small=False,
    noise_schedule="linear",
    use_kl=False,
    predict_xstart=False,
    rescale_timesteps=False,
    rescale_learned_sigmas=False,
    timestep_respacing="",
)
#: One phrase per flag of ``DIFFUSION_DEFAULTS`` (meaning, units), for ``--help``.
DIFFUSION_HELP = dict(
    diffusion_steps="diffusion steps T of the noise schedule",
    learn_sigma="the model also predicts the variance (output channels doubled, hybrid loss)",
    sigma_small="fixed variance: the posterior's beta-tilde instead of beta (when sigma is not learned)",
    noise_schedule="beta schedule over the T steps: linear or cosine",
    use_kl="train on the rescaled variational bound (KL) instead of the MSE",
    predict_xstart="the model predicts x_0 instead of the noise epsilon",
    rescale_timesteps="feed the model timesteps scaled to 0..1000 whatever T is",
    rescale_learned_sigmas="scale the variance (vb) term by T/1000 (RESCALED_MSE; with learn_sigma)",
    timestep_respacing="sampling steps: ddimN = DDIM in N steps, N or a comma list = respaced; empty = all T",
)


@dataclass
class LossContext:
    """Everything a loss term may read; ``model_output`` is the model's raw output tensor."""

    model: torch.nn.Module
    x_start: torch.Tensor
    x_t: torch.Tensor
    t: torch.Tensor
    noise: torch.Tensor
    model_output: torch.Tensor
    model_kwargs: dict
    terms: dict = field(default_factory=dict)
    diffusion: "SeamDiffusion | None" = None

    @property
    def features(self) -> dict:
        return getattr(self.model, "features", {})

    @property
    def extras(self) -> dict:
        return getattr(self.model, "extras", {})


@dataclass
class LossTerm:
    """A weighted per-sample loss ``fn(ctx) -> [N]`` logged under ``name``."""

    name: str
    fn: Callable[[LossContext], torch.Tensor]
    weight: float = 1.0


class _OutputCapture:
    """Calls the model and keeps its input ``x_t`` and output (upstream only sees a callable)."""

    def __init__(self, model):
        self.model = model
        self.x_t = None
        self.output = None

    def __call__(self, x_t, *args, **kwargs):
        self.x_t = x_t
        self.output = self.model(x_t, *args, **kwargs)
        return self.output


class SeamDiffusion(SpacedDiffusion):
    """``SpacedDiffusion`` with registered extra loss terms."""

    def __init__(self, use_timesteps, **kwargs):
        super().__init__(use_timesteps, **kwargs)
        self.loss_terms: list[LossTerm] = []
        self.total_fn: Callable[[LossContext], torch.Tensor] | None = None

    def add_loss_term(self, term: LossTerm) -> None:
        if term.name in ("loss", "mse", "vb") or any(t.name == term.name for t in self.loss_terms):
            raise ValueError(f"loss term name {term.name!r} is taken")
        self.loss_terms.append(term)

    def set_total(self, fn: Callable[[LossContext], torch.Tensor]) -> None:
        """Compute ``terms["loss"] = fn(ctx)`` ([N]) after every loss term, instead of the weighted sum."""
        self.total_fn = fn

    def training_losses(self, model, x_start, t, model_kwargs=None, noise=None):
        if noise is None:
            noise = torch.randn_like(x_start)
        if not self.loss_terms and self.total_fn is None:
            return super().training_losses(model, x_start, t, model_kwargs=model_kwargs, noise=noise)
        capture = _OutputCapture(model)
        terms = super().training_losses(capture, x_start, t, model_kwargs=model_kwargs, noise=noise)
        ctx = LossContext(
            model=unwrap(model), x_start=x_start, x_t=capture.x_t, t=t,
            noise=noise, model_output=capture.output, model_kwargs=model_kwargs or {}, terms=terms,
            diffusion=self,
        )
        for term in self.loss_terms:
            value = term.fn(ctx)
            if value.shape != (x_start.shape[0],):
                raise SeamError(
                    f"loss term {term.name!r} returned shape {tuple(value.shape)}, expected [{x_start.shape[0]}] (one value per sample)"
                )
            terms[term.name] = value
            terms["loss"] = terms["loss"] + term.weight * value
        if self.total_fn is not None:
            total = self.total_fn(ctx)
            if total.shape != (x_start.shape[0],):
                raise SeamError(f"total loss returned shape {tuple(total.shape)}, expected [{x_start.shape[0]}]")
            terms["loss"] = total
        return terms


def create_seam_diffusion(**settings) -> SeamDiffusion:
    """Upstream's ``create_gaussian_diffusion`` settings (keys of ``DIFFUSION_DEFAULTS``) as a :class:`SeamDiffusion`."""
    unknown = sorted(set(settings) - set(DIFFUSION_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown diffusion settings {unknown}; expected keys of {sorted(DIFFUSION_DEFAULTS)}")
    cfg = {**DIFFUSION_DEFAULTS, **settings}
    diffusion_steps, noise_schedule = cfg["diffusion_steps"], cfg["noise_schedule"]
    if noise_schedule == "linear" and diffusion_steps <= 20:
        raise ValueError(f"diffusion_steps={diffusion_steps}: the linear schedule needs more than 20 steps")
    if cfg["use_kl"]:
        loss_type = gd.LossType.RESCALED_KL
    elif cfg["rescale_learned_sigmas"]:
        loss_type = gd.LossType.RESCALED_MSE
    else:
        loss_type = gd.LossType.MSE
    if cfg["learn_sigma"]:
        var_type = gd.ModelVarType.LEARNED_RANGE
    else:
        var_type = gd.ModelVarType.FIXED_SMALL if cfg["sigma_small"] else gd.ModelVarType.FIXED_LARGE
    return SeamDiffusion(
        use_timesteps=space_timesteps(diffusion_steps, cfg["timestep_respacing"] or [diffusion_steps]),
        betas=gd.get_named_beta_schedule(noise_schedule, diffusion_steps),
        model_mean_type=gd.ModelMeanType.START_X if cfg["predict_xstart"] else gd.ModelMeanType.EPSILON,
        model_var_type=var_type,
        loss_type=loss_type,
        rescale_timesteps=cfg["rescale_timesteps"],
    )
