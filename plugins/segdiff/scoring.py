"""Scores of segmentation diffusion: per subject (the case) and over an evaluation split.

Every prediction source (``"sample"``: the diffusion samples fused by the ensemble mean;
``"calib"``: the calibration head, ``sigmoid > 0.5``; ``"staple"``; ``"reference_flair"``) is
kept as per-slice overlap counts ``(|P & G|, |P|, |G|)`` ([Z, 3] per subject), so a split of
any size costs a few numbers per slice:

- volume (primary): ``dice = 2 |P & G| / (|P| + |G|)`` over the subject's slices pooled (1 when
  both are empty), ``iou = dice / (2 - dice)``; the split's value is the mean over subjects;
- slice: the same per slice, averaged over the slices with tumour in the truth or the prediction
  (slices empty in both carry no information about the segmentation and are left out).

Column and key names: ``dice``/``iou`` (samples), ``<source>_dice``/``<source>_iou`` for the
others, ``..._slice`` for the slice means; the FLAIR reference's volume Dice is ``reference_flair``.

Classification (with a head): a subject's HGG probability is the mean of its slices'; HGG is
called at ``p >= 0.5``. ``auc``, ``f1`` (binary, HGG positive, as the seed's code) and ``acc``
per subject; ``auc_slice``, ``f1_slice``, ``acc_slice`` per slice (torchmetrics). AUC with one
grade present is undefined: None with a warning. ``hgg_prob_range_slice`` = max - min of the slice
probabilities: 0 means the head gives every slice the same value (e.g. all its ReLU units inactive),
warned about over more than one slice, since its AUC of 0.5 would otherwise read as a head that guesses.

:class:`FlairThreshold` is the trivial reference: FLAIR above a threshold inside the brain
(any modality above the background value), the threshold the one of ``bins`` histogram edges
with the best Dice pooled over the training slices (never a validation case).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torchmetrics.functional.classification import binary_accuracy, binary_auroc, binary_f1_score

SAMPLE = "sample"


def auc_or_none(probs: torch.Tensor, target: torch.Tensor, what: str = "AUC"):
    """Binary AUROC, or None with a warning when ``target`` holds a single class."""
    present = torch.unique(target)
    if present.numel() < 2:
        warnings.warn(f"{what} undefined: only class {present.tolist()} present in {target.numel()} samples",
                      stacklevel=2)
        return None
    return float(binary_auroc(probs, target))


def overlap_counts(pred: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
    """[N, 3] int64 ``(|P & G|, |P|, |G|)`` per sample of binary masks [N, ...]."""
    pred, truth = pred.flatten(1).bool(), truth.flatten(1).bool()
    return torch.stack([(pred & truth).sum(1), pred.sum(1), truth.sum(1)], 1).cpu().numpy().astype(np.int64)


def dice_from_counts(counts: np.ndarray) -> np.ndarray:
    """Dice of [..., 3] counts; 1 where prediction and truth are both empty."""
    inter, pred, truth = counts[..., 0], counts[..., 1], counts[..., 2]
    total = pred + truth
    return np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)


def metric_name(source: str, what: str) -> str:
    """``dice`` for the samples, ``calib_dice`` for the calibration head, ``reference_flair`` for FLAIR's Dice."""
    if source == SAMPLE:
        return what
    if source == "reference_flair" and what == "dice":
        return source
    return f"{source}_{what}"


@dataclass
class SubjectScores:
    """One subject's per-slice counts per source, slice HGG probabilities and grade (-1 = none)."""

    grade: int = -1
    counts: dict = field(default_factory=dict)  # source -> list of [n, 3] arrays
    hgg: list = field(default_factory=list)

    def add(self, source: str, counts: np.ndarray) -> None:
        self.counts.setdefault(source, []).append(counts)

    def stacked(self, source: str) -> np.ndarray:
        return np.concatenate(self.counts[source])


