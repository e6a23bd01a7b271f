"""BAMBOO-style graph equivariant transformer with learned charges, Coulomb, electronegativity and dispersion.

E = E_NN + E_Coulomb + E_chi + E_disp (+ E_ZBL when ``repulsion`` is on).
Per atom: F scalar channels s (N, F) and F vector channels V (N, 3, F).
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from mlmd import keys
from mlmd.graph import AtomicGraph
from mlmd.potential import Potential
from potentials.physics import DampedCoulomb, Dispersion, ZBLRepulsion, cosine_cutoff

ELECTROLYTE_SPECIES = [1, 3, 5, 6, 7, 8, 9, 15, 16]
# Per-atom chi q + eta q^2 + Coulomb energies (N,); training uses dE/dq of their sum for the charge-equilibrium residual.
ELECTROSTATIC_ENERGIES = "electrostatic_energies"


class BambooConfig(BaseModel):
    """Architecture and physics settings (stored in every checkpoint)."""

    model_config = ConfigDict(extra="forbid")

    species: list[int] = Field(default_factory=lambda: list(ELECTROLYTE_SPECIES))
    cutoff: float = 5.0
    num_features: int = 64
    num_rbf: int = 32
    num_layers: int = 3
    num_heads: int = 4
    coulomb: bool = True
    coulomb_r0: float = 2.2
    pme_smearing: float = 1.2
    pme_mesh_spacing: float = 1.0
    dispersion: bool = True
    dispersion_cutoff: float = 10.0
    max_charge: float = 2.0
    # How the raw predicted charges are made to sum to the total charge Q. "uniform" (all models up to stage 6):
    # every atom gets an equal share of Q - sum(raw). "learned": equal shares remove sum(raw), then Q itself is shared in
    # proportion to a positive weight each atom's features predict, so a charged cluster's net charge can sit on its
    # ions whatever the cluster's size. The two agree while the learned weights are equal (the share head's start).
    excess_charge: Literal["uniform", "learned"] = "uniform"
    # Vector messages also carry the neighbours' vector features (sum_j a_ij g_h(r_ij) V_j W_in, as PaiNN passes V_j)
    # from the second layer on, which raises the body order the vectors see. The radial filter g starts at zero, so
    # switching this on for a trained model keeps its predictions until training moves the filter.
    vector_messages: bool = False
    # Hidden width of the per-atom MLPs (each layer's gated update, the energy and charge heads); None = num_features.
    # Per-atom work is small next to the per-edge messages, so width here adds capacity at little cost per call.
    # A trained model can be widened when fine-tuning: the new hidden units start with zero output weights.
    mlp_width: int | None = Field(None, gt=0)
    # ZBL nuclear repulsion below the covalent-radius sum: a wall at contacts the data never show (solids, generated
    # candidates). Off by default; the electrolyte model was trained without it.
    repulsion: bool = False
    # Per-element reference energies (eV) and the scale of the NN atomic energy; set from data before training.
    reference_energies: dict[int, float] = Field(default_factory=dict)
    energy_scale: float = 1.0


def _uniform_share_head(num_features: int) -> nn.Module:
    """Features (N, F) -> (N, 1) logits of each atom's share of the total charge; starts at equal shares."""
    head = nn.Sequential(nn.LayerNorm(num_features), nn.Linear(num_features, 1))
    nn.init.zeros_(head[1].weight)
    nn.init.constant_(head[1].bias, math.log(math.e - 1.0))  # softplus = 1
    return head


class ExpNormalRBF(nn.Module):
    """phi_k(r) = exp(-beta_k (exp(-alpha r) - mu_k)^2) with learnable mu, beta. (E,) -> (E, K)."""

    def __init__(self, num_rbf: int, cutoff: float):
        super().__init__()
        self.alpha = 5.0 / cutoff
        start = math.exp(-cutoff * self.alpha)
        self.mu = nn.Parameter(torch.linspace(start, 1.0, num_rbf))
        self.beta = nn.Parameter(torch.full((num_rbf,), (2.0 / num_rbf * (1.0 - start)) ** -2))

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return torch.exp(-self.beta * (torch.exp(-self.alpha * r)[:, None] - self.mu) ** 2)


