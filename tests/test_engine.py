"""ISCLTrainer: each of the three sub-steps updates exactly its own networks, in the paper's order."""

import dataclasses

import pytest
import torch
from ignite.engine import Events

from scripts.model import engine as engine_module
from scripts.model.engine import COMPONENTS, ISCLEvents, ISCLTrainer, check_components, frozen, plain
from scripts.model.networks import Discriminator, Generator, NoiseExtractor
from scripts.model.objective import ISCLLosses

BATCH = 2


def unpaired_batches(n):
    gen = torch.Generator().manual_seed(0)
    return [
        {"noisy": torch.rand(BATCH, 1, 64, 64, generator=gen) * 2 - 1, "clean": torch.rand(BATCH, 1, 64, 64, generator=gen) * 2 - 1}
        for _ in range(n)
    ]


LOSS_SETTINGS = {field.name for field in dataclasses.fields(ISCLLosses)}


def make_trainer(components=None, iterations=1, discriminator_norm="bin", **options):
    """A trainer on random batches; options that are loss settings go to its ``ISCLLosses``."""
    losses = ISCLLosses(**{k: options.pop(k) for k in list(options) if k in LOSS_SETTINGS})
    torch.manual_seed(0)
    nets = {
        "denoiser": Generator(),
        "noise_generator": Generator(),
        "noise_extractor": NoiseExtractor(),
        "noisy_discriminator": Discriminator(discriminator_norm),
        "clean_discriminator": Discriminator(discriminator_norm),
    }

    def radam(*modules):
        return torch.optim.RAdam([p for m in modules for p in m.parameters()], lr=1e-3)

    trainer = ISCLTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=unpaired_batches(iterations),
        epoch_length=iterations,
        generators_optimizer=radam(nets["denoiser"], nets["noise_generator"]),
        discriminators_optimizer=radam(nets["noisy_discriminator"], nets["clean_discriminator"]),
        extractor_optimizer=radam(nets["noise_extractor"]),
        components=components,
        losses=losses,
        **nets,
        **options,
    )
    return trainer, nets


def snapshot(nets):
    return {name: [p.detach().clone() for p in net.parameters()] for name, net in nets.items()}


def changed(before, after):
    return {name for name in before if any(not torch.equal(a, b) for a, b in zip(before[name], after[name]))}


def record_snapshots(trainer, nets):
    snaps = {}
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: snaps.__setitem__("start", snapshot(nets)))
    for event in ISCLEvents:
        trainer.add_event_handler(event, lambda e, ev=event: snaps.__setitem__(ev, snapshot(nets)))
    return snaps


def test_each_step_updates_only_its_networks():
    trainer, nets = make_trainer()
    snaps = record_snapshots(trainer, nets)
    trainer.run()
    d_step = changed(snaps["start"], snaps[ISCLEvents.DISCRIMINATOR_STEP_COMPLETED])
    fg_step = changed(snaps[ISCLEvents.DISCRIMINATOR_STEP_COMPLETED], snaps[ISCLEvents.GENERATORS_STEP_COMPLETED])
    h_step = changed(snaps[ISCLEvents.GENERATORS_STEP_COMPLETED], snaps[ISCLEvents.EXTRACTOR_STEP_COMPLETED])
    assert d_step == {"noisy_discriminator", "clean_discriminator"}
    assert fg_step == {"denoiser", "noise_generator"}
    assert h_step == {"noise_extractor"}


def test_frozen_networks_get_no_gradients():
    trainer, nets = make_trainer()
    grads = {}

    def grads_of(event_name):
        def record(engine):
            grads[event_name] = {n: [p.grad is not None for p in net.parameters()] for n, net in nets.items()}

        return record

    trainer.add_event_handler(ISCLEvents.DISCRIMINATOR_STEP_COMPLETED, grads_of("d"))
    trainer.run()
    # after the D step only the discriminators ever had gradients computed
    assert all(grads["d"]["noisy_discriminator"]) and all(grads["d"]["clean_discriminator"])
    for name in ("denoiser", "noise_generator", "noise_extractor"):
        assert not any(grads["d"][name]), name


