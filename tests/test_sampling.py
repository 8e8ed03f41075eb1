"""Sampling pieces against their closed forms."""

import pytest
import torch

from cascade.sampling import FlowMatchSampler, add_noise, item_noise, original_schedule, warp_timestep, x0_from_flow


def test_self_forcing_warped_timesteps():
    sampler = FlowMatchSampler((1000, 750, 500, 250), shift=5.0, warp=True)
    assert sampler.model_timesteps == pytest.approx((1000.0, 937.5, 2500 / 3, 625.0))
    assert sampler.sigmas == pytest.approx((1.0, 0.9375, 5 / 6, 0.625))


def test_unwarped_timesteps_are_used_as_given():
    causvid = FlowMatchSampler((1000, 757, 522), shift=8.0, warp=False)
    assert causvid.sigmas == pytest.approx((1.0, 0.757, 0.522))


@pytest.mark.parametrize("t,shift", [(0, 5), (1000, 5), (300, 3), (640, 8), (640, 1)])
def test_warp_closed_form(t, shift):
    s = t / 1000
    assert warp_timestep(t, shift) == pytest.approx(1000 * shift * s / (1 + (shift - 1) * s))


def test_x0_from_flow_inverts_the_forward_process():
    x0, noise = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    for sigma in (0.1, 0.5, 0.9375):
        x_t = add_noise(x0, noise, sigma)
        assert torch.allclose(x_t, (1 - sigma) * x0 + sigma * noise)
        assert torch.allclose(x0_from_flow(x_t, noise - x0, sigma), x0, atol=1e-6)


def test_step_math_for_both_predictions():
    x_t, out, noise = torch.randn(5), torch.randn(5), torch.randn(5)
    flow = FlowMatchSampler((1000, 500), shift=1.0, warp=True, prediction="flow")
    assert torch.allclose(flow.predict_x0(x_t, out, 1), x_t - 0.5 * out)
    sample = FlowMatchSampler((1000, 500), shift=1.0, prediction="sample")
    assert torch.equal(sample.predict_x0(x_t, out, 0), out)
    assert torch.allclose(sample.next_input(x_t, out, 0, lambda: noise), 0.5 * out + 0.5 * noise)
    with pytest.raises(ValueError, match="prediction"):
        FlowMatchSampler(prediction="epsilon")


def test_ode_renoise_keeps_the_noise_the_input_carries():
    """The deterministic step lands where x0 and the input's own ε put the next level, and never
    asks for fresh noise; a fresh-noise sampler uses exactly the noise it is given."""
    x0, eps, fresh = torch.randn(6), torch.randn(6), torch.randn(6)
    ode = FlowMatchSampler((1000, 750, 500), shift=3.0, prediction="sample", renoise="ode")

    def no_fresh_noise():
        raise AssertionError("an ode sampler drew fresh noise")

    x_t = add_noise(x0, eps, ode.sigmas[1])
    assert torch.allclose(ode.implied_noise(x_t, x0, 1), eps, atol=1e-5)
    assert torch.allclose(ode.next_input(x_t, x0, 1, no_fresh_noise), add_noise(x0, eps, ode.sigmas[2]), atol=1e-5)
    same = FlowMatchSampler((1000, 750, 500), shift=3.0, prediction="sample")
    assert torch.equal(same.next_input(x_t, x0, 1, lambda: fresh), add_noise(x0, fresh, same.sigmas[2]))
    assert ode.with_steps(6).renoise == "ode"
    with pytest.raises(ValueError, match="renoise"):
        FlowMatchSampler(renoise="sde")


def test_with_steps_spaces_evenly_then_shifts():
    sampler = FlowMatchSampler().with_steps(8)
    assert sampler.num_steps == 8
    assert sampler.timesteps[0] == 1000 and sampler.timesteps[4] == pytest.approx(500)
    assert sampler.model_timesteps[4] == pytest.approx(warp_timestep(500, 5.0))
    with pytest.raises(ValueError):
        sampler.with_steps(0)


def test_item_noise_depends_only_on_seed_block_step():
    a = item_noise(7, 2, 3, (4, 5))
    assert torch.equal(a, item_noise(7, 2, 3, (4, 5)))
    assert not torch.equal(a, item_noise(7, 3, 2, (4, 5)))
    assert not torch.equal(a, item_noise(8, 2, 3, (4, 5)))
    assert abs(item_noise(1, 0, 0, (10000,)).std().item() - 1) < 0.05


def test_the_originals_grid_gives_the_presets_timesteps_and_sigmas():
    """The Self-Forcing family's scheduler, written out: σ = linspace(1, 0, 1001)[:-1] shifted,
    in float32; a warped step t is the grid's timestep at 1000 − t, an unwarped one reaches the
    model as given; σ is the grid's at the timestep nearest the model's."""
    for steps, shift, warp in [((1000, 750, 500, 250), 5.0, True), ((1000, 800, 600, 400, 200), 5.0, True),
                               ((1000, 757, 522), 8.0, False)]:
        sigmas = torch.linspace(1.0, 0.0, 1001)[:-1]
        sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
        timesteps = sigmas * 1000
        sampler = FlowMatchSampler(steps, shift, warp, original_grid=True)
        nearest = [int((timesteps.double() - (float(timesteps[1000 - t]) if warp else t)).abs().argmin()) for t in steps]
        assert sampler.model_timesteps == tuple(float(timesteps[1000 - t]) if warp else float(t) for t in steps)
        assert sampler.sigmas == tuple(float(sigmas[i]) for i in nearest)
        closed = FlowMatchSampler(steps, shift, warp)
        assert 0 < max(abs(a - b) for a, b in zip(sampler.sigmas, closed.sigmas)) < 3e-4
        assert sampler.with_steps(len(steps)).original_grid
    assert original_schedule(5.0)[0].dtype == torch.float32
