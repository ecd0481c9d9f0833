"""Silhouette antialiasing: hand-computed blends, gradients (float64 gradcheck), topology, an optimisation."""
from __future__ import annotations

import math

import pytest
import torch

from facerender.errors import ShapeError
from facerender.render.antialias import antialias, edge_topology
from facerender.render.interpolate import interpolate
from facerender.render.rasterize import rasterize


def rect(x0, x1, y0, y1, z=2.0, dtype=torch.float64):
    """A front-facing rectangle of two triangles (boundary edges are silhouettes)."""
    v = torch.tensor([[[x0, y0, z], [x0, y1, z], [x1, y0, z], [x1, y1, z]]], dtype=dtype)
    f = torch.tensor([[0, 1, 2], [2, 1, 3]])
    return v, f


def render_mask(v, f, size, max_walk=4, fg=1.0, bg=0.0):
    fr = rasterize(v, f, size)
    img = torch.where(fr.mask[..., None], torch.tensor(fg, dtype=v.dtype), torch.tensor(bg, dtype=v.dtype))
    return antialias(img, fr, max_walk=max_walk), fr, img


@pytest.mark.parametrize("edge,pixel,value", [(2.3, 2, 0.3), (1.8, 1, 0.8)])
def test_vertical_edge_gives_box_filter_coverage(edge, pixel, value):
    v, f = rect(-5.0, edge, -5.0, 20.0)
    out, fr, img = render_mask(v, f, (4, 6))
    expected = img.clone()
    expected[..., pixel, 0] = value  # the pixel the edge passes through gets its covered fraction
    assert torch.allclose(out, expected, atol=1e-12)


def test_horizontal_edge_uses_vertical_pairs():
    v, f = rect(-5.0, 20.0, -5.0, 2.3)
    out, _, img = render_mask(v, f, (6, 4))
    expected = img.clone()
    expected[:, 2, :, 0] = 0.3
    assert torch.allclose(out, expected, atol=1e-12)


def test_gradient_of_edge_position_is_the_colour_difference():
    v, f = rect(-5.0, 2.3, -5.0, 20.0)
    v.requires_grad_(True)
    out, fr, _ = render_mask(v, f, (4, 6), fg=0.9, bg=0.2)
    out.sum().backward()
    # one pixel per row moves by d(out)/d(edge x) = fg - bg, shared by the edge's two end points (vertices 2, 3)
    gx = v.grad[0, 2, 0] + v.grad[0, 3, 0]
    assert torch.allclose(gx, torch.tensor(4 * 0.7, dtype=torch.float64))
    assert torch.allclose(v.grad[0, :, 1], torch.zeros(4, dtype=torch.float64), atol=1e-12)  # vertical edge: no y
    assert torch.allclose(v.grad[0, :2], torch.zeros(2, 3, dtype=torch.float64))  # far-away left edge


def test_interior_edges_are_not_blended_and_occlusion_boundaries_are():
    # a square split into two triangles of different colours over a background
    v, f = rect(1.2, 6.7, 1.4, 6.6)
    fr = rasterize(v, f, (8, 8))
    colours = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    img = torch.where(fr.mask[..., None], colours[fr.triangle_id.clamp(min=0)], torch.zeros(2, dtype=torch.float64))
    out = antialias(img, fr)
    inner = torch.zeros(8, 8, dtype=torch.bool)
    inner[2:6, 2:6] = True  # pixels whose neighbours are all inside the square
    assert torch.equal(out[0][inner], img[0][inner])  # the diagonal between the two colours stays sharp
    assert not torch.equal(out, img)  # the outline is blended
    # occlusion: a small near square over a large far one; pixels across the near outline mix the two
    vn, fn = rect(2.0, 5.6, 2.0, 5.6, z=1.0)
    vf, ff = rect(0.0, 8.0, 0.0, 8.0, z=3.0)
    v2 = torch.cat([vn, vf], 1)
    f2 = torch.cat([fn, ff + 4])
    fr = rasterize(v2, f2, (8, 8))
    assert int(fr.triangle_id[0, 3, 3]) in (0, 1) and int(fr.triangle_id[0, 3, 6]) in (2, 3)
    img = (fr.triangle_id >= 2).to(torch.float64)[..., None]  # near square 0, far square 1
    out = antialias(img, fr)
    # right edge of the near square at x = 5.6: pixel 5 (centre 5.5) is near, pixel 6 far; edge in pixel 5's half
    assert torch.allclose(out[0, 3, 5, 0], torch.tensor(0.4, dtype=torch.float64))
    assert torch.allclose(out[0, 3, 6, 0], torch.tensor(1.0, dtype=torch.float64))


