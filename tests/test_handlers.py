import glob
import os

import numpy as np
import pytest
import torch
from ignite.engine import Engine, EventEnum, Events
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from scripts.model.checkpoints import ResumeFrom, StateSaver
from scripts.model.handlers import (
    ClampParameters,
    LABEL_WIDTH,
    ImageGridHandler,
    LearningRateLogger,
    SetEpoch,
    SWAHandler,
    WindowedMetric,
)
from scripts.core.atomic import torch_save
from scripts.model.networks import BatchInstanceNorm2d
from scripts.model.optim import Lookahead


def snapshot(i):
    """Known weights of a Linear(2, 1) at iteration i: weight [[i^2, -i]], bias [2^i]."""
    return torch.tensor([[float(i * i), float(-i)]]), torch.tensor([float(2**i)])


def setting_engine(net, record=None):
    """An engine whose iteration sets ``net`` to ``snapshot(iteration)``."""

    def process(engine, batch):
        w, b = snapshot(engine.state.iteration)
        with torch.no_grad():
            net.weight.copy_(w)
            net.bias.copy_(b)
        if record is not None:
            record.append(engine.state.iteration)
        return batch

    return Engine(process)


# ------------------------------------------------------------------------------------------- SWA


def test_swa_averages_from_start_iteration_and_applies_on_completed():
    net = torch.nn.Linear(2, 1)
    engine = setting_engine(net)
    swa = SWAHandler({"net": net}, start_iteration=3)
    swa.attach(engine)
    live_before_completed = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: live_before_completed.append(net.weight.clone()))
    engine.run(range(5), max_epochs=1)

    # snapshots at iterations 3, 4, 5: weight [[9, -3]], [[16, -4]], [[25, -5]], bias 8, 16, 32
    expected_w = torch.tensor([[50.0 / 3.0, -4.0]])
    expected_b = torch.tensor([56.0 / 3.0])
    avg = swa.averaged["net"]
    assert avg.n_averaged.item() == 3
    torch.testing.assert_close(avg.module.weight.detach(), expected_w)
    torch.testing.assert_close(avg.module.bias.detach(), expected_b)
    # before COMPLETED the live network still holds the last snapshot, afterwards the average
    torch.testing.assert_close(live_before_completed[0], torch.tensor([[25.0, -5.0]]))
    torch.testing.assert_close(net.weight.detach(), expected_w)
    torch.testing.assert_close(net.bias.detach(), expected_b)


def test_swa_disabled_attaches_nothing():
    net = torch.nn.Linear(2, 1)
    engine = setting_engine(net)
    swa = SWAHandler({"net": net}, start_iteration=1, enabled=False)
    swa.attach(engine)
    assert not engine.has_event_handler(swa.update)
    assert not engine.has_event_handler(swa.copy_to_networks)
    engine.run(range(5), max_epochs=1)
    assert swa.averaged["net"].n_averaged.item() == 0
    torch.testing.assert_close(net.weight.detach(), torch.tensor([[25.0, -5.0]]))  # last snapshot, not averaged


def test_swa_before_start_iteration_leaves_network_alone():
    net = torch.nn.Linear(2, 1)
    engine = setting_engine(net)
    swa = SWAHandler({"net": net}, start_iteration=10)  # never reached in 5 iterations
    swa.attach(engine)
    engine.run(range(5), max_epochs=1)
    assert swa.averaged["net"].n_averaged.item() == 0
    torch.testing.assert_close(net.weight.detach(), torch.tensor([[25.0, -5.0]]))


