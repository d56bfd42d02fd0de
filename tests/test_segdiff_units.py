"""Segmentation diffusion pieces on plain tensors and a tiny model: losses against hand-computed values,
uncertainty weighting, PCGrad, heads (no path from x_t), stages, the objective, scoring (volume and slice
Dice, subject-level classification, the FLAIR reference), undefined AUC, STAPLE fusion."""

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from patches.guided_diffusion import DIFFUSION_DEFAULTS, MODEL_DEFAULTS, create_seam_diffusion, create_seam_model
from plugins.segdiff import (STAGES, apply_stage, attach_segdiff, binary_focal_loss, calibration_loss,
                             highway_parameter_counts, image_timesteps, multiclass_focal_loss, segdiff_forward,
                             uncertainty_weighted)
from plugins.segdiff.gradients import TaskGradients, gradient_cosine, pcgrad
from plugins.segdiff.objective import SegDiffObjective
from plugins.segdiff.sampling import fuse_mean, fuse_staple
from plugins.segdiff.scoring import FlairThreshold, SplitScores, auc_or_none

TINY = {**MODEL_DEFAULTS, "image_size": 32, "num_channels": 32, "num_res_blocks": 1, "num_heads": 1,
        "attention_resolutions": "8"}


def tiny_model(use_cls_head=True, seed=0):
    torch.manual_seed(seed)
    model = create_seam_model(**{**TINY, "in_channels": 3, "out_channels": 1})
    attach_segdiff(model, use_cls_head=use_cls_head)
    return model


def sigmoid(z):
    return 1 / (1 + math.exp(-z))


def test_binary_focal_matches_hand_computation():
    logits = torch.tensor([[0.0, 2.0]]).view(1, 1, 1, 2)
    target = torch.tensor([[1.0, 0.0]]).view(1, 1, 1, 2)
    p1, p2 = 0.5, 1 - sigmoid(2.0)  # p_t of each pixel
    expected = ((1 - p1) ** 1.5 * -math.log(p1) + (1 - p2) ** 1.5 * -math.log(p2)) / 2
    assert binary_focal_loss(logits, target, gamma=1.5).item() == pytest.approx(expected, rel=1e-6)


def test_multiclass_focal_matches_hand_computation_and_cross_entropy():
    logits = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    target = torch.tensor([1, 1])
    alpha = torch.tensor([2.5, 0.625])
    p = [math.exp(0) / (math.exp(1) + 1), math.exp(3) / (1 + math.exp(3))]
    expected = [0.625 * (1 - q) ** 2 * -math.log(q) for q in p]
    got = multiclass_focal_loss(logits, target, gamma=2.0, alpha=alpha)
    assert got.tolist() == pytest.approx(expected, rel=1e-6)
    ce = F.cross_entropy(logits, target, reduction="none")
    assert torch.allclose(multiclass_focal_loss(logits, target, gamma=0.0), ce)


def test_dice_of_calibration_matches_hand_computation():
    logits = torch.tensor([0.0, 40.0, -40.0, -40.0]).view(1, 1, 2, 2)
    target = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, 1, 2, 2)
    dice, focal = calibration_loss(logits, target, gamma=1.5)
    assert dice.item() == pytest.approx(1 - (2 * 1.5 + 1e-5) / (1.5 + 2 + 1e-5), rel=1e-5)
    assert focal.item() == pytest.approx(0.5 ** 1.5 * math.log(2) / 4, rel=1e-4)


def test_uncertainty_weighting_formula():
    s_seg, s_cls = torch.tensor(0.5), torch.tensor(-0.2)
    seg, cls = uncertainty_weighted(torch.tensor(2.0), torch.tensor(1.0), s_seg, s_cls)
    assert seg.item() == pytest.approx(2.0 / (2 * math.exp(0.5) ** 2) + 0.5, rel=1e-6)
    assert cls.item() == pytest.approx(1.0 / (2 * math.exp(-0.2) ** 2) - 0.2, rel=1e-6)


def test_focal_gradients_stay_finite_at_saturation():
    logits = torch.tensor([60.0, -60.0]).view(1, 1, 1, 2).requires_grad_()
    binary_focal_loss(logits, torch.ones(1, 1, 1, 2), gamma=0.5).sum().backward()
    cls_logits = torch.tensor([[50.0, -50.0]], requires_grad=True)
    multiclass_focal_loss(cls_logits, torch.tensor([0]), gamma=0.5).sum().backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(cls_logits.grad).all()


