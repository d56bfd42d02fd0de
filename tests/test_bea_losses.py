"""BEA pieces on plain tensors: Sobel, gate, dual-loss term, feature pairs."""

import pytest
import torch

from patches.guided_diffusion import ForwardContext, create_seam_model
from plugins.bea.dual_loss import boundary_consistency_loss, boundary_weights, feature_norms, skip_partner
from plugins.bea.edges import sobel_magnitude
from plugins.bea.gate import BoundaryGate
from plugins.bea.plugin import bea_pair
from plugins.common.errors import InputError
from tests.gd_tiny import TINY_MODEL


def test_sobel_of_a_vertical_step_edge():
    x = torch.zeros(1, 2, 5, 5)
    x[:, :, :, 3:] = 1.0  # step between columns 2 and 3 in both channels
    g = sobel_magnitude(x)[0, 0]
    # gx = 4 on the two columns beside the step (kernel column weights 1+2+1), 0 elsewhere; gy = 0
    assert torch.allclose(g[:, 2], torch.full((5,), 4.0)) and torch.allclose(g[:, 3], torch.full((5,), 4.0))
    assert torch.allclose(g[:, [0, 1, 4]], torch.zeros(5, 3), atol=1e-5)
    one_channel = x.clone()
    one_channel[:, 1] = 0.0  # channels combine by the mean of squares: sqrt(16 / 2)
    assert torch.allclose(sobel_magnitude(one_channel)[0, 0, :, 2], torch.full((5,), 8 ** 0.5))


def test_boundary_loss_against_hand_computation():
    x0 = torch.zeros(1, 1, 4, 4)
    x0[..., 2:] = 1.0
    enc = torch.arange(2 * 2 * 2, dtype=torch.float32).reshape(1, 2, 2, 2)
    dec = torch.zeros_like(enc)
    g = torch.nn.functional.adaptive_avg_pool2d(sobel_magnitude(x0), (2, 2))
    w = g / (g.mean() + 1e-6)
    standard = (enc - enc.mean((2, 3), keepdim=True)) / (enc.var((2, 3), unbiased=False, keepdim=True) + 1e-5).sqrt()
    expected = (w * standard.abs()).mean()  # a constant decoder feature standardises to 0
    assert torch.allclose(boundary_consistency_loss(enc, dec, x0), expected.reshape(1))
    assert torch.allclose(boundary_weights(x0, (2, 2)).mean(), torch.tensor(1.0), atol=1e-5)
    with pytest.raises(ValueError, match="same shape"):
        boundary_consistency_loss(enc, dec[:, :1], x0)


def test_gate_starts_as_identity_and_learns():
    gate = BoundaryGate(8)
    h = torch.randn(2, 8, 4, 4, requires_grad=True)
    ctx = ForwardContext(x=torch.randn(2, 4, 16, 16), timesteps=torch.zeros(2), y=None)
    out = gate(h, ctx)
    assert torch.equal(out, h)
    out.sum().backward()
    assert gate.proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("image_size, res_blocks", [(32, 1), (32, 2), (64, 1), (64, 2)])
def test_default_pair_has_equal_shape_and_is_not_a_skip_pair(image_size, res_blocks):
    model = create_seam_model(**{**TINY_MODEL, "image_size": image_size, "num_res_blocks": res_blocks})
    enc, dec = bea_pair(model)
    assert skip_partner(len(model.input_blocks), dec) != enc and enc > 0
    model.add_feature_tap("e", ("input", enc))
    model.add_feature_tap("d", ("output", dec))
    model(torch.randn(1, 2, image_size, image_size), torch.tensor([3]))
    assert model.features["e"].shape == model.features["d"].shape


def test_pair_by_index_refuses_skip_partners_and_shape_mismatch():
    model = create_seam_model(**TINY_MODEL)
    n = len(model.input_blocks)
    with pytest.raises(InputError, match="skip input"):
        bea_pair(model, n - 1, 0)  # the old default: output_blocks[0] concatenates input_blocks[-1]
    with pytest.raises(InputError, match="same shape"):
        bea_pair(model, 1, 0)
    with pytest.raises(InputError, match="expected 0.."):
        bea_pair(model, n, 0)


def test_loss_ignores_scale_and_offset_and_stops_the_encoder_gradient():
    x0 = torch.rand(2, 2, 16, 16)
    enc, dec = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    base = boundary_consistency_loss(enc, dec, x0)
    assert torch.allclose(boundary_consistency_loss(10 * enc, 10 * dec + 5.0, x0), base, rtol=1e-4)
    assert torch.allclose(boundary_consistency_loss(enc, 3.0 * enc - 1.0, x0), torch.zeros(2), atol=1e-4)
    enc.requires_grad_(True)
    dec.requires_grad_(True)
    boundary_consistency_loss(enc, dec, x0).sum().backward()
    assert enc.grad is None and dec.grad.abs().sum() > 0  # the encoder feature is a stop-gradient target
    ratio, rms = feature_norms(2 * enc, enc)
    assert torch.allclose(ratio, torch.full((2,), 2.0)) and torch.allclose(rms, 2 * enc.pow(2).mean((1, 2, 3)).sqrt())