def test_swa_state_dict_round_trip_continues_the_average(tmp_path):
    net = torch.nn.Linear(2, 1)
    engine = setting_engine(net)
    swa = SWAHandler({"net": net}, start_iteration=3)
    swa.attach(engine)
    engine.run(range(5), max_epochs=1)
    path = str(tmp_path / "swa.pt")
    torch.save(swa.state_dict(), path)

    net2 = torch.nn.Linear(2, 1)
    swa2 = SWAHandler({"net": net2}, start_iteration=3)
    swa2.load_state_dict(torch.load(path))
    assert swa2.averaged["net"].n_averaged.item() == 3
    # one more snapshot: weight [[50, 0]], bias [0] -> average of 4: [[(9+16+25+50)/4, (-3-4-5+0)/4]], (8+16+32+0)/4
    with torch.no_grad():
        net2.weight.copy_(torch.tensor([[50.0, 0.0]]))
        net2.bias.zero_()
    engine2 = Engine(lambda e, b: None)
    engine2.state.iteration = 6
    swa2.update(engine2)
    swa2.copy_to_networks()
    torch.testing.assert_close(net2.weight.detach(), torch.tensor([[25.0, -3.0]]))
    torch.testing.assert_close(net2.bias.detach(), torch.tensor([14.0]))


# ------------------------------------------------------------------------------- ClampParameters


class RhoLookalikes(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rho_scale = torch.nn.Parameter(torch.tensor(-4.0))
        self.arho = torch.nn.Parameter(torch.tensor(3.0))


class Steps(EventEnum):
    STEP_A = "step_a"
    STEP_B = "step_b"


def test_clamp_parameters_clamps_only_rho_on_given_events():
    net1 = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 1), BatchInstanceNorm2d(3))
    net2 = torch.nn.Sequential(torch.nn.Sequential(BatchInstanceNorm2d(2)), RhoLookalikes())
    rhos = [net1[1].rho, net2[0][0].rho]
    out_of_range = [torch.tensor([-0.5, 0.5, 1.5]), torch.tensor([2.0, -3.0])]
    clamped = [torch.tensor([0.0, 0.5, 1.0]), torch.tensor([1.0, 0.0])]
    others = {"gamma": torch.tensor([-2.0, 0.5, 3.0]), "beta": torch.tensor([-7.0, 0.25, 9.0])}

    def set_out_of_range():
        with torch.no_grad():
            for rho, v in zip(rhos, out_of_range):
                rho.copy_(v)
            net1[1].gamma.copy_(others["gamma"])
            net1[1].beta.copy_(others["beta"])
            net1[0].weight.fill_(5.0)

    seen = {}

    def process(engine, batch):
        set_out_of_range()
        engine.fire_event(Steps.STEP_B)  # not a clamping event
        seen["after_b"] = [r.detach().clone() for r in rhos]
        engine.fire_event(Steps.STEP_A)
        seen["after_a"] = [r.detach().clone() for r in rhos]
        set_out_of_range()  # nothing fires after this one
        return batch

    engine = Engine(process)
    engine.register_events(*Steps)
    clamp = ClampParameters([net1, net2], event_names=[Steps.STEP_A])
    assert len(clamp.params) == 2
    clamp.attach(engine)
    engine.run(range(2), max_epochs=1)

    for got, want in zip(seen["after_b"], out_of_range):
        torch.testing.assert_close(got, want)
    for got, want in zip(seen["after_a"], clamped):
        torch.testing.assert_close(got, want)
    # not attached to ITERATION_COMPLETED / COMPLETED: the last out-of-range values survive the run
    for rho, want in zip(rhos, out_of_range):
        torch.testing.assert_close(rho.detach(), want)
    # gamma, beta, conv weights and parameters that merely contain "rho" in their name are never clamped
    assert net2[1].rho_scale.item() == -4.0 and net2[1].arho.item() == 3.0
    clamp()
    torch.testing.assert_close(rhos[0].detach(), clamped[0])
    torch.testing.assert_close(net1[1].gamma.detach(), others["gamma"])
    torch.testing.assert_close(net1[1].beta.detach(), others["beta"])
    assert (net1[0].weight == 5.0).all()


def test_clamp_parameters_on_several_events():
    norm = BatchInstanceNorm2d(1)
    counts = []

    def process(engine, batch):
        for event in Steps:
            with torch.no_grad():
                norm.rho.fill_(-1.0)
            engine.fire_event(event)
            counts.append(norm.rho.item())
        return batch

    engine = Engine(process)
    engine.register_events(*Steps)
    ClampParameters([norm], event_names=list(Steps), low=0.25, high=0.75).attach(engine)
    engine.run(range(1), max_epochs=1)
    assert counts == [0.25, 0.25]


