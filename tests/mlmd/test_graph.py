import itertools

import numpy as np
import pytest
import torch
from ase import Atoms

from mlmd.errors import InputError
from mlmd.graph import collate, graph_from_atoms
from mlmd.neighbors import neighbor_list
from tests.conftest import periodic_box, water_cluster


def brute_force_pairs(atoms, cutoff):
    pos, cell = atoms.positions, np.asarray(atoms.cell)
    reps = [range(-3, 4) if p else range(1) for p in atoms.pbc]
    pairs = set()
    for shift in itertools.product(*reps):
        offset = np.array(shift) @ cell
        d = np.linalg.norm(pos[None, :, :] + offset - pos[:, None, :], axis=-1)
        for i, j in zip(*np.nonzero(d < cutoff)):
            if i == j and shift == (0, 0, 0):
                continue
            pairs.add((int(i), int(j), shift))
    return pairs


@pytest.mark.parametrize("pbc", [(True, True, True), (True, False, True), (False, False, False)])
def test_neighbor_list_matches_brute_force_in_triclinic_cells(pbc):
    atoms = periodic_box(seed=1)
    atoms.pbc = pbc
    i, j, s = neighbor_list(atoms.positions, np.asarray(atoms.cell), np.asarray(pbc), 3.0)
    found = {(int(a), int(b), tuple(int(x) for x in sh)) for a, b, sh in zip(i, j, s)}
    assert found == brute_force_pairs(atoms, 3.0)


def test_small_box_finds_multiple_images():
    atoms = Atoms("H", positions=[[0, 0, 0]], cell=[[2.0, 0, 0], [0.5, 2.2, 0], [0, 0.3, 2.1]], pbc=True)
    i, j, s = neighbor_list(atoms.positions, np.asarray(atoms.cell), atoms.pbc, 5.0)
    assert {(int(a), int(b), tuple(int(x) for x in sh)) for a, b, sh in zip(i, j, s)} == brute_force_pairs(atoms, 5.0)


def test_edge_vectors_are_minimum_distances():
    atoms = periodic_box()
    g = graph_from_atoms(atoms, 4.0)
    d = g.edge_vectors().norm(dim=1).numpy()
    assert d.max() < 4.0 and d.min() > 0.5
    assert g.num_graphs == 1 and g.cell.shape == (1, 3, 3)


def test_collate_offsets_edges_batch_and_molecules():
    a, b = water_cluster(2), water_cluster(3, seed=1)
    ga, gb = graph_from_atoms(a, 4.0), graph_from_atoms(b, 4.0)
    g = collate([ga, gb])
    assert g.num_graphs == 2 and g.num_atoms == 15
    assert g.ptr.tolist() == [0, 6, 15]
    assert g.batch.tolist() == [0] * 6 + [1] * 9
    assert g.mol_id.tolist() == [0, 0, 0, 1, 1, 1] + [2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert torch.equal(g.edge_index[:, ga.edge_index.shape[1]:], gb.edge_index + 6)


def test_bad_structures_are_rejected_with_one_line_errors():
    atoms = water_cluster(2)
    atoms.positions[1] = np.nan
    with pytest.raises(InputError, match="atom 1 has a non-finite position"):
        graph_from_atoms(atoms, 4.0)
    close = Atoms("H2", positions=[[0, 0, 0], [0.3, 0, 0]])
    with pytest.raises(InputError, match=r"atoms 0 and 1 are 0.300 Å apart; atoms closer than 0.5 Å are rejected"):
        graph_from_atoms(close, 4.0)
    flat = Atoms("H2", positions=[[0, 0, 0], [1, 0, 0]], cell=[[3, 0, 0], [0, 3, 0], [3, 3, 0]], pbc=True)
    with pytest.raises(InputError, match="zero volume"):
        graph_from_atoms(flat, 4.0)
    with pytest.raises(InputError, match="element\\(s\\) Cu not known to the model; it accepts H O"):
        graph_from_atoms(Atoms("Cu"), 4.0, species=[1, 8])
    charged = water_cluster(1)
    charged.info["total_charge"] = 0.5
    with pytest.raises(InputError, match="total_charge 0.5 is not an integer"):
        graph_from_atoms(charged, 4.0)
