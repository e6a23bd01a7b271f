"""Units and conversion factors: the one place they live.

Inside mlmd everything is eV, Å, fs, elementary charge (e) and amu. Stress is eV/Å³ with ASE's sign
(stress = -virial / volume). Conversions to other unit systems (OpenMM: nm, kJ/mol, ps) happen only at
their boundary and use the factors below.
"""

from ase import units as _ase

# Coulomb constant k_e = 1 / (4 pi eps0) in eV·Å / e².
COULOMB_EV_A = 14.399645478425668
# Boltzmann constant in eV/K.
KB_EV_PER_K = 8.617333262e-5

# Length.
ANGSTROM_PER_NM = 10.0
NM_PER_ANGSTROM = 0.1
# Energy.
EV_PER_KJ_PER_MOL = 1.0 / 96.48533212331002
KJ_PER_MOL_PER_EV = 96.48533212331002
# Time.
FS_PER_PS = 1000.0
# Pressure.
EV_PER_A3_PER_GPA = 1.0 / 160.21766208
GPA_PER_EV_PER_A3 = 160.21766208
BAR_PER_EV_PER_A3 = 1.0e4 * 160.21766208
# Density: amu/Å³ -> g/cm³.
G_PER_CM3_PER_AMU_PER_A3 = 1.66053906660

# ASE's internal time unit expressed in fs (ASE uses Å, eV, amu, and time in sqrt(amu Å² / eV)).
ASE_FS = _ase.fs
