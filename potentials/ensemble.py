"""Ensembles of potentials (deep ensembles or posterior samples): the mean prediction plus its spread.

Output: energy (B,), forces (N, 3), stress (B, 3, 3), charges (N,) as member means, and energy_std (B,),
forces_std (N, 3), stress_std (B, 3, 3) as member standard deviations (ddof=0), scaled by ``calibration``
(a factor alpha fitted on validation data so that the spread matches the observed error).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from mlmd import keys
from mlmd.errors import InputError
from mlmd.graph import AtomicGraph
from mlmd.potential import Potential
from mlmd.registry import model_class

_SPREAD = {keys.ENERGY: keys.ENERGY_STD, keys.FORCES: keys.FORCES_STD, keys.STRESS: keys.STRESS_STD}


class EnsemblePotential(Potential):
    """Members of one model type sharing species and cutoff. Config: {"member_type", "members": [configs], "calibration"}."""

    model_type = "ensemble"

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        configs = config.get("members") or []
        if len(configs) < 2:
            raise InputError(f"an ensemble needs at least 2 members, got {len(configs)}")
        cls = model_class(config["member_type"])
        self.members = nn.ModuleList(cls.from_config(c) for c in configs)
        species = {tuple(m.species) for m in self.members}
        cutoffs = {m.cutoff for m in self.members}
        if len(species) != 1 or len(cutoffs) != 1:
            raise InputError("ensemble members must share species and cutoff")
        self.config = {"member_type": config["member_type"], "members": [m.config for m in self.members],
                       "calibration": float(config.get("calibration", 1.0)),
                       "species": list(species.pop()), "cutoff": cutoffs.pop()}

    @classmethod
    def from_members(cls, members: Sequence[Potential], calibration: float = 1.0) -> "EnsemblePotential":
        ensemble = cls({"member_type": members[0].model_type, "members": [m.config for m in members],
                        "calibration": calibration})
        for target, source in zip(ensemble.members, members):
            target.load_state_dict(source.state_dict())
        return ensemble

    def forward(self, graph: AtomicGraph, compute_forces: bool = True, compute_stress: bool = False,
                create_graph: bool = False) -> dict[str, torch.Tensor]:
        outputs = [m(graph, compute_forces=compute_forces, compute_stress=compute_stress, create_graph=create_graph)
                   for m in self.members]
        result: dict[str, torch.Tensor] = {}
        alpha = self.config["calibration"]
        for key in outputs[0]:
            stacked = torch.stack([o[key] for o in outputs])
            result[key] = stacked.mean(dim=0)
            if key in _SPREAD:
                result[_SPREAD[key]] = alpha * stacked.std(dim=0, unbiased=False)
        return result
