import numpy as np
import pytest

from mlmd import keys
from mlmd.errors import InputError
from mlmd.units import G_PER_CM3_PER_AMU_PER_A3
from workflows.boxes import build_box, ec_dmc_lipf6_box


def test_ec_dmc_lipf6_box_has_the_composition_density_and_whole_molecules():
    atoms = ec_dmc_lipf6_box(1, seed=0)
    assert len(atoms) == 278 and atoms.info[keys.TOTAL_CHARGE] == 0
    assert atoms.info["composition"] == "EC:13 DMC:11 Li:2 PF6:2"
    mol_id = atoms.arrays[keys.MOL_ID]
    assert len(np.unique(mol_id)) == 28
    density = atoms.get_masses().sum() * G_PER_CM3_PER_AMU_PER_A3 / atoms.get_volume()
    assert density == pytest.approx(1.25, rel=1e-3)
    d = atoms.get_all_distances(mic=True)
    inter = mol_id[:, None] != mol_id[None, :]
    assert d[inter].min() > 1.5  # packmol tolerance 2 Å, minus periodic-image slack


def test_bad_counts_are_rejected():
    with pytest.raises(InputError, match="must be non-negative with at least one molecule"):
        build_box([("EC", 0)], 1.2)
    with pytest.raises(InputError, match="density -1.0 g/cm³ must be positive"):
        build_box([("EC", 2)], -1.0)
