"""What only the VAE and DDPM do: how they learn, the VAE's KL and ELBO, and the diffusion maths
(schedules, samplers, EMA, guidance). The interface tests they share with every family are in
test_models.py.

Everything runs on tiny networks and a few dozen synthetic images (a few seconds in all).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tiny_models import CASES, build, run_steps, tiny_data
from torch import Tensor

from components.data.spec import DataSpec
from components.models import family_kind
from components.models.ddpm import NoiseSchedule, UNet
from components.models.vae import kl_to_standard_normal

LIKELIHOOD_CASES = [case for case, (family, _) in CASES.items() if family_kind(family) != "gan"]


@pytest.mark.parametrize("case", LIKELIHOOD_CASES)
def test_losses_finite_and_decreasing(case: str) -> None:
    model = build(case)
    images, labels = tiny_data()
    history = run_steps(model, 40, images, labels)
    for name in history[0]:
        values = [h[name] for h in history]
        assert all(math.isfinite(v) for v in values), name
    loss = [h["loss"] for h in history]
    first, last = np.mean(loss[:8]), np.mean(loss[-8:])
    assert last < 0.7 * first, (first, last)
    assert model.step == 40


# =========================================================================== VAE
def test_vae_kl_matches_torch_distributions() -> None:
    gen = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 7, generator=gen), torch.randn(5, 7, generator=gen)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(5, 7), torch.ones(5, 7))
    expected = torch.distributions.kl_divergence(q, p).sum(dim=1)
    torch.testing.assert_close(kl_to_standard_normal(mu, logvar), expected)


def test_vae_elbo_mean_and_sampled() -> None:
    model = build("vae")
    images, _ = tiny_data(16)
    at_mean = model.elbo(images)
    assert set(at_mean) == {"neg_elbo", "recon", "kl"}
    torch.testing.assert_close(at_mean["neg_elbo"], at_mean["recon"] + at_mean["kl"])
    assert torch.equal(model.elbo(images)["neg_elbo"], at_mean["neg_elbo"])  # deterministic at the mean
    s1 = model.elbo(images, torch.Generator().manual_seed(0))
    s2 = model.elbo(images, torch.Generator().manual_seed(0))
    s3 = model.elbo(images, torch.Generator().manual_seed(1))
    assert torch.equal(s1["neg_elbo"], s2["neg_elbo"]) and not torch.equal(s1["neg_elbo"], s3["neg_elbo"])
    torch.testing.assert_close(s1["kl"], at_mean["kl"])  # the KL is analytic either way
    # Untrained decoder: about 28*28*log(2) nats of BCE per image, far from zero.
    assert 300 < float(at_mean["recon"]) < 1000


# =========================================================================== DDPM: schedule
def golden_alpha_bar(schedule: str, T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """ᾱ_t in numpy float64, written from the papers' formulas."""
    if schedule == "linear":  # Ho et al. 2020: β linear in t, ᾱ_t = prod (1 - β_s)
        return np.cumprod(1.0 - np.linspace(beta_start, beta_end, T))
    s = 0.008  # Nichol & Dhariwal 2021, eq. 17: ᾱ_t = f(t)/f(0) with 1-based t (before clipping β)

    def f(u: np.ndarray | float) -> np.ndarray | float:
        return np.cos((u + s) / (1 + s) * np.pi / 2) ** 2

    return f(np.arange(1, T + 1) / T) / f(0.0)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_schedule_golden_values(schedule: str) -> None:
    T = 1000
    sched = NoiseSchedule(T, schedule)
    got = sched.alphas_cumprod.double().numpy()
    want = golden_alpha_bar(schedule, T)
    ts = [0, 1, 10, 250, 500, 750, 990]
    np.testing.assert_allclose(got[ts], want[ts], rtol=2e-5, atol=1e-9)
    assert np.all(np.diff(got) < 0)
    if schedule == "linear":
        assert got[0] == pytest.approx(0.9999, rel=1e-7)
        assert got[-1] == pytest.approx(4.036e-5, rel=1e-3)  # ᾱ_T of Ho et al.'s schedule
    else:
        assert float(sched.betas[-1]) == pytest.approx(0.999)  # the β clip at the very end
        assert got[-1] < 1e-8


def test_schedule_posterior_variance_and_ddim_grid() -> None:
    sched = NoiseSchedule(100, "linear", 1e-3, 0.05)
    ab = golden_alpha_bar("linear", 100, 1e-3, 0.05)
    beta = np.linspace(1e-3, 0.05, 100)
    t = 40
    expected = beta[t] * (1 - ab[t - 1]) / (1 - ab[t])  # β̃_t, Ho et al. eq. 7
    assert float(sched.posterior_variance[t]) == pytest.approx(expected, rel=1e-5)
    assert float(sched.posterior_variance[0]) == 0.0
    assert sched.ddim_timesteps(5) == [99, 74, 50, 25, 0]
    assert sched.ddim_timesteps(100) == list(range(99, -1, -1))
    assert sched.ddim_timesteps(1) == [99]