# ------------------------------------------------------------------------------------- StateSaver


def test_state_saver_single_object_saves_its_state_dict(tmp_path):
    net = torch.nn.Linear(2, 1)
    engine = setting_engine(net)
    path = str(tmp_path / "models" / "model.pt")  # folder created on demand
    StateSaver({"network": net}, path).attach(engine)
    engine.run(range(3), max_epochs=2)
    saved = torch.load(path)
    assert set(saved) == {"weight", "bias"}
    torch.testing.assert_close(saved["weight"], torch.tensor([[36.0, -6.0]]))  # iteration 6
    torch.testing.assert_close(saved["bias"], torch.tensor([64.0]))
    assert os.listdir(tmp_path / "models") == ["model.pt"]


def test_state_saver_several_objects_and_engine_key(tmp_path):
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.125)
    engine = setting_engine(net)
    path = str(tmp_path / "ckpt.pt")
    StateSaver({"net": net, "opt": opt}, path, engine_key="trainer").attach(engine)
    engine.run(range(3), max_epochs=2)
    saved = torch.load(path)
    assert set(saved) == {"net", "opt", "trainer"}
    torch.testing.assert_close(saved["net"]["weight"], torch.tensor([[36.0, -6.0]]))
    assert saved["opt"]["param_groups"][0]["lr"] == 0.125
    assert saved["trainer"]["iteration"] == 6
    assert saved["trainer"]["epoch_length"] == 3
    assert saved["trainer"]["max_epochs"] == 2


def test_state_saver_interval_saves_at_epoch_ends(tmp_path):
    net = torch.nn.Linear(2, 1)
    engine = setting_engine(net)
    path = str(tmp_path / "ckpt.pt")
    StateSaver({"net": net}, path, interval=2, engine_key="trainer").attach(engine)
    saved_iterations = []

    def look(engine):  # registered after the saver: sees what it just wrote
        saved_iterations.append(torch.load(path)["trainer"]["iteration"] if os.path.exists(path) else None)

    engine.add_event_handler(Events.EPOCH_COMPLETED, look)
    engine.run(range(3), max_epochs=5)
    assert saved_iterations == [None, 6, 6, 12, 12]
    assert torch.load(path)["trainer"]["iteration"] == 15  # and once more on COMPLETED
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # no temporary files left behind


def test_torch_save_keeps_old_file_when_saving_fails(tmp_path):
    path = str(tmp_path / "ckpt.pt")
    torch_save({"a": torch.tensor([1.0, 2.0])}, path)
    with pytest.raises(Exception, match="pickle"):
        torch_save({"f": lambda: 0}, path)  # a lambda cannot be pickled
    torch.testing.assert_close(torch.load(path)["a"], torch.tensor([1.0, 2.0]))
    assert os.listdir(tmp_path) == ["ckpt.pt"]
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o644)


# -------------------------------------------------------------------------------------- ResumeFrom


@pytest.mark.parametrize("path", [None, ""])
def test_resume_from_nothing_is_a_no_op(path):
    net = torch.nn.Linear(2, 1)
    with torch.no_grad():
        net.weight.fill_(3.0)
    epochs = []
    engine = Engine(lambda e, b: None)
    engine.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs.append(e.state.epoch))
    ResumeFrom(path, {"net": net}).attach(engine)
    engine.run(range(2), max_epochs=2)
    assert epochs == [1, 2]
    assert (net.weight == 3.0).all()


def test_resume_from_missing_file_raises(tmp_path):
    missing = str(tmp_path / "nope" / "checkpoint.pt")
    with pytest.raises(FileNotFoundError, match="nope"):
        ResumeFrom(missing, {"net": torch.nn.Linear(2, 1)}).attach(Engine(lambda e, b: None))