def test_frozen_restores_requires_grad():
    net = torch.nn.Linear(2, 2)
    net.bias.requires_grad_(False)
    with frozen(net):
        assert not any(p.requires_grad for p in net.parameters())
    assert net.weight.requires_grad and not net.bias.requires_grad


def test_generator_step_is_scored_by_updated_discriminators():
    """The F/G adversarial loss must be computed with the discriminator weights after the D step."""
    trainer, nets = make_trainer()
    seen = {}
    d_x = nets["noisy_discriminator"]
    trainer.add_event_handler(
        ISCLEvents.DISCRIMINATOR_STEP_COMPLETED, lambda e: seen.__setitem__("d_after", snapshot({"d": d_x})["d"])
    )
    original_forward = d_x.forward

    def spy(x):
        if "d_after" in seen and "used" not in seen:
            seen["used"] = [p.detach().clone() for p in d_x.parameters()]
        return original_forward(x)

    d_x.forward = spy
    trainer.run()
    assert all(torch.equal(a, b) for a, b in zip(seen["used"], seen["d_after"]))


def test_one_translation_serves_the_discriminator_and_generator_steps():
    """F and G are untouched by the D step, so F(x) and G(y) are computed once for both steps: per iteration
    F runs on x, G(y), y + H(x) (F/G step) and x again (H step, after the update); G on y, F(x) and y again.
    The D step's fakes are exactly the F/G step's translations."""
    trainer, nets = make_trainer()
    calls = {"denoiser": [], "noise_generator": []}
    for name in calls:
        nets[name].register_forward_hook(lambda m, i, o, name=name: calls[name].append(o.detach().clone()))
    fakes = []
    original = trainer._discriminator_step
    trainer._discriminator_step = lambda x, y, noisy, clean: fakes.append((noisy[0], clean[0])) or original(
        x, y, noisy, clean)
    trainer.run()
    assert len(calls["denoiser"]) == 4 and len(calls["noise_generator"]) == 3
    noised_y, denoised_x = fakes[0]
    assert torch.equal(denoised_x, calls["denoiser"][0]) and torch.equal(noised_y, calls["noise_generator"][0])


def test_denoiser_warmup_holds_f_while_g_learns():
    trainer, nets = make_trainer(iterations=2, denoiser_warmup=1)
    before = snapshot(nets)
    after_first = {}
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=1), lambda e: after_first.update(snapshot(nets)))
    trainer.run()
    unchanged = lambda name, state: all(torch.equal(a, b) for a, b in zip(before[name], state[name]))  # noqa: E731
    assert unchanged("denoiser", after_first) and not unchanged("noise_generator", after_first)
    assert not unchanged("denoiser", snapshot(nets))  # released after the warm-up


def test_plain_cyclegan_ablation_never_touches_noise_extractor():
    off = {name: False for name in COMPONENTS}
    trainer, nets = make_trainer(components=off)
    calls = []
    nets["noise_extractor"].register_forward_hook(lambda *a: calls.append(1))
    before = snapshot(nets)
    trainer.run()
    assert calls == []
    assert "noise_extractor" not in changed(before, snapshot(nets))
    out = trainer.state.output
    assert "loss_bypass" not in out and "loss_noise" not in out
    assert {"loss_d_noisy", "loss_d_clean", "loss_adversarial", "loss_cycle"} <= set(out)


def test_full_method_reports_every_loss_and_images():
    trainer, _ = make_trainer()
    trainer.run()
    out = trainer.state.output
    for key in ("loss_d_noisy", "loss_d_clean", "loss_adversarial", "loss_cycle", "loss_bypass", "loss_noise"):
        assert isinstance(out[key], float) and out[key] == out[key], key
    assert out["loss_generators"] == pytest.approx(out["loss_adversarial"] + 30.0 * (out["loss_cycle"] + out["loss_bypass"]), rel=1e-5)
    assert set(out["images"]) == {"x", "F(x)", "H(x)", "G(y)", "y"}
    assert out["images"]["F(x)"].shape == (BATCH, 1, 64, 64)