class SplitScores:
    """Accumulates :class:`SubjectScores` batch by batch; :meth:`result` gives the case rows and the metrics."""

    def __init__(self):
        self.subjects: dict[str, SubjectScores] = {}

    def add_batch(self, subjects, grades, preds: dict, truth: torch.Tensor, hgg: torch.Tensor | None = None) -> None:
        """``preds``: source -> [B, ...] bool masks; ``truth`` [B, ...]; ``hgg`` [B] slice HGG probabilities."""
        counts = {source: overlap_counts(pred, truth) for source, pred in preds.items()}
        for i, subject in enumerate(subjects):
            rec = self.subjects.setdefault(subject, SubjectScores(grade=int(grades[i])))
            for source, c in counts.items():
                rec.add(source, c[i:i + 1])
            if hgg is not None:
                rec.hgg.append(float(hgg[i]))

    def result(self) -> tuple[list[dict], dict]:
        """(one row per subject: ``case``, ``subject``, ``grade``, ``slices``, the volume scores of every source,
        ``hgg_prob``, ``hgg_pred``; the split's metrics as in the module docstring)."""
        rows, metrics, slice_scores = [], {}, {}
        for subject, rec in self.subjects.items():
            row = {"case": subject, "subject": subject, "grade": rec.grade}
            for source in rec.counts:
                counts = rec.stacked(source)
                row["slices"] = len(counts)
                dice = float(dice_from_counts(counts.sum(0)))
                row[metric_name(source, "dice")], row[metric_name(source, "iou")] = dice, dice / (2 - dice)
                informative = counts[:, 1] + counts[:, 2] > 0
                slice_scores.setdefault(source, []).append(dice_from_counts(counts[informative]))
            if rec.hgg:
                row["hgg_prob"] = float(np.mean(rec.hgg))
                row["hgg_pred"] = int(row["hgg_prob"] >= 0.5)
            rows.append(row)
        for source, per_subject in slice_scores.items():
            for what in ("dice", "iou"):
                metrics[metric_name(source, what)] = float(np.mean([r[metric_name(source, what)] for r in rows]))
            dice = np.concatenate(per_subject)
            metrics[metric_name(source, "dice_slice")] = float(dice.mean()) if dice.size else None
            metrics[metric_name(source, "iou_slice")] = float((dice / (2 - dice)).mean()) if dice.size else None
        metrics.update(self._classification())
        return rows, metrics

    def _classification(self) -> dict:
        out = {}
        graded = [rec for rec in self.subjects.values() if rec.grade >= 0 and rec.hgg]
        if not graded:
            return out
        units = {"": (torch.tensor([float(np.mean(r.hgg)) for r in graded]), torch.tensor([r.grade for r in graded])),
                 "_slice": (torch.tensor([p for r in graded for p in r.hgg]),
                            torch.tensor([r.grade for r in graded for _ in r.hgg]))}
        for suffix, (probs, grades) in units.items():
            what = "subject" if not suffix else "slice"
            out[f"auc{suffix}"] = auc_or_none(probs, grades, f"{what}-level AUC")
            out[f"f1{suffix}"] = float(binary_f1_score(probs, grades))
            out[f"acc{suffix}"] = float(binary_accuracy(probs, grades))
        slice_probs = units["_slice"][0]
        spread = float(slice_probs.max() - slice_probs.min())
        if spread == 0.0 and len(slice_probs) > 1:
            warnings.warn(f"classification head: every slice has HGG probability {float(slice_probs[0]):.4f} "
                          "(a constant head; are all its ReLU units inactive?)", stacklevel=2)
        out["hgg_prob_range_slice"] = spread
        return out


def brain_mask(image: torch.Tensor, background: float) -> torch.Tensor:
    """[B, 1, S, S] bool: any modality of ``image`` [B, M, S, S] above the background value (+1e-3)."""
    return (image > background + 1e-3).any(1, keepdim=True)


class FlairThreshold:
    """FLAIR thresholding inside the brain, the threshold fitted on training slices only.

    ``fit(loader)`` builds histograms of brain FLAIR values of tumour and non-tumour pixels over
    ``bins`` equal bins of ``value_range`` and picks the edge ``t`` maximising the pooled Dice of
    ``flair > t``; ``predict(image)`` -> [B, 1, S, S] bool.
    """

    def __init__(self, flair_channel: int, value_range: tuple, bins: int = 256):
        self.channel = flair_channel
        self.low, self.high = float(value_range[0]), float(value_range[1])
        self.bins = bins
        self.threshold: float | None = None

    def fit(self, loader) -> float:
        tumour = torch.zeros(self.bins, dtype=torch.float64)
        other = torch.zeros(self.bins, dtype=torch.float64)
        for batch in loader:
            image, truth = batch["image"].float(), batch["seg"] > 0.5
            brain = brain_mask(image, self.low)
            flair = image[:, self.channel:self.channel + 1]
            tumour += torch.histc(flair[brain & truth].double(), self.bins, self.low, self.high)
            other += torch.histc(flair[brain & ~truth].double(), self.bins, self.low, self.high)
        # predicted foreground at edge k: the bins >= k
        tp = tumour.flip(0).cumsum(0).flip(0)
        fp = other.flip(0).cumsum(0).flip(0)
        dice = 2 * tp / (tp + fp + tumour.sum()).clamp_min(1)
        k = int(dice.argmax())
        self.threshold = self.low + (self.high - self.low) * k / self.bins
        return self.threshold

    def predict(self, image: torch.Tensor) -> torch.Tensor:
        if self.threshold is None:
            raise RuntimeError("FlairThreshold.predict before fit")
        flair = image[:, self.channel:self.channel + 1].float()
        return (flair >= self.threshold) & brain_mask(image.float(), self.low)
