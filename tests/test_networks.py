import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scripts.model.networks import (
    BatchInstanceNorm2d,
    Discriminator,
    Generator,
    ISCLDenoiser,
    NoiseExtractor,
    SymmetricPad2d,
    UpConv2d,
    clamp_rho_,
)


def n_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def generator():
    return Generator().eval()


@pytest.fixture(scope="module")
def extractor():
    return NoiseExtractor().eval()


def _random_bin(channels):
    """A BIN layer with non-trivial gamma, beta and rho in (0, 1)."""
    bin_ = BatchInstanceNorm2d(channels)
    with torch.no_grad():
        bin_.gamma.uniform_(0.5, 2.0)
        bin_.beta.uniform_(-1.0, 1.0)
        bin_.rho.uniform_(0.1, 0.9)
    return bin_


# ---- parameter counts and shapes -------------------------------------------------------


def test_parameter_counts(generator, extractor):
    assert n_params(generator) == 1_148_225
    assert n_params(extractor) == 168_801
    assert n_params(Discriminator()) == 2_790_177


def test_discriminator_scores_a_64x64_patch_batch():
    d = Discriminator().train()
    assert d(torch.randn(3, 1, 64, 64)).shape == (3, 1, 1, 1)


def test_generator_and_extractor_keep_512x512(generator, extractor):
    x = torch.rand(1, 1, 512, 512) * 2 - 1
    with torch.no_grad():
        y = generator(x)
        n = extractor(x)
    assert y.shape == (1, 1, 512, 512)
    assert n.shape == (1, 1, 512, 512)
    assert y.abs().max() <= 1.0  # tanh output
    assert torch.isfinite(n).all()


def test_generator_keeps_non_square_size(generator):
    with torch.no_grad():
        assert generator(torch.zeros(2, 1, 12, 20)).shape == (2, 1, 12, 20)


def test_generator_rejects_size_not_multiple_of_4(generator):
    with pytest.raises(ValueError, match="66x64"):
        generator(torch.zeros(1, 1, 66, 64))


# ---- BIN --------------------------------------------------------------------------------


def test_bin_batch_of_one_in_training_equals_instance_norm():
    bin_ = BatchInstanceNorm2d(4).train()
    with torch.no_grad():
        bin_.rho.fill_(0.3)  # BN over a single image is IN, whatever rho is
    x = torch.randn(1, 4, 9, 7) * 3 + 2
    expected = F.instance_norm(x, eps=1e-7)
    torch.testing.assert_close(bin_(x), expected, atol=1e-5, rtol=0)


