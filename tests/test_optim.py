import io

import pytest
import torch

from scripts.model.optim import Lookahead, linear_decay, maybe_lookahead


def scalar_param(value=1.0):
    return torch.nn.Parameter(torch.tensor([value]))


def step_with_grad(optimizer, param, grad):
    optimizer.zero_grad()
    param.grad = torch.tensor([grad])
    optimizer.step()


# --------------------------------------------------------------------------------------- Lookahead


def test_lookahead_hand_worked_example():
    # SGD(lr=1), loss = p (grad 1), p0 = 1, k = 2, alpha = 0.5
    #   step 1: fast 1 -> 0                                     p = 0
    #   step 2: fast 0 -> -1; slow = 1 + 0.5 * (-1 - 1) = 0       p = 0
    #   step 3: fast 0 -> -1                                    p = -1
    #   step 4: fast -1 -> -2; slow = 0 + 0.5 * (-2 - 0) = -1     p = -1
    p = scalar_param(1.0)
    opt = Lookahead(torch.optim.SGD([p], lr=1.0), k=2, alpha=0.5)
    seen, slow = [], []
    for _ in range(4):
        opt.zero_grad()
        loss = p.sum()
        loss.backward()
        opt.step()
        seen.append(p.item())
        slow.append(opt.slow_weights[0].item())
    assert seen == [0.0, 0.0, -1.0, -1.0]
    # the slow weights only move at steps 2 and 4 (every k steps)
    assert slow == [1.0, 0.0, 0.0, -1.0]


def test_lookahead_k3_slow_weights_move_only_every_k_steps():
    # SGD(lr=0.5), constant grad 2 -> each fast step moves by -1; k = 3, alpha = 0.25, p0 = 4
    #   steps 1, 2: fast 3, 2 (slow 4)
    #   step 3: fast 1; slow = 4 + 0.25 * (1 - 4) = 3.25; p = 3.25
    #   steps 4, 5: fast 2.25, 1.25 (slow 3.25)
    #   step 6: fast 0.25; slow = 3.25 + 0.25 * (0.25 - 3.25) = 2.5; p = 2.5
    p = scalar_param(4.0)
    opt = Lookahead(torch.optim.SGD([p], lr=0.5), k=3, alpha=0.25)
    values, slow = [], []
    for _ in range(6):
        step_with_grad(opt, p, 2.0)
        values.append(p.item())
        slow.append(opt.slow_weights[0].item())
    assert values == pytest.approx([3.0, 2.0, 3.25, 2.25, 1.25, 2.5])
    assert slow == pytest.approx([4.0, 4.0, 3.25, 3.25, 3.25, 2.5])


def _quadratic_run(opt, params, targets, steps):
    for _ in range(steps):
        opt.zero_grad()
        loss = sum(((p - t) ** 2 * (i + 1)).sum() for i, (p, t) in enumerate(zip(params, targets)))
        loss.backward()
        opt.step()


def _make(seed_values):
    params = [torch.nn.Parameter(v.clone()) for v in seed_values]
    inner = torch.optim.Adam([{"params": [params[0]], "lr": 0.1}, {"params": [params[1]], "lr": 0.03}])
    return params, Lookahead(inner, k=3, alpha=0.5)


# the round-trip problem: two parameter groups with their own learning rates, a weighted quadratic
INIT = [torch.tensor([1.0, -2.0, 0.5]), torch.tensor([[3.0, -1.0], [0.0, 2.0]])]
TARGETS = [torch.tensor([-1.0, 1.0, 2.0]), torch.tensor([[0.0, 1.0], [-2.0, 0.5]])]


def _uninterrupted_and_half_runs():
    """(params, optimizer) after 10 steps from INIT, and another pair after 5 steps (5 is not a multiple
    of k = 3: the checkpoint falls mid-cycle)."""
    ref_params, ref_opt = _make(INIT)
    _quadratic_run(ref_opt, ref_params, TARGETS, 10)
    params, opt = _make(INIT)
    _quadratic_run(opt, params, TARGETS, 5)
    return ref_params, ref_opt, params, opt