def test_min_snr_weights_cap_only_the_clean_timesteps() -> None:
    sched = NoiseSchedule(1000, "cosine")
    ab = sched.alphas_cumprod
    snr = ab / (1 - ab)
    weights = sched.min_snr_weight(torch.arange(1000), 5.0)
    capped = snr > 5
    assert capped.any() and (~capped).any()
    assert torch.all(weights[~capped] == 1)  # the noisy timesteps keep the simple loss
    assert torch.allclose(weights[capped], 5 / snr[capped])


def test_min_snr_gamma_weights_the_training_loss() -> None:
    images, labels = tiny_data(16)
    plain, weighted = build("ddpm"), build("ddpm", min_snr_gamma=1.0)
    # Same seed: same timesteps, noise and initial weights, so only the weighting differs;
    # every weight is <= 1 and the clean timesteps' are < 1.
    loss_plain = plain.train_step(images, labels)["loss"]
    loss_weighted = weighted.train_step(images, labels)["loss"]
    assert 0 < float(loss_weighted) < float(loss_plain)


def test_one_step_q_matches_iterated_forward_process() -> None:
    T, t = 100, 60
    sched = NoiseSchedule(T, "cosine")
    gen = torch.Generator().manual_seed(0)
    x0 = torch.linspace(-1, 1, 5).view(1, 5, 1, 1).expand(40_000, 5, 1, 1).contiguous()
    x = x0.clone().double()
    for s in range(t + 1):  # x_s = sqrt(1 - β_s) x_{s-1} + sqrt(β_s) ε, 0-based
        beta = float(sched.betas[s])
        x = math.sqrt(1 - beta) * x + math.sqrt(beta) * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    one = sched.add_noise(x0, torch.randn(x0.shape, generator=gen), torch.full((len(x0),), t))
    abar = float(golden_alpha_bar("cosine", T)[t])
    for sample in (x.float(), one):
        mean, var = sample.mean(dim=0).flatten(), sample.var(dim=0).flatten()
        torch.testing.assert_close(mean, math.sqrt(abar) * x0[0].flatten(), atol=0.02, rtol=0)
        torch.testing.assert_close(var, torch.full((5,), 1 - abar), atol=0.03, rtol=0)
    torch.testing.assert_close(x.float().mean(dim=0), one.mean(dim=0), atol=0.03, rtol=0)


def test_ddim_with_eta_one_and_every_step_is_the_ancestral_sampler() -> None:
    """Song et al. 2020: σ_t(η=1) = sqrt(β̃_t), and the DDIM mean equals the posterior mean."""
    sched = NoiseSchedule(30, "linear", 1e-3, 0.1)

    def fake_eps(x: Tensor, t: int) -> Tensor:  # any deterministic function of (x, t)
        return torch.tanh(x) * (0.3 + t / 30)

    x_anc = x_ddim = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for t in reversed(range(30)):
        x_anc = sched.step(fake_eps(x_anc, t), t, x_anc, g1)
        x_ddim = sched.ddim_step(fake_eps(x_ddim, t), t, t - 1, x_ddim, 1.0, g2)
    torch.testing.assert_close(x_ddim, x_anc, atol=1e-4, rtol=1e-4)
    assert x_anc.abs().max() <= 1.0 + 1e-6  # the last step returns the clipped x̂_0 mean


def test_true_noise_recovers_x0_and_posterior_mean() -> None:
    sched = NoiseSchedule(50, "cosine")
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 1, 4, 4, generator=gen) * 2 - 1
    eps = torch.randn(x0.shape, generator=gen)
    t = 20
    x_t = sched.add_noise(x0, eps, torch.full((3,), t))
    torch.testing.assert_close(sched.predict_x0(eps, t, x_t), x0, atol=1e-5, rtol=0)
    ab = golden_alpha_bar("cosine", 50)
    beta = 1 - ab[t] / ab[t - 1]
    mean = (math.sqrt(ab[t - 1]) * beta * x0 + math.sqrt(1 - beta) * (1 - ab[t - 1]) * x_t) / (1 - ab[t])
    no_noise = sched.posterior_coef_x0[t] * x0 + sched.posterior_coef_xt[t] * x_t
    torch.testing.assert_close(no_noise, mean.float(), atol=1e-5, rtol=1e-4)


# =========================================================================== DDPM: network and model
def test_unet_resolutions_at_28_never_halve_7() -> None:
    spec = DataSpec(1, 28, 28, 10)
    net = UNet(spec, 8, (1, 2, 2, 2), 1, attention=True, num_classes=10)
    seen = []
    net.mid1.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[-2:])))
    x = torch.randn(2, 1, 28, 28)
    out = net(x, torch.tensor([0, 999]), torch.tensor([3, 10]))  # 10 = the null class
    assert out.shape == x.shape
    assert seen == [(7, 7)]  # 28 -> 14 -> 7 -> 7 (odd: not halved again)
    assert isinstance(net.downsample[2], torch.nn.Identity)


