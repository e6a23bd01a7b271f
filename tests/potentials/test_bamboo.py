import pytest
import torch

from mlmd import keys
from mlmd.graph import graph_from_atoms
from potentials.bamboo import BambooPotential
from tests.conftest import water_cluster
from tests.potentials.mixin import PotentialTests

SMALL = {"num_features": 16, "num_rbf": 8, "num_layers": 2, "num_heads": 2}


class TestBamboo(PotentialTests):
    periodic_energy_atol = 1e-4  # PME mesh discretisation
    periodic_force_atol = 1e-3

    def make_model(self):
        model = BambooPotential(SMALL)
        model.set_reference_energies({1: -10.0, 8: -100.0, 3: -5.0, 9: -50.0}, 0.5)
        return model


class TestBambooWithoutPhysics(PotentialTests):
    def make_model(self):
        return BambooPotential({**SMALL, "coulomb": False, "dispersion": False})


def _with_random_share_head(model):
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.excess_head.parameters():
            p.normal_(0.0, 0.5)
    return model


class TestBambooLearnedExcessCharge(PotentialTests):
    periodic_energy_atol = 1e-4  # PME mesh discretisation
    periodic_force_atol = 1e-3

    def make_model(self):
        return _with_random_share_head(BambooPotential({**SMALL, "excess_charge": "learned"}))


def _with_random_vector_filters(model):
    torch.manual_seed(4)
    with torch.no_grad():
        for layer in model.layers[1:]:
            layer.radial_vv.weight.normal_(0.0, 0.5)
            layer.radial_vv.bias.normal_(0.0, 0.5)
    return model


class TestBambooVectorMessages(PotentialTests):
    # Without the mesh-based Coulomb term the invariances hold to round-off, which is the check the new messages need.
    def make_model(self):
        return _with_random_vector_filters(BambooPotential({**SMALL, "vector_messages": True, "coulomb": False}))


def test_vector_messages_start_as_the_model_without_them_and_then_change_it():
    atoms = water_cluster(3)
    graph = graph_from_atoms(atoms, 5.0).to(dtype=torch.float64)
    plain = BambooPotential(SMALL).double().eval()
    carried = BambooPotential({**SMALL, "vector_messages": True}).double().eval()
    missing, unexpected = carried.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(".radial_vv." in key or ".vector_in." in key for key in missing)
    assert carried.layers[0].radial_vv is None  # the first layer sees V = 0
    a, b = plain(graph, compute_forces=True), carried(graph, compute_forces=True)
    assert torch.allclose(a[keys.ENERGY], b[keys.ENERGY]) and torch.allclose(a[keys.FORCES], b[keys.FORCES])
    _with_random_vector_filters(carried)
    assert not torch.allclose(a[keys.FORCES], carried(graph, compute_forces=True)[keys.FORCES], atol=1e-6)


def test_widened_mlps_start_as_the_trained_model_and_their_new_units_learn():
    from potentials.bamboo import widened_state_dict

    atoms = water_cluster(3)
    graph = graph_from_atoms(atoms, 5.0).to(dtype=torch.float64)
    torch.manual_seed(1)
    narrow = _with_random_vector_filters(BambooPotential({**SMALL, "vector_messages": True})).double().eval()
    wide = BambooPotential({**SMALL, "vector_messages": True, "mlp_width": 3 * SMALL["num_features"]}).double().eval()
    wide.load_state_dict(widened_state_dict(narrow.state_dict(), wide))
    assert wide.layers[1].update[0].weight.shape[0] == wide.energy_head[1].weight.shape[0] == 3 * SMALL["num_features"]
    a, b = narrow(graph, compute_forces=True), wide(graph, compute_forces=True)
    for key in (keys.ENERGY, keys.FORCES, keys.CHARGES):
        assert torch.allclose(a[key], b[key], atol=1e-10), key
    # the new units' output weights start at zero but get a gradient (their inputs are random, not zero)
    wide(graph, compute_forces=False)[keys.ENERGY].sum().backward()
    new_columns = slice(SMALL["num_features"], None)
    assert torch.count_nonzero(wide.layers[1].update[2].weight[:, new_columns]) == 0
    assert wide.layers[1].update[2].weight.grad[:, new_columns].abs().max() > 0
    assert wide.energy_head[3].weight.grad[:, new_columns].abs().max() > 0


