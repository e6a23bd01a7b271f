"""Sampling API: ``sample_crystals(model, n=None, compositions=None, steps=10, seed=0) -> list[Structure]``."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from mlmd.errors import InputError, UnknownElementError

from .models import CrystalGenerator


def _as_model(model) -> CrystalGenerator:
    if isinstance(model, CrystalGenerator):
        return model
    if isinstance(model, (str, os.PathLike)):
        from .checkpoint import load_generator

        return load_generator(model)
    raise InputError(f"model {model!r} is neither a generator nor a checkpoint name/path")


def composition_to_numbers(composition, model: CrystalGenerator) -> list[int]:
    """Formula (``"SrTiO3"``), pymatgen Composition or dict -> atomic numbers of the cell, checked against the model."""
    from pymatgen.core import Composition, Element

    try:
        comp = Composition(composition)
    except Exception:  # noqa: BLE001
        raise InputError(f"composition {str(composition)!r} is not a chemical formula (e.g. SrTiO3)") from None
    if len(comp) == 0:
        raise InputError(f"composition {str(composition)!r} is empty")
    numbers: list[int] = []
    for el, amt in comp.items():
        if abs(amt - round(amt)) > 1e-6 or round(amt) <= 0:
            raise InputError(f"composition {str(composition)!r} has non-integer amount {amt} of {el}")
        z = Element(str(el)).Z
        if z not in model.vocab_index:
            allowed = " ".join(Element.from_Z(x).symbol for x in model.species)
            raise UnknownElementError(f"element {el} in {str(composition)!r} is not in the model's vocabulary ({allowed})")
        numbers += [z] * int(round(amt))
    if len(numbers) > model.max_atoms:
        raise InputError(f"composition {str(composition)!r} has {len(numbers)} atoms; the model supports at most {model.max_atoms}")
    return numbers


def sample_crystals(model, n: int | None = None, compositions: Sequence | None = None, steps: int | None = 10, seed: int = 0,
                    batch_size: int = 1000) -> list:
    """Generate crystals as pymatgen Structures.

    - ``gen`` models: ``n`` crystals from scratch (atom counts drawn from the training distribution).
    - ``csp`` models: one structure per entry of ``compositions`` (formula strings, Compositions or dicts), same order.
    ``steps`` is the number of Bayesian-flow steps (= network calls) for CrysBFN; a diffusion model only samples with
    its trained number of timesteps (``steps=None`` selects it).
    """
    from pymatgen.core import Lattice, Structure

    model = _as_model(model)
    if steps is not None and (not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps <= 0):
        raise InputError(f"steps={steps!r} must be a positive integer")
    if model.method == "crysbfn" and steps is None:
        steps = model.config.bfn_steps
    g = torch.Generator().manual_seed(int(seed))
    if model.task == "csp":
        if compositions is None:
            raise InputError("a structure-prediction (csp) model needs compositions; give compositions=[...] or use a gen model")
        numbers = [composition_to_numbers(c, model) for c in compositions]
        n_atoms = torch.tensor([len(x) for x in numbers])
    else:
        if compositions is not None:
            raise InputError("a generation (gen) model does not take compositions; use a csp model for structure prediction")
        if n is None or not isinstance(n, (int, np.integer)) or n <= 0:
            raise InputError(f"n={n!r} must be a positive integer number of crystals")
        numbers = None
        n_atoms = model.sample_n_atoms(int(n), g)
    model.eval()
    out: list = []
    for k in range(0, len(n_atoms), batch_size):
        na = n_atoms[k:k + batch_size]
        types = None
        if numbers is not None:
            types = torch.tensor([model.vocab_index[z] for nums in numbers[k:k + batch_size] for z in nums])
        frac, lat, ty = model.sample(na, types, steps, g)
        frac, lat, ty = frac.double().numpy(), lat.double().numpy(), ty.numpy()
        start = 0
        for b, cnt in enumerate(na.tolist()):
            species = [model.species[int(t)] for t in ty[start:start + cnt]]
            out.append(Structure(Lattice(lat[b]), species, frac[start:start + cnt]))
            start += cnt
    return out
