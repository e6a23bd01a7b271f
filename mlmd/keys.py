"""Data keys: field names shared by datasets, graphs, models and calculators.

Extended-XYZ / ASE-database field names carry the ``REF_`` prefix for reference labels. Shapes use
N = atoms in a structure, B = structures in a batch, E = edges.
"""

# Reference labels stored in extxyz / ASE databases.
REF_ENERGY = "REF_energy"  # float, eV (atoms.info)
REF_FORCES = "REF_forces"  # (N, 3) eV/Å (atoms.arrays)
REF_STRESS = "REF_stress"  # (6,) Voigt or (3, 3), eV/Å³ with ASE's sign (atoms.info)
REF_CHARGES = "REF_charges"  # (N,) e (atoms.arrays)
REF_DIPOLE = "REF_dipole"  # (3,) e·Å (atoms.info)
TOTAL_CHARGE = "total_charge"  # int, e (atoms.info); 0 when absent
CONFIG_TYPE = "config_type"  # str (atoms.info)
MOL_ID = "mol_id"  # (N,) int, molecule index (atoms.arrays); -1 = unknown

REF_KEYS = (REF_ENERGY, REF_FORCES, REF_STRESS, REF_CHARGES, REF_DIPOLE)

# Model inputs / outputs (AtomicGraph fields and Potential output dict).
POSITIONS = "positions"  # (N, 3) Å
ATOMIC_NUMBERS = "atomic_numbers"  # (N,) int64
CELL = "cell"  # (B, 3, 3) Å, rows are lattice vectors
PBC = "pbc"  # (B, 3) bool
EDGE_INDEX = "edge_index"  # (2, E) int64: [centre i, neighbour j]
EDGE_CELL_SHIFTS = "edge_cell_shifts"  # (E, 3) integer lattice shifts: r_ij = pos[j] - pos[i] + shifts @ cell
BATCH = "batch"  # (N,) int64 structure index of each atom
PTR = "ptr"  # (B + 1,) int64 atom offsets

ENERGY = "energy"  # (B,) eV
ENERGIES = "energies"  # (N,) eV per atom
FORCES = "forces"  # (N, 3) eV/Å
STRESS = "stress"  # (B, 3, 3) eV/Å³, ASE sign
VIRIAL = "virial"  # (B, 3, 3) eV
CHARGES = "charges"  # (N,) e
DIPOLE = "dipole"  # (B, 3) e·Å
ENERGY_STD = "energy_std"  # (B,) eV
FORCES_STD = "forces_std"  # (N, 3) eV/Å
STRESS_STD = "stress_std"  # (B, 3, 3) eV/Å³
