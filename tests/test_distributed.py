"""multi_gpu_train.json through the real torchrun entry: 2 CPU processes, gloo, tiny simulated data."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import BUNDLE_ROOT

CONFIGS = [os.path.join(BUNDLE_ROOT, "configs", name) for name in ("train.json", "multi_gpu_train.json")]
TINY_SIMULATION = {"n_clean": 2, "n_noisy": 2, "n_validation": 1, "n_test": 0, "size": 64,
                   "slices_per_patient": 2, "n_angles": 32, "progress": False}


def torchrun(tmp_path, name, simulated_dir, *extra_args):
    """Run training on 2 ranks; each rank writes into ``name/rank<r>`` (so a file written by rank 1 would
    show) and, after training, dumps its networks and its dataset seed to ``name/weights<r>.pt``."""
    run_dir = tmp_path / name
    dump_path = f"os.path.join({str(run_dir)!r}, 'weights' + str(scripts.model.distributed.rank()) + '.pt')"
    probe = {
        "output_dir": f"$os.path.join({str(run_dir)!r}, 'rank%d' % scripts.model.distributed.rank())",
        "model_path": "$os.path.join(@output_dir, 'model.pt')",
        "finalize": [
            "$torch.save(dict(seed=@train#dataset.seed, **{name: net.state_dict() for name, net in "
            "@trained_networks.items()}), " + dump_path + ")",
            "$scripts.model.distributed.destroy_process_group()",
        ],
    }
    run_dir.mkdir()
    probe_config = run_dir / "probe.json"
    probe_config.write_text(json.dumps(probe))
    launcher = os.path.join(os.path.dirname(sys.executable), "torchrun")
    launcher = [launcher] if os.path.isfile(launcher) else [sys.executable, "-m", "torch.distributed.run"]
    args = launcher + [
        "--standalone", "--nproc_per_node", "2", "-m", "monai.bundle", "run", "training",
        "--config_file", json.dumps(CONFIGS + [str(probe_config)]),
        "--dataset_dir", simulated_dir, "--simulation", json.dumps(TINY_SIMULATION),
        "--batch_size", "2", "--num_iterations", "4", "--epoch_length", "2", *extra_args,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(args, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    simulated = str(tmp / "simulated")
    full = torchrun(tmp, "full", simulated)
    half = torchrun(tmp, "half", simulated, "--train#trainer#max_epochs", "1")
    resumed = torchrun(tmp, "resumed", simulated, "--resume", str(half / "rank0" / "checkpoint.pt"))
    return full, half, resumed


def states(path):
    return torch.load(path, weights_only=True)


def test_ranks_draw_different_patches_and_end_with_identical_networks(runs):
    full = runs[0]
    rank0, rank1 = states(full / "weights0.pt"), states(full / "weights1.pt")
    assert rank0.pop("seed") != rank1.pop("seed")
    assert rank0.keys() == rank1.keys() == {"denoiser", "noise_generator", "noise_extractor",
                                            "noisy_discriminator", "clean_discriminator"}
    for network in rank0:
        for key in rank0[network]:
            assert torch.equal(rank0[network][key], rank1[network][key]), (network, key)


def test_only_rank_zero_writes_checkpoint_model_and_tensorboard(runs):
    full = runs[0]
    assert not (full / "rank1").exists()
    written = sorted(p.relative_to(full / "rank0").parts[0] for p in (full / "rank0").rglob("*") if p.is_file())
    assert written == ["checkpoint.pt", "model.pt", "model.pt.json", "tensorboard"]
    assert len(list((full / "rank0" / "tensorboard").iterdir())) == 1


def test_resume_continues_to_the_uninterrupted_result(runs):
    full, half, resumed = runs
    assert states(half / "rank0" / "checkpoint.pt")["trainer"]["iteration"] == 2
    expected, got = states(full / "rank0" / "model.pt"), states(resumed / "rank0" / "model.pt")
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6, msg=key)
    uninterrupted = states(full / "weights0.pt")
    for rank in (0, 1):
        networks = states(resumed / f"weights{rank}.pt")
        for network in ("denoiser", "noise_extractor", "noisy_discriminator", "clean_discriminator"):
            for key, value in uninterrupted[network].items():
                torch.testing.assert_close(networks[network][key], value, rtol=0, atol=1e-6, msg=(rank, network, key))


def _synchronised_bin_rank(rank, init_file, batch, weights, results):
    import torch.distributed as dist

    from scripts.model import distributed
    from scripts.model.networks import BatchInstanceNorm2d

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(0)
    layer = distributed.synchronise_batch_statistics(BatchInstanceNorm2d(3))
    with torch.no_grad():
        layer.rho.fill_(0.7)
    half = slice(2 * rank, 2 * rank + 2)  # each rank holds half of the batch
    x = batch[half].clone().requires_grad_()
    out = layer(x)
    (out * weights[half]).sum().backward()
    results[rank] = {"out": out.detach(), "x_grad": x.grad, **{n: p.grad for n, p in layer.named_parameters()}}
    dist.destroy_process_group()


def test_synchronised_bin_equals_one_process_on_the_whole_batch(tmp_path):
    """sync_batch_statistics: two ranks holding two images each normalise and differentiate exactly like
    one process holding all four (outputs, input gradients; parameter gradients summed over ranks, which
    DDP then averages as it does every gradient)."""
    from scripts.model.networks import BatchInstanceNorm2d

    generator = torch.Generator().manual_seed(1)
    batch = torch.randn(4, 3, 5, 6, generator=generator) * torch.tensor([1.0, 3.0, 0.5]).view(1, 3, 1, 1)
    batch += torch.randn(4, 1, 1, 1, generator=generator)  # images differ in level: BN and IN differ
    weights = torch.randn(4, 3, 5, 6, generator=generator)
    results = torch.multiprocessing.Manager().dict()
    torch.multiprocessing.spawn(_synchronised_bin_rank, args=(str(tmp_path / "init"), batch, weights, results),
                                nprocs=2)
    layer = BatchInstanceNorm2d(3)
    with torch.no_grad():
        layer.rho.fill_(0.7)
    x = batch.clone().requires_grad_()
    out = layer(x)
    (out * weights).sum().backward()
    torch.testing.assert_close(torch.cat([results[0]["out"], results[1]["out"]]), out.detach())
    torch.testing.assert_close(torch.cat([results[0]["x_grad"], results[1]["x_grad"]]), x.grad)
    for name, parameter in layer.named_parameters():
        torch.testing.assert_close(results[0][name] + results[1][name], parameter.grad, msg=name)
    unsynchronised = BatchInstanceNorm2d(3)
    with torch.no_grad():
        unsynchronised.rho.fill_(0.7)
    assert not torch.allclose(unsynchronised(batch[:2]), out[:2])  # the check can tell the difference
