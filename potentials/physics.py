"""Physical energy terms of BAMBOO-style potentials: damped Coulomb (all pairs or PME), electronegativity,
and a pairwise D3-like dispersion. All energies in eV, distances in Å, charges in e.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from mlmd.graph import AtomicGraph
from mlmd.neighbors import neighbor_list, skin_list_valid
from mlmd.units import COULOMB_EV_A

# Grimme D2 atomic C6 (J nm^6 mol^-1) and van der Waals radii (Å); converted to eV Å^6 below.
_D2_C6 = {1: 0.14, 3: 0.29, 5: 3.13, 6: 1.75, 7: 1.23, 8: 0.70, 9: 0.75, 15: 7.84, 16: 5.57,
          11: 5.71, 14: 9.23, 17: 5.07, 35: 12.47, 2: 0.08, 10: 0.63, 4: 1.61, 12: 5.71, 13: 10.79}
_D2_R0 = {1: 1.001, 3: 0.825, 5: 1.485, 6: 1.452, 7: 1.397, 8: 1.342, 9: 1.287, 15: 1.705, 16: 1.683,
          11: 1.144, 14: 1.716, 17: 1.639, 35: 1.749, 2: 1.012, 10: 1.243, 4: 1.144, 12: 1.364, 13: 1.639}
_J_NM6_PER_MOL_TO_EV_A6 = 1e-3 * 1e6 / 96.48533212331002  # J/mol -> eV, nm^6 -> Å^6


def cosine_cutoff(r: torch.Tensor, cutoff: float) -> torch.Tensor:
    """0.5 (cos(pi r / rc) + 1) for r < rc, else 0. Shape follows ``r``."""
    return torch.where(r < cutoff, 0.5 * (torch.cos(math.pi * r / cutoff) + 1.0), torch.zeros_like(r))


def smooth_switch(r: torch.Tensor, r_on: float, r_off: float) -> torch.Tensor:
    """C2 polynomial switch: 1 below r_on, 0 above r_off."""
    x = ((r - r_on) / (r_off - r_on)).clamp(0.0, 1.0)
    return 1.0 - x**3 * (10.0 - 15.0 * x + 6.0 * x**2)


def damped_pair_kernel(r: torch.Tensor, r0: float, short_cutoff: float) -> torch.Tensor:
    """Short-range part of the damped Coulomb kernel: phi(r) - 1/r = -fc(r) erfc(r/r0) / r.

    Together with 1/r it gives a kernel that stays finite as r -> 0 (2 / (sqrt(pi) r0)) and is exactly 1/r
    beyond ``short_cutoff``. The cosine factor keeps it smooth at the cutoff.
    """
    return -cosine_cutoff(r, short_cutoff) * torch.erfc(r / r0) / r


class DampedCoulomb(nn.Module):
    """Coulomb energy with a short-range cap: all pairs for clusters, PME (torch-pme) for periodic cells.

    Input: charges (N,), positions (N, 3), cell (B, 3, 3), graph. Output: per-atom energies (N,) summing to E_coul.
    """

    def __init__(self, r0: float = 2.2, short_cutoff: float = 5.0, smearing: float = 1.0, mesh_spacing: float = 0.5):
        super().__init__()
        self.r0 = r0
        self.short_cutoff = short_cutoff
        self.smearing = smearing
        self.mesh_spacing = mesh_spacing
        self._calculators: dict = {}

    def forward(self, graph: AtomicGraph, charges: torch.Tensor, positions: torch.Tensor, cell: torch.Tensor,
                edge_index: torch.Tensor | None = None, distances: torch.Tensor | None = None) -> torch.Tensor:
        """``edge_index`` (2, E) and ``distances`` (E,): optional full neighbour list of the batch within
        ``short_cutoff`` (the model's own), reused for the real-space part of PME instead of a new list."""
        energies = torch.zeros_like(charges)
        periodic = graph.pbc.any(dim=1)
        for b in range(graph.num_graphs):
            start, stop = int(graph.ptr[b]), int(graph.ptr[b + 1])
            q, pos = charges[start:stop], positions[start:stop]
            if bool(periodic[b]):
                pairs = None
                if edge_index is not None:
                    mine = slice(None) if graph.num_graphs == 1 else graph.batch[edge_index[0]] == b
                    pairs = (edge_index[:, mine] - start, distances[mine])
                energies = energies.index_add(0, torch.arange(start, stop, device=q.device),
                                              self._periodic(graph, b, q, pos, cell[b], pairs))
            else:
                energies = energies.index_add(0, torch.arange(start, stop, device=q.device), self._cluster(q, pos))
        return energies

    def _cluster(self, q: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        n = q.shape[0]
        if n < 2:
            return torch.zeros_like(q)
        i, j = torch.triu_indices(n, n, offset=1, device=q.device)
        r = (pos.index_select(0, j) - pos.index_select(0, i)).norm(dim=1)
        kernel = 1.0 / r + damped_pair_kernel(r, self.r0, self.short_cutoff)
        pair = 0.5 * COULOMB_EV_A * q.index_select(0, i) * q.index_select(0, j) * kernel
        return torch.zeros_like(q).index_add(0, i, pair).index_add(0, j, pair)

    def _pme(self, dtype: torch.dtype, device: torch.device):
        import torchpme

        key = (dtype, str(device))
        if key not in self._calculators:  # a plain dict, so the calculators stay out of the state_dict
            potential = torchpme.CoulombPotential(smearing=self.smearing)
            self._calculators[key] = torchpme.PMECalculator(potential, mesh_spacing=self.mesh_spacing).to(dtype=dtype, device=device)
        return self._calculators[key]

    def _periodic(self, graph: AtomicGraph, b: int, q: torch.Tensor, pos: torch.Tensor, cell: torch.Tensor,
                  pairs: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        if not bool(graph.pbc[b].all()):
            raise NotImplementedError("Coulomb for partly periodic cells is not supported; use pbc=(True, True, True) or False")
        if pairs is None:
            # Half neighbour list at the real-space cutoff; it depends only on positions, so build it outside autograd.
            i, j, shifts = neighbor_list(pos.detach().cpu().double().numpy(), cell.detach().cpu().double().numpy(),
                                         np.ones(3, dtype=bool), self.short_cutoff, full=False)
            i_t = torch.from_numpy(i).to(q.device)
            j_t = torch.from_numpy(j).to(q.device)
            s_t = torch.from_numpy(shifts).to(dtype=pos.dtype, device=q.device)
            r = (pos.index_select(0, j_t) - pos.index_select(0, i_t) + s_t @ cell).norm(dim=1)
        else:
            (i_t, j_t), r = pairs
        calculator = self._pme(pos.dtype, pos.device)
        # torch-pme gives the reciprocal-space part with its self and background terms (an empty pair list); the
        # real-space part erfc(r / sqrt(2) sigma) / r is summed here together with the short-range cap, in one pass.
        no_pairs = torch.zeros(0, 2, dtype=torch.long, device=q.device)
        phi = calculator(q[:, None], cell, pos, no_pairs, r[:0])[:, 0]
        energies = COULOMB_EV_A * q * phi
        kernel = calculator.potential.sr_from_dist(r) + damped_pair_kernel(r, self.r0, self.short_cutoff)
        pair = 0.5 * COULOMB_EV_A * q.index_select(0, i_t) * q.index_select(0, j_t) * kernel
        if pairs is None:  # each pair once: half its energy to each atom
            return energies.index_add(0, i_t, pair).index_add(0, j_t, pair)
        return energies.index_add(0, i_t, pair)  # each pair twice (i->j and j->i): half to its centre each time


# Ziegler-Biersack-Littmark universal screening function: sum_k c_k exp(-d_k r / a).
_ZBL_C = (0.18175, 0.50986, 0.28022, 0.02817)
_ZBL_D = (3.19980, 0.94229, 0.40290, 0.20162)
_BOHR_A = 0.529177210903


def zbl_envelope(x: torch.Tensor, p: int = 6) -> torch.Tensor:
    """Polynomial envelope of r / r_max: 1 at 0, falling to 0 with vanishing first two derivatives at 1."""
    x = x.clamp(0.0, 1.0)
    return 1.0 - (p + 1) * (p + 2) / 2 * x**p + p * (p + 2) * x ** (p + 1) - p * (p + 1) / 2 * x ** (p + 2)


class ZBLRepulsion(nn.Module):
    """Screened nuclear repulsion (ZBL) that keeps atoms apart where the data have no examples.

    Each pair contributes Z_i Z_j k_e / r phi(r / a_ij) times an envelope that reaches zero at the sum of the
    covalent radii, so the term acts only at contacts shorter than a bond and the network learns the rest.
    Per-atom energies (N,) eV from the model's edge list (full: each pair twice, so each gets half).
    """

    def __init__(self, species: list[int]):
        super().__init__()
        from ase.data import covalent_radii

        z = torch.tensor(species, dtype=torch.float64)
        self.register_buffer("z", z, persistent=False)
        self.register_buffer("radius", torch.tensor(covalent_radii[species], dtype=torch.float64),
                             persistent=False)

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        dtype = r.dtype
        si, sj = species[edge_index[0]], species[edge_index[1]]
        z, radius = self.z.to(dtype), self.radius.to(dtype)
        zi, zj = z[si], z[sj]
        r_max = radius[si] + radius[sj]
        a = 0.8854 * _BOHR_A / (zi**0.23 + zj**0.23)
        phi = sum(c * torch.exp(-d * r / a) for c, d in zip(_ZBL_C, _ZBL_D))
        pair = 0.5 * COULOMB_EV_A * zi * zj / r * phi * zbl_envelope(r / r_max)
        return torch.zeros(species.shape[0], dtype=dtype, device=r.device).index_add(0, edge_index[0], pair)


class Dispersion(nn.Module):
    """Pairwise D3-like dispersion: -sum C6_ij / (r^6 + R_ij^6) with C6_ij = sqrt(C6_i C6_j), R_ij = a1 (R0_i + R0_j) + a2,
    smoothly switched off between ``cutoff - 1`` and ``cutoff`` Å. Fixed (not trained).

    Output: per-atom energies (N,) in eV.
    """

    def __init__(self, cutoff: float = 10.0, s6: float = 1.0, a1: float = 0.6, a2: float = 1.0, skin: float = 1.0):
        super().__init__()
        self.cutoff, self.s6, self.a1, self.a2, self.skin = cutoff, s6, a1, a2, skin
        self._cache = None  # the last pair list; the 10 Å list costs more than the pair energies themselves
        c6 = torch.zeros(119, dtype=torch.float64)
        r0 = torch.ones(119, dtype=torch.float64)
        for z, value in _D2_C6.items():
            c6[z] = value * _J_NM6_PER_MOL_TO_EV_A6
            r0[z] = _D2_R0[z]
        self.register_buffer("c6", c6, persistent=False)
        self.register_buffer("r0", r0, persistent=False)

    def _pairs(self, graph: AtomicGraph, positions: torch.Tensor, cell: torch.Tensor) -> "_Pairs":
        """Half list of pairs within cutoff + skin with their C6 and R^6, reused while it still holds every pair
        within the cutoff (:func:`mlmd.neighbors.skin_list_valid`; MD steps, NPT included)."""
        pos_np, cell_np = positions.detach().cpu().double().numpy(), cell.detach().cpu().double().numpy()
        pbc = graph.pbc.cpu().numpy()
        ptr = graph.ptr.cpu().numpy()
        numbers = graph.atomic_numbers.cpu().numpy()
        key = (positions.dtype, positions.device)
        cached = self._cache
        if cached is not None and np.array_equal(cached[2], pbc) and np.array_equal(cached[3], ptr) \
                and np.array_equal(cached[4], numbers):
            if all(skin_list_valid(cached[0][ptr[b]:ptr[b + 1]], cached[1][b], pos_np[ptr[b]:ptr[b + 1]], cell_np[b],
                                   pbc[b], self.cutoff, self.skin) for b in range(len(ptr) - 1)):
                if key not in cached[5]:
                    cached[5][key] = cached[5]["numpy"].to(*key)
                return cached[5][key]
        i_all, j_all, s_all = [], [], []
        for b in range(graph.num_graphs):
            start, stop = int(ptr[b]), int(ptr[b + 1])
            i, j, s = neighbor_list(pos_np[start:stop], cell_np[b], pbc[b], self.cutoff + self.skin, full=False)
            i_all.append(i + start)
            j_all.append(j + start)
            s_all.append(s)
        i, j, s = np.concatenate(i_all), np.concatenate(j_all), np.concatenate(s_all)
        # Pairs in a fixed shuffled order: sorted by i, the scatter-adds of the forces would accumulate into one
        # atom's slot many times in a row, a dependency chain ~5x slower than scattered writes.
        order = np.random.default_rng(0).permutation(len(i))
        i, j, s = i[order], j[order], s[order]
        c6, r0 = self.c6.cpu().numpy(), self.r0.cpu().numpy()
        c6_ij = np.sqrt(c6[numbers[i]] * c6[numbers[j]])
        radius6 = (self.a1 * (r0[numbers[i]] + r0[numbers[j]]) + self.a2) ** 6
        pairs = _Pairs(torch.from_numpy(i), torch.from_numpy(j), torch.from_numpy(np.ascontiguousarray(s.T, dtype=np.float64)),
                       None if graph.num_graphs == 1 else torch.from_numpy(np.searchsorted(ptr, i, side="right") - 1),
                       torch.from_numpy(c6_ij), torch.from_numpy(radius6), self.s6, self.cutoff - 1.0, self.cutoff)
        self._cache = (pos_np.copy(), cell_np.copy(), pbc.copy(), ptr.copy(), numbers.copy(),
                       {"numpy": pairs, key: pairs.to(*key)})
        return self._cache[5][key]

    def forward(self, graph: AtomicGraph, positions: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        return _DispersionEnergies.apply(positions, cell, self._pairs(graph, positions, cell))


class _Pairs(NamedTuple):
    """Dispersion pairs: i, j (P,), integer cell shifts (3, P), the graph of each pair (P,) (None for one graph),
    C6 (P,), R^6 (P,), the s6 scale and the switch-off range. Pair vectors are handled as (3, P): gathers,
    scatters and the 3-component sums then run over long contiguous rows."""

    i: torch.Tensor
    j: torch.Tensor
    shifts: torch.Tensor
    pair_graph: torch.Tensor | None
    c6: torch.Tensor
    radius6: torch.Tensor
    s6: float
    r_on: float
    r_off: float

    def to(self, dtype: torch.dtype, device: torch.device) -> "_Pairs":
        """Index tensors on ``device``; shifts, C6 and R^6 also in ``dtype``."""
        index = {name: None if t is None else t.to(device) for name, t in
                 (("i", self.i), ("j", self.j), ("pair_graph", self.pair_graph))}
        floats = {name: getattr(self, name).to(device=device, dtype=dtype) for name in ("shifts", "c6", "radius6")}
        return self._replace(**index, **floats)


def _pair_vectors(positions: torch.Tensor, cell: torch.Tensor, p: _Pairs) -> torch.Tensor:
    """r_j - r_i + shift . cell as (3, P)."""
    if p.pair_graph is None:
        shifts = cell[0].t() @ p.shifts  # one matmul; the batched form gathers a 3x3 cell per pair
    else:
        shifts = torch.einsum("kp,pkl->lp", p.shifts, cell[p.pair_graph])
    columns = positions.t().contiguous()
    return columns.index_select(1, p.j) - columns.index_select(1, p.i) + shifts


def _squared_norms(d: torch.Tensor) -> torch.Tensor:
    """|d|^2 (P,) of (3, P) vectors; three row products beat a reduction over a dimension of 3."""
    return d[0] * d[0] + d[1] * d[1] + d[2] * d[2]


def _pair_energies(r2: torch.Tensor, p: _Pairs) -> torch.Tensor:
    """Half of each pair's energy (P,): -s6/2 C6 / (r^6 + R^6) switch(r)."""
    return (-0.5 * p.s6) * p.c6 / (r2**3 + p.radius6) * smooth_switch(torch.sqrt(r2), p.r_on, p.r_off)


def _atom_energies(pair: torch.Tensor, p: _Pairs, num_atoms: int) -> torch.Tensor:
    return pair.new_zeros(num_atoms).index_add(0, p.i, pair).index_add(0, p.j, pair)


class _DispersionEnergies(torch.autograd.Function):
    """Per-atom dispersion energies (N,) from positions (N, 3) and cells (B, 3, 3).

    The pair gradient is formed in closed form during the forward pass, so a force call's backward is one gather and
    two scatters instead of autograd through a dozen ops over ~10^5 pairs. Double backward (training on forces,
    Hessians) recomputes the pairs with autograd, so higher derivatives stay exact.
    """

    @staticmethod
    def forward(ctx, positions: torch.Tensor, cell: torch.Tensor, p: _Pairs) -> torch.Tensor:
        d = _pair_vectors(positions, cell, p)
        r2 = _squared_norms(d)
        r = torch.sqrt(r2)
        attraction = (-0.5 * p.s6) * p.c6 / (r2**3 + p.radius6)
        switch = smooth_switch(r, p.r_on, p.r_off)
        x = ((r - p.r_on) / (p.r_off - p.r_on)).clamp(0.0, 1.0)
        dswitch_dr = -30.0 * x**2 * (1.0 - x) ** 2 / (p.r_off - p.r_on)
        dattraction_dr2 = -3.0 * attraction * r2**2 / (r2**3 + p.radius6)
        dpair_dr2 = dattraction_dr2 * switch + attraction * dswitch_dr / (2.0 * r)
        ctx.save_for_backward(positions, cell, 2.0 * dpair_dr2 * d)
        ctx.pairs = p
        return _atom_energies(attraction * switch, p, positions.shape[0])

    @staticmethod
    def backward(ctx, grad_energies: torch.Tensor):
        positions, cell, dpair_dd = ctx.saved_tensors
        p = ctx.pairs
        needs = ctx.needs_input_grad[:2]
        if torch.is_grad_enabled():  # create_graph: differentiate an autograd recomputation instead
            wanted = [t for t, need in zip((positions, cell), needs) if need]
            d = _pair_vectors(positions, cell, p)
            energies = _atom_energies(_pair_energies(_squared_norms(d), p), p, positions.shape[0])
            grads = iter(torch.autograd.grad(energies, wanted, grad_energies, create_graph=True, allow_unused=True))
            return next(grads) if needs[0] else None, next(grads) if needs[1] else None, None
        weight = grad_energies.index_select(0, p.i) + grad_energies.index_select(0, p.j)
        grad_d = weight * dpair_dd  # (3, P)
        grad_columns = positions.new_zeros(3, positions.shape[0]).index_add(1, p.j, grad_d).index_add(1, p.i, grad_d.neg())
        if not needs[1]:
            grad_cell = None
        elif p.pair_graph is None:
            grad_cell = (p.shifts @ grad_d.t())[None]
        else:
            grad_cell = torch.zeros_like(cell).index_add(0, p.pair_graph, p.shifts.t()[:, :, None] * grad_d.t()[:, None, :])
        return grad_columns.t(), grad_cell, None
