import pytest
import torch

from scripts.model.losses import (
    bypass_consistency,
    cycle_consistency,
    discriminator_loss,
    gaussian_blur,
    generator_adversarial_loss,
    hinge_fake,
    hinge_real,
    lowpass_consistency,
    noise_consistency,
)


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


REAL = t(2.0, 0.5, -1.0, 1.0)  # relu(1 - s) = 0, 0.5, 2, 0        -> 0.625
FAKE = t(-2.0, 0.5, 1.5, 0.0)  # relu(s) = 0, 0.5, 1.5, 0          -> 0.5
#                                relu(1 + s) = 0, 1.5, 2.5, 1      -> 1.25
BOOST = t(0.25, -0.25)  # relu(s) = 0.25, 0 -> 0.125;  relu(1 + s) = 1.25, 0.75 -> 1.0


def test_hinge_real():
    assert hinge_real(REAL).item() == pytest.approx(0.625)


def test_hinge_fake_code_and_paper_forms():
    assert hinge_fake(FAKE).item() == pytest.approx(0.5)  # default is the authors' code
    assert hinge_fake(FAKE, "code").item() == pytest.approx(0.5)
    assert hinge_fake(FAKE, "paper").item() == pytest.approx(1.25)


def test_hinge_fake_rejects_unknown_form():
    with pytest.raises(ValueError, match=r"'lsgan'.*code.*paper|code.*paper.*'lsgan'"):
        hinge_fake(FAKE, "lsgan")


def test_discriminator_loss_sums_real_and_every_fake_term():
    assert discriminator_loss(REAL, [FAKE]).item() == pytest.approx(0.625 + 0.5)
    assert discriminator_loss(REAL, [FAKE, BOOST]).item() == pytest.approx(0.625 + 0.5 + 0.125)
    assert discriminator_loss(REAL, [FAKE, BOOST], form="paper").item() == pytest.approx(0.625 + 1.25 + 1.0)
    assert discriminator_loss(REAL, []).item() == pytest.approx(0.625)


def test_discriminator_loss_rejects_unknown_form_even_without_fakes():
    with pytest.raises(ValueError, match="Paper"):
        discriminator_loss(REAL, [], form="Paper")


def test_generator_adversarial_loss():
    assert generator_adversarial_loss(t(4.0)).item() == pytest.approx(-4.0)
    # -(1 + 3)/2 - (-2 + 0.5)/2 = -2 + 0.75
    assert generator_adversarial_loss(t(1.0, 3.0), t(-2.0, 0.5)).item() == pytest.approx(-1.25)
    with pytest.raises(ValueError):
        generator_adversarial_loss()


def test_cycle_consistency():
    x, x_cycled = t(0.0, 1.0), t(0.5, 0.5)  # |.| = 0.5, 0.5 -> 0.5
    y, y_cycled = t(-1.0, 1.0, 0.0, 0.0), t(-1.0, 0.0, 0.0, 2.0)  # |.| = 0, 1, 0, 2 -> 0.75
    assert cycle_consistency(x, x_cycled, y, y_cycled).item() == pytest.approx(1.25)
    assert cycle_consistency(x, x_cycled, y, y_cycled, noisy_weight=0.2).item() == pytest.approx(0.2 * 0.5 + 0.75)


def test_bypass_consistency():
    denoised_x, x, noise_x = t(0.5, -0.5), t(1.0, 0.0), t(0.25, 0.5)
    # x - H(x) = 0.75, -0.5; |F(x) - (x - H(x))| = 0.25, 0 -> 0.125
    y, denoised_y_plus_noise = t(0.0, 1.0), t(0.5, 0.0)  # |.| = 0.5, 1 -> 0.75
    loss = bypass_consistency(denoised_x, x, noise_x, y, denoised_y_plus_noise)
    assert loss.item() == pytest.approx(0.875)


def test_noise_consistency():
    noise_x, x, denoised_x = t(0.1, 0.2), t(1.0, 1.0), t(0.9, 0.5)
    # x - F(x) = 0.1, 0.5; |H(x) - (x - F(x))| = 0, 0.3 -> 0.15
    noised_y, y, noise_of_noised_y = t(0.5, 0.0), t(0.0, 0.0), t(0.5, 0.5)
    # G(y) - y - H(G(y)) = 0, -0.5 -> 0.25
    loss = noise_consistency(noise_x, x, denoised_x, noised_y, y, noise_of_noised_y)
    assert loss.item() == pytest.approx(0.4)
    loss = noise_consistency(noise_x, x, denoised_x, noised_y, y, noise_of_noised_y, noisy_weight=0.2)
    assert loss.item() == pytest.approx(0.2 * 0.15 + 0.25)


def test_losses_are_differentiable_scalars():
    denoised_x = t(0.5, -0.5).requires_grad_()
    loss = bypass_consistency(denoised_x, t(1.0, 0.0), t(0.25, 0.5), t(0.0, 1.0), t(0.5, 0.0))
    loss.backward()
    assert loss.dim() == 0
    # F(x) - (x - H(x)) = -0.25, 0; d mean|.| / dF(x) = sign(.)/2, and l1 gives 0 gradient at 0
    torch.testing.assert_close(denoised_x.grad, t(-0.5, 0.0))


def test_gaussian_blur_keeps_constants_and_the_mean_and_smooths_noise():
    torch.manual_seed(0)
    assert torch.allclose(gaussian_blur(torch.full((2, 1, 16, 16), 0.3), 2.0), torch.full((2, 1, 16, 16), 0.3))
    noise = torch.randn(4, 1, 64, 64)
    blurred = gaussian_blur(noise, 2.0)
    assert blurred.shape == noise.shape
    # white noise through a Gaussian of sigma 2: std 1 / (2 sqrt(pi) sigma) = 0.14
    assert 0.1 < blurred.std().item() < 0.2
    ramp = torch.linspace(-1, 1, 32).view(1, 1, 1, 32).expand(1, 1, 32, 32)
    assert torch.allclose(gaussian_blur(ramp, 1.5)[..., 8:24], ramp[..., 8:24], atol=1e-5)  # linear inside


def test_lowpass_consistency_sees_offsets_not_noise():
    torch.manual_seed(0)
    x, y = torch.rand(4, 1, 64, 64), torch.rand(4, 1, 64, 64)
    assert lowpass_consistency(x, x, y, y, 2.0).item() == pytest.approx(0.0, abs=1e-7)
    # F = x - c, G = y + c satisfy every paper loss; here they cost 2c
    assert lowpass_consistency(x, x - 0.05, y, y + 0.05, 2.0).item() == pytest.approx(0.1, rel=1e-4)
    noise = 0.05 * torch.randn_like(x)
    assert lowpass_consistency(x + noise, x, y, y + noise, 2.0).item() < 0.2 * 0.1  # noise mostly passes