def test_boosting_adds_fake_terms_to_discriminator_loss():
    losses = {}
    for boosting in (False, True):
        trainer, _ = make_trainer(components={"boosting": boosting})
        trainer.run()
        losses[boosting] = trainer.state.output["loss_d_noisy"]
    # identical seeds and data: boosting only adds non-negative hinge terms
    assert losses[True] > losses[False]


def test_check_components_rejects_unknown_and_non_boolean():
    with pytest.raises(ValueError, match="bypas"):
        check_components({"bypas": True})
    with pytest.raises(ValueError, match="boosting"):
        check_components({"boosting": "maybe"})
    assert check_components({"bypass": False}) == {"bypass": False, "noise_extractor": True, "boosting": True, "swa_lookahead": True}
    # the command line's --components#bypass false arrives as a string
    assert check_components({"bypass": "false"})["bypass"] is False


def test_bad_hinge_form_fails_at_construction():
    with pytest.raises(ValueError, match="nonsense"):
        make_trainer(fake_hinge="nonsense")


def test_joint_batch_judges_real_and_fakes_in_one_pass():
    """discriminator_batch="joint": every D call sees the real batch and the fakes together (shared BIN
    statistics), in the D step (real + 2 fakes with boosting) and in the F/G step (real + 1 fake)."""
    trainer, nets = make_trainer(discriminator_batch="joint")
    sizes = {"noisy": [], "clean": []}
    nets["noisy_discriminator"].register_forward_hook(lambda m, i, o: sizes["noisy"].append(len(i[0])))
    nets["clean_discriminator"].register_forward_hook(lambda m, i, o: sizes["clean"].append(len(i[0])))
    trainer.run()
    assert sizes == {"noisy": [3 * BATCH, 2 * BATCH], "clean": [3 * BATCH, 2 * BATCH]}
    separate, _ = make_trainer()
    sizes = []
    separate.state.noisy_discriminator.register_forward_hook(lambda m, i, o: sizes.append(len(i[0])))
    separate.run()
    assert sizes == [BATCH] * 4  # D step: real, G(y), y + H(x); F/G step: G(y)


def test_joint_batch_scores_equal_separate_ones_without_normalisation():
    """Without BIN a joint pass is only a batching change: same losses as separate passes."""
    losses = {}
    for mode in ("separate", "joint"):
        trainer, nets = make_trainer(discriminator_batch=mode)
        torch.manual_seed(1)
        nets["noisy_discriminator"], nets["clean_discriminator"] = Discriminator("none"), Discriminator("none")
        trainer.state.noisy_discriminator = nets["noisy_discriminator"]
        trainer.state.clean_discriminator = nets["clean_discriminator"]
        trainer.state.discriminators_optimizer = torch.optim.RAdam(
            [*nets["noisy_discriminator"].parameters(), *nets["clean_discriminator"].parameters()], lr=1e-3)
        trainer.run()
        losses[mode] = trainer.state.output
    for key in ("loss_d_noisy", "loss_d_clean", "loss_adversarial"):
        assert losses["joint"][key] == pytest.approx(losses["separate"][key], rel=1e-4, abs=1e-5), key


def test_adversarial_weight_scales_the_adversarial_term():
    trainer, _ = make_trainer(adversarial_weight=0.25)
    trainer.run()
    out = trainer.state.output
    consistency = out["loss_cycle"] + out["loss_bypass"]
    assert out["loss_generators"] == pytest.approx(0.25 * out["loss_adversarial"] + 30.0 * consistency, rel=1e-5)


def test_lowpass_weight_adds_low_pass_consistency_inside_lambda():
    trainer, _ = make_trainer(lowpass_weight=0.5, lowpass_sigma=1.5)
    trainer.run()
    out = trainer.state.output
    assert out["loss_lowpass"] > 0
    consistency = out["loss_cycle"] + out["loss_bypass"] + 0.5 * out["loss_lowpass"]
    assert out["loss_generators"] == pytest.approx(out["loss_adversarial"] + 30.0 * consistency, rel=1e-5)
    plain, _ = make_trainer()
    plain.run()
    assert "loss_lowpass" not in plain.state.output  # off by default, as in the paper


