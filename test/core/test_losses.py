"""SDS (x0 form) and the e-weighted reconstruction loss: values and gradients checked with autograd."""
import pytest
import torch

from sharpdepth_core.gating import noise_schedule
from sharpdepth_core.losses import reconstruction_loss, sds_loss, sds_weight


def test_sds_weight_is_one_minus_alpha_bar_999():
    assert sds_weight() == pytest.approx(1 - noise_schedule()[999].item())
    assert sds_weight() == pytest.approx(1 - 0.00466, abs=1e-4)
    assert sds_weight(500) < sds_weight(999)


def test_sds_gradient_is_w_times_residual_over_n():
    g = torch.Generator().manual_seed(0)
    z_hat = torch.randn(2, 4, 6, 5, generator=g, requires_grad=True)
    x_hat = torch.randn(2, 4, 6, 5, generator=g, requires_grad=True)  # must not receive a gradient
    w = sds_weight()
    loss = sds_loss(z_hat, x_hat, w)
    loss.backward()
    expected = w * (z_hat.detach() - x_hat.detach()) / z_hat.numel()
    torch.testing.assert_close(z_hat.grad, expected, rtol=1e-6, atol=1e-9)
    assert x_hat.grad is None
    # The loss value itself is 0.5 * mean(g^2): a scale that logging can show.
    assert loss.item() == pytest.approx(0.5 * (w * (z_hat - x_hat)).pow(2).mean().item(), rel=1e-5)


def test_sds_is_fp32_for_a_bf16_student_and_ignores_non_finite_teacher_pixels():
    z32 = torch.linspace(-2, 2, 4 * 3 * 3).view(1, 4, 3, 3)
    x_hat = torch.zeros_like(z32)
    x_hat[0, 0, 0, 0] = float("nan")
    x_hat[0, 1, 1, 1] = float("inf")
    z = z32.to(torch.bfloat16).requires_grad_(True)
    loss = sds_loss(z, x_hat, 1.0)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    expected = z.detach().float() / z.numel()
    expected[0, 0, 0, 0] = 0.0
    expected[0, 1, 1, 1] = 0.0
    assert z.grad.dtype == torch.bfloat16
    torch.testing.assert_close(z.grad.float(), expected.bfloat16().float())


def _halves(value_left: float, value_right: float) -> torch.Tensor:
    x = torch.empty(1, 1, 4, 6)
    x[..., :3] = value_left
    x[..., 3:] = value_right
    return x


def test_reconstruction_counts_only_pixels_weighted_by_e():
    d_n = torch.zeros(1, 1, 4, 6)
    d_hat = _halves(0.4, 0.0)  # wrong by 0.4 (0.2 in [0, 1] space) on the left only
    # e = 0 where the student is wrong: nothing to pay.
    assert reconstruction_loss(d_hat, d_n, _halves(0.0, 1.0)).item() == pytest.approx(0.0, abs=1e-7)
    # e = 1 only where it is wrong: the full mean error of that region.
    assert reconstruction_loss(d_hat, d_n, _halves(1.0, 0.0)).item() == pytest.approx(0.2, rel=1e-5)
    # Mixed weights: a weighted mean, Σ e·err / Σ e.
    e = _halves(0.5, 1.0)
    assert reconstruction_loss(d_hat, d_n, e).item() == pytest.approx(0.5 * 0.2 * 12 / (0.5 * 12 + 12), rel=1e-5)


def test_reconstruction_gradient_is_zero_where_e_is_zero():
    d_n = torch.zeros(1, 1, 4, 6)
    d_hat = torch.full((1, 1, 4, 6), 0.3, requires_grad=True)
    e = _halves(0.0, 0.25)
    reconstruction_loss(d_hat, d_n, e).backward()
    assert torch.all(d_hat.grad[..., :3] == 0)
    # d/dd̂ of Σ e |d̂/2 - d_n/2| / Σ e = e * 0.5 / Σ e on the right half.
    torch.testing.assert_close(d_hat.grad[..., 3:], torch.full((1, 1, 4, 3), 0.25 * 0.5 / (0.25 * 12)))


def test_reconstruction_all_zero_e_is_zero_not_nan_and_shapes_must_match():
    d = torch.rand(2, 1, 4, 4)
    assert reconstruction_loss(d, -d, torch.zeros_like(d)).item() == 0.0
    with pytest.raises(ValueError, match="must match"):
        reconstruction_loss(d, d[:1], torch.zeros_like(d))
