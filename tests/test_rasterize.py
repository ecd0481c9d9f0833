"""Rasterizer: the coverage / tie rule, barycentrics, depth test, culling, near plane, backends, bad input."""
from __future__ import annotations

import sys
import types
from fractions import Fraction

import pytest
import torch

from facerender.errors import BackendUnavailableError, ShapeError
from facerender.render.interpolate import interpolate
from facerender.render.rasterize import (
    Fragments,
    Rasterizer,
    RasterSettings,
    available_backends,
    get_rasterizer,
    rasterize,
    register_backend,
)

NO_CULL = RasterSettings(cull_backfaces=False)


def square_mesh(x0=0.5, y0=0.5, x1=4.5, y1=4.5, z=2.0, dtype=torch.float32):
    """Two front-facing triangles (negative signed area) sharing the diagonal (x0, y1)-(x1, y0)."""
    v = torch.tensor([[[x0, y0, z], [x0, y1, z], [x1, y0, z], [x1, y1, z]]], dtype=dtype)
    f = torch.tensor([[0, 1, 2], [2, 1, 3]])
    return v, f


def random_mesh(B, V, F, size, gen, dtype=torch.float32, zrange=(1.0, 3.0)):
    H, W = size
    xy = torch.rand(B, V, 2, generator=gen, dtype=torch.float64) * torch.tensor([W + 4.0, H + 4.0],
                                                                                   dtype=torch.float64) - 2.0
    z = torch.rand(B, V, 1, generator=gen, dtype=torch.float64) * (zrange[1] - zrange[0]) + zrange[0]
    faces = torch.stack([torch.randperm(V, generator=gen)[:3] for _ in range(F)])
    return torch.cat([xy, z], -1).to(dtype), faces


def exact_inside(p, a, b, c):
    """Exact rational test: -1 outside, 0 on the boundary, 1 strictly inside (any orientation)."""
    def orient(u, v, w):
        return (v[0] - u[0]) * (w[1] - u[1]) - (w[0] - u[0]) * (v[1] - u[1])
    s = [orient(a, b, p), orient(b, c, p), orient(c, a, p)]
    area = orient(a, b, c)
    s = [x if area > 0 else -x for x in s]
    if any(x < 0 for x in s):
        return -1
    return 0 if any(x == 0 for x in s) else 1


# --------------------------------------------------------------------------------------------------- coverage
def test_hand_computed_square_and_tie_rule():
    """Centres on the left/top edges are in, on the right/bottom edges out; the shared diagonal is covered once."""
    v, f = square_mesh()
    fr = rasterize(v, f, (6, 6))
    tid = fr.triangle_id[0]
    expected = torch.full((6, 6), -1)
    for j in range(6):
        for i in range(6):
            if i <= 3 and j <= 3:  # centres 0.5 .. 3.5: x = 4.5 (right edge) and y = 4.5 (bottom edge) excluded
                expected[j, i] = 0 if i + j < 4 else 1  # on the diagonal i + j = 4: the triangle to its right
    assert torch.equal(tid, expected)
    # the first triangle alone: 10 pixels (i + j <= 3), corner (0, 0) on two owned edges is in
    fr0 = rasterize(v, f[:1], (6, 6))
    assert int(fr0.mask.sum()) == 10 and bool(fr0.mask[0, 0, 0]) and not bool(fr0.mask[0, 4, 0])
    # the second alone: the 6 pixels with i + j >= 4, i, j <= 3 (the diagonal centres (1,3), (2,2), (3,1) are in)
    fr1 = rasterize(v, f[1:], (6, 6))
    assert int(fr1.mask.sum()) == 6 and bool(fr1.mask[0, 2, 2]) and not bool(fr1.mask[0, 4, 4])
    assert not bool((fr0.mask & fr1.mask).any())