def test_resume_from_checkpoint_restores_weights_and_progress(tmp_path):
    path = str(tmp_path / "checkpoint.pt")
    net = torch.nn.Linear(2, 1)
    first = setting_engine(net)
    StateSaver({"net": net}, path, interval=1, engine_key="trainer").attach(first)
    first.run(range(3), max_epochs=2)  # iterations 1..6; net holds snapshot(6)

    net2 = torch.nn.Linear(2, 1)
    with torch.no_grad():
        net2.weight.zero_()
        net2.bias.zero_()
    iterations = []
    second = setting_engine(net2, record=iterations)
    epochs, weights_at_start = [], []
    second.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs.append(e.state.epoch))
    ResumeFrom(path, {"net": net2}, engine_key="trainer").attach(second)
    second.add_event_handler(Events.STARTED, lambda e: weights_at_start.append(net2.weight.detach().clone()))
    second.run(range(3), max_epochs=4)

    torch.testing.assert_close(weights_at_start[0], torch.tensor([[36.0, -6.0]]))
    assert epochs == [3, 4]
    assert iterations == [7, 8, 9, 10, 11, 12]
    assert second.state.iteration == 12 and second.state.max_epochs == 4


def test_init_from_checkpoint_loads_weights_but_starts_a_new_schedule(tmp_path):
    """--init_from: the networks start from a checkpoint (optimizer and progress stay fresh)."""
    path = str(tmp_path / "checkpoint.pt")
    net, other_net = torch.nn.Linear(2, 1), torch.nn.Linear(1, 1)
    first = setting_engine(net)
    StateSaver({"net": net, "other": other_net}, path, interval=1, engine_key="trainer").attach(first)
    first.run(range(3), max_epochs=2)

    net2 = torch.nn.Linear(2, 1)
    iterations, weights_at_start = [], []
    second = setting_engine(net2, record=iterations)
    ResumeFrom(path, {"net": net2}, engine_key=None).attach(second)
    second.add_event_handler(Events.STARTED, lambda e: weights_at_start.append(net2.weight.detach().clone()))
    second.run(range(3), max_epochs=1)

    torch.testing.assert_close(weights_at_start[0], torch.tensor([[36.0, -6.0]]))
    assert iterations == [1, 2, 3]


# ---------------------------------------------------------------------------------------- SetEpoch


class EpochRecorder:
    def __init__(self):
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch


def test_set_epoch_at_epoch_start():
    target = EpochRecorder()
    seen = []
    engine = Engine(lambda e, b: seen.append(target.epoch))
    SetEpoch(target).attach(engine)
    engine.run(range(2), max_epochs=3)
    assert seen == [1, 1, 2, 2, 3, 3]


# ------------------------------------------------------------------------------------ ImageGridHandler


def _tiles(values, h=2, w=3):
    return torch.stack([torch.full((1, h, w), float(v)) for v in values])


def test_image_grid_shape_clipping_and_per_name_range():
    handler = ImageGridHandler(None, lambda e: None, max_columns=4, value_ranges={"b": (0.0, 10.0)})
    b = _tiles([0, 0, 0, 0, 0])
    b[0, 0] = torch.tensor([[0.0, 2.0, 4.0], [6.0, 8.0, 10.0]])  # asymmetric tile: orientation is kept
    b[1, 0] = 15.0  # above the range of b
    b[2, 0] = 5.0
    b[3, 0] = -1.0  # below the range of b
    b[4, 0] = 7.0  # fifth sample: beyond max_columns
    images = {"a": _tiles([-3.0, -1.0, 0.0, 0.5, 1.0]), "b": b}
    grid = handler.grid(images)
    assert grid.shape == (2 * 2, 4 * 3)

    def tile(row, col):
        return grid[row * 2:(row + 1) * 2, col * 3:(col + 1) * 3]

    # row "a" in the default range (-1, 1): -3 -> 0 (clipped), -1 -> 0, 0 -> 0.5, 0.5 -> 0.75
    for col, value in enumerate([0.0, 0.0, 0.5, 0.75]):
        np.testing.assert_allclose(tile(0, col), value)
    # row "b" in (0, 10)
    np.testing.assert_allclose(tile(1, 0), [[0.0, 0.2, 0.4], [0.6, 0.8, 1.0]], atol=1e-7)
    np.testing.assert_allclose(tile(1, 1), 1.0)
    np.testing.assert_allclose(tile(1, 2), 0.5)
    np.testing.assert_allclose(tile(1, 3), 0.0)


