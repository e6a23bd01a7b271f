"""Density alignment to experiment: fine-tune only a BAMBOO model's energy head so that each liquid's
intermolecular pressure at its experimental density moves by a target shift, while energies, forces and shear
stresses stay put.

A liquid whose model density is too low has a positive pressure at the experimental density; lowering that
pressure by ΔP = P_ext − ⟨P⟩ makes the experimental density the state at which the model's liquid is at
``P_ext``. Only the energy head moves (the transformer features, charges, Coulomb and dispersion stay), and
penalties keep the change of forces, of the shear (deviatoric) stress and of anchor-frame energies small.

The pressure used is the molecular (intermolecular) virial pressure of a frame with per-atom offsets
d_i = r_i − R_COM(molecule of i) (N, 3) Å from whole molecules:

    P_mol = [tr W − Σ_i d_i · f_i] / (3 V) + N_mol k_B T / V,    W = −dE/dε (the atomic virial),

whose thermal average equals the atomic pressure's but fluctuates far less, because the intramolecular bond
forces drop out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from mlmd import keys
from mlmd.data import Sample, collate_samples
from mlmd.errors import InputError
from mlmd.units import BAR_PER_EV_PER_A3, KB_EV_PER_K


class AlignmentSettings(BaseModel):
    """Optimiser settings and the tolerances that weight each term of the loss (a term at its tolerance costs 1)."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(150, ge=1, description="optimiser steps; each sees one frame per liquid and a few anchors")
    lr: float = Field(1e-3, gt=0)
    anchors_per_step: int = Field(8, ge=0)
    pressure_tolerance_bar: float = Field(50.0, gt=0, description="scale of the miss of a liquid's target shift")
    force_tolerance_eV_A: float = Field(0.02, gt=0, description="scale of the change of each force component")
    shear_tolerance_bar: float = Field(200.0, gt=0, description="scale of the change of the deviatoric stress")
    energy_tolerance_meV_atom: float = Field(5.0, gt=0, description="scale of the change of anchor energies")
    seed: int = Field(0, ge=0)


@dataclass
class LiquidFrames:
    """Frames of one liquid at its experimental density.

    samples: periodic graphs (NVT frames share one volume, NPT frames each have their own); offsets: per frame
    d_i (N, 3) Å; n_molecules; temperature_K.
    target_shift_bar: the wanted change of the molecular pressure (the caller sets it from measured pressures).
    """

    name: str
    samples: list[Sample]
    offsets: list[np.ndarray]
    n_molecules: int
    temperature_K: float
    target_shift_bar: float = 0.0
    reference: list[dict[str, torch.Tensor]] = field(default_factory=list, repr=False)


def molecular_offsets(positions: np.ndarray, masses: np.ndarray, mol_id: np.ndarray) -> np.ndarray:
    """d_i = r_i − R_COM(molecule of i) (N, 3) for positions (N, 3) with every molecule whole."""
    total = np.bincount(mol_id, masses)
    com = np.stack([np.bincount(mol_id, masses * positions[:, k]) for k in range(3)], axis=1) / total[:, None]
    return positions - com[mol_id]


def static_molecular_pressure_bar(out: dict[str, torch.Tensor], offsets: torch.Tensor, batch: torch.Tensor,
                                  volumes: torch.Tensor) -> torch.Tensor:
    """[tr W − Σ d_i·f_i] / (3V) in bar, (B,), from a model output with forces (N, 3) and virial (B, 3, 3)."""
    trace = out[keys.VIRIAL].diagonal(dim1=1, dim2=2).sum(-1)
    intra = torch.zeros_like(trace).index_add(0, batch, (offsets * out[keys.FORCES]).sum(-1))
    return (trace - intra) / (3.0 * volumes) * BAR_PER_EV_PER_A3


