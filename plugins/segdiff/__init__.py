"""MedSegDiff-style segmentation diffusion with an HGG/LGG head, uncertainty weighting and staged training (seed 002).

Modules: ``heads`` (calibration and classification heads on the image pass, ``segdiff_forward``),
``losses`` (focal, Dice, uncertainty weighting), ``objective`` (the per-sample total loss),
``gradients`` (task-gradient probe, PCGrad), ``stages`` (freezing, the seed's plan, stage records),
``loop`` (the log-sigmas' own learning rate), ``scoring`` (volume/slice Dice, subject-level
classification, the FLAIR reference), ``validation`` (every epoch and the end of a run),
``sampling`` (ensembles, STAPLE), ``evaluation`` (a checkpoint's scores and outputs, behind
``scripts/segmentation_sample_v2.py``), ``plugin`` (flags and the :class:`SlicePlugin`).

Deliberate differences from MedSegDiff / MedSegDiff-V2 (KidsWithTokens/MedSegDiff) and the seed:

=====================================  ==========================================  ==================================
MedSegDiff-V2 / the seed               here                                        why
=====================================  ==========================================  ==================================
calibration ``cal`` from the highway,  a small head (GroupNorm, SiLU, 3x3 and 1x1   the highway is as large as the
a second UNet on the image only        convs) on the last decoder block of the     UNet (the seed's complaint); the
(``c = h[:, :-1]``)                    UNet run on the image, mask channel zeroed,  image pass keeps "no x_t" and
                                       t = T - 1 (the image pass)                  shares the encoder with the heads
highway anchors added (detached) to    none                                        the heads share the denoiser's
the denoiser's first block                                                         encoder instead
calibration loss MSE(cal, mask)        Dice + 0.5 focal(1.5) (the seed's L_seg)    the seed's specification
classification head on the             on the image pass's bottleneck              same input in training and test;
denoiser's bottleneck at every t                                                   no mask visible in x_t
(the seed)
samples blended with ``cal``           raw samples fused by mean and by SimpleITK  each source scored on its own;
(``cal_out``), own iterated-majority   STAPLE; the calibration map scored apart    STAPLE as published
"staple"
DPM-Solver++ or DDIM sampling          upstream's DDIM (validation) or ancestral   upstream's samplers
slice Dice (empty slices score 1)      volume Dice per subject (primary); slice    comparable with a volume Dice
                                       Dice over slices with tumour                such as the seed's 0.82
per-slice AUC/F1/accuracy              per subject (slice probabilities averaged)  the grade belongs to the subject
                                       and per slice; binary F1, HGG positive
=====================================  ==========================================  ==================================
"""

from plugins.segdiff.heads import (CalibrationHead, ClassificationHead, attach_segdiff, highway_parameter_counts,
                                   image_heads, image_timesteps, segdiff_forward)
from plugins.segdiff.losses import binary_focal_loss, calibration_loss, multiclass_focal_loss, uncertainty_weighted
from plugins.segdiff.objective import SegDiffObjective
from plugins.segdiff.stages import STAGES, Stage, apply_stage

__all__ = [
    "CalibrationHead", "ClassificationHead", "attach_segdiff", "highway_parameter_counts", "image_heads",
    "image_timesteps", "segdiff_forward", "binary_focal_loss", "calibration_loss", "multiclass_focal_loss",
    "uncertainty_weighted",
    "SegDiffObjective", "STAGES", "Stage", "apply_stage",
]
