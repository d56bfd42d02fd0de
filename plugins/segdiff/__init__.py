"""MedSegDiff-style segmentation diffusion with an HGG/LGG head, uncertainty weighting and staged training (seed 002).

Modules: ``heads`` (calibration and classification heads, the opt-in ``segdiff_forward``),
``losses`` (focal, Dice, uncertainty weighting), ``objective`` (the per-sample total loss),
``gradients`` (task-gradient probe, PCGrad), ``stages``, ``validation`` (per-epoch metrics),
``sampling`` (ensembles, STAPLE), ``evaluation`` (a checkpoint's scores and outputs, behind
``scripts/segmentation_sample_v2.py``), ``plugin`` (flags and the :class:`SlicePlugin`).
"""

from plugins.segdiff.heads import (CalibrationHead, ClassificationHead, attach_segdiff, highway_parameter_counts,
                                   image_heads, image_timesteps, segdiff_forward)
from plugins.segdiff.losses import binary_focal_loss, calibration_loss, multiclass_focal_loss, uncertainty_weighted
from plugins.segdiff.objective import SegDiffObjective
from plugins.segdiff.stages import STAGES, Stage, apply_stage

__all__ = [
    "CalibrationHead", "ClassificationHead", "attach_segdiff", "highway_parameter_counts", "image_heads",
    "image_timesteps", "segdiff_forward", "binary_focal_loss", "calibration_loss", "multiclass_focal_loss", "uncertainty_weighted",
    "SegDiffObjective", "STAGES", "Stage", "apply_stage",
]