def test_gradcheck_antialias_vertices_and_colours():
    gen = torch.Generator().manual_seed(0)
    v = torch.tensor([[[2.3, 1.7, 2.0], [1.4, 9.1, 2.5], [9.6, 2.2, 1.5], [8.7, 8.4, 3.0], [5.2, 11.3, 2.2]]],
                     dtype=torch.float64)
    f = torch.tensor([[0, 1, 2], [2, 1, 3], [1, 4, 3]])
    colour = torch.rand(1, 5, 3, generator=gen, dtype=torch.float64)
    bg = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)

    def fn(vv, cc):
        fr = rasterize(vv, f, (12, 11))
        img = torch.where(fr.mask[..., None], interpolate(cc, fr), bg)
        return antialias(img, fr)

    vv = v.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (vv, colour.clone().requires_grad_(True)), eps=1e-6, atol=1e-6)
    # silhouette gradients: with constant colours only antialiasing makes the image depend on the positions
    const = torch.ones(1, 5, 3, dtype=torch.float64)
    out = fn(vv, const)
    (g,) = torch.autograd.grad(out.sum(), vv)
    assert float(g[..., :2].abs().sum()) > 1.0
    fr = rasterize(vv, f, (12, 11))
    plain = torch.where(fr.mask[..., None], interpolate(const, fr), bg)
    (g0,) = torch.autograd.grad(plain.sum(), vv)
    assert float(g0.abs().sum()) < 1e-10  # barycentrics sum to one: no gradient without antialiasing


def test_walk_reaches_silhouette_across_subpixel_slivers():
    # rectangle with right edge at x = 2.3, whose last 0.05 px is a strip of sliver triangles covering no centre
    rows = torch.linspace(-5.0, 20.0, 6, dtype=torch.float64)
    xs = [-5.0, 2.25, 2.3]
    verts = torch.tensor([[x, float(y), 2.0] for y in rows for x in xs], dtype=torch.float64)[None]
    faces = []
    for r in range(5):
        for c in range(2):
            a, b, d, e = r * 3 + c, (r + 1) * 3 + c, r * 3 + c + 1, (r + 1) * 3 + c + 1
            faces += [[a, b, d], [d, b, e]]
    f = torch.tensor(faces)
    plain, _, img = render_mask(*rect(-5.0, 2.3, -5.0, 20.0), (4, 6))
    walked, fr, img2 = render_mask(verts, f, (4, 6), max_walk=4)
    assert torch.equal(img, img2)
    assert torch.allclose(walked, plain, atol=1e-12)
    nvdiffrast_like, _, _ = render_mask(verts, f, (4, 6), max_walk=0)
    assert torch.equal(nvdiffrast_like, img2)  # without walking the sliver hides the silhouette


def test_batch_equals_loop_and_no_change_without_silhouettes():
    v1, f = rect(1.3, 5.6, 0.8, 4.1)
    v2, _ = rect(0.6, 4.4, 1.7, 5.2)
    v = torch.cat([v1, v2])
    fr = rasterize(v, f, (7, 7))
    img = torch.rand(2, 7, 7, 3, dtype=torch.float64)
    out = antialias(img, fr)
    for b in range(2):
        one = antialias(img[b:b + 1], rasterize(v[b:b + 1], f, (7, 7)))
        assert torch.allclose(out[b], one[0])
    big, fb = rect(-3.0, 10.0, -3.0, 10.0)
    frb = rasterize(big, fb, (7, 7))
    img = torch.rand(1, 7, 7, 2, dtype=torch.float64)
    assert torch.equal(antialias(img, frb), img)  # full coverage, no silhouette on screen


