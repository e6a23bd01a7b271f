"""Estimators for electrolyte screening: statistics, transport, viscosity, solvation structure, plots.

Plain functions on NumPy arrays in mlmd units (Å, fs, eV, e, amu, K); results are small dataclasses.
Submodules: :mod:`.statistics`, :mod:`.transport`, :mod:`.viscosity`, :mod:`.structure`, :mod:`.plots`.
Importing this package imports NumPy/SciPy only (mdtraj and matplotlib load with their submodules).
"""