def test_horizontal_shared_edge_goes_below():
    # two triangles sharing the horizontal edge y = 2.5 (centres of row 2 lie on it)
    v = torch.tensor([[[0.5, 0.5, 1.0], [0.5, 2.5, 1.0], [5.5, 2.5, 1.0], [0.5, 4.5, 1.0]]])
    f = torch.tensor([[0, 1, 2], [1, 3, 2]])
    fr = rasterize(v, f, (6, 7), NO_CULL)
    row = fr.triangle_id[0, 2]
    assert int(row[0]) == 1 and int(row[1]) == 1  # row 2 belongs to the triangle below the edge
    assert int((fr.triangle_id[0] == 0).sum()) > 0


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_coverage_matches_exact_rational_test(backend):
    gen = torch.Generator().manual_seed(3)
    H, W = 12, 15
    for _ in range(20):
        pts = torch.rand(3, 2, generator=gen, dtype=torch.float64) * torch.tensor([W + 2.0, H + 2.0]) - 1.0
        v = torch.cat([pts, torch.ones(3, 1, dtype=torch.float64)], 1)[None]
        fr = rasterize(v, torch.tensor([[0, 1, 2]]), (H, W), NO_CULL, backend=backend)
        # the documented rule: corners snapped to 1/256 px, then the exact test (ties: none for these data)
        a, b, c = ([Fraction(round(float(t) * 256), 256) for t in p] for p in pts)
        for j in range(H):
            for i in range(W):
                s = exact_inside((Fraction(2 * i + 1, 2), Fraction(2 * j + 1, 2)), a, b, c)
                if s != 0:
                    assert bool(fr.mask[0, j, i]) == (s > 0), (i, j, pts)


def grid_mesh(n, size, jitter, gen, half_integer=False):
    """A (n+1)^2 vertex grid over the image, interior vertices jittered, consistently front-facing."""
    H, W = size
    ys, xs = torch.meshgrid(torch.linspace(0.5, H - 0.5, n + 1, dtype=torch.float64),
                            torch.linspace(0.5, W - 0.5, n + 1, dtype=torch.float64), indexing="ij")
    v = torch.stack([xs, ys], -1)
    inner = torch.zeros(n + 1, n + 1, 1, dtype=torch.bool)
    inner[1:-1, 1:-1] = True
    v = v + jitter * (torch.rand(v.shape, generator=gen, dtype=torch.float64) - 0.5) * inner
    if half_integer:
        v = torch.floor(v) + 0.5
    v = torch.cat([v.reshape(-1, 2), torch.ones((n + 1) ** 2, 1, dtype=torch.float64)], 1)
    faces = []
    for r in range(n):
        for c in range(n):
            a, b, d, e = r * (n + 1) + c, (r + 1) * (n + 1) + c, r * (n + 1) + c + 1, (r + 1) * (n + 1) + c + 1
            faces += [[a, b, d], [d, b, e]]
    return v[None], torch.tensor(faces)


@pytest.mark.parametrize("cells", [5, 2])  # small triangles (float32 candidate test) and large ones (float64)
@pytest.mark.parametrize("half_integer", [False, True])
def test_mesh_is_watertight_every_centre_covered_exactly_once(half_integer, cells):
    gen = torch.Generator().manual_seed(0)
    H, W = 16, 16
    v, f = grid_mesh(cells, (H, W), 2.0, gen, half_integer)
    counts = torch.zeros(H, W, dtype=torch.int64)
    for k in range(f.shape[0]):
        counts += rasterize(v, f[k:k + 1], (H, W)).mask[0].long()
    # the grid spans [0.5, 15.5]^2: centres 0.5 .. 14.5 are in (left/top outer edges owned), 15.5 is out
    expected = torch.zeros(H, W, dtype=torch.int64)
    expected[:15, :15] = 1
    assert torch.equal(counts, expected)
    full = rasterize(v, f, (H, W))
    assert torch.equal(full.mask[0].long(), expected)