def test_edge_topology_and_cache():
    f = torch.tensor([[0, 1, 2], [2, 1, 3], [4, 5, 6], [0, 0, 1]])
    topo = edge_topology(f)
    # triangle 0 edge 0 (corners 1, 2 = vertices 1, 2) borders triangle 1, whose opposite vertex is 3
    assert int(topo.neighbour[0, 0]) == 1 and int(topo.opposite[0, 0]) == 3
    assert int(topo.neighbour[1, 2]) == 0 and int(topo.opposite[1, 2]) == 0  # edge (2, 1) of triangle 1
    assert bool((topo.neighbour[2] == -1).all()) and bool((topo.neighbour[3] == -1).all())  # lone, degenerate
    assert int(topo.opposite[2, 1]) == 5  # no neighbour: the triangle's own corner
    assert edge_topology(f) is topo  # cached on the same tensor
    assert edge_topology(f.clone()) is topo  # and on equal content
    g = f.clone()
    g[1, 1] = 5  # triangle 1 no longer shares the edge (1, 2)
    assert edge_topology(g) is not topo and int(edge_topology(g).neighbour[0, 0]) == -1
    # winding: a consistently oriented pair has +1, a flipped neighbour -1
    assert int(topo.rows[4, 0, 0]) == 1
    flipped = edge_topology(torch.tensor([[0, 1, 2], [1, 2, 3]]))
    assert int(flipped.rows[4, 0, 0]) == -1


def test_bad_inputs():
    v, f = rect(1.0, 4.0, 1.0, 4.0)
    fr = rasterize(v, f, (5, 5))
    with pytest.raises(ShapeError, match=r"\(1, 5, 5, C\).*got \(1, 5, 4, 3\)"):
        antialias(torch.zeros(1, 5, 4, 3), fr)
    with pytest.raises(ShapeError, match=r"B = 1, got \(2, 4, 3\)"):
        antialias(torch.zeros(1, 5, 5, 3), fr, v.expand(2, -1, -1), f)
    out = antialias(torch.zeros(1, 5, 5, 3), rasterize(v, f[:0], (5, 5)), v, f[:0])
    assert out.shape == (1, 5, 5, 3)


def disc(cx, cy, r, n=48, z=2.0):
    t = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
    ring = torch.stack([cx + r * torch.cos(t), cy - r * torch.sin(t), torch.full_like(t, z)], -1)
    centre = torch.stack([cx, cy, torch.tensor(z, dtype=torch.float64)])[None]
    v = torch.cat([centre, ring])[None]
    k = torch.arange(n)
    f = torch.stack([torch.zeros(n, dtype=torch.int64), k + 1, (k + 1) % n + 1], 1)  # counter-clockwise, y up
    return v, f


def test_silhouette_gradients_fit_a_disc_to_a_target_mask():
    size = (32, 32)
    tv, tf = disc(torch.tensor(18.3, dtype=torch.float64), torch.tensor(13.6, dtype=torch.float64), 8.2)
    target = rasterize(tv, tf, size).mask[..., None].double()
    shift = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    log_scale = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([shift, log_scale], lr=0.1)

    def current():
        return disc(12.0 + shift[0], 17.0 + shift[1], 6.0 * torch.exp(log_scale))

    def iou():
        m = rasterize(*current(), size).mask[..., None]
        return float((m & target.bool()).sum() / (m | target.bool()).sum())

    start = iou()
    for _ in range(150):
        opt.zero_grad()
        out, _, _ = render_mask(*current(), size)
        loss = (out - target).square().sum()
        loss.backward()
        opt.step()
    assert start < 0.4 and iou() > 0.93
    final = shift.detach()
    assert abs(float(12.0 + final[0]) - 18.3) < 0.3 and abs(float(17.0 + final[1]) - 13.6) < 0.3


def test_cpu_matches_cuda(device):
    if device.type != "cuda":
        pytest.skip("no CUDA device: CPU vs CUDA comparison skipped")
    v, f = disc(torch.tensor(15.3, dtype=torch.float64), torch.tensor(14.1, dtype=torch.float64), 9.7)
    img = {}
    for dev in ("cpu", device):
        vv = v.to(dev).requires_grad_(True)
        out, _, _ = render_mask(vv, f.to(dev), (32, 32))
        out.sum().backward()
        img[str(dev)] = (out.detach().cpu(), vv.grad.cpu())
    (a, ga), (b, gb) = img.values()
    assert torch.allclose(a, b, atol=1e-10) and torch.allclose(ga, gb, atol=1e-8)