@pytest.mark.parametrize("sampler", ["ancestral", "ddim"])
def test_ddpm_samplers_uint8_in_range(sampler: str) -> None:
    model = build("ddpm", timesteps=20)
    out = model.sample(6, generator=torch.Generator().manual_seed(0), sampler=sampler, steps=4)
    assert out.shape == (6, 1, 28, 28) and out.dtype == torch.uint8
    assert 0 <= int(out.min()) <= int(out.max()) <= 255


def test_ema_tracks_but_differs_from_raw_weights() -> None:
    model = build("ddpm", ema_decay=0.99)
    raw, ema = model.net("denoiser"), model.ema
    assert all(torch.equal(p, q) for p, q in zip(raw.parameters(), ema.parameters(), strict=True))
    assert not any(p.requires_grad for p in ema.parameters())
    images, labels = tiny_data()
    run_steps(model, 20, images, labels)
    diffs = [float((p.detach() - q).abs().max()) for p, q in zip(raw.parameters(), ema.parameters(), strict=True)]
    assert max(diffs) > 1e-4
    # The EMA lies between the initial and the current weights, closer to the current ones.
    init = build("ddpm", ema_decay=0.99).net("denoiser")
    w0, w, we = (torch.cat([p.detach().flatten() for p in n.parameters()]) for n in (init, raw, ema))
    assert (we - w).norm() < (w0 - w).norm()


def test_conditional_outputs_depend_on_labels() -> None:
    model = build("ddpm-cond")
    for w in (0.0, 2.0):
        a = model.sample(4, torch.tensor([0, 0, 0, 0]), torch.Generator().manual_seed(0), guidance_scale=w)
        b = model.sample(4, torch.tensor([7, 7, 7, 7]), torch.Generator().manual_seed(0), guidance_scale=w)
        assert not torch.equal(a, b)
    uncond = build("ddpm")  # labels are ignored without conditioning
    a = uncond.sample(4, torch.tensor([0, 0, 0, 0]), torch.Generator().manual_seed(0))
    b = uncond.sample(4, torch.tensor([7, 7, 7, 7]), torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


def test_guidance_zero_is_plain_conditional_and_w_changes_output() -> None:
    model = build("ddpm-cond")
    x, labels = torch.randn(3, 1, 28, 28), torch.tensor([1, 2, 3])
    t = torch.full((3,), 10)
    cond, uncond = model.ema(x, t, labels), model.ema(x, t, torch.full((3,), 10))
    torch.testing.assert_close(model.guided_eps(x, 10, labels, 0.0), cond)
    torch.testing.assert_close(model.guided_eps(x, 10, labels, 1.5), cond + 1.5 * (cond - uncond), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.guided_eps(x, 10, None, 1.5), uncond)


def test_ddim_eta_zero_is_deterministic() -> None:
    model = build("ddpm", ddim_eta=0.0)
    a = model.sample(3, generator=torch.Generator().manual_seed(0))
    b = model.sample(3, generator=torch.Generator().manual_seed(0))
    c = model.sample(3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    gen = torch.Generator().manual_seed(0)
    model.sample(3, generator=gen, sampler="ddim", eta=0.0)
    after_eta0 = gen.get_state()
    # eta = 0 draws only x_T: the generator advanced exactly as much as one randn of that size.
    ref = torch.Generator().manual_seed(0)
    torch.randn((3, 1, 28, 28), generator=ref)
    assert torch.equal(after_eta0, ref.get_state())


def test_noise_prediction_loss_is_reproducible() -> None:
    model = build("ddpm-cond")
    images, labels = tiny_data(8)
    l1 = model.noise_prediction_loss(images, labels, torch.Generator().manual_seed(0))
    l2 = model.noise_prediction_loss(images, labels, torch.Generator().manual_seed(0))
    assert l1.dim() == 0 and torch.equal(l1, l2) and math.isfinite(float(l1))


def test_every_ddpm_gradient_has_its_parameters_strides():
    """What DDP compares, stride by stride, with the bucket views it builds from the parameters: a
    mismatch is its "Grad strides do not match bucket view strides" warning (and a copy a step).
    The one-head attention's 1x1 projection got a channels-last gradient before it was re-strided."""
    from tests.tiny_models import build as build_tiny
    from tests.tiny_models import tiny_data

    model = build_tiny("ddpm")
    assert model.net("denoiser").mid_attn.heads == 1  # the case that produced the mismatch
    images, labels = tiny_data(16)  # at batch 8 on one thread SDPA's output is laid out otherwise: no mismatch
    model.train_step(images, labels)
    mismatched = [(name, p.stride(), p.grad.stride()) for name, p in model.net("denoiser").named_parameters()
                  if p.grad is not None and p.grad.stride() != p.stride()]
    assert mismatched == []
