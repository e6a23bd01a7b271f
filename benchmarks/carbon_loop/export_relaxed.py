"""Export the relaxed candidates of a crystal screen as CIFs in their reduced (Niggli) cells, for labelling.

    python -m benchmarks.carbon_loop.export_relaxed SCREEN_DB OUT_DIR

The carbon loop's feedback step: the structures the ML potential relaxed to (including any it wrongly likes, such as
over-dense carbon) become reference data, so the next potential learns where it was wrong.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def export_relaxed(db_path: str | Path, out_dir: str | Path) -> int:
    """Write one CIF per relaxed row of ``db_path`` (``relaxed_<candidate>.cif``); returns how many."""
    from ase.db import connect
    from pymatgen.io.ase import AseAtomsAdaptor

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = 0
    for row in connect(str(db_path)).select("candidate>=0"):
        if str(row.get("status", "")).startswith(("relaxed", "volume")):
            structure = AseAtomsAdaptor.get_structure(row.toatoms()).get_reduced_structure()
            structure.to(filename=str(out_dir / f"relaxed_{row.candidate:04d}.cif"))
            n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("db")
    parser.add_argument("out_dir")
    args = parser.parse_args()
    print(f"{export_relaxed(args.db, args.out_dir)} relaxed candidates written to {args.out_dir}")


if __name__ == "__main__":
    main()
