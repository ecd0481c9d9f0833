"""Per-vertex albedo: the solve is the minimiser of the stated energy, known albedo is recovered under known light,
shadows / highlights stay plausible, solvers agree, bad input raises."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from facerender.fitting.albedo import (
    AlbedoConfig,
    VertexAlbedoEstimator,
    albedo_samples,
    estimate_mean_albedo,
    estimate_vertex_albedo,
    mesh_edges,
    mirror_vertex_map,
)
from facerender.render.interpolate import interpolate
from facerender.render.lighting import ambient_light, directional_light, sh_irradiance
from facerender.render.rasterize import RasterSettings, rasterize
from morphable_models.errors import ShapeError

F64 = torch.float64


# ------------------------------------------------------------------------------------------------ small meshes
def grid_mesh(nx=7, ny=6):
    """A flat grid in the x-y plane, symmetric about x = 0: vertices (V, 3), faces (F, 3)."""
    xs = np.linspace(-1, 1, nx)
    ys = np.linspace(-1, 1, ny)
    X, Y = np.meshgrid(xs, ys)
    verts = np.stack([X.ravel(), Y.ravel(), np.zeros(X.size)], 1)
    faces = []
    for j in range(ny - 1):
        for i in range(nx - 1):
            a, b, c, d = j * nx + i, j * nx + i + 1, (j + 1) * nx + i + 1, (j + 1) * nx + i
            faces += [[a, b, c], [a, c, d]]
    return verts, np.array(faces)


def random_samples(faces, S, rng, grey=True):
    tri = rng.integers(0, len(faces), S)
    b = rng.dirichlet(np.ones(3), S)
    obs = rng.uniform(0.1, 0.9, (S, 3))
    shade = rng.uniform(0.3, 1.2, (S, 1))
    shade = np.repeat(shade, 3, 1) if grey else shade * rng.uniform(0.8, 1.2, (S, 3))
    w = rng.uniform(0.5, 2.0, S)
    return faces[tri], b, obs, shade, w


def test_mesh_edges():
    faces = np.array([[0, 1, 2], [2, 1, 3], [3, 3, 4]])
    e = mesh_edges(faces)
    assert e.tolist() == [[0, 1], [0, 2], [1, 2], [1, 3], [2, 3], [3, 4]]  # (3, 3) is dropped
    et = mesh_edges(torch.from_numpy(faces).int())
    assert isinstance(et, torch.Tensor) and et.dtype == torch.int64 and et.tolist() == e.tolist()
    verts, f = grid_mesh(7, 6)
    assert len(mesh_edges(f)) == (6 * 6) + (7 * 5) + 6 * 5  # horizontal + vertical + diagonal
    with pytest.raises(ShapeError, match=r"\(F, 3\), got \(4,\)"):
        mesh_edges(np.zeros(4, int))
    with pytest.raises(ShapeError, match="integer"):
        mesh_edges(np.zeros((2, 3)))
    with pytest.raises(ShapeError, match=r"found \[-1, 2\]"):
        mesh_edges(np.array([[0, -1, 2]]))


def test_mirror_vertex_map_toy_and_errors():
    verts, _ = grid_mesh(7, 6)
    m, d = mirror_vertex_map(verts, return_distance=True)
    assert np.array_equal(m[m], np.arange(len(verts)))  # an involution
    assert np.allclose(verts[m] * [-1, 1, 1], verts) and d.max() < 1e-12
    assert (m[verts[:, 0] == 0] == np.nonzero(verts[:, 0] == 0)[0]).all()  # the midline maps to itself
    # another plane / axis
    shifted = verts + [0.0, 3.0, 0.0]
    assert np.array_equal(mirror_vertex_map(shifted[:, [1, 0, 2]], axis=1, center=0.0), m)
    mt = mirror_vertex_map(torch.from_numpy(verts + [2.0, 0, 0]), center=2.0)
    assert isinstance(mt, torch.Tensor) and np.array_equal(mt.numpy(), m)
    # an asymmetric template is refused, with the measured mismatch in the message
    bad = verts.copy()
    bad[0, 0] += 0.2
    with pytest.raises(ValueError, match=r"not symmetric about x = 0.*vertex"):
        mirror_vertex_map(bad, max_distance=0.01)
    assert mirror_vertex_map(bad, max_distance=0.5).shape == (len(verts),)
    with pytest.raises(ShapeError, match=r"\(V, 3\)"):
        mirror_vertex_map(verts[:, :2])
    with pytest.raises(ValueError, match="axis"):
        mirror_vertex_map(verts, axis=3)


def test_mirror_vertex_map_ict(ict_face_model):
    T = ict_face_model.template.double()
    m, d = mirror_vertex_map(T, return_distance=True)
    assert m.shape == (9409,) and float(d.max()) < 0.01  # cm
    assert torch.equal(m[m], torch.arange(9409))
    assert torch.allclose(T[m] * torch.tensor([-1.0, 1, 1], dtype=F64), T, atol=0.01)


# ------------------------------------------------------------------------------------------ exact minimiser
@pytest.mark.parametrize("grey", [True, False], ids=["grey", "colour"])
def test_solution_minimises_the_stated_energy(grey):
    """Unclamped, the result is the stationary point of the energy in the module docstring (autograd check)."""
    rng = np.random.default_rng(1)
    verts, faces = grid_mesh(7, 6)
    V = len(verts)
    mirror = mirror_vertex_map(verts)
    fv, b, obs, shade, w = random_samples(faces[:40], 150, rng, grey)  # leaves part of the grid unobserved
    mean = np.array([0.6, 0.45, 0.4])
    cfg = AlbedoConfig(smoothness=0.7, symmetry=0.3, prior=0.05, clamp=False, min_shading=0.0, saturation=None,
                       cg_tolerance=1e-12)
    a = estimate_vertex_albedo(V, faces, fv, b, obs, shade, w, config=cfg, mirror=mirror, mean_albedo=mean)
    assert isinstance(a, np.ndarray) and a.shape == (V, 3) and a.dtype == np.float64
    # the energy, written out independently
    diag = np.zeros(V)
    np.add.at(diag, fv.ravel(), ((w * (shade ** 2).mean(1))[:, None] * b ** 2).ravel())
    scale = (diag > 0).sum() / diag.sum()
    e = mesh_edges(faces)
    A = torch.tensor(a, requires_grad=True)
    pred = (A[torch.from_numpy(fv)] * torch.from_numpy(b)[..., None]).sum(1) * torch.from_numpy(shade)
    E = (scale * torch.from_numpy(w)[:, None] * (pred - torch.from_numpy(obs)) ** 2).sum() \
        + 0.7 * ((A[e[:, 0]] - A[e[:, 1]]) ** 2).sum() + 0.3 * ((A - A[mirror]) ** 2).sum() \
        + 0.05 * ((A - torch.from_numpy(mean)) ** 2).sum()
    (g,) = torch.autograd.grad(E, A)
    assert float(g.abs().max()) < 1e-9
    # both solvers reach it
    t = estimate_vertex_albedo(V, torch.from_numpy(faces), torch.from_numpy(fv), torch.from_numpy(b),
                               torch.from_numpy(obs), torch.from_numpy(shade), torch.from_numpy(w),
                               config=AlbedoConfig(**{**cfg.__dict__, "solver": "cg"}), mirror=mirror,
                               mean_albedo=torch.from_numpy(mean))
    assert isinstance(t, torch.Tensor) and t.dtype == F64
    assert np.allclose(t.numpy(), a, atol=1e-8)


def test_weights_scale_and_normalisation():
    rng = np.random.default_rng(2)
    verts, faces = grid_mesh()
    V = len(verts)
    fv, b, obs, shade, w = random_samples(faces, 300, rng)
    est = VertexAlbedoEstimator(V, faces, mirror=mirror_vertex_map(verts))
    a = est(fv, b, obs, shade, w)
    # with normalize_data, scaling all weights (or duplicating every sample) changes nothing
    assert np.allclose(est(fv, b, obs, shade, 10 * w), a, atol=1e-10)
    assert np.allclose(est(np.concatenate([fv, fv]), np.concatenate([b, b]), np.concatenate([obs, obs]),
                           np.concatenate([shade, shade]), np.concatenate([w, w])), a, atol=1e-10)
    # one-channel shading (S, 1) and (S,) are grey shading
    assert np.allclose(est(fv, b, obs, shade[:, :1], w), a, atol=1e-12)
    assert np.allclose(est(fv, b, obs, shade[:, 0], w), a, atol=1e-12)
    # the ordering cached from the first call serves other sample sets: same result as a fresh estimator
    other = random_samples(faces[:30], 120, rng)
    fresh = VertexAlbedoEstimator(V, faces, mirror=mirror_vertex_map(verts))(*other)
    assert np.allclose(est(*other), fresh, atol=1e-12)
    # zero weight == sample removed
    w0 = w.copy()
    w0[:50] = 0
    assert np.allclose(est(fv, b, obs, shade, w0, mean_albedo=(0.5, 0.5, 0.5)),
                       est(fv[50:], b[50:], obs[50:], shade[50:], w[50:], mean_albedo=(0.5, 0.5, 0.5)), atol=1e-10)


def test_noncontiguous_inputs_and_module_equals_function():
    rng = np.random.default_rng(6)
    verts, faces = grid_mesh()
    V = len(verts)
    fv, b, obs, shade, w = random_samples(faces, 200, rng, grey=False)
    mirror = mirror_vertex_map(verts)
    ref = estimate_vertex_albedo(V, faces, fv, b, obs, shade, w, mirror=mirror)
    assert np.allclose(VertexAlbedoEstimator(V, faces, mirror=mirror)(fv, b, obs, shade, w), ref, atol=0)

    def nc(x):  # same values, transposed memory layout
        t = torch.from_numpy(np.ascontiguousarray(x.T)).T
        assert not t.is_contiguous()
        return t

    out = estimate_vertex_albedo(V, nc(faces), nc(fv), nc(b), nc(obs), nc(shade), torch.from_numpy(w)[::1],
                                 mirror=torch.from_numpy(mirror))
    assert np.allclose(out.numpy(), ref, atol=1e-12)
    # inputs are never modified
    copies = [x.copy() for x in (fv, b, obs, shade, w)]
    estimate_vertex_albedo(V, faces, fv, b, obs, shade, w, mirror=mirror)
    assert all(np.array_equal(x, c) for x, c in zip((fv, b, obs, shade, w), copies))


# ------------------------------------------------------------------------------------------------ ICT scenes
def ict_scene(model, yaw=0.0, size=224):
    """Render the ICT face with a known symmetric albedo (lips darker and redder) under a known SH light.

    Returns a dict with the samples (numpy) and the truth."""
    from morphable_models import model_to_camera, vertex_normals
    from facerender.cameras import PinholeCamera

    T = model.template.to(F64)
    x, y, z = T.unbind(-1)
    alb = torch.stack([0.7 + 0.1 * torch.cos(x.abs() / 3), 0.5 + 0.1 * torch.sin(y / 4),
                       0.4 + 0.05 * torch.cos(z / 2)], -1)
    lips = ((y + 6.5).abs() < 1.0) & (x.abs() < 2.5)
    alb[lips] = torch.tensor([0.6, 0.3, 0.3], dtype=F64)
    cv = model_to_camera(T[None], torch.tensor([[0.0, yaw, 0.0]], dtype=F64), torch.zeros(1, 3, dtype=F64))
    cv = cv - cv.mean(1, keepdim=True) + torch.tensor([0, 0, 80.0], dtype=F64)
    cam = PinholeCamera.from_fov(15.0, (size, size), dtype=F64)
    fr = rasterize(cam.to_screen(cv), model.faces, (size, size), RasterSettings())
    sh = ambient_light(0.5, dtype=F64) + directional_light(torch.tensor([-0.4, -0.5, -1.0], dtype=F64), 0.7)
    sh = sh * torch.tensor([1.0, 0.9, 0.8], dtype=F64)  # a warm (coloured) light
    shade = sh_irradiance(interpolate(vertex_normals(cv, model.faces), fr), sh) / math.pi
    image = interpolate(alb, fr) * shade  # the exact Lambertian image of the per-vertex albedo
    smp = albedo_samples(fr, model.faces, image, shade)
    fv, b, obs, s, w = (t.numpy() for t in smp.item(0))
    Tm = (T.numpy()[fv] * b[..., None]).sum(1)  # model-space point of every sample
    seen = np.zeros(len(T), bool)
    seen[fv.ravel()] = True
    return dict(T=T.numpy(), alb=alb.numpy(), lips=lips.numpy(), fv=fv, b=b, obs=obs, shade=s, w=w, Tm=Tm,
                seen=seen, faces=model.faces, V=len(T))


@pytest.fixture(scope="module")
def frontal(ict_face_model):
    return ict_scene(ict_face_model)


@pytest.fixture(scope="module")
def ict_estimator(ict_face_model):
    T = ict_face_model.template.double().numpy()
    return VertexAlbedoEstimator(len(T), ict_face_model.faces, mirror=mirror_vertex_map(T))


def test_albedo_samples_gathering(ict_face_model):
    H = W = 48
    faces = ict_face_model.faces
    V = ict_face_model.num_vertices
    sv = torch.zeros(2, V, 3, dtype=F64)
    T = ict_face_model.template.double()
    for k, s in enumerate((2.0, 1.5)):
        sv[k, :, 0] = T[:, 0] * s + W / 2
        sv[k, :, 1] = -T[:, 1] * s + H / 2
        sv[k, :, 2] = 50.0 - T[:, 2]
    fr = rasterize(sv, faces, (H, W), RasterSettings(perspective_correct=False))
    image = torch.rand(2, H, W, 3, dtype=F64)
    shade = torch.rand(2, H, W, 1, dtype=F64)
    smp = albedo_samples(fr, faces, image, shade)
    counts = fr.mask.reshape(2, -1).sum(1)
    assert smp.counts.tolist() == counts.tolist() and counts[0] > counts[1]
    S = int(counts.max())
    assert smp.face_vertices.shape == (2, S, 3) and smp.shading.shape == (2, S, 1)
    for k in range(2):
        n = int(counts[k])
        pix = smp.pixel_index[k, :n]
        assert bool((pix[1:] > pix[:-1]).all())  # raster order
        r, c = pix // W, pix % W
        assert torch.equal(smp.observed[k, :n], image[k, r, c])
        assert torch.equal(smp.face_vertices[k, :n], faces[fr.triangle_id[k, r, c]])
        assert torch.equal(smp.barycentrics[k, :n], fr.barycentrics[k, r, c])
        assert (smp.weights[k, :n] == 1).all() and (smp.weights[k, n:] == 0).all()
        assert (smp.pixel_index[k, n:] == -1).all()
    # a mask and per-pixel weights
    mask = torch.zeros(2, H, W, dtype=torch.bool)
    mask[:, : H // 2] = True
    wimg = torch.full((1, H, W), 0.25, dtype=F64)
    sm = albedo_samples(fr, faces, image, shade, mask=mask, weights=wimg)
    assert sm.counts.tolist() == (fr.mask & mask).reshape(2, -1).sum(1).tolist()
    assert (sm.weights[0, : int(sm.counts[0])] == 0.25).all()
    with pytest.raises(ShapeError, match=r"image must have shape \(2, 48, 48, 3\).*\(2, 40, 48, 3\)"):
        albedo_samples(fr, faces, image[:, :40], shade)


def test_recovers_known_albedo_frontal(frontal, ict_estimator):
    s = frontal
    assert 25_000 < len(s["fv"]) < 40_000  # about 30k samples, the size the timings refer to
    a = ict_estimator(s["fv"], s["b"], s["obs"], s["shade"], s["w"])
    err = np.abs(a - s["alb"])
    seen, lips = s["seen"], s["lips"]
    assert err[seen].mean() < 0.005 and np.percentile(err[seen], 99) < 0.05
    assert err[lips & seen].mean() < 0.03  # a sharp feature survives the smoothness term
    assert err[~seen].mean() < 0.03  # vertices no pixel sees: from neighbours and the mirror side
    # grey light: one shared factorisation; the same albedo
    grey = s["shade"].mean(1, keepdims=True)
    obs_grey = (s["alb"][s["fv"]] * s["b"][..., None]).sum(1) * grey
    ag = ict_estimator(s["fv"], s["b"], obs_grey, grey, s["w"])
    assert np.abs(ag - s["alb"])[seen].mean() < 0.005


def test_recovers_unseen_side_by_symmetry(ict_face_model, ict_estimator):
    s = ict_scene(ict_face_model, yaw=0.7)
    a = ict_estimator(s["fv"], s["b"], s["obs"], s["shade"], s["w"])
    err = np.abs(a - s["alb"])
    mirror = ict_estimator.mirror.numpy()
    only_mirror_seen = ~s["seen"] & s["seen"][mirror]
    assert only_mirror_seen.sum() > 1000
    assert err[s["seen"]].mean() < 0.006 and err[only_mirror_seen].mean() < 0.006
    # without the symmetry term these vertices are only extrapolated by smoothness
    plain = VertexAlbedoEstimator(s["V"], s["faces"], config=AlbedoConfig())(
        s["fv"], s["b"], s["obs"], s["shade"], s["w"])
    assert np.abs(plain - s["alb"])[only_mirror_seen].mean() > 2 * err[only_mirror_seen].mean()


def test_noise_is_smoothed(frontal, ict_estimator):
    s = frontal
    rng = np.random.default_rng(0)
    noisy = s["obs"] + rng.normal(0, 0.03, s["obs"].shape)
    a = ict_estimator(s["fv"], s["b"], noisy, s["shade"], s["w"])
    ratio = noisy / s["shade"]  # the naive per-sample albedo has noise of about 0.03 / shade
    err = np.abs(a - s["alb"])[s["seen"]].mean()
    assert err < 0.008 and err < 0.25 * np.abs(ratio - (s["alb"][s["fv"]] * s["b"][..., None]).sum(1)).mean()


def test_shadow_and_highlight_stay_plausible(frontal, ict_estimator):
    s = frontal
    T, Tm, alb, seen = s["T"], s["Tm"], s["alb"], s["seen"]
    mirror = ict_estimator.mirror.numpy()

    def region(P):  # a cast shadow on the subject's right cheek
        return (P[:, 0] < -2) & (P[:, 1] > -5) & (P[:, 1] < 3)

    obs = s["obs"].copy()
    obs[region(Tm)] *= 0.4
    a = ict_estimator(s["fv"], s["b"], obs, s["shade"], s["w"])
    assert a.min() >= 0 and a.max() <= 1
    shadow_v = region(T) & seen
    naive = np.abs(0.6 * alb[shadow_v]).mean()  # what per-pixel division (no priors) would leave
    err_in = np.abs(a - alb)[shadow_v].mean()
    assert err_in < 0.75 * naive  # the mirror side (lit) pulls the shadowed side back up
    # away (1.5 cm) from the shadow and from its mirror image, the albedo is as good as without the shadow
    far = seen & ~((np.abs(T[:, 0]) > 0.5) & (T[:, 1] > -6.5) & (T[:, 1] < 4.5))
    assert far.sum() > 1500
    assert np.abs(a - alb)[far].mean() < 0.005
    # a clipped specular highlight: saturated samples are ignored, the albedo there comes from around it
    hl = np.exp(-((Tm[:, 0] - 3) ** 2 + (Tm[:, 1] - 1) ** 2) / 1.0)
    obs = np.minimum(s["obs"] + 0.9 * hl[:, None], 1.0)
    a = ict_estimator(s["fv"], s["b"], obs, s["shade"], s["w"])
    hl_v = (np.exp(-((T[:, 0] - 3) ** 2 + (T[:, 1] - 1) ** 2) / 1.0) > 0.5) & seen
    assert np.abs(a - alb)[hl_v].mean() < 0.03
    keep_all = VertexAlbedoEstimator(s["V"], s["faces"], mirror=mirror, config=AlbedoConfig(saturation=None))
    a_all = keep_all(s["fv"], s["b"], obs, s["shade"], s["w"])
    assert np.abs(a_all - alb)[hl_v].mean() > 2 * np.abs(a - alb)[hl_v].mean()


def test_mean_albedo_estimate_is_robust():
    rng = np.random.default_rng(3)
    S = 20_000
    shade = rng.uniform(0.1, 1.0, (S, 1)) * [1.0, 0.9, 0.8]
    true = np.array([0.7, 0.5, 0.4])
    obs = true * shade
    bad = rng.random(S) < 0.3
    obs[bad] *= rng.uniform(0.1, 0.5, (bad.sum(), 1))  # 30 % of the samples in cast shadow
    est = estimate_mean_albedo(obs, shade)
    assert np.abs(est - true).max() < 0.02
    assert np.allclose(estimate_mean_albedo(true * shade, shade), true, atol=1e-3)
    with pytest.raises(ValueError, match="none of the 3 samples is usable"):
        estimate_mean_albedo(np.ones((3, 3)) * 0.5, np.zeros((3, 3)))


def test_batched_cg_equals_direct():
    """B problems with different sample counts (padded with weight 0) in one CG call == one direct solve each."""
    rng = np.random.default_rng(5)
    verts, faces = grid_mesh(30, 25)
    V = len(verts)
    mirror = mirror_vertex_map(verts)
    items = [random_samples(faces, n, rng, grey=g) for n, g in ((2000, True), (1200, False), (300, False))]
    S = max(len(it[0]) for it in items)

    def pad(x):
        out = np.zeros((S,) + x.shape[1:], dtype=x.dtype)
        out[:len(x)] = x
        return out

    batch = [np.stack([pad(it[k]) for it in items]) for k in range(5)]
    est_d = VertexAlbedoEstimator(V, faces, mirror=mirror)
    est_c = VertexAlbedoEstimator(V, torch.from_numpy(faces), mirror=torch.from_numpy(mirror),
                                  config=AlbedoConfig(solver="cg", cg_tolerance=1e-9))
    ac = est_c(*(torch.from_numpy(x) for x in batch))
    ad = est_d(*batch)  # direct: one item at a time
    assert isinstance(ac, torch.Tensor) and ac.shape == (3, V, 3) and isinstance(ad, np.ndarray)
    for k, it in enumerate(items):
        single = est_d(*it)
        assert np.allclose(ad[k], single, atol=1e-12)
        assert np.abs(ac[k].numpy() - single).max() < 1e-6
    # numpy in -> numpy out from the CG path too; float32 torch in -> float32 out
    assert isinstance(est_c(*items[0]), np.ndarray)
    a32 = est_c(*(torch.from_numpy(x).float() if x.dtype == np.float64 else torch.from_numpy(x) for x in batch))
    assert a32.dtype == torch.float32 and np.abs(a32.double().numpy() - ad).max() < 1e-3


# ------------------------------------------------------------------------------------------------------ errors
def test_bad_input_raises():
    rng = np.random.default_rng(4)
    verts, faces = grid_mesh()
    V = len(verts)
    fv, b, obs, shade, w = random_samples(faces, 50, rng)

    def est(*args, **kw):
        return estimate_vertex_albedo(V, faces, *args, **kw)

    with pytest.raises(ValueError, match=r"no samples.*\(0, 3\)"):
        est(fv[:0], b[:0], obs[:0], shade[:0])
    with pytest.raises(ShapeError, match=r"samples_bary must have shape \(50, 3\).*\(49, 3\)"):
        est(fv, b[:49], obs, shade)
    with pytest.raises(ShapeError, match=r"observed must have shape \(50, 3\).*\(50, 4\)"):
        est(fv, b, np.zeros((50, 4)), shade)
    with pytest.raises(ShapeError, match=r"shading must have shape"):
        est(fv, b, obs, shade[:, :2])
    with pytest.raises(ShapeError, match=r"weights must have shape \(50,\), got \(3,\)"):
        est(fv, b, obs, shade, np.ones(3))
    with pytest.raises(ShapeError, match=rf"samples_face_vertices index out of range: found \[\d+, {V}\] for {V}"):
        est(np.where(fv == fv.max(), V, fv), b, obs, shade)
    with pytest.raises(ShapeError, match="integer"):
        est(fv.astype(float), b, obs, shade)
    with pytest.raises(ShapeError, match="observed holds NaN"):
        est(fv, b, np.where(obs > 0.5, np.nan, obs), shade)
    with pytest.raises(ValueError, match="weights must be >= 0"):
        est(fv, b, obs, shade, -np.ones(50))
    with pytest.raises(ValueError, match=r"no usable samples for batch item\(s\) \[0\]"):
        est(fv, b, obs, shade * 0)
    with pytest.raises(ShapeError, match=rf"mean_albedo must have shape \(3,\), \({V}, 3\)"):
        est(fv, b, obs, shade, mean_albedo=np.zeros(2))
    with pytest.raises(ShapeError, match=rf"mirror must be a \(V,\) = \({V},\)"):
        est(fv, b, obs, shade, mirror=np.arange(V - 1))
    with pytest.raises(ShapeError, match="mirror index out of range"):
        est(fv, b, obs, shade, mirror=np.arange(V) + 1)
    with pytest.raises(ShapeError, match=rf"faces index out of range.*for {V - 1} vertices"):
        estimate_vertex_albedo(V - 1, faces, fv, b, obs, shade)
    with pytest.raises(ValueError, match="num_vertices"):
        estimate_vertex_albedo(0, faces, fv, b, obs, shade)
    with pytest.raises(ValueError, match="prior must be > 0"):
        AlbedoConfig(prior=0.0)
    with pytest.raises(ValueError, match="smoothness must be a finite number >= 0"):
        AlbedoConfig(smoothness=-1.0)
    with pytest.raises(ValueError, match="solver must be one of"):
        AlbedoConfig(solver="qr")
    with pytest.raises(ValueError, match="saturation"):
        AlbedoConfig(saturation=1.5)