def _deviatoric_bar(stress: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(3, dtype=stress.dtype, device=stress.device)
    return (stress - stress.diagonal(dim1=1, dim2=2).mean(-1)[:, None, None] * eye) * BAR_PER_EV_PER_A3


def _evaluate(model, samples: Sequence[Sample], offsets: Sequence[np.ndarray] | None, dtype: torch.dtype,
              create_graph: bool = False) -> dict[str, torch.Tensor]:
    """Energy per atom (B,), forces (N, 3), and for periodic frames the molecular pressure (B,) and the
    deviatoric stress (B, 3, 3) in bar."""
    graph, _ = collate_samples(samples, dtype=dtype)
    periodic = offsets is not None
    out = model(graph, compute_forces=True, compute_stress=periodic, create_graph=create_graph)
    n_atoms = torch.bincount(graph.batch, minlength=graph.num_graphs).to(dtype)
    result = {"energy_per_atom": out[keys.ENERGY] / n_atoms, "forces": out[keys.FORCES]}
    if periodic:
        d = torch.as_tensor(np.concatenate(offsets), dtype=dtype)
        result["pressure_bar"] = static_molecular_pressure_bar(out, d, graph.batch, graph.volumes())
        result["shear_bar"] = _deviatoric_bar(out[keys.STRESS])
    if not create_graph:
        result = {k: v.detach() for k, v in result.items()}
    return result


def _static_pressures_bar(model, liquid: LiquidFrames, dtype: torch.dtype, batch_size: int = 4) -> np.ndarray:
    """Static molecular pressure of every frame of ``liquid``, bar, (n_frames,)."""
    values = []
    for start in range(0, len(liquid.samples), batch_size):
        chunk = slice(start, start + batch_size)
        values.append(_evaluate(model, liquid.samples[chunk], liquid.offsets[chunk], dtype)["pressure_bar"])
    return torch.cat(values).double().numpy()


def molecular_pressures_bar(model, liquid: LiquidFrames, dtype: torch.dtype = torch.float32,
                            batch_size: int = 4) -> np.ndarray:
    """Molecular pressure of every frame of ``liquid`` (static part + N_mol k_B T / V), bar, (n_frames,)."""
    volumes = np.array([float(s.graph.volumes()[0]) for s in liquid.samples])
    kinetic = liquid.n_molecules * KB_EV_PER_K * liquid.temperature_K / volumes * BAR_PER_EV_PER_A3
    return _static_pressures_bar(model, liquid, dtype, batch_size) + kinetic


def _trainable_head(model) -> list[torch.nn.Parameter]:
    for p in model.parameters():
        p.requires_grad_(False)
    params = list(model.energy_head.parameters())
    for p in params:
        p.requires_grad_(True)
    return params


def align_energy_head(model, liquids: Sequence[LiquidFrames], anchors: Sequence[Sample],
                      settings: AlignmentSettings | None = None, dtype: torch.dtype = torch.float32,
                      progress: Callable[[int, int, dict[str, float]], None] | None = None,
                      anchor_model=None) -> dict[str, Any]:
    """Fine-tune ``model.energy_head`` in place so each liquid's mean molecular pressure shifts by its
    ``target_shift_bar``. Anchor energies and forces are held to ``anchor_model`` (default: ``model`` as it comes
    in; pass the original model of a multi-round alignment so the rounds cannot drift away from it). Returns the
    achieved shift per liquid and the change of anchor energies and forces from the anchor model."""
    settings = settings or AlignmentSettings()
    if getattr(model, "energy_head", None) is None:
        raise InputError(f"density alignment needs a model with an energy head (BAMBOO); got {type(model).__name__}")
    if not liquids:
        raise InputError("density alignment needs at least one liquid with frames")
    for liquid in liquids:
        if not liquid.samples:
            raise InputError(f"liquid {liquid.name!r} has no frames to align on")
        if not liquid.reference:
            liquid.reference = [_evaluate(model, [s], [d], dtype) for s, d in zip(liquid.samples, liquid.offsets)]
    anchor_reference = [_evaluate(model if anchor_model is None else anchor_model, [s], None, dtype) for s in anchors]
    params = _trainable_head(model)
    optimiser = torch.optim.Adam(params, lr=settings.lr)
    rng = np.random.default_rng(settings.seed)
    model.train()
    history = []
    try:
        for step in range(settings.steps):
            picks = [int(rng.integers(len(liq.samples))) for liq in liquids]
            out = _evaluate(model, [liq.samples[k] for liq, k in zip(liquids, picks)],
                            [liq.offsets[k] for liq, k in zip(liquids, picks)], dtype, create_graph=True)
            ref = [liq.reference[k] for liq, k in zip(liquids, picks)]
            shift = out["pressure_bar"] - torch.cat([r["pressure_bar"] for r in ref])
            target = torch.tensor([liq.target_shift_bar for liq in liquids], dtype=dtype)
            parts = {
                "pressure": (((shift - target) / settings.pressure_tolerance_bar) ** 2).mean(),
                "forces": (((out["forces"] - torch.cat([r["forces"] for r in ref])) / settings.force_tolerance_eV_A) ** 2).mean(),
                "shear": (((out["shear_bar"] - torch.cat([r["shear_bar"] for r in ref])) / settings.shear_tolerance_bar) ** 2).mean(),
            }
            if anchors and settings.anchors_per_step:
                chosen = rng.choice(len(anchors), size=min(settings.anchors_per_step, len(anchors)), replace=False)
                a_out = _evaluate(model, [anchors[k] for k in chosen], None, dtype, create_graph=True)
                a_ref = [anchor_reference[k] for k in chosen]
                d_energy = (a_out["energy_per_atom"] - torch.cat([r["energy_per_atom"] for r in a_ref])) * 1000.0
                parts["anchor_energy"] = ((d_energy / settings.energy_tolerance_meV_atom) ** 2).mean()
                d_forces = a_out["forces"] - torch.cat([r["forces"] for r in a_ref])
                parts["anchor_forces"] = ((d_forces / settings.force_tolerance_eV_A) ** 2).mean()
            loss = sum(parts.values())
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            record = {"step": step + 1, "loss": float(loss.detach())} | {k: float(v.detach()) for k, v in parts.items()}
            history.append(record)
            if progress is not None:
                progress(step + 1, settings.steps, record)
    finally:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
    return {"liquids": [_achieved(model, liq, dtype) for liq in liquids],
            "anchors": _anchor_change(model, anchors, anchor_reference, dtype), "history": history}


def _achieved(model, liquid: LiquidFrames, dtype: torch.dtype) -> dict[str, Any]:
    new = _static_pressures_bar(model, liquid, dtype)
    old = np.array([float(r["pressure_bar"][0]) for r in liquid.reference])
    return {"name": liquid.name, "target_shift_bar": liquid.target_shift_bar,
            "achieved_shift_bar": float((new - old).mean()), "n_frames": len(liquid.samples)}


def _anchor_change(model, anchors: Sequence[Sample], reference: Sequence[dict[str, torch.Tensor]],
                   dtype: torch.dtype) -> dict[str, Any]:
    if not anchors:
        return {"n_frames": 0}
    d_e, d_f = [], []
    for sample, ref in zip(anchors, reference):
        out = _evaluate(model, [sample], None, dtype)
        d_e.append(abs(float(out["energy_per_atom"][0] - ref["energy_per_atom"][0])) * 1000.0)
        d_f.append((out["forces"] - ref["forces"]).abs().mean().item() * 1000.0)
    return {"n_frames": len(anchors), "energy_change_mae_meV_per_atom": float(np.mean(d_e)),
            "force_change_mae_meV_per_A": float(np.mean(d_f))}
