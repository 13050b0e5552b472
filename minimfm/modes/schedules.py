"""Noise schedules, forward noising and samplers for the diffusion mode, kept apart from the model to be testable.

Both objectives index noise by a time t where t = 0 is clean data and larger t is noisier.

DDPM (Ho et al. 2020) with the cosine schedule (Nichol & Dhariwal 2021) and T = 1000 discrete steps, as in
Transfusion. The network predicts the noise ε:

    x_t = sqrt(ᾱ_t) x0 + sqrt(1 − ᾱ_t) ε,      ᾱ(τ) = cos²((τ + s)/(1 + s) · π/2) / cos²(s/(1 + s) · π/2)

Sampling uses DDIM (Song et al. 2021) on a grid of S of the T steps: η = 0 is deterministic DDIM, η = 1 is the
ancestral (DDPM posterior) sampler on the same grid.

Rectified flow (Liu et al. 2022; flow matching, Lipman et al. 2023) with continuous t in [0, 1]. The path from
data to noise is a straight line and the network predicts its constant velocity v = dx_t/dt = ε − x0:

    x_t = (1 − t) x0 + t ε

Sampling integrates dx/dt = v from t = 1 to t = 0 with S Euler steps.

Both classes expose the same small interface, so the mode never branches on the objective:

    sample_t(limit, generator)            training times per row, at most limit · (the largest time)
    zero_time(n, device)                  (n,) clean time, in the schedule's dtype (step index or float)
    add_noise(x0, eps, t)                 forward noising x0 -> x_t
    target(x0, eps)                       what the network regresses (ε or v)
    time_input(t)                         float for the timestep embedding, both on a 0..1000 scale
    sampling_times(steps)                 S + 1 times (python numbers) from pure noise down to clean
    step(x, out, t, t_next, generator, sampler)   one reverse step given the network output at t

`TimestepEmbedding` turns `time_input(t)` into a vector; the diffusion mode adds it to image positions and the
mar mode's per-token head is conditioned on it.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from minimfm.transformer import init_weights


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Noise drawn on the generator's device (CPU in training, the model's in sampling), moved to x's."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=torch.float32).to(x.device, x.dtype)


def _per_row(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) to broadcast against x (B, ...)."""
    return values.reshape(-1, *([1] * (x.dim() - 1)))