def test_bin_training_matches_formula_with_batch_statistics():
    bin_ = _random_bin(3).train()
    x = torch.randn(4, 3, 5, 6) * 2 + 1
    # direct transcription of (rho*BN + (1-rho)*IN)*gamma + beta with biased moments
    bm = x.mean(dim=(0, 2, 3), keepdim=True)
    bv = ((x - bm) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    im = x.mean(dim=(2, 3), keepdim=True)
    iv = ((x - im) ** 2).mean(dim=(2, 3), keepdim=True)
    bn = (x - bm) / torch.sqrt(bv + 1e-7)
    inorm = (x - im) / torch.sqrt(iv + 1e-7)
    rho, gamma, beta = (p.detach().view(1, -1, 1, 1) for p in (bin_.rho, bin_.gamma, bin_.beta))
    expected = (rho * bn + (1 - rho) * inorm) * gamma + beta
    torch.testing.assert_close(bin_(x), expected, atol=1e-5, rtol=1e-5)


def test_bin_training_output_depends_on_the_rest_of_the_batch():
    bin_ = BatchInstanceNorm2d(2).train()
    x0 = torch.randn(1, 2, 8, 8)
    out_a = bin_(torch.cat([x0, torch.randn(3, 2, 8, 8)]))[0]
    out_b = bin_(torch.cat([x0, torch.randn(3, 2, 8, 8) * 5 + 3]))[0]
    assert (out_a - out_b).abs().max() > 1e-2


def test_bin_eval_output_of_an_image_ignores_the_batch():
    bin_ = _random_bin(2).eval()
    x0 = torch.randn(1, 2, 8, 8)
    alone = bin_(x0)
    in_batch = bin_(torch.cat([x0, torch.randn(3, 2, 8, 8) * 5 + 3]))[:1]
    torch.testing.assert_close(in_batch, alone, atol=1e-6, rtol=0)
    # per-image statistics: BN == IN whatever rho is, so the output is IN(x)*gamma + beta (transcribed)
    im = x0.mean(dim=(2, 3), keepdim=True)
    iv = ((x0 - im) ** 2).mean(dim=(2, 3), keepdim=True)
    expected = (x0 - im) / torch.sqrt(iv + 1e-7) * bin_.gamma.view(1, -1, 1, 1) + bin_.beta.view(1, -1, 1, 1)
    torch.testing.assert_close(alone, expected.detach(), atol=1e-5, rtol=0)
    # ... and the same as the training-mode formula given a batch of that one image
    torch.testing.assert_close(alone, bin_.train()(x0).detach(), atol=1e-5, rtol=0)


def test_bin_instance_term_is_zero_on_a_1x1_map():
    bin_ = BatchInstanceNorm2d(3).train()
    with torch.no_grad():
        bin_.rho.zero_()  # IN term only
        bin_.beta.copy_(torch.tensor([0.5, -1.0, 2.0]))
    x = torch.randn(4, 3, 1, 1) * 10
    out = bin_(x)
    assert torch.equal(out, bin_.beta.detach().view(1, 3, 1, 1).expand(4, 3, 1, 1))
    # with rho = 1 the BN term still works across the batch
    with torch.no_grad():
        bin_.rho.fill_(1.0)
        bin_.beta.zero_()
    out = bin_(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.mean(dim=0), torch.zeros(3, 1, 1), atol=1e-5, rtol=0)


def test_bin_has_no_running_statistics_and_named_parameters():
    bin_ = BatchInstanceNorm2d(5)
    assert dict(bin_.named_buffers()) == {}
    assert {name for name, _ in bin_.named_parameters()} == {"gamma", "beta", "rho"}
    assert torch.equal(bin_.gamma, torch.ones(5))
    assert torch.equal(bin_.beta, torch.zeros(5))
    assert torch.equal(bin_.rho, torch.ones(5))


def test_clamp_rho_clips_every_bin_to_unit_interval():
    d = Discriminator()
    bins = [m for m in d.modules() if isinstance(m, BatchInstanceNorm2d)]
    assert len(bins) == 4
    with torch.no_grad():
        for b in bins:
            b.rho.copy_(torch.linspace(-2.0, 2.0, b.rho.numel()))
    clamp_rho_(d)
    for b in bins:
        assert b.rho.min() == 0.0 and b.rho.max() == 1.0
        inside = torch.linspace(-2.0, 2.0, b.rho.numel()).clamp(0, 1)
        assert torch.equal(b.rho.detach(), inside)
        assert b.rho.requires_grad


# ---- init, padding, upsampling ----------------------------------------------------------


def test_init_truncated_normal_std_005(generator):
    convs = [m for m in generator.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert len(convs) == 12
    weights = torch.cat([m.weight.detach().flatten() for m in convs])
    assert weights.abs().max() <= 0.1
    # std of N(0, 0.05) cut at +-2 std is 0.05 * sqrt(1 - 2*2*phi(2)/(2*Phi(2)-1))
    phi2 = math.exp(-2.0) / math.sqrt(2 * math.pi)
    mass = math.erf(2 / math.sqrt(2))
    expected_std = 0.05 * math.sqrt(1 - 4 * phi2 / mass)
    assert abs(weights.std().item() - expected_std) < 5e-4
    assert abs(weights.mean().item()) < 5e-4
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in convs)


@pytest.mark.parametrize("shape,p", [((2, 3, 5, 7), 3), ((1, 1, 4, 4), 1), ((1, 2, 3, 6), 3)])
def test_symmetric_pad_equals_numpy_symmetric(shape, p):
    x = torch.randn(shape)
    expected = np.pad(x.numpy(), [(0, 0), (0, 0), (p, p), (p, p)], mode="symmetric")
    np.testing.assert_array_equal(SymmetricPad2d(p)(x).numpy(), expected)


def test_upconv_is_exactly_2x_and_keeps_top_left_of_full_transposed_conv():
    up = UpConv2d(3, 2)
    x = torch.randn(1, 3, 12, 20)
    out = up(x)
    assert out.shape == (1, 2, 24, 40)
    full = up.conv(x)  # 25x41: TF 'same' drops the last row and column
    assert full.shape[-2:] == (25, 41)
    assert torch.equal(out, full[:, :, :24, :40])


# ---- ensemble ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_pair():
    f, h = Generator().eval(), NoiseExtractor().eval()
    with torch.no_grad():  # make H's output big enough for the clamp to matter
        h.layers[-1].weight.mul_(20)
    return f, h


def test_ensemble_gamma_1_0_and_half(small_pair):
    f, h = small_pair
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        fx, x_minus_h = f(x), x - h(x)
        out1 = ISCLDenoiser(f, h, gamma=1.0)(x)
        out0 = ISCLDenoiser(f, h, gamma=0.0)(x)
        out_half = ISCLDenoiser(f, h, gamma=0.5)(x)
    assert x_minus_h.abs().max() > 1.0  # so the clamp is exercised
    torch.testing.assert_close(out1, fx.clamp(-1, 1), atol=1e-6, rtol=0)
    torch.testing.assert_close(out0, x_minus_h.clamp(-1, 1), atol=1e-6, rtol=0)
    torch.testing.assert_close(out_half, (0.5 * fx + 0.5 * x_minus_h).clamp(-1, 1), atol=1e-6, rtol=0)
    for out in (out1, out0, out_half):
        assert out.min() >= -1.0 and out.max() <= 1.0


class _MustNotRun(torch.nn.Module):
    def forward(self, x):
        raise AssertionError("this network should not run")


def test_ensemble_skips_the_network_it_does_not_use(small_pair):
    f, h = small_pair
    x = torch.zeros(1, 1, 8, 8)
    with torch.no_grad():
        ISCLDenoiser(f, _MustNotRun(), gamma=1.0)(x)
        ISCLDenoiser(_MustNotRun(), h, gamma=0.0)(x)
        with pytest.raises(AssertionError, match="should not run"):
            ISCLDenoiser(f, _MustNotRun(), gamma=0.5)(x)


def test_ensemble_eval_output_of_an_image_ignores_the_batch(small_pair):
    model = ISCLDenoiser(*small_pair).eval()
    x0 = torch.rand(1, 1, 32, 32) * 2 - 1
    others = torch.rand(3, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        alone = model(x0)
        in_batch = model(torch.cat([others[:1], x0, others[1:]]))[1:2]
    torch.testing.assert_close(in_batch, alone, atol=1e-5, rtol=0)


def test_ensemble_defaults_and_gamma_validation():
    model = ISCLDenoiser(gamma=0.25)
    assert isinstance(model.denoiser, Generator)
    assert isinstance(model.noise_extractor, NoiseExtractor)
    assert model.gamma == 0.25
    with pytest.raises(ValueError, match="1.5"):
        ISCLDenoiser(gamma=1.5)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_ensemble_torchscript_matches_eager():
    model = ISCLDenoiser().eval()
    scripted = torch.jit.script(model)
    x = torch.rand(1, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), atol=1e-5, rtol=0)


# ---- switches that are not in the paper (identity start, discriminator without BIN) -------


def test_generator_with_skip_starts_as_identity_and_keeps_the_parameter_count():
    g = Generator(skip=0.1).train()
    x = torch.rand(4, 1, 64, 64) * 2 - 1
    assert n_params(g) == 1_148_225
    assert torch.equal(g(x), x)
    assert float(g.skip) == pytest.approx(0.1)


def test_generator_skip_scales_the_residual_and_clamps():
    g = Generator(skip=0.5).eval()
    with torch.no_grad():
        g.decoder[-1].bias.fill_(0.4)  # r(x) = 0.4 everywhere
    x = torch.tensor([-0.9, 0.0, 0.9, 1.0]).view(1, 1, 1, 4).repeat(1, 1, 4, 1)
    expected = (x + 0.2).clamp(-1, 1)
    assert torch.allclose(g(x), expected, atol=1e-6)


def test_generator_skip_travels_with_the_weights():
    trained = Generator(skip=0.25)
    loaded = Generator()  # the paper variant, tanh output
    loaded.load_state_dict(trained.state_dict())
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), trained.eval()(x))


