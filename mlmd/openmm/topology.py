"""OpenMM / mdtraj topologies from the ASE boxes mlmd builds, and back.

One residue per molecule (the per-atom ``mol_id`` array; connected components of the bond graph when it is
absent), one chain, elements from the atomic numbers, bonds from covalent radii (only inside a molecule when
``mol_id`` is known; alkali and alkaline-earth ions never bond when it is not). Residue names come from
``atoms.info['composition']`` ("EC:13 DMC:11 Li:2 PF6:2", as written by ``workflows.boxes.build_box``) when it
matches the molecules, else ``MOL``. Atom names are the element symbol plus a running number per residue.

Units: ASE positions and cells are Å; OpenMM's are nm. Periodic boxes are put in OpenMM's reduced form
(a along x, b in the xy plane, |b_x| <= a_x/2, ...), which rotates a general triclinic cell: use
:func:`openmm_positions` for positions consistent with :func:`topology_from_atoms`'s box.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols, covalent_radii

from mlmd import keys
from mlmd.errors import InputError
from mlmd.units import ANGSTROM_PER_NM, NM_PER_ANGSTROM

BOND_TOLERANCE = 1.2  # bonded when d < BOND_TOLERANCE * (r_cov,i + r_cov,j)
_IONIC = {3, 4, 11, 12, 19, 20, 37, 38, 55, 56}  # Li Be Na Mg K Ca Rb Sr Cs Ba: ions, never covalently bonded
DEFAULT_RESIDUE = "MOL"


def reduced_box(atoms: Atoms) -> tuple[np.ndarray, np.ndarray]:
    """(cell (3, 3) Å in OpenMM's reduced lower-triangular form, rotation R (3, 3)) with positions @ R.T rotated.

    Raises InputError for a structure that is periodic in only some directions (OpenMM has no such boxes).
    """
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if not pbc.all():
        raise InputError(f"pbc={pbc.tolist()}: OpenMM boxes are periodic in all three directions or none; "
                         "set pbc=True with a full cell, or pbc=False")
    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    if abs(np.linalg.det(cell)) < 1e-6:
        raise InputError("the periodic cell has zero volume; give three independent lattice vectors")
    standard, op = atoms.cell.standard_form()  # lower triangular, same handedness; standard = cell @ op.T
    a, b, c = (np.array(v, dtype=np.float64) for v in np.asarray(standard))
    # OpenMM's reduced form: |b_x| <= a_x/2, |c_x| <= a_x/2, |c_y| <= b_y/2 (same lattice, other basis).
    c = c - b * round(c[1] / b[1])
    c = c - a * round(c[0] / a[0])
    b = b - a * round(b[0] / a[0])
    return np.array([a, b, c]), np.asarray(op, dtype=np.float64)


def openmm_positions(atoms: Atoms) -> np.ndarray:
    """(N, 3) positions in nm, rotated into the frame of :func:`reduced_box` for periodic structures."""
    positions = np.asarray(atoms.positions, dtype=np.float64)
    if np.asarray(atoms.pbc).any():
        _, op = reduced_box(atoms)
        positions = positions @ op.T
    return positions * NM_PER_ANGSTROM


def covalent_bonds(atoms: Atoms, mol_id: np.ndarray | None) -> list[tuple[int, int]]:
    """Sorted pairs (i < j) closer than BOND_TOLERANCE x the covalent-radius sum (minimum image): only inside a
    molecule when ``mol_id`` is given, else between any atoms but the _IONIC ones."""
    from mlmd.neighbors import neighbor_list

    numbers = atoms.numbers
    if len(atoms) < 2:
        return []
    radii = covalent_radii[numbers]
    cutoff = BOND_TOLERANCE * 2 * float(radii.max())
    pbc = np.asarray(atoms.pbc, dtype=bool)
    i, j, shifts = neighbor_list(atoms.positions, np.asarray(atoms.cell.array), pbc, cutoff, full=False)
    if len(i) == 0:
        return []
    vectors = atoms.positions[j] - atoms.positions[i] + shifts @ np.asarray(atoms.cell.array)
    d = np.linalg.norm(vectors, axis=1)
    keep = (i != j) & (d < BOND_TOLERANCE * (radii[i] + radii[j]))
    if mol_id is not None:
        keep &= mol_id[i] == mol_id[j]
    else:
        ionic = np.isin(numbers, list(_IONIC))
        keep &= ~(ionic[i] | ionic[j])
    pairs = {(int(min(a, b)), int(max(a, b))) for a, b in zip(i[keep], j[keep])}
    return sorted(pairs)


def bond_components(n: int, bonds: Sequence[tuple[int, int]]) -> np.ndarray:
    """(n,) label of each atom's connected component of the bond graph."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in bonds:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([find(k) for k in range(n)])
    _, labels = np.unique(roots, return_inverse=True)  # numbered in order of first appearance of the root
    return labels.astype(np.int64)


def _residue_names(atoms: Atoms, order: list[int]) -> dict[int, str]:
    """Residue name per molecule id from ``info['composition']`` when its counts match, else DEFAULT_RESIDUE."""
    names = {m: DEFAULT_RESIDUE for m in order}
    text = atoms.info.get("composition")
    if not isinstance(text, str):
        return names
    try:
        parts = [(name, int(count)) for name, count in (item.rsplit(":", 1) for item in text.split())]
    except ValueError:
        return names
    if sum(n for _, n in parts) != len(order):
        return names
    k = 0
    for name, count in parts:
        for _ in range(count):
            names[order[k]] = name.upper()[:4]
            k += 1
    return names


def topology_from_atoms(atoms: Atoms, residue_names: Sequence[str] | None = None):
    """An ``openmm.app.Topology`` for ``atoms``: residues = molecules, elements, bonds, periodic box (nm).

    ``residue_names``: one name per molecule in order of first appearance (overrides the composition).
    """
    from openmm import Vec3
    from openmm.app import Element, Topology
    from openmm.unit import nanometer

    if len(atoms) == 0:
        raise InputError("structure has no atoms; give a structure with at least one atom")
    mol_id = atoms.arrays.get(keys.MOL_ID)
    mol_id = None if mol_id is None else np.asarray(mol_id, dtype=np.int64)
    bonds = covalent_bonds(atoms, mol_id)
    if mol_id is None:
        mol_id = bond_components(len(atoms), bonds)
    order = list(dict.fromkeys(mol_id.tolist()))  # molecules in order of first appearance
    names = _residue_names(atoms, order)
    if residue_names is not None:
        if len(residue_names) != len(order):
            raise InputError(f"{len(residue_names)} residue names given for {len(order)} molecules; give one per molecule")
        names = dict(zip(order, residue_names))
    top = Topology()
    chain = top.addChain()
    residues = {}
    counters: dict[int, dict[str, int]] = {}
    atom_objs = []
    for k, z in enumerate(atoms.numbers):
        m = int(mol_id[k])
        if m not in residues:
            residues[m] = top.addResidue(names[m], chain, id=str(len(residues) + 1))
            counters[m] = {}
        symbol = chemical_symbols[int(z)]
        counters[m][symbol] = counters[m].get(symbol, 0) + 1
        atom_objs.append(top.addAtom(f"{symbol}{counters[m][symbol]}", Element.getByAtomicNumber(int(z)), residues[m]))
    for a, b in bonds:
        top.addBond(atom_objs[a], atom_objs[b])
    if np.asarray(atoms.pbc).any():
        box, _ = reduced_box(atoms)
        top.setPeriodicBoxVectors([Vec3(*(row * NM_PER_ANGSTROM)) for row in box] * nanometer)
    return top


def mdtraj_topology(atoms: Atoms, residue_names: Sequence[str] | None = None):
    """The same topology as an ``mdtraj.Topology``."""
    import mdtraj

    return mdtraj.Topology.from_openmm(topology_from_atoms(atoms, residue_names))


def atoms_from_topology(topology, positions=None, box_vectors=None) -> Atoms:
    """ASE Atoms from an OpenMM (or mdtraj) topology: numbers, ``mol_id`` = residue index, pbc from the box.

    ``positions`` (N, 3) nm (an OpenMM Quantity or plain numbers); ``box_vectors`` (3, 3) nm, default the
    topology's. Atoms without an element (virtual sites) are rejected.
    """
    from openmm import unit

    if hasattr(topology, "to_openmm"):  # mdtraj
        topology = topology.to_openmm()
    numbers, mol_id = [], []
    for atom in topology.atoms():
        if atom.element is None:
            raise InputError(f"atom {atom.index} ({atom.name} in residue {atom.residue.name} {atom.residue.id}) has no "
                             "element; only real atoms can become ASE atoms")
        numbers.append(atom.element.atomic_number)
        mol_id.append(atom.residue.index)
    if positions is None:
        xyz = np.zeros((len(numbers), 3))
    else:
        if unit.is_quantity(positions):
            positions = positions.value_in_unit(unit.nanometer)
        xyz = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
        if len(xyz) != len(numbers):
            raise InputError(f"{len(xyz)} positions for a topology of {len(numbers)} atoms; give one position per atom")
    if box_vectors is None:
        box_vectors = topology.getPeriodicBoxVectors()
    atoms = Atoms(numbers=numbers, positions=xyz * ANGSTROM_PER_NM)
    if box_vectors is not None:
        if unit.is_quantity(box_vectors):
            box_vectors = box_vectors.value_in_unit(unit.nanometer)
        atoms.set_cell(np.asarray(box_vectors, dtype=np.float64).reshape(3, 3) * ANGSTROM_PER_NM)
        atoms.pbc = True
    atoms.arrays[keys.MOL_ID] = np.asarray(mol_id, dtype=np.int64)
    charges = [atom.formalCharge for atom in topology.atoms()]
    if all(q is not None for q in charges):
        atoms.info[keys.TOTAL_CHARGE] = int(sum(charges))
    return atoms