def test_learned_charge_shares_start_uniform_and_place_the_total_charge():
    atoms = water_cluster(3)
    atoms.info[keys.TOTAL_CHARGE] = -1
    graph = graph_from_atoms(atoms, 5.0).to(dtype=torch.float64)
    uniform = BambooPotential(SMALL).double().eval()
    learned = BambooPotential({**SMALL, "excess_charge": "learned"}).double().eval()
    missing, unexpected = learned.load_state_dict(uniform.state_dict(), strict=False)
    assert not unexpected and all(key.startswith("excess_head.") for key in missing)
    a, b = uniform(graph), learned(graph)
    assert torch.allclose(a[keys.CHARGES], b[keys.CHARGES]) and torch.allclose(a[keys.ENERGY], b[keys.ENERGY])

    _with_random_share_head(learned)
    q = learned(graph)[keys.CHARGES].detach()
    assert q.sum().item() == pytest.approx(-1.0)
    with torch.no_grad():
        s, _ = learned.features(graph, *learned.edges(graph, graph.positions, graph.cell))
        share = torch.nn.functional.softplus(learned.excess_head(s)[:, 0])
        raw = learned.config["max_charge"] * torch.tanh(learned.charge_head(s)[:, 0] / learned.config["max_charge"])
    assert torch.allclose(q, raw - raw.mean() + share / share.sum() * -1.0)
    assert not torch.allclose(q - raw, (q - raw).mean().expand_as(q))  # not equal shares


def test_charges_follow_total_charge_and_dipole_is_sum_q_r():
    model = BambooPotential(SMALL).double().eval()
    atoms = water_cluster(2)
    atoms.info[keys.TOTAL_CHARGE] = 1
    out = model(graph_from_atoms(atoms, 5.0).to(dtype=torch.float64))
    q = out[keys.CHARGES].detach()
    assert q.sum().item() == pytest.approx(1.0)
    dipole = (q[:, None] * torch.tensor(atoms.positions)).sum(0)
    assert torch.allclose(out[keys.DIPOLE][0].detach(), dipole)


def test_damped_coulomb_is_finite_at_short_range_and_one_over_r_beyond_cutoff():
    from potentials.physics import damped_pair_kernel

    r = torch.tensor([1e-4, 6.0], dtype=torch.float64)
    kernel = 1.0 / r + damped_pair_kernel(r, 2.2, 5.0)
    assert kernel[0].item() == pytest.approx(2 / (torch.pi**0.5 * 2.2), rel=1e-3)
    assert kernel[1].item() == pytest.approx(1 / 6.0)


def test_pme_reproduces_madelung_energy_of_rocksalt():
    from ase.build import bulk

    from potentials.physics import DampedCoulomb

    nacl = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    graph = graph_from_atoms(nacl, 5.0, check=False).to(dtype=torch.float64)
    charges = torch.tensor([1.0 if z == 11 else -1.0 for z in nacl.numbers], dtype=torch.float64)
    coulomb = DampedCoulomb(r0=1e-3, short_cutoff=5.0, smearing=1.0, mesh_spacing=0.2)
    energy = coulomb(graph, charges, graph.positions, graph.cell).sum().item()
    madelung = -1.747565 * 14.399645 / (5.64 / 2) * 4  # 4 ion pairs per cubic cell
    assert energy == pytest.approx(madelung, rel=2e-3)


@pytest.mark.parametrize("vector_messages", [False, True])
@pytest.mark.parametrize("periodic", [False, True])
def test_dense_sparse_and_all_pair_score_layouts_agree(periodic, vector_messages):
    from tests.conftest import periodic_box

    model = BambooPotential({**SMALL, "vector_messages": vector_messages}).double().eval()
    if vector_messages:
        _with_random_vector_filters(model)
    atoms = periodic_box() if periodic else water_cluster(4)
    graph = graph_from_atoms(atoms, 5.0).to(dtype=torch.float64)
    results = {}
    for layout, all_pairs_up_to in (("dense", 0), ("dense-all-pairs", 10**6), ("sparse", 0)):
        model.layout = layout.split("-")[0]
        model.all_pair_scores_max_atoms = all_pairs_up_to
        results[layout] = model(graph, compute_forces=True)
    for layout in ("dense-all-pairs", "sparse"):
        assert torch.allclose(results["dense"][keys.ENERGY], results[layout][keys.ENERGY], atol=1e-10)
        assert torch.allclose(results["dense"][keys.FORCES], results[layout][keys.FORCES], atol=1e-10)


def test_pme_real_space_on_the_models_full_list_matches_a_fresh_half_list():
    from tests.conftest import periodic_box

    from potentials.physics import DampedCoulomb

    atoms = periodic_box()
    graph = graph_from_atoms(atoms, 5.0).to(dtype=torch.float64)
    charges = torch.linspace(-0.5, 0.5, len(atoms), dtype=torch.float64)
    charges -= charges.mean()
    coulomb = DampedCoulomb(r0=2.2, short_cutoff=5.0, smearing=1.2, mesh_spacing=1.0)
    vectors = graph.edge_vectors()
    r = vectors.norm(dim=1)
    inside = r < 5.0
    reused = coulomb(graph, charges, graph.positions, graph.cell, graph.edge_index[:, inside], r[inside])
    fresh = coulomb(graph, charges, graph.positions, graph.cell)
    assert torch.allclose(reused.sum(), fresh.sum(), atol=1e-10)
    assert torch.allclose(reused, fresh, atol=1e-10)