def test_generator_refuses_a_negative_skip():
    with pytest.raises(ValueError, match="skip"):
        Generator(skip=-0.1)


def test_zero_init_extractor_starts_at_zero_noise():
    h = NoiseExtractor(zero_init=True)
    assert torch.count_nonzero(h(torch.randn(2, 1, 32, 32))) == 0
    assert n_params(h) == 168_801


def test_discriminator_without_norm_sees_the_noise_amplitude():
    torch.manual_seed(1)
    patches = torch.randn(4, 1, 64, 64)
    for norm, scale_free in (("bin", True), ("none", False)):
        d = Discriminator(norm).train()
        with torch.no_grad():
            d.layers[0].bias.zero_()
            a, b = d(patches), d(0.1 * patches)
        # With BIN (batch statistics) a scaled batch scores the same: the amplitude is invisible.
        assert torch.allclose(a, b, atol=1e-3) == scale_free
    assert n_params(Discriminator("none")) == 2_790_177 - 3 * (64 + 128 + 256 + 512)
    with pytest.raises(ValueError, match="norm"):
        Discriminator("spectral")


def test_ensemble_branches_and_combine_equal_forward(small_pair):
    f, h = small_pair
    net = ISCLDenoiser(f, h, gamma=0.3).eval()
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        denoised, extracted = net.branches(x)
        assert torch.allclose(denoised, f(x)) and torch.allclose(extracted, x - h(x))
        assert torch.allclose(net.combine(denoised, extracted), net(x), atol=1e-6)


def test_a_highpass_discriminator_judges_texture_not_brightness_and_keeps_its_weights():
    torch.manual_seed(0)
    plain_d, highpass_d = Discriminator("none"), Discriminator("none", highpass_sigma=2.0)
    assert highpass_d.state_dict().keys() == plain_d.state_dict().keys()  # checkpoints interchange
    highpass_d.load_state_dict(plain_d.state_dict())
    texture = torch.randn(2, 1, 64, 64) * 0.1
    ramp = torch.linspace(-0.5, 0.5, 64).view(1, 1, 1, 64).expand(2, 1, 64, 64)
    # a constant offset and a slow ramp (anatomy-scale content) leave the high-pass view almost unchanged
    shifted = highpass_d(texture + 0.3 + ramp)
    torch.testing.assert_close(shifted, highpass_d(texture), atol=2e-3, rtol=0)
    assert not torch.allclose(plain_d(texture + 0.3 + ramp), plain_d(texture), atol=2e-3)
    assert torch.jit.script(highpass_d)(texture).shape == (2, 1, 1, 1)
    with pytest.raises(ValueError, match="highpass_sigma must be >= 0"):
        Discriminator("none", highpass_sigma=-1.0)