@pytest.mark.parametrize("weight, sigma", [(-1.0, 2.0), (1.0, 0.0)])
def test_bad_lowpass_settings_fail_at_construction(weight, sigma):
    with pytest.raises(ValueError, match="lowpass"):
        make_trainer(lowpass_weight=weight, lowpass_sigma=sigma)


def test_unknown_discriminator_batch_fails_at_construction():
    with pytest.raises(ValueError, match="discriminator_batch"):
        make_trainer(discriminator_batch="mixed")


def test_cycle_weight_warmup_ramps_lambda_from_zero():
    trainer, _ = make_trainer(iterations=3, cycle_weight_warmup=2)
    weights = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: weights.append(e.current_cycle_weight))
    trainer.run()
    assert weights == [0.0, 15.0, 30.0]
    out = trainer.state.output  # the last iteration used the full lambda
    assert out["loss_generators"] == pytest.approx(out["loss_adversarial"] + 30.0 * (out["loss_cycle"] + out["loss_bypass"]), rel=1e-5)


@pytest.mark.parametrize("weight", [1.0, 0.25])
def test_extractor_noisy_weight_scales_the_x_term_of_noise_consistency(weight):
    trainer, nets = make_trainer(extractor_noisy_weight=weight)
    F, G, H = nets["denoiser"], nets["noise_generator"], nets["noise_extractor"]
    batch = unpaired_batches(1)[0]
    x, y = batch["noisy"], batch["clean"]
    terms = {}

    def record(engine):  # H's loss is computed with F and G as the generator step left them
        with torch.no_grad():
            noised_y = G(y)
            terms["x"] = (H(x) - (x - F(x))).abs().mean().item()
            terms["y"] = (H(noised_y) - (noised_y - y)).abs().mean().item()

    trainer.add_event_handler(ISCLEvents.GENERATORS_STEP_COMPLETED, record)
    trainer.run()
    assert terms["x"] > 0 and terms["y"] > 0
    assert trainer.state.output["loss_noise"] == pytest.approx(weight * terms["x"] + terms["y"], rel=1e-5)


@pytest.fixture
def cpu_computes_reduced_precision(monkeypatch):
    """The autocast mechanics on any CPU: the native-precision decision (``device.usable_amp``) says yes."""
    monkeypatch.setattr(engine_module, "usable_amp", lambda amp, amp_dtype, device: amp)


def test_bf16_autocast_runs_the_three_steps_in_bfloat16_without_scalers(cpu_computes_reduced_precision):
    trainer, nets = make_trainer(amp=True, amp_dtype="bfloat16")
    assert all(scaler is None for scaler in trainer.state.scalers.values())
    before = snapshot(nets)
    trainer.run()
    output = trainer.state.output
    assert output["images"]["F(x)"].dtype == torch.bfloat16
    assert all(torch.isfinite(torch.tensor(v)) for k, v in output.items() if k.startswith("loss"))
    assert changed(before, snapshot(nets)) == set(nets)
    assert all(p.dtype == torch.float32 for net in nets.values() for p in net.parameters())  # master weights


def test_float16_autocast_gets_one_gradient_scaler_per_optimizer(cpu_computes_reduced_precision):
    trainer, _ = make_trainer(amp=True, amp_dtype="float16")
    assert set(trainer.state.scalers) == {"generators", "discriminators", "extractor"}
    assert all(isinstance(s, torch.amp.GradScaler) for s in trainer.state.scalers.values())
    assert all(s is None for s in make_trainer()[0].state.scalers.values())