def test_lookahead_state_dict_round_trip_continues_like_uninterrupted_run():
    ref_params, ref_opt, params, opt = _uninterrupted_and_half_runs()
    buffer = io.BytesIO()
    torch.save({"params": [p.detach().clone() for p in params], "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)

    # a fresh optimizer on fresh (different) parameter values: everything must come from the checkpoint
    new_params, new_opt = _make([torch.zeros_like(v) for v in INIT])
    with torch.no_grad():
        for p, v in zip(new_params, saved["params"]):
            p.copy_(v)
    new_opt.load_state_dict(saved["opt"])
    assert new_opt.fast_steps == 5
    assert new_opt.param_groups is new_opt.optimizer.param_groups
    _quadratic_run(new_opt, new_params, TARGETS, 5)

    for a, b in zip(new_params, ref_params):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
    for a, b in zip(new_opt.slow_weights, ref_opt.slow_weights):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def test_lookahead_state_dict_round_trip_without_slow_weights_would_differ():
    # guards the round-trip test above: restoring only the inner optimizer gives a different trajectory
    ref_params, ref_opt, params, opt = _uninterrupted_and_half_runs()
    new_params, new_opt = _make([p.detach() for p in params])  # slow weights = current fast weights
    new_opt.optimizer.load_state_dict(opt.optimizer.state_dict())
    _quadratic_run(new_opt, new_params, TARGETS, 5)
    assert not torch.allclose(new_params[0], ref_params[0], atol=1e-4)


def test_lookahead_shares_param_groups_with_inner_optimizer():
    p = scalar_param()
    inner = torch.optim.SGD([p], lr=0.1)
    opt = Lookahead(inner, k=2, alpha=0.5)
    assert opt.param_groups is inner.param_groups
    schedule = linear_decay(opt, total_steps=10, final_lr=0.01)
    for _ in range(5):
        step_with_grad(opt, p, 0.0)
        schedule.step()
    # 0.1 -> 0.01 linearly over 10 steps: after 5 steps the midpoint 0.055
    assert inner.param_groups[0]["lr"] == pytest.approx(0.055)
    opt.param_groups[0]["lr"] = 0.3
    assert inner.param_groups[0]["lr"] == 0.3


def test_lookahead_param_groups_still_shared_after_load_state_dict():
    p = scalar_param()
    inner = torch.optim.SGD([p], lr=0.1)
    opt = Lookahead(inner, k=2, alpha=0.5)
    sd = opt.state_dict()
    sd["optimizer"]["param_groups"][0]["lr"] = 0.25
    opt.load_state_dict(sd)
    assert inner.param_groups[0]["lr"] == 0.25
    assert opt.param_groups[0]["lr"] == 0.25
    opt.param_groups[0]["lr"] = 0.5
    assert inner.param_groups[0]["lr"] == 0.5


def test_maybe_lookahead():
    inner = torch.optim.SGD([scalar_param()], lr=0.1)
    assert maybe_lookahead(inner, enabled=False) is inner
    wrapped = maybe_lookahead(inner, enabled=True, k=4, alpha=0.25)
    assert isinstance(wrapped, Lookahead)
    assert wrapped.optimizer is inner
    assert (wrapped.k, wrapped.alpha) == (4, 0.25)


@pytest.mark.parametrize("kwargs, word", [({"k": 0}, "k"), ({"k": -2}, "k"), ({"alpha": -0.1}, "alpha"),
                                          ({"alpha": 1.5}, "alpha")])
def test_lookahead_rejects_bad_k_alpha(kwargs, word):
    with pytest.raises(ValueError, match=word):
        Lookahead(torch.optim.SGD([scalar_param()], lr=0.1), **kwargs)


def test_lookahead_accepts_boundary_values():
    # alpha = 1 jumps the slow weights onto the fast ones: a k = 1 Lookahead(alpha=1) is plain SGD
    p = scalar_param(1.0)
    opt = Lookahead(torch.optim.SGD([p], lr=1.0), k=1, alpha=1.0)
    for expected in (0.0, -1.0, -2.0):
        step_with_grad(opt, p, 1.0)
        assert p.item() == expected
    # alpha = 0 pins the parameters to their initial value at every k-th step
    q = scalar_param(1.0)
    opt = Lookahead(torch.optim.SGD([q], lr=1.0), k=2, alpha=0.0)
    values = []
    for _ in range(4):
        step_with_grad(opt, q, 1.0)
        values.append(q.item())
    assert values == [0.0, 1.0, 0.0, 1.0]


# ------------------------------------------------------------------------------------ linear_decay


def _lr_after(steps, opt, schedule, group=0):
    for _ in range(steps):
        opt.step()
        schedule.step()
    return opt.param_groups[group]["lr"]


def test_linear_decay_endpoints_midpoint_and_clamp():
    opt = torch.optim.SGD([scalar_param()], lr=1e-4)
    schedule = linear_decay(opt, total_steps=100, final_lr=1e-6)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4, rel=1e-9)
    assert _lr_after(25, opt, schedule) == pytest.approx(7.525e-5, rel=1e-9)  # 1e-4 - 0.25 * 9.9e-5
    assert _lr_after(25, opt, schedule) == pytest.approx(5.05e-5, rel=1e-9)  # (1e-4 + 1e-6) / 2
    assert _lr_after(50, opt, schedule) == pytest.approx(1e-6, rel=1e-9)
    assert _lr_after(37, opt, schedule) == pytest.approx(1e-6, rel=1e-9)  # clamped after total_steps


def test_linear_decay_several_param_groups():
    opt = torch.optim.SGD([{"params": [scalar_param()], "lr": 0.1}, {"params": [scalar_param()], "lr": 0.01}])
    schedule = linear_decay(opt, total_steps=4, final_lr=0.001)
    # group 0: 0.1 -> 0.001 in 4 steps of 0.02475; group 1: 0.01 -> 0.001 in 4 steps of 0.00225
    _lr_after(1, opt, schedule)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.07525, 0.00775])
    _lr_after(1, opt, schedule)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.0505, 0.0055])
    _lr_after(2, opt, schedule)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.001, 0.001])
    _lr_after(3, opt, schedule)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.001, 0.001])


def test_linear_decay_state_dict_round_trip():
    opt = torch.optim.SGD([scalar_param()], lr=0.1)
    schedule = linear_decay(opt, total_steps=10, final_lr=0.0)
    _lr_after(3, opt, schedule)
    saved_sched, saved_opt = schedule.state_dict(), opt.state_dict()

    opt2 = torch.optim.SGD([scalar_param()], lr=0.1)
    schedule2 = linear_decay(opt2, total_steps=10, final_lr=0.0)
    opt2.load_state_dict(saved_opt)
    schedule2.load_state_dict(saved_sched)
    assert _lr_after(2, opt2, schedule2) == pytest.approx(0.05)  # step 5 of 10: half of 0.1


@pytest.mark.parametrize("total_steps", [0, -5])
def test_linear_decay_rejects_bad_total_steps(total_steps):
    with pytest.raises(ValueError, match="total_steps"):
        linear_decay(torch.optim.SGD([scalar_param()], lr=0.1), total_steps=total_steps, final_lr=0.0)