# ----------------------------------------------------------------------------------------- barycentrics, depth
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_barycentrics_reproduce_pixel_centres_and_depth(dtype):
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-10, rtol=1e-10)
    v = torch.tensor([[[1.2, 0.7, 1.0], [14.1, 3.3, 4.0], [4.4, 11.6, 2.0]]], dtype=dtype)
    f = torch.tensor([[0, 1, 2]])
    ys, xs = torch.meshgrid(torch.arange(13, dtype=dtype) + 0.5, torch.arange(16, dtype=dtype) + 0.5, indexing="ij")
    for perspective in (True, False):
        st = RasterSettings(cull_backfaces=False, perspective_correct=perspective)
        fr = rasterize(v, f, (13, 16), st)
        m = fr.mask[0]
        assert int(m.sum()) > 40
        assert torch.allclose(fr.barycentrics[0][m].sum(-1), torch.ones((), dtype=dtype), **tol)
        assert bool((fr.barycentrics[0][~m] == 0).all()) and bool((fr.depth[0][~m] == 0).all())
        z = v[0, :, 2:]
        if perspective:
            # b interpolates x * z to x_pixel * depth, and 1 / depth is affine in the pixel coordinates
            xz = interpolate(v[0, :, :2] * z, fr)[0]
            assert torch.allclose(xz[..., 0][m] / fr.depth[0][m], xs[m], **tol)
            assert torch.allclose(xz[..., 1][m] / fr.depth[0][m], ys[m], **tol)
            A = torch.stack([xs[m], ys[m], torch.ones_like(xs[m])], 1).double()
            inv = (1 / fr.depth[0][m]).double()[:, None]
            sol = torch.linalg.lstsq(A, inv).solution
            assert float((A @ sol - inv).abs().max()) < (1e-5 if dtype == torch.float32 else 1e-12)
            assert torch.allclose(interpolate(z, fr)[0, ..., 0][m], fr.depth[0][m], **tol)
        else:
            xy = interpolate(v[0, :, :2], fr)[0]
            assert torch.allclose(xy[..., 0][m], xs[m], **tol) and torch.allclose(xy[..., 1][m], ys[m], **tol)
            assert torch.allclose(interpolate(z, fr)[0, ..., 0][m], fr.depth[0][m], **tol)


def test_depth_test_keeps_nearest_surface_in_any_order():
    near_t = [[1.0, 1.0, 2.0], [1.0, 9.0, 2.0], [9.0, 1.0, 2.0]]
    far_t = [[0.5, 0.5, 5.0], [0.5, 9.5, 5.0], [9.5, 0.5, 5.0]]
    f = torch.tensor([[0, 1, 2], [3, 4, 5]])
    for order in (near_t + far_t, far_t + near_t):
        v = torch.tensor([order])
        fr = rasterize(v, f, (10, 10))
        nearer = 0 if order[0][2] == 2.0 else 1
        m = fr.mask[0]
        inner = (torch.arange(10)[None, :] + torch.arange(10)[:, None] <= 8) & (torch.arange(10) >= 1)[None, :] \
            & (torch.arange(10) >= 1)[:, None]
        assert bool((fr.triangle_id[0][inner] == nearer).all())
        assert torch.allclose(fr.depth[0][inner], torch.tensor(2.0))
        assert bool(m.any())


def test_intersecting_triangles_split_by_depth():
    # a triangle tilted through a flat one: per pixel the smaller depth wins
    v = torch.tensor([[[0.0, 0.0, 2.0], [0.0, 20.0, 2.0], [20.0, 0.0, 2.0],
                       [0.0, 0.0, 1.0], [0.0, 20.0, 1.0], [20.0, 0.0, 5.0]]])
    f = torch.tensor([[0, 1, 2], [3, 4, 5]])
    fr = rasterize(v, f, (16, 16))
    ref = rasterize(v, f, (16, 16), backend="reference")
    assert torch.equal(fr.triangle_id, ref.triangle_id)
    both = [rasterize(v, f[k:k + 1], (16, 16)) for k in range(2)]
    m = both[0].mask & both[1].mask
    want = torch.where(both[1].depth < both[0].depth, 1, 0)
    assert torch.equal(fr.triangle_id[m], want[m])
    assert bool((fr.triangle_id[m] == 0).any()) and bool((fr.triangle_id[m] == 1).any())