class Neighbors(NamedTuple):
    """Neighbour data in one of two layouts with the same maths.

    dense (padded per atom, N x M slots; padded slots have fcut = 0 and unit = 0): neighbors (N * M,), unit (N, M, 3),
    fcut (N, M), rbf (N, M, K); the vector message is one batched matmul. Best when degrees are even (bulk liquids).
    sparse (edge list): centers (E,), neighbors (E,), unit (E, 3), fcut (E,), rbf (E, K); scatter-add messages.
    Best for clusters, whose surface atoms would leave most padded slots empty.
    """

    dense: bool
    centers: torch.Tensor | None
    neighbors: torch.Tensor
    unit: torch.Tensor
    fcut: torch.Tensor
    rbf: torch.Tensor
    pair_index: torch.Tensor | None = None  # (N * M,) i * N + j per dense slot, when scores come from all pairs


class TransformerLayer(nn.Module):
    """Cutoff-weighted attention a_ij = SiLU(q_i.k_j) fcut(r_ij) per head (no softmax); scalar messages
    sum_j a_ij v_j W_s(r_ij), vector messages sum_j a_ij v_j W_v(r_ij) (x) r_hat_ij (with ``vector_messages`` plus
    the carried sum_j a_ij g_h(r_ij) V_j W_in per head h); a gated update mixes scalars with vector norms and dot
    products.

    s: (N, F), V: (N, 3, F), neighbours: :class:`Neighbors` -> s, V.
    """

    def __init__(self, num_features: int, num_rbf: int, num_heads: int, vector_messages: bool = False,
                 mlp_width: int | None = None):
        super().__init__()
        f = num_features
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(f)
        self.qkv = nn.Linear(f, 3 * f)
        # Separate maps (not one split in two): the backward of a split concatenates large edge tensors.
        self.radial_s = nn.Linear(num_rbf, f)
        self.radial_v = nn.Linear(num_rbf, f)
        self.radial_vv = self.vector_in = None
        if vector_messages:
            # One radial filter per head (not per feature): the dense layout then sums the carried vectors with one
            # (N, N) matmul per head instead of gathering V_j into every slot.
            self.radial_vv = nn.Linear(num_rbf, num_heads)
            nn.init.zeros_(self.radial_vv.weight)
            nn.init.zeros_(self.radial_vv.bias)
            self.vector_in = nn.Linear(f, f, bias=False)
        self.vector_mix = nn.Linear(f, 2 * f, bias=False)
        width = mlp_width or f
        self.update = nn.Sequential(nn.Linear(2 * f, width), nn.SiLU(), nn.Linear(width, 3 * f))

    def forward(self, s: torch.Tensor, V: torch.Tensor, nb: Neighbors):
        n, f = s.shape
        heads, width = self.num_heads, f // self.num_heads
        q, k, v = self.qkv(self.norm(s)).chunk(3, dim=-1)
        slots = nb.fcut.shape  # (N, M) dense or (E,) sparse
        if nb.pair_index is not None:
            # All-pairs scores per head by one matmul, then read at the neighbour slots: cheaper than gathering
            # k_j per slot (and scattering its gradient back) while (N, N) per head stays small.
            qh, kh = q.view(n, heads, width).transpose(0, 1), k.view(n, heads, width).transpose(0, 1)
            scores = torch.bmm(qh, kh.transpose(1, 2)).view(heads, n * n).index_select(1, nb.pair_index)
            scores = scores.t().reshape(*slots, heads)
        else:
            k_j = k.index_select(0, nb.neighbors).view(*slots, heads, width)
            q_i = q.view(n, 1, heads, width) if nb.dense else q.index_select(0, nb.centers).view(-1, heads, width)
            scores = (q_i * k_j).sum(-1)
        attention = nn.functional.silu(scores / math.sqrt(width)) * nb.fcut[..., None]
        value = (v.index_select(0, nb.neighbors).view(*slots, heads, width) * attention[..., None]).view(*slots, f)
        scalar = value * self.radial_s(nb.rbf)
        vector = value * self.radial_v(nb.rbf)
        carried = self._carried_vectors(V, attention * self.radial_vv(nb.rbf), nb) if self.radial_vv is not None else None
        if nb.dense:
            s = s + scalar.sum(dim=1)
            V = V + torch.bmm(nb.unit.transpose(1, 2), vector)  # (N, 3, M) @ (N, M, F)
        else:
            s = s.index_add(0, nb.centers, scalar)
            V = V.index_add(0, nb.centers, nb.unit[:, :, None] * vector[:, None, :])
        if carried is not None:
            V = V + carried
        U, W = self.vector_mix(V).chunk(2, dim=-1)
        norms = torch.sqrt((U * U).sum(dim=1) + 1e-8)
        dots = (U * W).sum(dim=1)
        a_s, a_dot, a_v = self.update(torch.cat([self.norm(s), norms], dim=-1)).chunk(3, dim=-1)
        s = s + a_s + a_dot * dots
        V = V + a_v[:, None, :] * W
        return s, V

    def _carried_vectors(self, V: torch.Tensor, weight: torch.Tensor, nb: Neighbors) -> torch.Tensor:
        """sum_j w_ij,h (V_j W_in) over the heads' feature blocks. V: (N, 3, F), weight: (*slots, H) -> (N, 3, F)."""
        n, _, f = V.shape
        heads, width = self.num_heads, f // self.num_heads
        V_in = self.vector_in(V)
        if nb.pair_index is not None:
            matrix = weight.new_zeros(heads, n * n).index_add(1, nb.pair_index, weight.reshape(-1, heads).t())
            V_h = V_in.view(n, 3, heads, width).permute(2, 0, 1, 3).reshape(heads, n, 3 * width)
            carried = torch.bmm(matrix.view(heads, n, n), V_h)  # (H, N, 3 * width)
            return carried.view(heads, n, 3, width).permute(1, 2, 0, 3).reshape(n, 3, f)
        V_j = V_in.index_select(0, nb.neighbors).view(-1, 3, heads, width) * weight.reshape(-1, 1, heads, 1)
        if nb.dense:
            return V_j.view(n, -1, 3, f).sum(dim=1)
        return torch.zeros_like(V).index_add(0, nb.centers, V_j.view(-1, 3, f))