def test_losses_refuse_bad_arguments():
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        binary_focal_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), gamma=-1)
    with pytest.raises(ValueError, match="target labels must lie in"):
        multiclass_focal_loss(torch.zeros(2, 2), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="alpha must have shape"):
        multiclass_focal_loss(torch.zeros(2, 2), torch.tensor([0, 1]), alpha=torch.ones(3))


def test_pcgrad_projects_only_conflicting_gradients():
    summed, conflicted = pcgrad([torch.tensor([1.0, 0.0])], [torch.tensor([-1.0, 1.0])])
    assert conflicted and summed[0].tolist() == pytest.approx([0.5, 1.5])  # [0.5, 0.5] + [0, 1]
    summed, conflicted = pcgrad([torch.tensor([1.0, 0.0]), None], [torch.tensor([1.0, 1.0]), None])
    assert not conflicted and summed[0].tolist() == [2.0, 1.0] and summed[1] is None
    assert gradient_cosine([torch.tensor([1.0, 0.0])], [torch.tensor([0.0, 2.0])]) == pytest.approx(0.0)


def test_auc_undefined_with_one_class_warns():
    with pytest.warns(UserWarning, match="AUC undefined"):
        assert auc_or_none(torch.tensor([0.2, 0.9]), torch.tensor([1, 1])) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert auc_or_none(torch.tensor([0.2, 0.9]), torch.tensor([0, 1])) == 1.0


def test_heads_forward_and_seg_only_graph():
    model = tiny_model()
    head = model.heads["cls"].net
    assert [type(m).__name__ for m in head] == ["AdaptiveAvgPool2d", "Flatten", "Linear", "ReLU", "Dropout", "Linear"]
    assert (head[2].in_features, head[2].out_features, head[5].out_features, head[4].p) == (64, 32, 2, 0.3)
    x, image, t = torch.randn(2, 1, 32, 32), torch.randn(2, 2, 32, 32), torch.tensor([3, 7])
    t_image = torch.tensor([29, 29])
    seg, cls, calib = segdiff_forward(model, x, t, image, t_image)
    assert seg.shape == (2, 1, 32, 32) and cls.shape == (2, 2) and calib.shape == (2, 1, 32, 32)
    plain = tiny_model(use_cls_head=False)
    seg, cls, calib = segdiff_forward(plain, x, t, image, t_image)
    assert cls is None and not plain.extras and not len(plain.loss_parameters)
    assert not [k for k in plain.state_dict() if k.startswith(("heads.", "loss_parameters."))]
    counts = highway_parameter_counts({**TINY}, num_modalities=2)
    assert counts["calib_head_params"] < 0.02 * counts["second_unet_params"]


def test_stage_trainable_sets():
    model = tiny_model()
    names = [n for n, _ in model.named_parameters()]
    head = {n for n in names if n.startswith("heads.cls.")}
    sigmas = {"loss_parameters.log_sigma_seg", "loss_parameters.log_sigma_cls"}
    expected = {1: set(names) - head - sigmas, 2: head, 3: set(names)}
    for number, stage in STAGES.items():
        apply_stage(model, stage)
        assert {n for n, p in model.named_parameters() if p.requires_grad} == expected[number]
    assert [STAGES[k].lr_factor for k in (1, 2, 3)] == [1.0, 10.0, 0.1]


def test_objective_total_is_uncertainty_weighted_and_pcgrad_backward():
    model = tiny_model()
    with torch.no_grad():
        model.loss_parameters["log_sigma_seg"].fill_(0.3)
    diffusion = create_seam_diffusion(**{**DIFFUSION_DEFAULTS, "diffusion_steps": 30})
    objective = SegDiffObjective("uw", alpha=[2.0, 0.5])
    objective.install(diffusion)
    mask = (torch.rand(2, 1, 32, 32) > 0.7).float() * 2 - 1
    kwargs = {"concat": torch.randn(2, 2, 32, 32), "labels": torch.tensor([0, 1])}
    terms = diffusion.training_losses(model, mask, torch.tensor([1, 20]), model_kwargs=kwargs)
    l_seg = terms["mse"] + terms["dice"] + 0.5 * terms["seg_focal"]
    assert torch.allclose(terms["L_seg"], l_seg)
    expected = 0.5 * math.exp(-0.6) * l_seg + 0.3 + 0.5 * terms["L_cls"]
    assert torch.allclose(terms["loss"], expected, atol=1e-6)

    class Loop:  # what TaskGradients reads of a SeamTrainLoop
        step, log_interval = 0, 1

    TaskGradients(objective, model, surgery="pcgrad")(Loop(), terms["loss"].mean())
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_fusion_and_dice():
    samples = torch.tensor([1.0, 1.0, -1.0]).view(3, 1, 1, 1).expand(3, 1, 2, 2)
    assert fuse_mean(samples).all()
    masks = np.zeros((3, 4, 8, 8), bool)
    masks[:, 1, 2:5, 2:5] = True
    masks[2, 1, 5, 5] = True
    fused = fuse_staple(masks, masks[0])
    assert fused[1, 2:5, 2:5].all() and not fused[0].any()
    assert not fuse_staple(np.zeros_like(masks), masks[0] * False).any()


