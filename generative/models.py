"""Crystal generators: CrysBFN (periodic Bayesian flow) and the DiffCSP-style diffusion baseline.

Both wrap the same :class:`generative.network.CSPNet` and share one interface:

- ``loss(batch, generator) -> (loss, parts)`` for training on a :class:`generative.data.CrystalBatch`;
- ``sample(n_atoms [B], types [n] | None, steps, generator) -> frac [n,3], lattice [B,3,3] (Å), types [n]``.

Task ``csp`` is conditioned on atom types (crystal structure prediction); task ``gen`` also generates types.
The lattice is handled in units of ``lattice_scale`` (mean training lattice length).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mlmd.errors import InputError

from .config import ModelConfig
from .data import CrystalBatch
from .network import CSPNet
from .vonmises import accuracy_schedule, sample_von_mises, vm_update

TWO_PI = 2 * math.pi


class CrystalGenerator(nn.Module):
    """Common state: vocabulary (atomic numbers), lattice scale, distribution of atom counts (for ``gen``)."""

    method = ""

    def __init__(self, config: ModelConfig, species: list[int], lattice_scale: float, n_atoms_probs: list[float]):
        super().__init__()
        self.config = config
        self.species = [int(z) for z in species]
        self.vocab_index = {z: i for i, z in enumerate(self.species)}
        self.lattice_scale = float(lattice_scale)
        self.n_atoms_probs = [float(p) for p in n_atoms_probs]  # index = number of atoms
        self.max_atoms = len(self.n_atoms_probs) - 1
        self.task = config.task
        self.net = CSPNet(len(self.species), config.hidden, config.layers, config.n_freq, 3, config.time_dim)

    @property
    def n_types(self) -> int:
        return len(self.species)

    def _type_onehot(self, types: torch.Tensor, dtype) -> torch.Tensor:
        return F.one_hot(types, self.n_types).to(dtype)

    def sample_n_atoms(self, n: int, generator: torch.Generator) -> torch.Tensor:
        p = torch.tensor(self.n_atoms_probs, dtype=torch.float64)
        return torch.multinomial(p, n, replacement=True, generator=generator)

    @staticmethod
    def _check_steps(steps) -> int:
        if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or int(steps) <= 0:
            raise InputError(f"steps={steps!r} must be a positive integer")
        return int(steps)


class CrysBFN(CrystalGenerator):
    """Bayesian flow: von Mises on fractional coordinates, Gaussian on the lattice, discrete on types (``gen``)."""

    method = "crysbfn"

    def _coord_alphas(self, n_steps: int, dtype) -> torch.Tensor:
        return torch.tensor(accuracy_schedule(n_steps, self.config.beta1_coord), dtype=dtype)

    def _lattice_alpha(self, i: int, n_steps: int) -> float:
        s2 = self.config.sigma1_lattice ** 2
        return s2 ** (-i / n_steps) * (1 - s2 ** (1 / n_steps))

    def _type_alpha(self, i: int, n_steps: int) -> float:
        return self.config.beta1_types * (2 * i - 1) / n_steps**2

    @staticmethod
    def _reference_cell(n: int, dtype) -> torch.Tensor:
        """``[n, 3, 3]`` identity: the lattice input at step 1, where the Gaussian flow has no information yet.

        Lattices are scaled by the mean lattice-vector length, so the identity is the typical (cubic) scaled cell; the
        network's output ``W @ I`` is then its direct lattice prediction.
        """
        return torch.eye(3, dtype=dtype).expand(n, 3, 3)

    def loss(self, b: CrystalBatch, generator: torch.Generator | None = None, collision_rate: float = 0.0):
        cfg = self.config
        N = cfg.bfn_steps
        dtype = b.frac.dtype
        B, n = b.n_crystals, b.frac.shape[0]
        # step whose prediction is trained; with final_prediction also step N + 1 (t = 1, all N updates made)
        i = torch.randint(1, N + 1 + int(cfg.final_prediction), (B,), generator=generator)
        t = (i - 1).to(dtype) / N
        ia = i[b.batch]
        # coordinates: posterior after i-1 sender samples
        alphas = self._coord_alphas(N, dtype)
        angle = TWO_PI * b.frac
        y = sample_von_mises(angle.unsqueeze(-1).expand(n, 3, N), alphas, generator)  # [n,3,N]
        mask = (torch.arange(N).unsqueeze(0) < (ia - 1).unsqueeze(1)).to(dtype).unsqueeze(1)  # [n,1,N]
        s = (mask * alphas * torch.sin(y)).sum(-1)
        c_ = (mask * alphas * torch.cos(y)).sum(-1)
        m = torch.atan2(s, c_)
        conc = torch.sqrt(s * s + c_ * c_)
        frac_in = torch.remainder(m / TWO_PI, 1.0)
        if collision_rate > 0:
            frac_in = self._collide(frac_in, b, i, collision_rate, generator)
        # lattice: mu ~ N(gamma x, gamma(1-gamma)); the network sees mu / sqrt(gamma) and predicts the noise.
        # At step 1 (gamma = 0) mu carries no information: the network sees the reference cell I and predicts x itself
        # (the lattice it would guess from the types alone), which is what the first lattice sender is drawn around.
        x_l = b.lattice / self.lattice_scale
        gamma = 1 - cfg.sigma1_lattice ** (2 * t)
        g = gamma.view(-1, 1, 1)
        eps = torch.randn(x_l.shape, generator=generator, dtype=dtype)
        first = (i == 1).view(-1, 1, 1)
        lat_in = torch.where(first, self._reference_cell(B, dtype), g.sqrt() * x_l + (1 - g).sqrt() * eps)
        # types
        if self.task == "gen":
            beta = (cfg.beta1_types * t * t)[b.batch].unsqueeze(-1)
            K = self.n_types
            e = self._type_onehot(b.types, dtype)
            yt = beta * (K * e - 1) + (beta * K).sqrt() * torch.randn(e.shape, generator=generator, dtype=dtype)
            type_feat = torch.softmax(yt, -1)
        else:
            type_feat = self._type_onehot(b.types, dtype)
        co, lo, tl = self.net(frac_in, lat_in, type_feat, torch.log1p(conc), t, b.batch)
        # coordinate loss (circular); optional BFN KL weight alpha_i * A(alpha_i)
        d = TWO_PI * (frac_in + co - b.frac)
        per = (1 - torch.cos(d)).mean(-1)
        if cfg.coord_loss == "kl":
            a = alphas[ia - 1]
            w = a * torch.special.i1e(a) / torch.special.i0e(a)
            w_all = alphas * torch.special.i1e(alphas) / torch.special.i0e(alphas)
            per = per * w / w_all.mean()
        loss_c = per.mean()
        loss_l = ((lo - torch.where(first, x_l, eps)) ** 2).mean()
        parts = {"coord": loss_c, "lattice": loss_l}
        if self.task == "gen":
            parts["types"] = F.cross_entropy(tl, b.types)
        return sum(parts.values()), {k: float(v.detach()) for k, v in parts.items()}

    @staticmethod
    def _collide(frac_in: torch.Tensor, b: CrystalBatch, step: torch.Tensor, rate: float, generator) -> torch.Tensor:
        """In a share ``rate`` of the crystals past step 1, put one atom's input ``[n, 3]`` onto another atom's
        (plus N(0, 0.03²) fractional jitter). Sampling sometimes drives two atoms onto one site, a state the training
        posteriors never show; the moved atom's target stays its own site, so the network learns to pull it away."""
        counts = torch.bincount(b.batch, minlength=b.n_crystals)
        first = torch.cumsum(counts, 0) - counts
        chosen = (torch.rand(b.n_crystals, generator=generator) < rate) & (counts > 1) & (step > 1)
        crystals = chosen.nonzero().squeeze(1)
        if len(crystals) == 0:
            return frac_in
        n = counts[crystals]
        moved = (torch.rand(len(crystals), generator=generator) * n).long()
        onto = (moved + 1 + (torch.rand(len(crystals), generator=generator) * (n - 1)).long()) % n
        jitter = 0.03 * torch.randn(len(crystals), 3, generator=generator, dtype=frac_in.dtype)
        out = frac_in.clone()
        out[first[crystals] + moved] = torch.remainder(frac_in[first[crystals] + onto] + jitter, 1.0)
        return out

    @torch.no_grad()
    def sample(self, n_atoms: torch.Tensor, types: torch.Tensor | None, steps: int = 10, generator: torch.Generator | None = None):
        steps = self._check_steps(steps)
        dtype = torch.float32
        B = len(n_atoms)
        batch = torch.repeat_interleave(torch.arange(B), n_atoms)
        n = len(batch)
        K = self.n_types
        alphas = self._coord_alphas(steps, dtype)
        m = torch.zeros(n, 3, dtype=dtype)
        conc = torch.zeros(n, 3, dtype=dtype)
        mu = torch.zeros(B, 3, 3, dtype=dtype)
        rho = 1.0
        type_logits = torch.zeros(n, K, dtype=dtype)
        last_call = steps + int(self.config.final_prediction)
        for i in range(1, last_call + 1):
            t = torch.full((B,), (i - 1) / steps, dtype=dtype)
            gamma = 1 - 1 / rho
            lat_in = mu / math.sqrt(gamma) if i > 1 else self._reference_cell(B, dtype)
            type_feat = self._type_onehot(types, dtype) if self.task == "csp" else torch.softmax(type_logits, -1)
            frac_in = torch.remainder(m / TWO_PI, 1.0)
            co, lo, tl = self.net(frac_in, lat_in, type_feat, torch.log1p(conc), t, batch)
            x_frac = frac_in + co
            x_lat = (lat_in - math.sqrt(1 - gamma) * lo) / math.sqrt(gamma) if i > 1 else lo
            probs = torch.softmax(tl, -1)
            if i == last_call:
                break
            y = sample_von_mises(TWO_PI * x_frac, alphas[i - 1], generator)
            m, conc = vm_update(m, conc, y, alphas[i - 1])
            a_l = self._lattice_alpha(i, steps)
            y_l = x_lat + torch.randn(x_lat.shape, generator=generator, dtype=dtype) / math.sqrt(a_l)
            mu = (rho * mu + a_l * y_l) / (rho + a_l)
            rho += a_l
            if self.task == "gen":
                k = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
                a_t = self._type_alpha(i, steps)
                e = self._type_onehot(k, dtype)
                type_logits = type_logits + a_t * (K * e - 1) + math.sqrt(a_t * K) * torch.randn(e.shape, generator=generator, dtype=dtype)
        out_types = types if self.task == "csp" else probs.argmax(-1)
        return torch.remainder(x_frac, 1.0), x_lat * self.lattice_scale, out_types


