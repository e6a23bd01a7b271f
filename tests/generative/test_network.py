
import torch

from generative.network import CSPNet, fully_connected_edges


def _random_rotation(g):
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def _inputs(g, K=5):
    n_atoms = torch.tensor([3, 5, 4])
    batch = torch.repeat_interleave(torch.arange(3), n_atoms)
    n = len(batch)
    frac = torch.rand(n, 3, generator=g, dtype=torch.float64)
    lat = torch.randn(3, 3, 3, generator=g, dtype=torch.float64) + 2 * torch.eye(3, dtype=torch.float64)
    types = torch.softmax(torch.randn(n, K, generator=g, dtype=torch.float64), -1)
    cond = torch.rand(n, 3, generator=g, dtype=torch.float64)
    t = torch.rand(3, generator=g, dtype=torch.float64)
    return frac, lat, types, cond, t, batch


def _net(K=5):
    torch.manual_seed(0)
    return CSPNet(K, hidden=32, layers=2, n_freq=4, time_dim=8).double()


def test_edges_are_all_pairs_within_crystals():
    src, dst = fully_connected_edges(torch.tensor([0, 0, 1, 1, 1]))
    pairs = set(zip(src.tolist(), dst.tolist()))
    assert pairs == {(i, j) for i in (0, 1) for j in (0, 1)} | {(i, j) for i in (2, 3, 4) for j in (2, 3, 4)}


def test_permutation_invariance():
    g = torch.Generator().manual_seed(0)
    net = _net()
    frac, lat, types, cond, t, batch = _inputs(g)
    co, lo, to = net(frac, lat, types, cond, t, batch)
    # permute atoms within each crystal
    perm = torch.cat([torch.randperm(int(c), generator=g) + int(s) for c, s in zip(torch.bincount(batch), torch.tensor([0, 3, 8]))])
    co2, lo2, to2 = net(frac[perm], lat, types[perm], cond[perm], t, batch)
    torch.testing.assert_close(co2, co[perm])
    torch.testing.assert_close(to2, to[perm])
    torch.testing.assert_close(lo2, lo)


def test_origin_shift_invariance():
    g = torch.Generator().manual_seed(1)
    net = _net()
    frac, lat, types, cond, t, batch = _inputs(g)
    co, lo, to = net(frac, lat, types, cond, t, batch)
    shift = torch.rand(3, 3, generator=g, dtype=torch.float64)[batch]  # one shift per crystal
    co2, lo2, to2 = net(torch.remainder(frac + shift, 1.0), lat, types, cond, t, batch)
    torch.testing.assert_close(co2, co)
    torch.testing.assert_close(lo2, lo)
    torch.testing.assert_close(to2, to)


def test_lattice_output_rotation_equivariant():
    g = torch.Generator().manual_seed(2)
    net = _net()
    frac, lat, types, cond, t, batch = _inputs(g)
    co, lo, to = net(frac, lat, types, cond, t, batch)
    for _ in range(3):
        R = _random_rotation(g)  # O(3): includes reflections when det = -1
        co2, lo2, to2 = net(frac, lat @ R.T, types, cond, t, batch)
        torch.testing.assert_close(lo2, lo @ R.T)
        torch.testing.assert_close(co2, co)
        torch.testing.assert_close(to2, to)