def test_backface_culling():
    v, f = square_mesh()
    back = f[:, [0, 2, 1]]  # reversed winding: positive signed area
    assert int(rasterize(v, back, (6, 6)).mask.sum()) == 0
    fr = rasterize(v, back, (6, 6), NO_CULL)
    assert int(fr.mask.sum()) == 16
    assert torch.allclose(fr.barycentrics[fr.mask].sum(-1), torch.tensor(1.0))


def test_batch_equals_loop():
    gen = torch.Generator().manual_seed(1)
    v, f = random_mesh(3, 30, 40, (20, 24), gen)
    fr = rasterize(v, f, (20, 24), NO_CULL)
    for b in range(3):
        one = rasterize(v[b:b + 1], f, (20, 24), NO_CULL)
        assert torch.equal(fr.triangle_id[b], one.triangle_id[0])
        assert torch.allclose(fr.barycentrics[b], one.barycentrics[0])
        assert torch.allclose(fr.depth[b], one.depth[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cull,perspective", [(True, True), (False, True), (False, False)])
def test_torch_backend_equals_reference(dtype, cull, perspective):
    gen = torch.Generator().manual_seed(7)
    st = RasterSettings(cull_backfaces=cull, perspective_correct=perspective)
    v, f = random_mesh(2, 60, 80, (23, 31), gen, dtype)
    a = rasterize(v, f, (23, 31), st, backend="torch")
    b = rasterize(v, f, (23, 31), st, backend="reference")
    assert torch.equal(a.triangle_id, b.triangle_id)
    assert int(a.mask.sum()) > 100
    tol = dict(atol=2e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-9, rtol=1e-9)
    assert torch.allclose(a.barycentrics, b.barycentrics, **tol)
    assert torch.allclose(a.depth, b.depth, **tol)
    assert a.barycentrics.dtype == dtype and a.depth.dtype == dtype


def test_small_candidate_chunks_give_same_result():
    from facerender.render.backends.torch_backend import TorchRasterizer

    gen = torch.Generator().manual_seed(11)
    v, f = random_mesh(2, 40, 50, (30, 30), gen)
    a = rasterize(v, f, (30, 30), NO_CULL)
    b = rasterize(v, f, (30, 30), NO_CULL, backend=TorchRasterizer(max_candidates=97))
    assert torch.equal(a.triangle_id, b.triangle_id)


def test_ict_face_matches_reference_and_has_no_speckles(ict_face_model):
    from morphable_models import model_to_camera

    m = ict_face_model
    verts = m().vertices
    X = model_to_camera(verts, torch.zeros(1, 3), torch.tensor([[0.0, 0.0, 60.0]]))
    size = 96
    f = 0.9 * size / float((X[..., 1] / X[..., 2]).max() - (X[..., 1] / X[..., 2]).min())
    sv = torch.stack([f * X[..., 0] / X[..., 2] + size / 2, f * X[..., 1] / X[..., 2] + size / 2 + 4, X[..., 2]], -1)
    a = rasterize(sv, m.faces, (size, size))
    b = rasterize(sv, m.faces, (size, size), backend="reference")
    assert torch.equal(a.triangle_id, b.triangle_id)
    mask = a.mask[0]
    assert 0.25 < float(mask.float().mean()) < 0.7
    # no isolated background pixel inside the face (a crack along a shared edge would show as one)
    inner = mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    assert int((inner & ~mask[1:-1, 1:-1]).sum()) == 0


# ------------------------------------------------------------------------------------------------- gradients
def test_gradcheck_interpolate_vertices_and_attributes():
    v = torch.tensor([[[1.3, 0.9, 1.5], [9.2, 2.1, 2.5], [3.1, 8.4, 1.2], [10.4, 9.3, 3.0]]], dtype=torch.float64)
    f = torch.tensor([[0, 2, 1], [1, 2, 3]])
    attr = torch.rand(1, 4, 2, dtype=torch.float64)

    def fn(vv, aa):
        fr = rasterize(vv, f, (11, 12))
        return interpolate(aa, fr), fr.depth

    assert int(rasterize(v, f, (11, 12)).mask.sum()) > 30
    assert torch.autograd.gradcheck(fn, (v.clone().requires_grad_(), attr.clone().requires_grad_()),
                                    eps=1e-6, atol=1e-6)
    # per-corner attributes through faces_uv
    uv = torch.rand(6, 2, dtype=torch.float64)
    faces_uv = torch.tensor([[0, 1, 2], [3, 4, 5]])
    assert torch.autograd.gradcheck(
        lambda vv, t: interpolate(t, rasterize(vv, f, (11, 12)), faces_uv=faces_uv),
        (v.clone().requires_grad_(), uv.clone().requires_grad_()), eps=1e-6, atol=1e-6)


def test_interpolate_per_corner_and_batched_attributes():
    v, f = square_mesh()
    v = v.expand(2, -1, -1)
    fr = rasterize(v, f, (6, 6))
    uv = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [7.0, 7.0], [7.0, 7.0], [7.0, 7.0]])
    faces_uv = torch.tensor([[0, 1, 2], [3, 4, 5]])
    out = interpolate(uv, fr, faces_uv=faces_uv)
    assert torch.allclose(out[fr.triangle_id == 1], torch.tensor([7.0, 7.0]))
    assert torch.allclose(out[0, 0, 0], torch.tensor([0.0, 0.0]))  # pixel (0, 0) sits on corner 0
    per_item = torch.stack([torch.ones(4, 1), 2 * torch.ones(4, 1)])
    out = interpolate(per_item, fr)
    assert torch.allclose(out[0][fr.mask[0]], torch.tensor(1.0))
    assert torch.allclose(out[1][fr.mask[1]], torch.tensor(2.0))
    assert bool((out[~fr.mask] == 0).all())
    with pytest.raises(ShapeError, match=r"batch size 3"):
        interpolate(torch.ones(3, 4, 1), fr)
    with pytest.raises(ShapeError, match=r"out of range"):
        interpolate(torch.ones(2, 1), fr)
    with pytest.raises(ValueError, match="not both"):
        interpolate(uv, fr, f, faces_uv=faces_uv)


