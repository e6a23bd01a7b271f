"""The Potential contract: an AtomicGraph in, a dict of energy/forces/stress/charges out.

Subclasses implement :meth:`Potential.compute_energy` as a pure function of (positions, cell); this base class
derives forces (-dE/dr) and stress (strain derivative) by autograd, so every model gets them the same way.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from mlmd import keys
from mlmd.graph import AtomicGraph


class Potential(nn.Module):
    """Base class of mlmd potentials.

    Subclasses set ``model_type`` (the entry-point name in the ``mlmd.potentials`` group), keep their
    configuration in ``self.config`` (JSON-serialisable dict) and implement ``compute_energy``.
    """

    model_type: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__()
        self.config: dict[str, Any] = {}

    # -- metadata -----------------------------------------------------------------------------------------
    @property
    def species(self) -> list[int]:
        return list(self.config["species"])

    @property
    def cutoff(self) -> float:
        return float(self.config["cutoff"])

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Potential":
        return cls(config)

    # -- physics ------------------------------------------------------------------------------------------
    def compute_energy(self, graph: AtomicGraph, positions: torch.Tensor, cell: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return at least ``energy`` (B,) in eV for the given (possibly strained) positions (N, 3) and cell (B, 3, 3).

        May add ``energies`` (N,), ``charges`` (N,), ``dipole`` (B, 3). Must not modify its inputs in place.
        """
        raise NotImplementedError

    def forward(
        self,
        graph: AtomicGraph,
        compute_forces: bool = True,
        compute_stress: bool = False,
        create_graph: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Energy (B,), forces (N, 3) = -dE/dr, stress (B, 3, 3) = (1/V) dE/d(strain), virial (B, 3, 3) = -dE/d(strain).

        ``create_graph=True`` keeps the graph of the derivatives (needed when forces enter a training loss).
        """
        positions = graph.positions
        cell = graph.cell
        inputs = []
        if compute_forces or compute_stress:
            positions = positions.detach().requires_grad_(True)
            inputs.append(positions)
        if compute_stress:
            strain = torch.zeros_like(cell, requires_grad=True)
            symmetric = 0.5 * (strain + strain.transpose(1, 2))
            positions_used = positions + torch.einsum("ni,nij->nj", positions, symmetric[graph.batch])
            cell_used = cell + torch.bmm(cell, symmetric)
            inputs.append(strain)
        else:
            positions_used, cell_used = positions, cell
        with torch.enable_grad():
            out = self.compute_energy(graph, positions_used, cell_used)
            if inputs:
                grads = torch.autograd.grad(
                    out[keys.ENERGY].sum(), inputs, create_graph=create_graph or self.training, allow_unused=True
                )
        if compute_forces:
            out[keys.FORCES] = -grads[0] if grads[0] is not None else torch.zeros_like(positions)
        if compute_stress:
            de_dstrain = grads[-1] if grads[-1] is not None else torch.zeros_like(cell)
            volume = torch.linalg.det(cell).abs().clamp_min(1e-12)
            out[keys.VIRIAL] = -de_dstrain
            out[keys.STRESS] = de_dstrain / volume[:, None, None]
        return out
