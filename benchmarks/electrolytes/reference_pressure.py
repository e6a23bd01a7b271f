"""Is a density error the model's or its reference's? Static pressure of the model and of GFN2-xTB on the same boxes.

    .venv/bin/python -m benchmarks.electrolytes.reference_pressure [--runs runs/benchmarks/electrolytes] [--threads 1]

For every finished solvent of the density benchmark (``density-quick.db`` or ``density.db`` in ``--runs``), two
periodic boxes: the minimised box at the packing density (1.0 g/cm³) and the final NPT frame at the model's own
density. On each, the static (virial) pressure -tr(σ)/3 of the model and of GFN2-xTB (tblite, Gamma point; the
boxes are at least 12 Å wide) and their energy difference between the two boxes. If GFN2-xTB also finds a large
positive pressure at the packing density and a lower energy in the expanded box, the low density is inherited
from the reference method, not a fitting error; the model was trained on clusters only, never on virials.
Writes ``reference_pressure.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.electrolytes.common import write_json

EV_PER_A3_TO_BAR = 1.602176634e6


def static_pressure_bar(atoms, calc) -> tuple[float, float]:
    """(static pressure in bar, energy in eV) of ``atoms`` with ``calc`` (no kinetic term)."""
    atoms = atoms.copy()
    atoms.calc = calc
    stress = atoms.get_stress(voigt=True)
    return float(-stress[:3].mean() * EV_PER_A3_TO_BAR), float(atoms.get_potential_energy())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.electrolytes.reference_pressure",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=Path, default=Path("runs/benchmarks/electrolytes"))
    ap.add_argument("--model", default="bamboo-electrolyte")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import torch
    from ase.io import read
    from tblite.ase import TBLite

    from mlmd.calculator import MLMDCalculator
    from workflows.screening.report import load_rows

    torch.set_num_threads(args.threads)
    db = next((args.runs / name for name in ("density.db", "density-quick.db") if (args.runs / name).is_file()), None)
    if db is None:
        print(f"error: no density benchmark database in {args.runs}; run benchmarks.electrolytes.density first",
              file=sys.stderr)
        return 2
    import ase.db

    model = MLMDCalculator(args.model)
    reference = TBLite(method="GFN2-xTB", verbosity=0)
    rows = []
    connection = ase.db.connect(str(db))
    for data in load_rows(str(db)):
        folder = Path(data.get("_data", {}).get("folder", ""))
        minimised = folder / "minimise" / "minimised.extxyz"
        if data.get("status") != "done" or not minimised.is_file():
            continue
        boxes = {"packed": read(minimised, -1), "npt_final": connection.get(id=data["_id"]).toatoms()}
        entry = {"solvent": data["formulation"].removeprefix("density-")}
        for name, atoms in boxes.items():
            p_model, e_model = static_pressure_bar(atoms, model)
            p_ref, e_ref = static_pressure_bar(atoms, reference)
            density = float(atoms.get_masses().sum() / atoms.get_volume() * 1.66053906660)
            entry[name] = {"density_g_cm3": density, "model_bar": p_model, "gfn2_xtb_bar": p_ref,
                           "model_energy_eV": e_model, "gfn2_xtb_energy_eV": e_ref}
        n = len(boxes["packed"])
        for who in ("model", "gfn2_xtb"):
            key = f"{who}_energy_eV"
            entry[f"{who}_expansion_energy_meV_per_atom"] = \
                1000 * (entry["npt_final"][key] - entry["packed"][key]) / n
        rows.append(entry)
        print(f"{entry['solvent']:>4}: packed {entry['packed']['density_g_cm3']:.3f} g/cm³ P model "
              f"{entry['packed']['model_bar']:8.0f} bar, xTB {entry['packed']['gfn2_xtb_bar']:8.0f} bar | NPT "
              f"{entry['npt_final']['density_g_cm3']:.3f} g/cm³ P model {entry['npt_final']['model_bar']:8.0f}, xTB "
              f"{entry['npt_final']['gfn2_xtb_bar']:8.0f} | E(NPT) - E(packed) model "
              f"{entry['model_expansion_energy_meV_per_atom']:+.1f}, xTB "
              f"{entry['gfn2_xtb_expansion_energy_meV_per_atom']:+.1f} meV/atom", flush=True)
    write_json(args.runs / "reference_pressure.json", {"database": str(db), "model": args.model, "solvents": rows})
    print(f"reference pressure: {args.runs / 'reference_pressure.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