# ---------------------------------------------------------------------------------------------------------------
# DiffCSP baseline


def d_log_p_wrapped_normal(x: torch.Tensor, sigma: torch.Tensor, n_images: int = 10) -> torch.Tensor:
    """−∂/∂x log of the wrapped normal (period 1) density at offset x: Σ_k w_k (x+k)/σ², w = softmax(−(x+k)²/2σ²)."""
    k = torch.arange(-n_images, n_images + 1, dtype=x.dtype)
    xk = x.unsqueeze(-1) + k
    s = sigma.unsqueeze(-1)
    w = torch.softmax(-(xk**2) / (2 * s * s), dim=-1)
    return (w * xk).sum(-1) / sigma**2


@functools.lru_cache(maxsize=8)
def _sigma_norms(timesteps: int, sigma_begin: float, sigma_end: float) -> tuple[np.ndarray, np.ndarray]:
    sig = np.exp(np.linspace(math.log(sigma_begin), math.log(sigma_end), timesteps))
    g = torch.Generator().manual_seed(0)
    norms = []
    for s in sig:
        x = torch.randn(4000, generator=g, dtype=torch.float64) * s
        norms.append(float((d_log_p_wrapped_normal(x, torch.tensor(s, dtype=torch.float64)) ** 2).mean()))
    return np.concatenate([[0.0], sig]), np.concatenate([[1.0], norms])