# ----------------------------------------------------------------------------------------------- bad input
def test_int32_and_noncontiguous_faces_are_accepted():
    gen = torch.Generator().manual_seed(2)
    v, f = random_mesh(1, 20, 30, (16, 16), gen)
    ref = rasterize(v, f, (16, 16), NO_CULL)
    f32 = f.to(torch.int32)
    nc = f.t().contiguous().t()  # same faces, column-major (non-contiguous)
    assert not nc.is_contiguous()
    for ff in (f32, nc):
        out = rasterize(v, ff, (16, 16), NO_CULL)
        assert torch.equal(out.triangle_id, ref.triangle_id)
    assert f32.dtype == torch.int32  # the caller's tensor is untouched


def test_bad_inputs_raise_with_what_was_received():
    v, f = square_mesh()
    with pytest.raises(ShapeError, match=r"\[0, 4\] for V = 4"):
        rasterize(v, torch.tensor([[0, 1, 4]]), (6, 6))
    with pytest.raises(ShapeError, match=r"\[-1, 2\]"):
        rasterize(v, torch.tensor([[0, 1, -1], [0, 1, 2]]), (6, 6))
    bad = v.clone()
    bad[0, 1, 0] = float("nan")
    with pytest.raises(ShapeError, match="NaN or inf at 1 vertices"):
        rasterize(bad, f, (6, 6))
    with pytest.raises(ShapeError, match=r"\(B, V, 3\), got \(4, 3\)"):
        rasterize(v[0], f, (6, 6))
    with pytest.raises(ShapeError, match=r"\(F, 3\), got \(2, 4\)"):
        rasterize(v, torch.zeros(2, 4, dtype=torch.int64), (6, 6))
    with pytest.raises(ShapeError, match="integer tensor, got torch.float32"):
        rasterize(v, f.float(), (6, 6))
    with pytest.raises(ShapeError, match="floating tensor, got torch.int64"):
        rasterize(v.long(), f, (6, 6))
    for size in [(0, 6), (6, 0), (-1, 3)]:
        with pytest.raises(ValueError, match=r"positive, got \(H, W\)"):
            rasterize(v, f, size)
    with pytest.raises(ValueError, match="two positive ints"):
        rasterize(v, f, (6.0, 6))
    with pytest.raises(ValueError, match="near < far"):
        RasterSettings(near=2.0, far=1.0)
    with pytest.raises(ValueError, match="near >= 0"):
        RasterSettings(near=-1.0)


