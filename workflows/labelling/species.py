"""Species registry: electrolyte solvents and ions by name, or any molecule by SMILES.

A :class:`Species` carries a name, a canonical SMILES and its formal charge. :func:`resolve_species` turns a
user string (a registered name such as ``"EC"`` or ``"PF6"``, or a SMILES string) into one, checking that every
element lies in the electrolyte scope. :func:`molecule_atoms` builds a 3D geometry (RDKit ETKDG + MMFF, or a
fixed template for ions ETKDG cannot place, such as octahedral PF6-).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from ase import Atoms

from mlmd.errors import InputError, UnknownElementError

#: Elements of the electrolyte scope.
ALLOWED_ELEMENTS = ("H", "Li", "B", "C", "N", "O", "F", "P", "S")

#: Registered solvents: name -> SMILES.
SOLVENTS: dict[str, str] = {
    "EC": "C1COC(=O)O1",
    "PC": "CC1COC(=O)O1",
    "DMC": "COC(=O)OC",
    "EMC": "CCOC(=O)OC",
    "DEC": "CCOC(=O)OCC",
    "FEC": "O=C1OCC(F)O1",
    "VC": "O=C1OC=CO1",
    "DME": "COCCOC",
    "DOL": "C1COCO1",
}

#: Registered ions: name -> SMILES.
IONS: dict[str, str] = {
    "Li": "[Li+]",
    "PF6": "F[P-](F)(F)(F)(F)F",
    "BF4": "F[B-](F)(F)F",
    "FSI": "[N-](S(=O)(=O)F)S(=O)(=O)F",
    "TFSI": "[N-](S(=O)(=O)C(F)(F)F)S(=O)(=O)C(F)(F)F",
}

#: Registered salts: name -> (cation, anion).
SALTS: dict[str, tuple[str, str]] = {
    "LiPF6": ("Li", "PF6"),
    "LiBF4": ("Li", "BF4"),
    "LiFSI": ("Li", "FSI"),
    "LiTFSI": ("Li", "TFSI"),
}


@dataclass(frozen=True)
class Species:
    """One molecule or ion.

    name:   registered name, or the canonical SMILES for unregistered molecules
    smiles: canonical SMILES (RDKit)
    charge: formal charge in e
    """

    name: str
    smiles: str
    charge: int

    @property
    def label(self) -> str:
        return self.name


def _mol_from_smiles(smiles: str):
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    try:
        mol = Chem.MolFromSmiles(smiles) if smiles.strip() else None
    finally:
        RDLogger.EnableLog("rdApp.*")
    return mol


def _check_elements(mol, text: str) -> None:
    bad = sorted({a.GetSymbol() for a in mol.GetAtoms()} - set(ALLOWED_ELEMENTS))
    if bad:
        raise UnknownElementError(
            f"species '{text}' contains element(s) {', '.join(bad)}; accepted elements: {' '.join(ALLOWED_ELEMENTS)}"
        )


def _lookup(table: dict, name: str) -> str | None:
    for key in table:
        if key.lower() == name.lower():
            return key
    return None


def registered_names() -> list[str]:
    return [*SOLVENTS, *IONS]


@functools.lru_cache(maxsize=None)
def resolve_species(text: str) -> Species:
    """Resolve a registered name (case-insensitive) or a SMILES string to a :class:`Species`.

    Raises InputError for an unknown name / invalid SMILES, UnknownElementError for elements outside the scope.
    """
    from rdkit import Chem

    if not isinstance(text, str) or not text.strip():
        raise InputError(f"species {text!r} is empty; accepted: {', '.join(registered_names())} or a SMILES string")
    text = text.strip()
    for table in (SOLVENTS, IONS):
        key = _lookup(table, text)
        if key is not None:
            mol = _mol_from_smiles(table[key])
            return Species(key, Chem.MolToSmiles(mol), Chem.GetFormalCharge(mol))
    mol = _mol_from_smiles(text)
    if mol is None:
        raise InputError(
            f"unknown species or invalid SMILES '{text}'; accepted: {', '.join(registered_names())} or a valid SMILES string"
        )
    _check_elements(mol, text)
    if len(Chem.GetMolFrags(mol)) != 1:
        raise InputError(f"SMILES '{text}' holds more than one molecule; give one molecule per species")
    smiles = Chem.MolToSmiles(mol)
    # A SMILES that spells a registered species gets its name.
    for table in (SOLVENTS, IONS):
        for key, smi in table.items():
            if Chem.MolToSmiles(_mol_from_smiles(smi)) == smiles:
                return Species(key, smiles, Chem.GetFormalCharge(mol))
    return Species(smiles, smiles, Chem.GetFormalCharge(mol))


def resolve_salt(text: str) -> tuple[Species, Species]:
    """Resolve a salt name (LiPF6, LiBF4, LiFSI, LiTFSI; case-insensitive) to (cation, anion)."""
    key = _lookup(SALTS, text.strip()) if isinstance(text, str) else None
    if key is None:
        raise InputError(f"unknown salt '{text}'; accepted: {', '.join(SALTS)}")
    cation, anion = SALTS[key]
    return resolve_species(cation), resolve_species(anion)


# Fixed templates for ions whose geometry ETKDG gets wrong (hypervalent centres).
def _octahedral(center: str, ligand: str, r: float) -> Atoms:
    d = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float)
    return Atoms(center + ligand * 6, np.vstack([[0, 0, 0], r * d]))


def _tetrahedral(center: str, ligand: str, r: float) -> Atoms:
    d = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], float) / np.sqrt(3)
    return Atoms(center + ligand * 4, np.vstack([[0, 0, 0], r * d]))


_TEMPLATES = {
    "[Li+]": lambda: Atoms("Li", [[0.0, 0.0, 0.0]]),
    "F[P-](F)(F)(F)(F)F": lambda: _octahedral("P", "F", 1.62),
    "F[B-](F)(F)F": lambda: _tetrahedral("B", "F", 1.41),
}


@functools.lru_cache(maxsize=256)
def _conformers(smiles: str, n: int, seed: int) -> tuple[tuple[tuple[str, ...], np.ndarray], ...]:
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(_mol_from_smiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    cids = list(AllChem.EmbedMultipleConfs(mol, numConfs=n, params=params))
    if not cids:
        params.useRandomCoords = True
        cids = list(AllChem.EmbedMultipleConfs(mol, numConfs=n, params=params))
    if not cids:
        raise InputError(f"could not embed a 3D structure for SMILES '{smiles}'; give a simpler molecule")
    try:
        if AllChem.MMFFHasAllMoleculeParams(mol):
            AllChem.MMFFOptimizeMoleculeConfs(mol, maxIters=500)
        else:
            AllChem.UFFOptimizeMoleculeConfs(mol, maxIters=500)
    except Exception:  # keep the ETKDG geometry
        pass
    symbols = tuple(a.GetSymbol() for a in mol.GetAtoms())
    return tuple((symbols, mol.GetConformer(c).GetPositions().copy()) for c in cids)


def molecule_atoms(species: Species, rng: np.random.Generator | None = None, n_conformers: int = 4) -> Atoms:
    """A 3D geometry of ``species`` (centred at its centre of mass); a random one of a few conformers."""
    if species.smiles in _TEMPLATES:
        atoms = _TEMPLATES[species.smiles]()
    else:
        confs = _conformers(species.smiles, n_conformers, 42)
        k = 0 if rng is None else int(rng.integers(len(confs)))
        symbols, pos = confs[k]
        atoms = Atoms(symbols, pos)
    atoms.positions -= atoms.get_center_of_mass()
    return atoms