def test_image_grid_fewer_samples_than_columns_and_default_range():
    handler = ImageGridHandler(None, lambda e: None, max_columns=4, value_range=(-0.5, 0.5))
    grid = handler.grid({"x": _tiles([0.25, -0.25], h=3, w=5), "y": _tiles([0.5, 2.0], h=3, w=5),
                         "z": _tiles([-0.5, 0.0], h=3, w=5)})
    assert grid.shape == (3 * 3, 2 * 5)
    np.testing.assert_allclose(grid[0:3, 0:5], 0.75)
    np.testing.assert_allclose(grid[0:3, 5:10], 0.25)
    np.testing.assert_allclose(grid[3:6], 1.0)
    np.testing.assert_allclose(grid[6:9, 0:5], 0.0)
    np.testing.assert_allclose(grid[6:9, 5:10], 0.5)


def test_image_grid_rows_with_different_batch_sizes_use_the_smallest():
    handler = ImageGridHandler(None, lambda e: None, max_columns=4)
    grid = handler.grid({"x": _tiles([0.0, 0.0, 0.0], h=2, w=2), "y": _tiles([1.0, 1.0], h=2, w=2)})
    assert grid.shape == (2 * 2, 2 * 2)
    np.testing.assert_allclose(grid[2:4], 1.0)


def test_image_grid_handler_writes_to_tensorboard(tmp_path):
    writer = SummaryWriter(log_dir=str(tmp_path))
    batch = {"noisy": _tiles([0.0, 1.0, -1.0], h=4, w=6), "clean": _tiles([0.5, 0.5, 0.5], h=4, w=6)}
    engine = Engine(lambda e, b: batch)
    ImageGridHandler(writer, lambda e: e.state.output, tag="train", max_columns=2).attach(engine)
    engine.run(range(2), max_epochs=3)
    writer.close()
    assert glob.glob(str(tmp_path / "events.out.tfevents.*"))
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    events = acc.Images("train")
    assert [e.step for e in events] == [2, 4, 6]  # at each epoch's end, on the iteration axis
    assert (events[0].height, events[0].width) == (2 * 4, LABEL_WIDTH + 2 * 6)


def test_image_grid_rows_are_labelled_with_their_names():
    handler = ImageGridHandler(None, lambda e: None, max_columns=2)
    rows = {"x": _tiles([-1.0, -1.0], h=16, w=16), "F(x)": _tiles([-1.0, -1.0], h=16, w=16)}
    image = handler.labelled(rows)
    assert image.shape == (32, LABEL_WIDTH + 32)
    strip = image[:, :LABEL_WIDTH]
    assert strip[:16].max() > 0.5 and strip[16:].max() > 0.5  # text drawn in each row's band
    assert not np.array_equal(strip[:16] > 0, strip[16:] > 0)  # two different names
    np.testing.assert_array_equal(image[:, LABEL_WIDTH:], handler.grid(rows))


def test_training_images_come_in_the_documented_order():
    from scripts.model.engine import output_images

    images = {name: torch.zeros(1, 1, 2, 2) for name in ("x", "F(x)", "G(y)", "y", "H(x)")}
    engine = Engine(lambda e, b: None)
    engine.state.output = {"images": images}
    assert list(output_images(engine)) == ["x", "F(x)", "H(x)", "G(y)", "y"]


def test_image_grid_handler_iteration_level_interval(tmp_path):
    writer = SummaryWriter(log_dir=str(tmp_path))
    batch = {"x": _tiles([0.0], h=4, w=4)}
    engine = Engine(lambda e, b: batch)
    ImageGridHandler(writer, lambda e: e.state.output, tag="it", interval=2, epoch_level=False).attach(engine)
    engine.run(range(5), max_epochs=1)
    writer.close()
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert [e.step for e in acc.Images("it")] == [2, 4]


# ----------------------------------------------------------------------------------- LearningRateLogger