def test_empty_mesh_is_all_background():
    v, _ = square_mesh()
    fr = rasterize(v, torch.zeros(0, 3, dtype=torch.int64), (5, 7))
    assert fr.triangle_id.shape == (1, 5, 7) and bool((fr.triangle_id == -1).all())
    assert fr.barycentrics.shape == (1, 5, 7, 3) and bool((fr.barycentrics == 0).all())
    assert bool((fr.depth == 0).all()) and not bool(fr.mask.any())


def test_vertices_behind_camera_drop_their_triangles():
    v, f = square_mesh()
    v = v.clone()
    v[0, 3, 2] = -1.0  # vertex 3 behind the camera: the second triangle is dropped, the first stays
    v[0, 3, :2] = float("inf")  # a projection of a point behind the camera may be anything
    fr = rasterize(v, f, (6, 6))
    assert int((fr.triangle_id == 0).sum()) == 10 and int((fr.triangle_id == 1).sum()) == 0
    assert bool(torch.isfinite(fr.barycentrics).all()) and bool(torch.isfinite(fr.depth).all())
    v[0, 3, 2] = 0.0005  # in front of the camera but closer than near = 1e-3: still dropped
    v[0, 3, :2] = torch.tensor([4.5, 4.5])
    assert int((rasterize(v, f, (6, 6)).triangle_id == 1).sum()) == 0
    assert int((rasterize(v, f, (6, 6), RasterSettings(near=1e-4)).triangle_id == 1).sum()) == 6
    # gradients stay finite
    vv = v.clone().requires_grad_(True)
    fr = rasterize(vv, f, (6, 6), RasterSettings(far=1.0))  # far plane drops everything (z = 2)
    assert not bool(fr.mask.any())


# ------------------------------------------------------------------------------------------------- registry
def test_registry():
    names = available_backends()
    assert "torch" in names and "reference" in names
    with pytest.raises(ValueError, match="unknown rasterizer backend 'nope'.*'reference'"):
        rasterize(*square_mesh(), (6, 6), backend="nope")
    calls = []

    def factory():
        calls.append(1)
        return get_rasterizer("reference")

    register_backend("test-custom", factory, overwrite=True)
    out = rasterize(*square_mesh(), (6, 6), backend="test-custom")
    assert int(out.mask.sum()) == 16
    rasterize(*square_mesh(), (6, 6), backend="test-custom")
    assert len(calls) == 1  # created once
    with pytest.raises(ValueError, match="already registered"):
        register_backend("test-custom", factory)
    module = Rasterizer((6, 6), backend="reference")
    assert torch.equal(module(*square_mesh()).triangle_id, out.triangle_id)


@pytest.mark.parametrize("name,extra", [("pytorch3d", "pytorch3d"), ("nvdiffrast", "nvdiffrast")])
def test_missing_optional_backend_names_the_extra(name, extra):
    if name in available_backends():
        pytest.skip(f"{name} is installed here")
    import importlib

    module = importlib.import_module("facerender.render.rasterize")

    module._REGISTRY[name].instance = None
    with pytest.raises(BackendUnavailableError, match=rf'facerender\[{extra}\]'):
        get_rasterizer(name)


