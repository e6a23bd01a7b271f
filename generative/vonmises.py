"""Von Mises pieces of CrysBFN: Bayesian update, entropy, and the entropy-linear accuracy schedule.

Angles are radians. A von Mises belief vM(m, c) over an angle x is carried as a 2-D vector c·e^{im}; observing a
sender sample y ~ vM(x, α) multiplies the density by exp(α cos(y − x)), so the posterior is the von Mises whose
vector is the sum c·e^{im} + α·e^{iy}.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from scipy.optimize import brentq
from scipy.special import i0e, i1e

LOG_2PI = math.log(2 * math.pi)


def vm_update(m: torch.Tensor, c: torch.Tensor, y: torch.Tensor, alpha) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior (mean, concentration) after observing ``y`` with accuracy ``alpha`` under prior vM(m, c).

    m' = atan2(α sin y + c sin m, α cos y + c cos m), c' = |α e^{iy} + c e^{im}|. All shapes broadcast.
    """
    s = alpha * torch.sin(y) + c * torch.sin(m)
    co = alpha * torch.cos(y) + c * torch.cos(m)
    return torch.atan2(s, co), torch.sqrt(s * s + co * co)


def vm_entropy(kappa) -> np.ndarray:
    """Differential entropy of vM(·, κ): log(2π I0(κ)) − κ I1(κ)/I0(κ) (stable for large κ)."""
    k = np.asarray(kappa, dtype=np.float64)
    a = i1e(k) / i0e(k)
    return LOG_2PI + np.log(i0e(k)) + k - k * a


def _expected_resultant(kappa_prev: float, alpha: float, n: int = 4001) -> float:
    """E_y |κ_prev + α e^{iy}| for y ~ vM(0, α), by quadrature on a grid adapted to the width of vM(0, α)."""
    half = min(math.pi, 12.0 / math.sqrt(max(alpha, 1e-12)))
    y = np.linspace(-half, half, n)
    w = np.exp(alpha * (np.cos(y) - 1.0))
    w /= w.sum()
    r = np.abs(kappa_prev + alpha * np.exp(1j * y))
    return float((w * r).sum())


@functools.lru_cache(maxsize=64)
def _schedule(n_steps: int, beta1: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    h0, h1 = LOG_2PI, float(vm_entropy(beta1))
    kappas, alphas = [], []
    prev = 0.0
    for i in range(1, n_steps + 1):
        target_h = h0 + i / n_steps * (h1 - h0)
        k = math.exp(brentq(lambda lk: float(vm_entropy(math.exp(lk))) - target_h, -30.0, 30.0, xtol=1e-12))
        a = math.exp(brentq(lambda la: _expected_resultant(prev, math.exp(la)) - k, -30.0, 30.0, xtol=1e-12))
        kappas.append(k)
        alphas.append(a)
        prev = k
    return tuple(alphas), tuple(kappas)


def accuracy_schedule(n_steps: int, beta1: float = 1000.0) -> np.ndarray:
    """Sender accuracies α_1..α_N so that the posterior entropy falls linearly from log 2π to H(β₁).

    The target concentration after step i is κ_i with H(κ_i) = H(0) + (i/N)(H(β₁) − H(0)); α_i is the root of
    E_y |κ_{i−1} + α_i e^{iy}| = κ_i with y ~ vM(0, α_i) (concentrations add as vectors). Cached per (N, β₁).
    """
    if int(n_steps) <= 0:
        from mlmd.errors import InputError

        raise InputError(f"steps={n_steps} must be a positive integer")
    return np.array(_schedule(int(n_steps), float(beta1))[0])


def target_concentrations(n_steps: int, beta1: float = 1000.0) -> np.ndarray:
    """κ_1..κ_N, the concentrations whose entropies are linear in the step."""
    return np.array(_schedule(int(n_steps), float(beta1))[1])


def sample_von_mises(loc: torch.Tensor, concentration: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Best–Fisher rejection sampler (vectorised, seeded). Shapes of ``loc`` and ``concentration`` broadcast."""
    loc, kappa = torch.broadcast_tensors(loc, concentration)
    dtype = loc.dtype
    kappa = kappa.to(torch.float64).clamp(min=1e-8)
    tau = 1 + torch.sqrt(1 + 4 * kappa**2)
    rho = (tau - torch.sqrt(2 * tau)) / (2 * kappa)
    r = (1 + rho**2) / (2 * rho)
    out = torch.empty_like(kappa)
    todo = torch.ones_like(kappa, dtype=torch.bool)
    for _ in range(1000):
        if not bool(todo.any()):
            break
        n = int(todo.sum())
        u1 = torch.rand(n, generator=generator, dtype=torch.float64)
        u2 = torch.rand(n, generator=generator, dtype=torch.float64)
        u3 = torch.rand(n, generator=generator, dtype=torch.float64)
        k, rr = kappa[todo], r[todo]
        z = torch.cos(math.pi * u1)
        f = (1 + rr * z) / (rr + z)
        c = k * (rr - f)
        ok = (c * (2 - c) - u2 > 0) | (torch.log(c / u2) + 1 - c >= 0)
        theta = torch.sign(u3 - 0.5) * torch.acos(f.clamp(-1, 1))
        idx = todo.nonzero(as_tuple=True)
        sel = tuple(i[ok] for i in idx)
        out[sel] = theta[ok]
        todo[sel] = False
    # kappa tiny -> near uniform; any leftovers (never in practice) get a uniform draw
    if bool(todo.any()):
        out[todo] = (torch.rand(int(todo.sum()), generator=generator, dtype=torch.float64) * 2 - 1) * math.pi
    return (out.to(dtype) + loc + math.pi) % (2 * math.pi) - math.pi
