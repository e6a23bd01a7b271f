"""Export the relaxed candidates of a crystal screen as CIFs in their reduced (Niggli) cells, for labelling.

    python data/carbon_feedback/export.py SCREEN_DB OUT_DIR

The carbon loop's feedback step: structures the ML potential relaxed to (including the over-dense ones it wrongly
likes) become reference data, so the next potential learns where it was wrong.
"""

import sys
from pathlib import Path

from ase.db import connect
from pymatgen.io.ase import AseAtomsAdaptor

db, out = sys.argv[1], Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
n = 0
for row in connect(db).select("candidate>=0"):
    if str(row.get("status", "")).startswith(("relaxed", "volume")):
        structure = AseAtomsAdaptor.get_structure(row.toatoms()).get_reduced_structure()
        structure.to(filename=str(out / f"relaxed_{row.candidate:04d}.cif"))
        n += 1
print(f"{n} relaxed candidates written to {out}")