# ---------------------------------------------------------------------------- optional backends vs torch
def _compare_backends(name, device, size=(40, 48)):
    gen = torch.Generator().manual_seed(5)
    v, f = random_mesh(2, 80, 120, size, gen)
    v, f = v.to(device), f.to(device)
    a = rasterize(v, f, size, NO_CULL, backend="torch")
    b = rasterize(v, f, size, NO_CULL, backend=name)
    agree = (a.triangle_id == b.triangle_id).float().mean()
    assert float(agree) > 0.995  # pixel centres within rounding of an edge may differ
    same = a.triangle_id == b.triangle_id
    assert torch.allclose(a.barycentrics[same], b.barycentrics[same], atol=1e-5)
    assert torch.allclose(a.depth[same], b.depth[same], atol=1e-5)


@pytest.mark.skipif("pytorch3d" not in available_backends(), reason="PyTorch3D is not installed (optional extra)")
def test_pytorch3d_backend_matches_torch():
    _compare_backends("pytorch3d", "cpu")


@pytest.mark.skipif("nvdiffrast" not in available_backends(),
                    reason="nvdiffrast is not installed or no CUDA GPU (optional extra, CUDA only)")
def test_nvdiffrast_backend_matches_torch():
    _compare_backends("nvdiffrast", "cuda")


def _pytorch3d_pixel_ndc(i, S1, S2):
    """PyTorch3D's documented pixel-centre NDC (pix_to_non_square_ndc)."""
    r = 2.0 * (S1 / S2 if S1 > S2 else 1.0)
    return -r / 2 + (r * i + r / 2) / S1


def test_pytorch3d_adapter_conventions_with_a_stand_in(monkeypatch):
    """The adapter's NDC conversion against a brute-force stand-in that follows PyTorch3D's documented conventions
    (+X left, +Y up, row 0 at the top, pix_to_non_square_ndc pixel centres, packed face indices)."""

    class Meshes:
        def __init__(self, verts, faces):
            self.verts, self.faces = verts, faces

    def rasterize_meshes(meshes, image_size, blur_radius, faces_per_pixel, bin_size, max_faces_per_bin,
                         perspective_correct, clip_barycentric_coords, cull_backfaces):
        H, W = image_size
        out = torch.full((len(meshes.verts), H, W, 1), -1, dtype=torch.int64)
        offset = 0
        for n, (v, f) in enumerate(zip(meshes.verts, meshes.faces)):
            for yi in range(H):
                yf = _pytorch3d_pixel_ndc(H - 1 - yi, H, W)
                for xi in range(W):
                    xf = _pytorch3d_pixel_ndc(W - 1 - xi, W, H)
                    best = None
                    for k, face in enumerate(f.tolist()):
                        a, b, c = (v[i].double() for i in face)
                        p = torch.tensor([xf, yf], dtype=torch.float64)
                        w = [((q[0] - p[0]) * (r[1] - p[1]) - (r[0] - p[0]) * (q[1] - p[1]))
                             for q, r in ((b, c), (c, a), (a, b))]
                        area = sum(w)
                        if area == 0 or not all(x / area > 0 for x in w):
                            continue
                        lam = [x / area for x in w]
                        if perspective_correct:  # PyTorch3D: z from perspective-corrected barycentrics
                            z = 1.0 / sum(x / q[2] for x, q in zip(lam, (a, b, c)))
                        else:
                            z = sum(x * q[2] for x, q in zip(lam, (a, b, c)))
                        if best is None or z < best[0]:
                            best = (float(z), offset + k)
                    if best is not None:
                        out[n, yi, xi, 0] = best[1]
            offset += f.shape[0]
        return out, None, None, None

    fake = types.ModuleType("pytorch3d")
    for mod in ("pytorch3d.renderer", "pytorch3d.renderer.mesh"):
        monkeypatch.setitem(sys.modules, mod, types.ModuleType(mod))
    rm = types.ModuleType("pytorch3d.renderer.mesh.rasterize_meshes")
    rm.rasterize_meshes = rasterize_meshes
    st = types.ModuleType("pytorch3d.structures")
    st.Meshes = Meshes
    monkeypatch.setitem(sys.modules, "pytorch3d", fake)
    monkeypatch.setitem(sys.modules, "pytorch3d.renderer.mesh.rasterize_meshes", rm)
    monkeypatch.setitem(sys.modules, "pytorch3d.structures", st)
    from facerender.render.backends.pytorch3d_backend import PyTorch3DRasterizer

    gen = torch.Generator().manual_seed(9)
    for size in [(9, 14), (12, 8)]:
        v, f = random_mesh(2, 12, 10, size, gen)
        a = rasterize(v, f, size, NO_CULL)
        b = rasterize(v, f, size, NO_CULL, backend=PyTorch3DRasterizer())
        assert float((a.triangle_id == b.triangle_id).float().mean()) > 0.99
        assert int(a.mask.sum()) > 10
        c = rasterize(v, f, size, RasterSettings(), backend=PyTorch3DRasterizer())  # culling applied by us
        assert float((c.triangle_id == rasterize(v, f, size).triangle_id).float().mean()) > 0.99