@pytest.mark.parametrize("native", [True, False])
def test_cpu_amp_runs_only_where_the_cpu_computes_bfloat16_natively(monkeypatch, native):
    from scripts.core import device

    avx2_only = {"aten": "AVX2", "avx2": True, "avx512f": False, "avx512_bf16": False, "amx": False,
                 "amx_fp16": False, "onednn_max_isa": ""}
    bf16_cpu = {**avx2_only, "aten": "AVX512", "avx512f": True, "avx512_bf16": True}
    monkeypatch.setattr(device, "cpu_isa", lambda: dict(bf16_cpu if native else avx2_only))
    if native:
        trainer, _ = make_trainer(amp=True, amp_dtype="bfloat16")
    else:
        with pytest.warns(UserWarning, match="training in float32 instead"):
            trainer, _ = make_trainer(amp=True, amp_dtype="bfloat16")
    assert trainer.amp is native
    trainer.run()
    assert trainer.state.output["images"]["F(x)"].dtype == (torch.bfloat16 if native else torch.float32)
    # oneDNN held below its bfloat16 kernels counts as no native bfloat16; float16 needs AMX-FP16
    assert not device.cpu_has_native_bf16({**bf16_cpu, "onednn_max_isa": "AVX2"})
    with pytest.warns(UserWarning, match="float16 needs|AMX-FP16"):
        assert device.usable_amp(True, "float16", "cpu") is False
    assert device.usable_amp(False, "bfloat16", "cpu") is False


@pytest.mark.parametrize("isa", ["avx512 avx512_vnni", "avx2"])
def test_cpu_compile_runs_only_where_its_kernels_are_right(monkeypatch, isa):
    """torch 2.13's AVX2 inductor kernels return 1e37 / NaN for the generator and the noise extractor (found with
    the CPU held to AVX2): there compile falls back to eager with one warning, for training and denoising."""
    from scripts.core import device

    monkeypatch.setattr(device, "compiler_vector_isa", lambda: isa)
    avx512 = isa.startswith("avx512")
    if avx512:
        assert device.usable_compile(True, "cpu") is True
    else:
        with pytest.warns(UserWarning, match="running eager instead"):
            assert device.usable_compile(True, "cpu") is False
        with pytest.warns(UserWarning, match="running eager instead"):
            trainer, _ = make_trainer(compile=True)
        assert not hasattr(trainer.state.denoiser, "_orig_mod")  # the networks stay eager
    assert device.usable_compile(False, "cpu") is False and device.usable_compile(True, "cuda") is True


def test_unknown_amp_dtype_fails_at_construction():
    with pytest.raises(ValueError, match="amp_dtype must be one of"):
        make_trainer(amp=True, amp_dtype="float8")


def outputs_and_weight_gradients(network_class, x, memory_format, dtype):
    torch.manual_seed(0)
    net = network_class().to(dtype=dtype, memory_format=memory_format)
    out = net(x.to(dtype=dtype, memory_format=memory_format))
    out.square().mean().backward()
    # conv biases in front of a normalisation have a true gradient of zero: only rounding noise to compare
    return out.detach().double(), {n: p.grad.double() for n, p in net.named_parameters() if not n.endswith("bias")}


def float32_sensitivity(network_class, x) -> float:
    """How far the float64 weight gradients move when every weight and input value is perturbed by
    float32's unit roundoff (2^-24, random sign), relative to each gradient's largest entry, worst of
    three draws: the error that merely *storing* the problem in float32 causes, before any arithmetic."""
    def gradients(seed):
        torch.manual_seed(0)
        net, g = network_class().double(), torch.Generator().manual_seed(seed)
        inputs = [x.double()] + list(net.parameters())
        with torch.no_grad():
            for value in inputs[1:] if seed == 0 else inputs:
                value.mul_(1 + 2.0**-24 * (torch.rand(value.shape, generator=g, dtype=torch.float64) * 2 - 1))
        net(inputs[0]).square().mean().backward()
        return {n: p.grad for n, p in net.named_parameters() if not n.endswith("bias")}

    reference = gradients(0)
    return max(max(((gradients(seed)[n] - r).abs().max() / r.abs().max()).item() for n, r in reference.items())
               for seed in (1, 2, 3))