def _cosine_alphas_cumprod(timesteps: int, s: float = 0.008) -> np.ndarray:
    x = np.linspace(0, timesteps, timesteps + 1)
    ac = np.cos(((x / timesteps) + s) / (1 + s) * math.pi * 0.5) ** 2
    ac = ac / ac[0]
    betas = np.clip(1 - ac[1:] / ac[:-1], 1e-4, 0.999)
    return np.concatenate([[1.0], np.cumprod(1 - betas)]), np.concatenate([[0.0], betas])


class DiffCSP(CrystalGenerator):
    """Wrapped-normal score diffusion on fractional coordinates, DDPM on lattice (and one-hot types for ``gen``)."""

    method = "diffcsp"

    def _schedules(self, dtype):
        cfg = self.config
        sig, norms = _sigma_norms(cfg.timesteps, cfg.sigma_begin, cfg.sigma_end)
        ac, betas = _cosine_alphas_cumprod(cfg.timesteps)
        to = lambda a: torch.tensor(a, dtype=dtype)  # noqa: E731
        return to(sig), to(norms), to(ac), to(betas)

    def _cond(self, sigma_atoms: torch.Tensor) -> torch.Tensor:
        return torch.log(sigma_atoms).unsqueeze(-1).expand(-1, 3) / 5.0

    def loss(self, b: CrystalBatch, generator: torch.Generator | None = None):
        cfg = self.config
        dtype = b.frac.dtype
        T = cfg.timesteps
        sig, norms, ac, _ = self._schedules(dtype)
        B = b.n_crystals
        t = torch.randint(1, T + 1, (B,), generator=generator)
        a = ac[t].view(-1, 1, 1)
        x_l = b.lattice / self.lattice_scale
        eps_l = torch.randn(x_l.shape, generator=generator, dtype=dtype)
        lat_t = a.sqrt() * x_l + (1 - a).sqrt() * eps_l
        s_at = sig[t][b.batch]
        eps_x = torch.randn(b.frac.shape, generator=generator, dtype=dtype)
        x_t = torch.remainder(b.frac + s_at.unsqueeze(-1) * eps_x, 1.0)
        target = d_log_p_wrapped_normal(s_at.unsqueeze(-1) * eps_x, s_at.unsqueeze(-1)) / norms[t][b.batch].sqrt().unsqueeze(-1)
        e = self._type_onehot(b.types, dtype)
        if self.task == "gen":
            a_at = ac[t][b.batch].unsqueeze(-1)
            eps_t = torch.randn(e.shape, generator=generator, dtype=dtype)
            type_feat = a_at.sqrt() * e + (1 - a_at).sqrt() * eps_t
        else:
            type_feat = e
        co, lo, tl = self.net(x_t, lat_t, type_feat, self._cond(s_at), t.to(dtype) / T, b.batch)
        parts = {"coord": F.mse_loss(co, target), "lattice": F.mse_loss(lo, eps_l)}
        if self.task == "gen":
            parts["types"] = F.mse_loss(tl, eps_t)
        return sum(parts.values()), {k: float(v.detach()) for k, v in parts.items()}

    @torch.no_grad()
    def sample(self, n_atoms: torch.Tensor, types: torch.Tensor | None, steps: int | None = None, generator: torch.Generator | None = None):
        """Predictor–corrector sampling over the trained ``timesteps`` (2 network calls per step).

        ``steps`` smaller than the trained number of timesteps is not supported by this baseline (it is fixed to its
        training discretisation); pass ``None`` or the trained value.
        """
        cfg = self.config
        T = cfg.timesteps
        if steps is not None:
            steps = self._check_steps(steps)
            if steps != T:
                raise InputError(f"steps={steps} for a diffusion model trained with {T} timesteps; use steps={T}")
        dtype = torch.float32
        sig, norms, ac, betas = self._schedules(dtype)
        B = len(n_atoms)
        batch = torch.repeat_interleave(torch.arange(B), n_atoms)
        n = len(batch)
        K = self.n_types
        rn = lambda *shape: torch.randn(*shape, generator=generator, dtype=dtype)  # noqa: E731
        lat = rn(B, 3, 3)
        x = torch.rand(n, 3, generator=generator, dtype=dtype)
        h = rn(n, K) if self.task == "gen" else self._type_onehot(types, dtype)
        for t in range(T, 0, -1):
            tt = torch.full((B,), t / T, dtype=dtype)
            s = sig[t]
            cond = self._cond(torch.full((n,), float(s), dtype=dtype))
            last = t == 1
            # corrector (Langevin on coordinates)
            step = cfg.step_lr * (s / cfg.sigma_begin) ** 2
            co, _, _ = self.net(x, lat, h, cond, tt, batch)
            score = -co * norms[t].sqrt()
            x = x + step * score + (0 if last else torch.sqrt(2 * step) * rn(n, 3))
            # predictor (reverse VE SDE for coordinates, DDPM ancestral for lattice / types)
            co, lo, tl = self.net(torch.remainder(x, 1.0), lat, h, cond, tt, batch)
            score = -co * norms[t].sqrt()
            s_prev = sig[t - 1]
            x = x + (s**2 - s_prev**2) * score
            if not last:
                x = x + torch.sqrt(s_prev**2 * (s**2 - s_prev**2) / s**2) * rn(n, 3)
            x = torch.remainder(x, 1.0)
            c0 = 1 / torch.sqrt(1 - betas[t])
            c1 = betas[t] / torch.sqrt(1 - ac[t])
            noise = 0 if last else torch.sqrt(betas[t])
            lat = c0 * (lat - c1 * lo) + (noise * rn(B, 3, 3) if not last else 0)
            if self.task == "gen":
                h = c0 * (h - c1 * tl) + (noise * rn(n, K) if not last else 0)
        out_types = types if self.task == "csp" else h.argmax(-1)
        return x, lat * self.lattice_scale, out_types


def build_model(config: ModelConfig, species, lattice_scale, n_atoms_probs) -> CrystalGenerator:
    cls = {"crysbfn": CrysBFN, "diffcsp": DiffCSP}[config.method]
    return cls(config, species, lattice_scale, n_atoms_probs)