def cosine_alpha_bar(tau: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal's continuous ᾱ(τ), τ in [0, 1]; the offset s keeps the noise at τ = 0 nonzero."""
    f = lambda u: torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return f(tau) / f(torch.zeros_like(tau))


class DDPMSchedule:
    """DDPM with the cosine ᾱ over T discrete steps; ε-prediction; DDIM (η = 0) or ancestral (η = 1) sampling."""

    samplers = ("ddim", "ancestral")
    MIN_ALPHA_BAR = 4e-3  # sampling starts at the last step with at least this much signal (see sampling_times)

    def __init__(self, T: int = 1000, max_beta: float = 0.999):
        self.T = T
        tau = torch.arange(T + 1, dtype=torch.float64) / T
        ab = cosine_alpha_bar(tau)  # (T + 1,): ᾱ at the step boundaries, ᾱ(1) = 0
        # step i takes ᾱ(i/T) to ᾱ((i+1)/T); clipping β (improved-DDPM) keeps the last step from being all noise
        betas = (1 - ab[1:] / ab[:-1]).clamp(max=max_beta)
        self.alpha_bar = torch.cumprod(1 - betas, 0).float()  # (T,) ᾱ_t for t = 0..T-1
        self.t_max = int((self.alpha_bar >= self.MIN_ALPHA_BAR).nonzero().max())  # where sampling starts

    def alpha_bar_at(self, t: torch.Tensor) -> torch.Tensor:
        """ᾱ_t for integer t in [-1, T-1]; t = -1 means clean data (ᾱ = 1), the end of the reverse process."""
        padded = torch.cat([torch.ones(1), self.alpha_bar]).to(t.device)
        return padded[t + 1]

    def sample_t(self, limit: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(B,) integer steps uniform in [0, limit · T); limit (B,) in (0, 1]."""
        u = torch.rand(limit.shape, generator=generator, device=generator.device)
        return (u * limit.to(u.device) * self.T).long().clamp(max=self.T - 1)

    def zero_time(self, n: int, device=None) -> torch.Tensor:
        return torch.zeros(n, dtype=torch.long, device=device)

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = _per_row(self.alpha_bar_at(t), x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * eps

    def target(self, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return eps

    def time_input(self, t: torch.Tensor) -> torch.Tensor:
        return t.float()

    def sampling_times(self, steps: int) -> list[int]:
        """S evenly spaced steps from the noisiest usable step t_max down to 0, then -1 (clean).

        "Trailing" spacing (Lin et al. 2024, "Common diffusion noise schedules and sample steps are flawed"): the
        grid always starts at t_max, whatever S, so S = 1 is one step from noise to an estimate of x0, not (as with
        DDIM's "leading" grid [0]) one step from nearly-clean t = 0 that returns the noise unchanged. t_max is
        the last step with ᾱ >= MIN_ALPHA_BAR, not T - 1: the cosine ᾱ is ~1e-8 there, and recovering
        x0 = (x_t − sqrt(1 − ᾱ) ε̂)/sqrt(ᾱ) would multiply the network's error in ε̂ by ~10^4. At ᾱ = 4e-3 the
        factor is ~16 and the data signal left in x_t (6 % of its scale) is negligible, so starting from pure
        noise there is sound.
        """
        if not 1 <= steps <= self.t_max + 1:
            raise ValueError(f"steps must be in [1, {self.t_max + 1}], got {steps}")
        grid = [self.t_max - (i * (self.t_max + 1)) // steps for i in range(steps)]
        return grid + [-1]

    def predict_x0(self, x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = _per_row(self.alpha_bar_at(t), x)
        return (x - (1 - ab).sqrt() * eps) / ab.sqrt()

    def step(self, x: torch.Tensor, eps: torch.Tensor, t: int, t_next: int,
             generator: torch.Generator | None = None, sampler: str = "ddim") -> torch.Tensor:
        """DDIM update from step t to t_next < t (Song et al. eq. 12):

            x_next = sqrt(ᾱ') x̂0 + sqrt(1 − ᾱ' − σ²) ε̂ + σ z,   σ = η sqrt((1 − ᾱ')/(1 − ᾱ)) sqrt(1 − ᾱ/ᾱ')

        η = 0 (ddim) is deterministic; η = 1 (ancestral) samples the DDPM posterior q(x_next | x_t, x̂0).
        """
        if sampler not in self.samplers:
            raise ValueError(f"unknown DDPM sampler '{sampler}', choose {', '.join(self.samplers)}")
        eta = 1.0 if sampler == "ancestral" else 0.0
        ab = float(self.alpha_bar_at(torch.tensor(t)))
        ab_next = float(self.alpha_bar_at(torch.tensor(t_next)))
        x0 = self.predict_x0(x, eps, torch.full((x.shape[0],), t, device=x.device))
        sigma = eta * math.sqrt((1 - ab_next) / (1 - ab) * (1 - ab / ab_next))
        x_next = math.sqrt(ab_next) * x0 + math.sqrt(max(1 - ab_next - sigma ** 2, 0.0)) * eps
        if sigma > 0:
            x_next = x_next + sigma * _randn_like(x, generator)
        return x_next


class FlowSchedule:
    """Rectified flow: straight path x_t = (1 − t) x0 + t ε, velocity prediction, Euler sampling.

    Training times are uniform, or logit-normal (Esser et al. 2024, SD3 §3.1: t = sigmoid(n), n ~ N(0, 1)), which
    spends the steps at mid noise, where the velocity is hardest to predict: near t = 0 the best guess is about −x_t
    (ε is unseen), near t = 1 about x_t minus the data mean, both nearly free."""

    samplers = ("euler",)
    time_samplings = ("uniform", "logit-normal")

    def __init__(self, time_sampling: str = "uniform"):
        if time_sampling not in self.time_samplings:
            raise ValueError(f"unknown time sampling '{time_sampling}', choose {', '.join(self.time_samplings)}")
        self.time_sampling = time_sampling

    def sample_t(self, limit: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(B,) times in [0, limit), uniform or logit-normal; limit (B,) in (0, 1]."""
        if self.time_sampling == "uniform":
            u = torch.rand(limit.shape, generator=generator, device=generator.device)
        else:
            u = torch.sigmoid(torch.randn(limit.shape, generator=generator, device=generator.device))
        return u * limit.to(u.device)

    def zero_time(self, n: int, device=None) -> torch.Tensor:
        return torch.zeros(n, device=device)

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = _per_row(t.to(x0.dtype), x0)
        return (1 - t) * x0 + t * eps

    def target(self, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return eps - x0

    def time_input(self, t: torch.Tensor) -> torch.Tensor:
        return t.float() * 1000  # the DDPM step scale, so the sinusoidal frequencies suit both

    def sampling_times(self, steps: int) -> list[float]:
        if steps < 1:
            raise ValueError(f"steps must be positive, got {steps}")
        return [1 - i / steps for i in range(steps)] + [0.0]

    def step(self, x: torch.Tensor, v: torch.Tensor, t: float, t_next: float,
             generator: torch.Generator | None = None, sampler: str = "euler") -> torch.Tensor:
        """Euler step of dx/dt = v from t down to t_next; exact when v is the true (constant) velocity."""
        if sampler not in self.samplers:
            raise ValueError(f"unknown flow sampler '{sampler}', choose {', '.join(self.samplers)}")
        return x + (t_next - t) * v


def make_schedule(objective: str, time_sampling: str = "uniform") -> DDPMSchedule | FlowSchedule:
    if objective == "ddpm":
        if time_sampling != "uniform":
            raise ValueError(f"time sampling '{time_sampling}' is defined for the flow objective only")
        return DDPMSchedule()
    if objective == "flow":
        return FlowSchedule(time_sampling)
    raise ValueError(f"unknown diffusion objective '{objective}', choose ddpm or flow")


class TimestepEmbedding(nn.Module):
    """DiT's timestep embedder: sinusoidal features of t (as for Transformer positions), then a 2-layer MLP."""

    per_sequence = True  # runs once per sequence, not per token (FLOP counting, minimfm/flops.py)

    def __init__(self, d_model: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, d_model), nn.SiLU(), nn.Linear(d_model, d_model))
        self.mlp.apply(init_weights)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t (B,) float on a 0..1000 scale -> (B, D)."""
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        angles = t.float()[:, None] * freqs[None]  # (B, half)
        return self.mlp(torch.cat([angles.cos(), angles.sin()], dim=-1))  # (B, D)