def widened_state_dict(trained: dict[str, torch.Tensor], wider: nn.Module) -> dict[str, torch.Tensor]:
    """``trained``'s weights in the shapes of ``wider`` (the same model with a larger ``mlp_width``), same predictions.

    Where a hidden layer grew, the trained units keep their weights; the new units keep ``wider``'s random input
    weights (rows; so they can learn) and get zero output weights (columns; so they add nothing yet).
    """
    out = {}
    for key, target in wider.state_dict().items():
        old = trained.get(key)
        if old is None or old.shape == target.shape:
            if old is not None:
                out[key] = old
            continue
        grown = target.clone() if target.shape[0] > old.shape[0] else torch.zeros_like(target)
        grown[tuple(slice(0, n) for n in old.shape)] = old
        out[key] = grown
    return out


def dense_neighbors(edge_index: torch.Tensor, vectors: torch.Tensor, num_atoms: int, cutoff: float):
    """Edge list -> padded per-atom slots.

    edge_index: (2, E) [i, j]; vectors: (E, 3) r_ij. Returns neighbors (N * M,) atom index per slot (0 when padded),
    r (N, M) distances (``cutoff`` when padded) and unit (N, M, 3) (zero when padded); all differentiable in vectors.
    """
    i, j = edge_index
    order = torch.argsort(i, stable=True)
    i, j, vectors = i[order], j[order], vectors[order]
    counts = torch.bincount(i, minlength=num_atoms)
    m = max(1, int(counts.max()) if counts.numel() else 1)
    first = torch.cumsum(counts, 0) - counts
    slot = i * m + (torch.arange(i.shape[0], device=i.device) - first[i])
    r = vectors.norm(dim=1)
    neighbors = torch.zeros(num_atoms * m, dtype=torch.long, device=i.device).index_put((slot,), j)
    r_dense = vectors.new_full((num_atoms * m,), cutoff).index_put((slot,), r).view(num_atoms, m)
    unit = vectors.new_zeros(num_atoms * m, 3).index_put((slot,), vectors / r[:, None]).view(num_atoms, m, 3)
    return neighbors, r_dense, unit


