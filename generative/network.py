"""CSPNet-style periodic network shared by CrysBFN and the diffusion baseline.

Fully connected message passing within each crystal. Edge features use only quantities that are invariant to
atom permutation, to the choice of cell origin and to rotations: the Gram matrix ``L Lᵀ`` of the lattice rows and
Fourier features of fractional-coordinate differences ``f_j − f_i``. Outputs:

- ``coord [n, 3]``: invariant per-atom vectors in fractional units (a shift or a score);
- ``lattice [B, 3, 3]``: ``W @ L`` with ``W`` predicted from pooled invariant features, so rotating the input
  lattice rows (``L → L Rᵀ``) rotates the output the same way (O(3)-equivariant);
- ``types [n, K]``: per-atom logits.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def fully_connected_edges(batch: torch.Tensor, n_crystals: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All ordered pairs (i, j), self pairs included, within each crystal. ``batch [n]`` sorted -> ``src, dst [E]``."""
    counts = torch.bincount(batch, minlength=n_crystals or 0)
    ptr = torch.cumsum(counts, 0) - counts
    sq = counts * counts
    crystal_of_edge = torch.repeat_interleave(torch.arange(len(counts)), sq)
    edge_ptr = torch.cumsum(sq, 0) - sq
    local = torch.arange(int(sq.sum())) - edge_ptr[crystal_of_edge]
    n = counts[crystal_of_edge]
    src = ptr[crystal_of_edge] + torch.div(local, n, rounding_mode="floor")
    dst = ptr[crystal_of_edge] + local % n
    return src, dst


def scatter_mean(x: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    out = torch.zeros(size, x.shape[-1], dtype=x.dtype).index_add_(0, index, x)
    cnt = torch.zeros(size, dtype=x.dtype).index_add_(0, index, torch.ones_like(index, dtype=x.dtype))
    return out / cnt.clamp(min=1).unsqueeze(-1)


class FourierFeatures(nn.Module):
    """``d [E, 3]`` fractional differences -> ``[E, 6 * n_freq]`` sin/cos of 2πk·d, k = 1..n_freq (periodic in d)."""

    def __init__(self, n_freq: int):
        super().__init__()
        self.register_buffer("k", 2 * math.pi * torch.arange(1, n_freq + 1, dtype=torch.float32), persistent=False)

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        x = d.unsqueeze(-1) * self.k.to(d.dtype)  # [E, 3, F]
        return torch.cat([torch.sin(x), torch.cos(x)], dim=-1).flatten(1)


class TimeEmbedding(nn.Module):
    """``t [B]`` in [0, 1] -> sinusoidal ``[B, dim]``."""

    def __init__(self, dim: int):
        super().__init__()
        half = dim // 2
        self.register_buffer("freqs", torch.exp(-math.log(1000.0) * torch.arange(half) / max(half - 1, 1)), persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        x = 1000.0 * t.unsqueeze(-1) * self.freqs.to(t.dtype)
        return torch.cat([torch.sin(x), torch.cos(x)], dim=-1)


class CSPLayer(nn.Module):
    """h_i += φ_h(h_i, mean_j φ_m(h_i, h_j, e_ij)); the first linear map of φ_m is split into node and edge parts."""

    def __init__(self, hidden: int, n_edge: int):
        super().__init__()
        self.w_src = nn.Linear(hidden, hidden)
        self.w_dst = nn.Linear(hidden, hidden, bias=False)
        self.w_edge = nn.Linear(n_edge, hidden, bias=False)
        self.edge_out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.node_mlp = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.norm = nn.LayerNorm(hidden)

    def forward(self, h, e, src, dst):
        hn = self.norm(h)
        m = self.edge_out(self.w_src(hn)[src] + self.w_dst(hn)[dst] + self.w_edge(e))
        agg = scatter_mean(m, src, h.shape[0])
        return h + self.node_mlp(torch.cat([hn, agg], dim=-1))


class CSPNet(nn.Module):
    """Periodic GNN.

    forward(frac [n,3], lattice [B,3,3], type_feat [n,K], node_cond [n,C], t [B], batch [n])
    -> coord [n,3], lattice [B,3,3], type_logits [n,K]
    """

    def __init__(self, n_types: int, hidden: int = 128, layers: int = 4, n_freq: int = 16, node_cond_dim: int = 3, time_dim: int = 64):
        super().__init__()
        self.n_types = n_types
        self.type_in = nn.Linear(n_types, hidden)
        self.cond_in = nn.Linear(node_cond_dim + time_dim, hidden)
        self.time_emb = TimeEmbedding(time_dim)
        self.ff = FourierFeatures(n_freq)
        self.layers = nn.ModuleList([CSPLayer(hidden, 9 + 6 * n_freq) for _ in range(layers)])
        self.out_norm = nn.LayerNorm(hidden)
        self.coord_out = nn.Linear(hidden, 3, bias=False)
        self.lattice_out = nn.Linear(hidden, 9, bias=False)
        self.type_out = nn.Linear(hidden, n_types)
        self.n_calls = 0  # network evaluations since the counter was last reset

    def forward(self, frac, lattice, type_feat, node_cond, t, batch):
        self.n_calls += 1
        n_crystals = lattice.shape[0]
        src, dst = fully_connected_edges(batch, n_crystals)
        gram = (lattice @ lattice.transpose(1, 2)).flatten(1)  # [B, 9], invariant to L -> L R^T
        temb = self.time_emb(t)[batch]
        h = self.type_in(type_feat) + self.cond_in(torch.cat([node_cond, temb], dim=-1))
        e = torch.cat([gram[batch[src]], self.ff(frac[dst] - frac[src])], dim=-1)
        for layer in self.layers:
            h = layer(h, e, src, dst)
        h = self.out_norm(h)
        pooled = scatter_mean(h, batch, n_crystals)
        w = self.lattice_out(pooled).view(-1, 3, 3)
        return self.coord_out(h), w @ lattice, self.type_out(h)