def test_learning_rate_logger_writes_scalars(tmp_path):
    p, q = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    plain = torch.optim.SGD([p], lr=0.1)
    wrapped = Lookahead(torch.optim.SGD([q], lr=0.5), k=2)

    def process(engine, batch):
        plain.param_groups[0]["lr"] = 0.01 * engine.state.iteration

    writer = SummaryWriter(log_dir=str(tmp_path))
    engine = Engine(process)
    LearningRateLogger(writer, {"generators": plain, "extractor": wrapped}, interval=2).attach(engine)
    engine.run(range(5), max_epochs=1)
    writer.close()
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"lr/generators", "lr/extractor"}
    gen = acc.Scalars("lr/generators")
    assert [s.step for s in gen] == [2, 4]
    assert [s.value for s in gen] == pytest.approx([0.02, 0.04])
    ext = acc.Scalars("lr/extractor")
    assert [(s.step, s.value) for s in ext] == [(2, 0.5), (4, 0.5)]


# ------------------------------------------------------------------------------------- WindowedMetric

HU_RANGE = (-1024.0, 3072.0)  # unit = (HU + 1024) / 2048 - 1: 0 HU -> -0.5, +2048 HU -> +1.0 unit


def _run_metric(metric, batches):
    engine = Engine(lambda e, b: b)
    metric.attach(engine, "m")
    engine.run(batches, max_epochs=1)
    return engine.state.metrics["m"]


def test_windowed_metric_maps_back_to_hu_and_averages_over_images():
    calls = []

    def mean_abs_hu_error(pred_hu, ref_hu, window):
        calls.append((pred_hu.shape, window))
        assert pred_hu.ndim == 2
        return float(np.abs(pred_hu - ref_hu).mean())

    ref = torch.full((2, 1, 3, 4), -0.5)  # 0 HU
    pred = torch.stack([torch.full((1, 3, 4), 0.0), torch.full((1, 3, 4), 0.5)])  # 1024 HU, 2048 HU
    ref2, pred2 = torch.full((1, 1, 3, 4), 1.0), torch.full((1, 1, 3, 4), 1.0)  # identical: error 0
    metric = WindowedMetric(mean_abs_hu_error, window=(-160, 240), hu_range=HU_RANGE)
    value = _run_metric(metric, [(pred, ref), (pred2, ref2)])
    # per image: 1024, 2048, 0 -> mean 1024 (a mean of per-batch means would give 768)
    assert value == pytest.approx(1024.0)
    assert calls == [((3, 4), (-160, 240))] * 3


def test_windowed_metric_with_windowed_psnr():
    metrics = pytest.importorskip("scripts.core.metrics")
    # window [-160, 240] is 400 HU wide: a constant 40 HU error is 0.1 of the window -> MSE 0.01 -> 20 dB;
    # 4 HU -> 0.01 -> MSE 1e-4 -> 40 dB. 0 HU is -0.5 in unit scale, 1 HU is 1/2048.
    ref = torch.full((2, 1, 8, 8), -0.5)
    pred = torch.stack([torch.full((1, 8, 8), -0.5 + 40 / 2048), torch.full((1, 8, 8), -0.5 - 4 / 2048)])
    metric = WindowedMetric(metrics.windowed_psnr, window=(-160.0, 240.0), hu_range=HU_RANGE)
    assert _run_metric(metric, [(pred[:1], ref[:1])]) == pytest.approx(20.0, abs=1e-6)
    metric2 = WindowedMetric(metrics.windowed_psnr, window=(-160.0, 240.0), hu_range=HU_RANGE)
    assert _run_metric(metric2, [(pred, ref)]) == pytest.approx(30.0, abs=1e-6)


def test_windowed_metric_with_windowed_ssim_of_identical_images_is_one():
    metrics = pytest.importorskip("scripts.core.metrics")
    torch.manual_seed(0)
    image = torch.rand(1, 1, 16, 16) * 0.1 - 0.5  # around 0..200 HU
    metric = WindowedMetric(metrics.windowed_ssim, window=(-160.0, 240.0), hu_range=HU_RANGE)
    assert _run_metric(metric, [(image, image.clone())]) == pytest.approx(1.0, abs=1e-6)


def test_windowed_metric_compute_without_updates_raises():
    metric = WindowedMetric(lambda p, r, w: 0.0, window=(-160, 240), hu_range=HU_RANGE)
    metric.reset()
    with pytest.raises(RuntimeError, match="at least one image"):
        metric.compute()