class BambooPotential(Potential):
    """Graph equivariant transformer + physics terms. Output keys: energy, energies, charges, dipole (+forces/stress)."""

    model_type = "bamboo"

    def __init__(self, config: dict[str, Any] | BambooConfig | None = None):
        super().__init__()
        cfg = config if isinstance(config, BambooConfig) else BambooConfig(**(config or {}))
        self.config = cfg.model_dump()
        f = cfg.num_features
        self.num_layers = cfg.num_layers
        self.layout = "auto"  # "dense" | "sparse" | "auto" (dense when padding wastes < 50 %); same results
        # Dense layout: attention scores from an (N, N) matmul per head up to this many atoms (memory ~ 4 H N^2 bytes).
        self.all_pair_scores_max_atoms = 2048
        index = torch.full((119,), -1, dtype=torch.long)
        index[torch.tensor(cfg.species)] = torch.arange(len(cfg.species))
        self.register_buffer("species_index", index, persistent=False)
        self.embedding = nn.Embedding(len(cfg.species), f)
        self.rbf = ExpNormalRBF(cfg.num_rbf, cfg.cutoff)
        # The first layer sees V = 0, so it never carries vectors.
        self.layers = nn.ModuleList(TransformerLayer(f, cfg.num_rbf, cfg.num_heads, cfg.vector_messages and k > 0,
                                                     cfg.mlp_width) for k in range(cfg.num_layers))
        width = cfg.mlp_width or f
        self.energy_head = nn.Sequential(nn.LayerNorm(f), nn.Linear(f, width), nn.SiLU(), nn.Linear(width, 1))
        self.charge_head = nn.Sequential(nn.LayerNorm(f), nn.Linear(f, width), nn.SiLU(), nn.Linear(width, 1))
        self.excess_head = _uniform_share_head(f) if cfg.excess_charge == "learned" else None
        n_species = len(cfg.species)
        self.chi = nn.Parameter(torch.zeros(n_species))
        self.eta_raw = nn.Parameter(torch.zeros(n_species))
        reference = torch.zeros(n_species, dtype=torch.float64)
        for z, value in cfg.reference_energies.items():
            reference[cfg.species.index(int(z))] = value
        self.register_buffer("reference_energies", reference)
        self.register_buffer("energy_scale", torch.tensor(cfg.energy_scale, dtype=torch.float64))
        self.coulomb = DampedCoulomb(cfg.coulomb_r0, cfg.cutoff, cfg.pme_smearing, cfg.pme_mesh_spacing) if cfg.coulomb else None
        self.dispersion = Dispersion(cfg.dispersion_cutoff) if cfg.dispersion else None
        self.repulsion = ZBLRepulsion(cfg.species) if cfg.repulsion else None

    def set_reference_energies(self, reference: dict[int, float], energy_scale: float) -> None:
        """Per-element reference energies (eV) and the NN energy scale (eV), fitted from training data."""
        with torch.no_grad():
            for z, value in reference.items():
                self.reference_energies[self.species.index(int(z))] = value
            self.energy_scale.fill_(energy_scale)
        self.config["reference_energies"] = {int(z): float(v) for z, v in reference.items()}
        self.config["energy_scale"] = float(energy_scale)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        reference = self.reference_energies.tolist()
        self.config["reference_energies"] = {z: reference[k] for k, z in enumerate(self.species)}
        self.config["energy_scale"] = float(self.energy_scale)

    def edges(self, graph: AtomicGraph, positions: torch.Tensor, cell: torch.Tensor):
        """Edges within the cutoff: index (2, E) and vectors r_ij (E, 3). The graph's list may carry a skin."""
        vectors = graph.edge_vectors(positions, cell)
        inside = vectors.norm(dim=1) < self.cutoff
        return graph.edge_index[:, inside], vectors[inside]

    def features(self, graph: AtomicGraph, edge_index: torch.Tensor, vectors: torch.Tensor):
        """Scalar features (N, F) after the transformer layers, from :meth:`edges`."""
        species = self.species_index[graph.atomic_numbers]
        cutoff = self.cutoff
        n = graph.num_atoms
        degree_max = int(torch.bincount(edge_index[0], minlength=n).max()) if edge_index.shape[1] else 1
        dense = self.layout == "dense" or (self.layout == "auto" and n * degree_max <= 1.5 * edge_index.shape[1])
        if dense:
            neighbors, r, unit = dense_neighbors(edge_index, vectors, n, cutoff)
            centers = None
        else:
            centers, neighbors = edge_index
            r = vectors.norm(dim=1)
            unit = vectors / r[:, None]
        fcut = cosine_cutoff(r, cutoff)
        rbf = self.rbf(r.flatten()).view(*r.shape, -1) * fcut[..., None]
        pair_index = None
        if dense and n <= self.all_pair_scores_max_atoms:
            pair_index = torch.arange(n, device=neighbors.device).repeat_interleave(r.shape[1]) * n + neighbors
        nb = Neighbors(dense, centers, neighbors, unit, fcut, rbf, pair_index)
        s = self.embedding(species)
        V = s.new_zeros(s.shape[0], 3, s.shape[1])
        for layer in self.layers:
            s, V = layer(s, V, nb)
        return s, species

    def compute_energy(self, graph: AtomicGraph, positions: torch.Tensor, cell: torch.Tensor) -> dict[str, torch.Tensor]:
        edge_index, vectors = self.edges(graph, positions, cell)
        s, species = self.features(graph, edge_index, vectors)
        dtype = positions.dtype
        energies = self.energy_head(s)[:, 0] * self.energy_scale.to(dtype) + self.reference_energies.to(dtype)[species]

        raw = self.config["max_charge"] * torch.tanh(self.charge_head(s)[:, 0] / self.config["max_charge"])
        counts = torch.bincount(graph.batch, minlength=graph.num_graphs).to(dtype)
        total_charge = graph.total_charge.to(dtype)
        raw_sum = torch.zeros_like(counts).index_add(0, graph.batch, raw)
        if self.excess_head is None:
            charges = raw + ((total_charge - raw_sum) / counts)[graph.batch]
        else:
            # raw charges carry an arbitrary per-structure offset (only their differences matter), so only Q is shared
            share = nn.functional.softplus(self.excess_head(s)[:, 0])
            total_share = torch.zeros_like(counts).index_add(0, graph.batch, share)
            charges = raw - (raw_sum / counts)[graph.batch] + share * (total_charge / total_share)[graph.batch]
        eta = nn.functional.softplus(self.eta_raw)
        electrostatic = self.chi[species] * charges + eta[species] * charges**2
        if self.coulomb is not None:
            electrostatic = electrostatic + self.coulomb(graph, charges, positions, cell, edge_index, vectors.norm(dim=1))
        energies = energies + electrostatic
        if self.dispersion is not None:
            energies = energies + self.dispersion(graph, positions, cell)
        if self.repulsion is not None:
            energies = energies + self.repulsion(species, edge_index, vectors.norm(dim=1))
        energy = torch.zeros(graph.num_graphs, dtype=dtype, device=s.device).index_add(0, graph.batch, energies)
        dipole = torch.zeros(graph.num_graphs, 3, dtype=dtype, device=s.device).index_add(0, graph.batch, charges[:, None] * positions)
        return {keys.ENERGY: energy, keys.ENERGIES: energies, keys.CHARGES: charges, keys.DIPOLE: dipole,
                ELECTROSTATIC_ENERGIES: electrostatic}