@pytest.mark.parametrize("network_class", [Generator, NoiseExtractor, Discriminator, lambda: Discriminator("none")])
def test_channels_last_is_as_accurate_as_the_default_layout(network_class):
    """Against a float64 reference, float32 in channels_last is off by no more than the default layout,
    or than float32 rounding allows. The bound comes from the problem, not from one machine: BIN
    normalises the discriminator's last 1x1 maps, whose instance branch is rounding noise amplified
    ~1e4, so storing the inputs in float32 alone moves its gradients by ~6e-4; 20 times that covers
    the accumulated rounding of any correct kernel (AVX2's channels-last: 6.6e-3, AVX-512's default
    layout: 3.1e-3), while a wrong layout (a transposed or misindexed kernel) is off by O(1)."""
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    reference_out, reference = outputs_and_weight_gradients(network_class, x, torch.contiguous_format, torch.float64)
    errors = {}
    for memory_format in (torch.contiguous_format, torch.channels_last):
        out, grads = outputs_and_weight_gradients(network_class, x, memory_format, torch.float32)
        torch.testing.assert_close(out, reference_out, rtol=0, atol=1e-4)
        errors[memory_format] = max(((grads[n] - g).abs().max() / g.abs().max()).item() for n, g in reference.items())
    bound = max(2 * errors[torch.contiguous_format], 20 * float32_sensitivity(network_class, x)) + 1e-5
    assert errors[torch.channels_last] <= bound, (errors, bound)


def test_channels_last_training_keeps_the_layout():
    trainer, nets = make_trainer(to_kwargs={"memory_format": torch.channels_last})
    for net in nets.values():
        net.to(memory_format=torch.channels_last)
    trainer.run()
    assert trainer.state.output["images"]["x"].is_contiguous(memory_format=torch.channels_last)
    assert nets["denoiser"].encoder[1].weight.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.isfinite(torch.tensor(v)) for k, v in trainer.state.output.items() if k.startswith("loss"))


def test_plain_unwraps_ddp_only():
    net = Generator()
    assert plain(net) is net
    compiled = torch.compile(net)
    assert plain(compiled) is compiled  # outside DDP a compiled network serves frozen uses too


def test_compiled_networks_train_and_score_the_first_batch_as_eager_ones():
    """torch.compile switch: one real iteration (compiles the training graphs, ~1 min on 2 cores); the
    discriminator losses, computed before any update, equal eager ones. With train.json's discriminators
    (no BIN): BIN's 1x1 instance statistics turn rounding into ~1e-4 of the loss, which differs between
    kernels and CPUs (AVX2: 1.8e-4) and says nothing about compilation."""
    eager, _ = make_trainer(discriminator_norm="none")
    eager.run()
    trainer, nets = make_trainer(discriminator_norm="none", compile=True)
    before = snapshot(nets)
    trainer.run()
    assert changed(before, snapshot(nets)) == set(nets)
    for name in ("loss_d_noisy", "loss_d_clean"):
        assert trainer.state.output[name] == pytest.approx(eager.state.output[name], rel=1e-4), name


def test_compile_with_channels_last_is_refused_on_the_cpu_before_any_step(monkeypatch):
    """torch 2.13's compiled CPU kernels corrupt memory on these networks in channels-last layout (the process
    aborts with a double free); the trainer refuses the pair with one line instead (where compile runs at all)."""
    from scripts.core import device

    monkeypatch.setattr(device, "compiler_vector_isa", lambda: "avx512")
    with pytest.raises(ValueError, match="--compile true with --channels_last true on a CPU"):
        make_trainer(compile=True, to_kwargs={"memory_format": torch.channels_last})
    trainer, _ = make_trainer(compile=False, to_kwargs={"memory_format": torch.channels_last})  # each alone is fine
    assert trainer.to_kwargs["memory_format"] == torch.channels_last


def test_rho_clipping_after_every_sub_step_leaves_the_shared_translations_intact():
    """train.json clamps every network's BIN rho after each sub-step; after the D step F(x) and G(y) still wait
    for the F/G step's backward, so clamping must not write parameters that are already in range."""
    from scripts.model.handlers import ClampParameters

    trainer, nets = make_trainer(iterations=2)
    ClampParameters(list(nets.values()), event_names=list(ISCLEvents)).attach(trainer)
    trainer.run()
    assert trainer.state.iteration == 2 and torch.isfinite(torch.tensor(trainer.state.output["loss_generators"]))