def test_scores_per_volume_per_informative_slice_and_per_subject():
    scores = SplitScores()
    truth = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]]).bool()  # subject a: slices 0, 1; b: slice 2
    pred = torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0]]).bool()
    scores.add_batch(["a", "a", "b"], [1, 1, 0], {"sample": pred, "calib": truth}, truth,
                     torch.tensor([0.9, 0.7, 0.6]))
    cases, metrics = scores.result()
    a, b = cases
    assert (a["case"], a["slices"], a["grade"], b["grade"]) == ("a", 2, 1, 0)
    assert a["dice"] == pytest.approx(2 / 3) and a["iou"] == pytest.approx(0.5) and a["calib_dice"] == 1.0
    assert a["hgg_prob"] == pytest.approx(0.8) and a["hgg_pred"] == 1 and b["hgg_pred"] == 1
    assert metrics["dice"] == pytest.approx(2 / 3)  # mean over subjects
    assert metrics["dice_slice"] == pytest.approx(2 / 3)  # slice 1 (empty in both) left out: (2/3 + 2/3) / 2
    assert metrics["acc"] == 0.5 and metrics["f1"] == pytest.approx(2 / 3)  # HGG positive: tp 1, fp 1
    assert metrics["auc"] == 1.0 and metrics["acc_slice"] == pytest.approx(2 / 3)
    assert metrics["hgg_prob_range_slice"] == pytest.approx(0.3)


def test_a_constant_head_is_named():
    scores = SplitScores()
    truth = torch.zeros(3, 4).bool()
    scores.add_batch(["a", "b", "c"], [1, 0, 1], {"sample": truth}, truth, torch.full((3,), 0.4964))
    with pytest.warns(UserWarning, match="every slice has HGG probability 0.4964"):
        _, metrics = scores.result()
    assert metrics["hgg_prob_range_slice"] == 0.0 and metrics["auc"] == 0.5


def test_flair_threshold_fits_on_training_slices_inside_the_brain():
    image = torch.full((2, 2, 4, 4), -1.0)  # channel 1 is FLAIR; -1 is the background
    image[:, :, 1:3, :] = 0.0  # brain
    image[0, 1, 1, 0:2] = 0.8  # bright lesion
    seg = torch.zeros(2, 1, 4, 4)
    seg[0, 0, 1, 0:2] = 1
    reference = FlairThreshold(1, (-1.0, 1.0), bins=20)
    threshold = reference.fit([{"image": image, "seg": seg}])
    assert 0.0 < threshold <= 0.8
    pred = reference.predict(image)
    assert torch.equal(pred, seg.bool())


def test_no_path_from_x_t_to_the_heads():
    model = tiny_model().eval()  # no dropout: the two passes compare exactly
    diffusion = create_seam_diffusion(**{**DIFFUSION_DEFAULTS, "diffusion_steps": 30})
    image = torch.randn(2, 2, 32, 32)
    t_image = image_timesteps(diffusion, 2, image.device)
    outputs = []
    for x_t in (torch.randn(2, 1, 32, 32, requires_grad=True), torch.randn(2, 1, 32, 32, requires_grad=True)):
        seg, cls, calib = segdiff_forward(model, x_t, torch.tensor([3, 3]), image, t_image)
        (cls.sum() + calib.sum()).backward(retain_graph=True)
        assert x_t.grad is None  # neither head's output depends on x_t
        seg.sum().backward()
        assert x_t.grad is not None  # the denoiser's does
        outputs.append((seg, cls, calib))
    assert torch.equal(outputs[0][1], outputs[1][1]) and torch.equal(outputs[0][2], outputs[1][2])