def test_dispersion_pair_list_reuse_matches_a_fresh_list():
    from tests.conftest import periodic_box

    from potentials.physics import Dispersion

    atoms = periodic_box()
    reused = Dispersion()
    graph = graph_from_atoms(atoms, 5.0).to(dtype=torch.float64)
    reused(graph, graph.positions, graph.cell)
    atoms.rattle(0.1, seed=1)  # below half the 1 Å skin: the cached list stays valid
    graph = graph_from_atoms(atoms, 5.0).to(dtype=torch.float64)
    cached_pairs = reused._cache[5]
    energy = reused(graph, graph.positions, graph.cell).sum()
    assert reused._cache[5] is cached_pairs
    fresh = Dispersion()(graph, graph.positions, graph.cell).sum()
    assert energy.item() == pytest.approx(fresh.item(), rel=1e-12)


@pytest.mark.parametrize("batched", [False, True])
def test_dispersion_closed_form_gradient_and_double_backward_match_finite_differences(batched):
    from tests.conftest import periodic_box

    from mlmd.graph import collate
    from potentials.physics import Dispersion

    boxes = [periodic_box(seed=0), periodic_box(seed=1)] if batched else [periodic_box(seed=0)]
    graph = collate([graph_from_atoms(a, 5.0) for a in boxes]).to(dtype=torch.float64)
    dispersion = Dispersion(cutoff=6.0)  # a 6 Å switch-off keeps the pair count small for finite differences

    def energy(positions, cell):
        return dispersion(graph, positions, cell).sum()

    positions = graph.positions.clone().requires_grad_(True)
    cell = graph.cell.clone().requires_grad_(True)
    # first derivatives (the closed form) and second derivatives (create_graph recomputation) against central
    # finite differences
    assert torch.autograd.gradcheck(energy, (positions, cell))
    assert torch.autograd.gradgradcheck(energy, (positions, cell))
    closed_form = torch.autograd.grad(energy(positions, cell), (positions, cell))
    recomputed = torch.autograd.grad(energy(positions, cell), (positions, cell), create_graph=True)
    for a, b in zip(closed_form, recomputed):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)


class TestBambooWithRepulsion(PotentialTests):
    periodic_energy_atol = TestBamboo.periodic_energy_atol
    periodic_force_atol = TestBamboo.periodic_force_atol
    finite_difference_step = 1e-5

    def make_model(self):
        return BambooPotential({**SMALL, "repulsion": True})


def test_zbl_pair_energy_matches_the_formula_and_vanishes_beyond_the_covalent_radius_sum():
    from ase.data import covalent_radii

    from potentials.physics import ZBLRepulsion

    zbl = ZBLRepulsion([6])
    species = torch.zeros(2, dtype=torch.long)
    edges = torch.tensor([[0, 1], [1, 0]])

    def pair_energy(r):
        return zbl(species, edges, torch.full((2,), r, dtype=torch.float64)).sum().item()

    a = 0.8854 * 0.529177210903 / (2 * 6**0.23)
    r = 0.3  # deep inside the envelope's flat part it is ~1, so the bare ZBL form is reached within 1 %
    phi = sum(c * torch.exp(torch.tensor(-d * r / a)).item()
              for c, d in zip((0.18175, 0.50986, 0.28022, 0.02817), (3.19980, 0.94229, 0.40290, 0.20162)))
    assert pair_energy(r) == pytest.approx(14.399645 * 36 / r * phi, rel=1e-2)
    assert pair_energy(2 * covalent_radii[6] + 1e-6) == 0.0
    assert pair_energy(0.8) > pair_energy(1.0) > pair_energy(1.2) > 0.0


def test_repulsion_forces_are_minus_the_energy_gradient_at_short_contacts():
    from ase import Atoms

    model = BambooPotential({**SMALL, "species": [6], "repulsion": True, "coulomb": False}).double().eval()
    atoms = Atoms("C4", positions=[[0, 0, 0], [0.9, 0, 0], [0.3, 0.8, 0.1], [0.2, 0.3, 0.95]])
    graph = graph_from_atoms(atoms, model.cutoff, check=False).to(dtype=torch.float64)
    forces = model(graph, compute_forces=True)[keys.FORCES].detach()
    h = 1e-5
    for atom, axis in [(0, 0), (1, 1), (3, 2)]:
        energies = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[atom, axis] += sign * h
            g = graph_from_atoms(moved, model.cutoff, check=False).to(dtype=torch.float64)
            energies.append(model(g)[keys.ENERGY].item())
        assert forces[atom, axis].item() == pytest.approx(-(energies[0] - energies[1]) / (2 * h), rel=1e-5, abs=1e-6)
    assert forces.abs().max() > 10.0  # the wall is there: tens of eV/Å at contacts under 1 Å