def test_nvdiffrast_clip_conversion_lands_on_pixel_centres():
    """OpenGL/nvdiffrast: pixel (i, j) of our image is sampled at x_ndc = -1 + (2i + 1) / W and, rows flipped
    (nvdiffrast row 0 = bottom), y_ndc = 1 - (2j + 1) / H; z_ndc rises with depth inside (-1, 1)."""
    from facerender.render.backends.nvdiffrast_backend import screen_to_clip

    H, W = 6, 10
    i, j = torch.tensor([0.0, 9.0, 4.0], dtype=torch.float64), torch.tensor([0.0, 5.0, 2.0], dtype=torch.float64)
    z = torch.tensor([1.0, 2.0, 8.0], dtype=torch.float64)
    clip = screen_to_clip(torch.stack([i + 0.5, j + 0.5, z], -1)[None].double(), (H, W), 0.5, 16.0)[0]
    ndc = clip[:, :3] / clip[:, 3:]
    assert torch.allclose(ndc[:, 0], -1 + (2 * i + 1) / W)
    rows_nv = H - 1 - j  # nvdiffrast's row of our row j
    assert torch.allclose(ndc[:, 1], -1 + (2 * rows_nv + 1) / H)
    assert bool((ndc[:, 2] > -1).all() and (ndc[:, 2] < 1).all()) and bool((ndc[1:, 2] > ndc[:-1, 2]).all())
    assert torch.allclose(clip[:, 3], z.double())


def test_cpu_matches_cuda(device):
    if device.type != "cuda":
        pytest.skip("no CUDA device: CPU vs CUDA comparison skipped")
    gen = torch.Generator().manual_seed(4)
    v, f = random_mesh(2, 60, 90, (30, 40), gen)
    a = rasterize(v, f, (30, 40), NO_CULL)
    b = rasterize(v.to(device), f.to(device), (30, 40), NO_CULL)
    assert torch.equal(a.triangle_id, b.triangle_id.cpu())
    assert torch.allclose(a.barycentrics, b.barycentrics.cpu(), atol=1e-5)
    assert torch.allclose(a.depth, b.depth.cpu(), atol=1e-5)


def test_fragments_packed_view_matches_dense():
    gen = torch.Generator().manual_seed(8)
    v, f = random_mesh(2, 30, 40, (12, 14), gen)
    fr = rasterize(v, f, (12, 14), NO_CULL)
    pix, tri, bary = fr.packed()
    dense = Fragments(fr.triangle_id, fr.barycentrics, fr.depth)
    pix2, tri2, bary2 = dense.packed()
    assert torch.equal(pix, pix2) and torch.equal(tri, tri2) and torch.allclose(bary, bary2)
    attr = torch.rand(30, 3)
    assert torch.allclose(interpolate(attr, fr), interpolate(attr, dense, f))
