"""Validation during training: the ensemble, F alone, x - H(x) and the low-dose input side by side."""

import logging

import pytest
import torch
from ignite.engine import Engine

from scripts.core.ct import HU_RANGE, unit_to_hu
from scripts.core.metrics import windowed_psnr
from scripts.model.networks import Generator, ISCLDenoiser, NoiseExtractor
from scripts.model.validation import BranchesInferer, GainLogger, output_pair, validation_images, validation_metrics


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    return ISCLDenoiser(Generator(), NoiseExtractor(), gamma=0.5).eval()


def test_branches_inferer_returns_the_exported_ensemble_and_both_branches(network):
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        out = BranchesInferer()(x, network)
        assert torch.allclose(out["ensemble"], network(x), atol=1e-6)
        assert torch.allclose(out["F"], network.denoiser(x).clamp(-1, 1))
        assert torch.allclose(out["x_minus_H"], (x - network.noise_extractor(x)).clamp(-1, 1))


def test_validation_metrics_score_each_output_against_the_label():
    torch.manual_seed(1)
    label = torch.rand(1, 1, 32, 32) * 2 - 1
    noisy = label + 0.2 * torch.randn_like(label)
    output = {"image": noisy, "label": label,
              "pred": {"ensemble": label, "F": noisy, "x_minus_H": 0.5 * (label + noisy)}}
    metrics = validation_metrics((-160.0, 240.0), HU_RANGE, exclude=["psnr_ensemble"])
    assert set(metrics) == {"ssim_ensemble", "psnr_F", "ssim_F", "psnr_x_minus_H", "ssim_x_minus_H",
                            "psnr_low_dose_input", "ssim_low_dose_input"}
    values = {}
    for name, metric in metrics.items():
        metric.reset()
        metric.update(metric._output_transform(output))
        values[name] = metric.compute()
    expected = windowed_psnr(unit_to_hu(noisy[0, 0], HU_RANGE).numpy(), unit_to_hu(label[0, 0], HU_RANGE).numpy(),
                             (-160.0, 240.0))
    assert values["psnr_F"] == pytest.approx(expected) == pytest.approx(values["psnr_low_dose_input"])
    assert values["psnr_x_minus_H"] > values["psnr_F"]
    assert values["ssim_ensemble"] == pytest.approx(1.0)
    assert output_pair("F")(output)[0] is noisy


def test_validation_images_rows():
    engine = Engine(lambda e, b: None)
    t = torch.zeros(1, 1, 8, 8)
    engine.state.output = {"image": t, "label": t, "pred": {"ensemble": t, "F": t, "x_minus_H": t}}
    assert list(validation_images(engine)) == ["low dose", "F(x)", "x - H(x)", "ensemble", "full dose"]


def test_gain_logger_states_the_gain_over_the_input(caplog):
    engine = Engine(lambda e, b: None)
    engine.state.metrics = {"psnr_low_dose_input": 28.17, "ssim_low_dose_input": 0.806,
                            "psnr_ensemble": 29.5, "ssim_ensemble": 0.85, "psnr_F": 27.0, "ssim_F": 0.79,
                            "psnr_x_minus_H": 28.2, "ssim_x_minus_H": 0.81}
    with caplog.at_level(logging.INFO, logger="iscl"):
        GainLogger((-160.0, 240.0))(engine)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == ("validation ensemble PSNR 29.50 dB (input 28.17 dB, gain +1.33 dB), SSIM 0.850 (input 0.806); "
                        "window [-160, 240] HU, data range 1")
    assert "F PSNR 27.00 dB (input 28.17 dB, gain -1.17 dB)" in lines[1]
    assert lines[2].startswith("validation x_minus_H PSNR 28.20 dB")
    assert len(lines) == 3
