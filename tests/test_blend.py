"""Seamless compositing: Poisson (guided / mixed), multi-band and alpha blending, colour transfer, masks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from facerender.reenact.blend import (
    BlendConfig,
    SeamlessBlender,
    alpha_blend,
    color_transfer,
    erode_mask,
    feather_mask,
    poisson_blend,
    pull_push_fill,
    seamless_blend,
    solve_membrane,
)
from morphable_models.errors import ShapeError


def grid(H, W, dtype=torch.float32):
    y, x = torch.meshgrid(torch.arange(H, dtype=dtype) + 0.5, torch.arange(W, dtype=dtype) + 0.5, indexing="ij")
    return x, y


def ellipse(H, W, cx, cy, rx, ry):
    x, y = grid(H, W)
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 < 1


def texture(H, W, seed=0, dtype=torch.float32):
    """A colour image with fine detail and smooth variation."""
    g = torch.Generator().manual_seed(seed)
    x, y = grid(H, W, dtype)
    base = torch.stack([0.5 + 0.2 * torch.sin(x / 7), 0.4 + 0.2 * torch.cos(y / 5),
                        0.5 + 0.1 * torch.sin((x + y) / 9)], -1)
    return (base + 0.05 * torch.rand(H, W, 3, generator=g, dtype=dtype)).clamp(0, 1)


def laplace_reference(d: np.ndarray, om: np.ndarray) -> np.ndarray:
    """Exact solution (scipy sparse) of sum_q (x_p - x_q) = 0 on om, x = d elsewhere, Neumann at the border."""
    import scipy.sparse as sp
    import scipy.sparse.linalg as spl

    H, W = om.shape
    idx = -np.ones((H, W), int)
    ids = np.flatnonzero(om)
    idx.flat[ids] = np.arange(len(ids))
    ys, xs = np.divmod(ids, W)
    rows, cols, vals = [], [], []
    rhs = np.zeros(len(ids))
    diag = np.zeros(len(ids))
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        yy, xx = ys + dy, xs + dx
        inimg = (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
        diag += inimg
        nid = np.where(inimg, idx[yy.clip(0, H - 1), xx.clip(0, W - 1)], -1)
        unk = inimg & (nid >= 0)
        rows += list(np.arange(len(ids))[unk]); cols += list(nid[unk]); vals += [-1.0] * int(unk.sum())
        known = inimg & (nid < 0)
        rhs[known] += d[yy[known], xx[known]]
    n = len(ids)
    A = sp.csr_matrix((vals + list(diag), (rows + list(range(n)), cols + list(range(n)))), shape=(n, n))
    out = d.astype(np.float64).copy()
    out.flat[ids] = spl.spsolve(A.tocsc(), rhs)
    return out


# ------------------------------------------------------------------------------------------------------ masks
def test_feather_mask_ramp_and_erosion():
    m = torch.zeros(1, 40, 40, dtype=torch.bool)
    m[:, 10:30, 10:30] = True
    a = feather_mask(m, erode=2, feather=4)
    assert a.shape == (1, 40, 40) and a.dtype == torch.float32
    assert float(a[0, :12].max()) == 0.0 and float(a[0, :, :12].max()) == 0.0  # eroded by 2
    assert torch.allclose(a[0, 20, 12:17], torch.tensor([0.25, 0.5, 0.75, 1.0, 1.0]))
    assert float(a[0, 16:24, 16:24].min()) == 1.0
    e = erode_mask(m[0], 3)
    assert e.shape == (40, 40) and int(e.sum()) > 0 and not bool(e[12, 20]) and bool(e[13, 20])
    # the image border does not erode
    full = torch.ones(8, 8, dtype=torch.bool)
    assert bool(erode_mask(full, 3).all())


def test_pull_push_fill_keeps_known_and_fills_constants():
    x = torch.rand(2, 30, 20, 3)
    known = torch.rand(2, 30, 20) > 0.7
    out = pull_push_fill(x, known)
    assert torch.equal(out[known], x[known])
    c = torch.full((30, 20, 3), 0.3)
    k = torch.zeros(30, 20, dtype=torch.bool)
    k[0, 0] = True
    assert torch.allclose(pull_push_fill(c, k), c)


# ---------------------------------------------------------------------------------------------------- poisson
@pytest.mark.parametrize("method", ["poisson", "mixed", "multiband", "alpha"])
def test_identical_images_give_the_image(method):
    img = texture(64, 80)
    mask = ellipse(64, 80, 40, 30, 25, 20)
    out = seamless_blend(img, img.clone(), mask, method=method)
    assert torch.allclose(out, img, atol=1e-5)


@pytest.mark.parametrize("method", ["poisson", "mixed", "multiband", "alpha"])
def test_target_is_kept_exactly_outside_the_eroded_mask(method):
    src, tgt = texture(64, 80, 1), texture(64, 80, 2)
    mask = ellipse(64, 80, 40, 30, 25, 20)
    out = seamless_blend(src, tgt, mask, method=method, erode=3)
    inner = erode_mask(mask, 3)
    assert torch.equal(out[~inner], tgt[~inner])
    assert not torch.allclose(out[inner], tgt[inner])


def test_poisson_removes_a_constant_colour_offset():
    tgt = texture(72, 90, 3)
    offset = torch.tensor([0.2, -0.1, 0.15])
    src = tgt + offset
    mask = ellipse(72, 90, 45, 36, 30, 25)
    for it in (0, 1, 3):
        out = poisson_blend(src, tgt, mask, iterations=it)
        assert float((out - tgt).abs().max()) < 1e-5, it
    # the alpha blend keeps the offset inside: a visible difference
    assert float((alpha_blend(src, tgt, mask) - tgt).abs().max()) > 0.1


def test_poisson_keeps_source_gradients_and_meets_the_target_at_the_seam():
    H, W = 96, 96
    x, y = grid(H, W)
    src = torch.stack([0.8 + 0.2 * torch.sin(x / 2.0) * torch.cos(y / 3.0)] * 3, -1)  # high-frequency pattern
    tgt = torch.stack([0.2 + 0.5 * x / W, 0.3 + 0.4 * y / H, 0.6 - 0.3 * x / W], -1)  # a smooth, different image
    mask = ellipse(H, W, 48, 48, 30, 34)
    out = poisson_blend(src, tgt, mask, erode=0, iterations=2)
    exact = poisson_blend(src, tgt, mask, erode=0, iterations=40)  # converged (see the next test)
    deep = erode_mask(mask, 5)
    gx = lambda im: im[:, 1:] - im[:, :-1]  # noqa: E731
    both = deep[:, 1:] & deep[:, :-1]
    err = float((gx(out) - gx(src))[both].abs().mean())
    err_exact = float((gx(exact) - gx(src))[both].abs().mean())  # the smooth membrane's own gradient
    assert err_exact < 0.1 * float(gx(src)[both].abs().mean())
    assert err < 1.25 * err_exact
    # seam: across the mask's edge the result jumps no more than the source's own gradients, a naive paste does
    inside = mask[:, 1:] != mask[:, :-1]
    paste = torch.where(mask[..., None], src, tgt)
    seam = lambda im: float(gx(im)[inside].abs().mean())  # noqa: E731
    natural = float(gx(src)[inside].abs().mean())
    assert seam(out) < 1.2 * natural and seam(paste) > 3 * natural


def test_poisson_solver_converges_to_the_exact_solution():
    H, W = 40, 56
    g = torch.Generator().manual_seed(0)
    x, y = grid(H, W, torch.float64)
    d = 0.3 * torch.sin(x / 6) + 0.2 * torch.cos(y / 4) + 0.05 * torch.rand(H, W, generator=g, dtype=torch.float64)
    om = ellipse(H, W, 27, 22, 20, 15)
    om[30:, 10:20] = True  # touches the bottom border (Neumann there)
    ref = torch.from_numpy(laplace_reference(d.numpy(), om.numpy()))
    errs = [float((solve_membrane(d[..., None], om, iterations=it)[..., 0] - ref).abs().max())
            for it in (0, 2, 40)]
    assert errs[1] < 0.5 * errs[0] and errs[2] < 1e-5
    assert torch.equal(solve_membrane(d[..., None], om, iterations=2)[..., 0][~om], d[~om])


def test_values_far_from_the_domain_do_not_matter():
    """Only the boundary ring enters the equations: values beyond it (e.g. a face render that is black outside its
    mask) change nothing, at any number of V-cycles; a source equal to the target inside its mask and black outside
    gives the target back (the pull-push start used to average the far values in: a shift of 12 grey levels at 1
    V-cycle on a real face crop)."""
    H, W = 64, 64
    x, y = grid(H, W, torch.float64)
    d = 0.3 * torch.sin(x / 6) + 0.2 * torch.cos(y / 4)
    om = ellipse(H, W, 30, 34, 20, 16)
    near = torch.nn.functional.max_pool2d(om[None, None].double(), 3, 1, 1)[0, 0] > 0.5
    far = d.clone()
    far[~near] += 5.0
    for it in (0, 1, 3):
        a = solve_membrane(d[..., None], om, iterations=it)[..., 0]
        b = solve_membrane(far[..., None], om, iterations=it)[..., 0]
        assert torch.allclose(a[om], b[om], atol=1e-12), it
    tgt = texture(H, W, seed=3)
    mask = ellipse(H, W, 30, 34, 24, 20)
    src = torch.where(mask[..., None], tgt, torch.zeros_like(tgt))
    out = poisson_blend(src, tgt, mask, erode=3)
    assert float((out - tgt).abs().max()) < 1e-5


def test_mask_touching_the_border_and_full_and_empty_masks():
    tgt = texture(48, 64, 4)
    src = tgt + 0.1
    mask = torch.zeros(48, 64, dtype=torch.bool)
    mask[:, :30] = True  # the left border and the top/bottom borders
    out = poisson_blend(src, tgt, mask)
    assert torch.isfinite(out).all() and float((out - tgt).abs().max()) < 1e-5
    # empty (also after erosion) -> a copy of the target
    for m in (torch.zeros(48, 64, dtype=torch.bool), ellipse(48, 64, 30, 30, 1.2, 1.2)):
        for method in ("poisson", "multiband", "alpha"):
            o = seamless_blend(src, tgt, m, method=method)
            assert torch.equal(o, tgt) and o.data_ptr() != tgt.data_ptr()
    # the whole image: no boundary, the source is returned
    assert torch.allclose(poisson_blend(src, tgt, torch.ones(48, 64, dtype=torch.bool)), src)


def test_mixed_gradients_keep_strong_target_edges():
    H, W = 64, 64
    tgt = torch.full((H, W, 3), 0.5)
    tgt[:, 32:] = 0.9  # a strong vertical edge
    src = torch.full((H, W, 3), 0.4)  # flat
    mask = ellipse(H, W, 32, 32, 22, 22)
    guided = poisson_blend(src, tgt, mask, iterations=4)
    mixed = poisson_blend(src, tgt, mask, mixed=True, iterations=8)
    jump = lambda im: float((im[32, 33] - im[32, 30]).mean())  # noqa: E731
    assert jump(mixed) > 0.3 and abs(jump(guided)) < 0.05


def test_batches_inputs_untouched_and_dtypes():
    B, H, W = 3, 40, 48
    src = torch.stack([texture(H, W, i) for i in range(B)])
    tgt = torch.stack([texture(H, W, 10 + i) for i in range(B)])
    masks = torch.stack([ellipse(H, W, 20 + 4 * i, 20, 12, 10) for i in range(B)])
    s0, t0, m0 = src.clone(), tgt.clone(), masks.clone()
    for method in ("poisson", "multiband", "alpha"):
        out = seamless_blend(src, tgt, masks, method=method)
        one = torch.stack([seamless_blend(src[i], tgt[i], masks[i], method=method) for i in range(B)])
        assert out.shape == (B, H, W, 3)
        assert torch.allclose(out, one, atol=1e-6), method
    assert torch.equal(src, s0) and torch.equal(tgt, t0) and torch.equal(masks, m0)
    # a float mask, a batch-1 target broadcast, float64, a non-contiguous source
    out64 = poisson_blend(src.double().transpose(1, 2).contiguous().transpose(1, 2), tgt[:1].double(),
                          masks.double())
    assert out64.dtype == torch.float64 and out64.shape == (B, H, W, 3)


def test_color_transfer():
    tgt = texture(48, 64, 5)
    mask = ellipse(48, 64, 32, 24, 20, 16)
    # a per-channel affine change in RGB is undone exactly by mean/std matching in RGB
    src = tgt * torch.tensor([0.7, 1.2, 0.9]) + torch.tensor([0.1, -0.05, 0.02])
    out = color_transfer(src, tgt, mask, space="rgb")
    assert torch.allclose(out[mask], tgt[mask], atol=1e-5)
    # a constant offset is removed in YCbCr (a linear space) exactly, and closely in Lab
    src = tgt + 0.08
    assert torch.allclose(color_transfer(src, tgt, mask)[mask], tgt[mask], atol=1e-5)
    assert float((color_transfer(src, tgt, mask, space="lab") - tgt)[mask].abs().mean()) < 0.01
    # a smooth multiplicative shading is removed by the gain map
    x, _ = grid(48, 64)
    shade = (0.6 + 0.3 * x / 64)[..., None]
    out = color_transfer(tgt * shade, tgt, mask, mode="gain", scale=8)
    assert float((out - tgt)[mask].abs().mean()) < 0.02 < float((tgt * shade - tgt)[mask].abs().mean())
    # strength 0 is the identity; an empty mask changes nothing
    assert torch.allclose(color_transfer(src, tgt, mask, strength=0.0), src)
    assert torch.allclose(color_transfer(src, tgt, torch.zeros_like(mask)), src, atol=1e-6)
    # as a blend option
    out = seamless_blend(src, tgt, mask, method="alpha", color="meanstd")
    assert float((out - tgt).abs().max()) < 1e-5


def test_module_equals_function_and_config_checks():
    src, tgt = texture(32, 40, 6), texture(32, 40, 7)
    mask = ellipse(32, 40, 20, 16, 12, 10)
    cfg = BlendConfig(method="multiband", erode=1, feather=3)
    assert torch.equal(SeamlessBlender(cfg)(src, tgt, mask), seamless_blend(src, tgt, mask, cfg))
    assert torch.equal(SeamlessBlender(erode=4)(src, tgt, mask), poisson_blend(src, tgt, mask, erode=4))
    with pytest.raises(ValueError, match="method must be one of"):
        BlendConfig(method="laplace")
    with pytest.raises(ValueError, match="erode must be an int >= 0, got -1"):
        BlendConfig(erode=-1)
    with pytest.raises(ValueError, match="color must be None or one of"):
        BlendConfig(color="hist")


def test_bad_input_raises_with_what_was_received():
    img = torch.rand(16, 16, 3)
    m = torch.ones(16, 16, dtype=torch.bool)
    with pytest.raises(ShapeError, match=r"source must be a \(B, H, W, C\) or \(H, W, C\) tensor, got \(16, 16\)"):
        poisson_blend(img[..., 0], img, m)
    with pytest.raises(ShapeError, match="same \\(H, W, C\\)"):
        poisson_blend(img, torch.rand(16, 17, 3), m)
    with pytest.raises(ShapeError, match="floating-point tensor, got torch.uint8"):
        poisson_blend((img * 255).to(torch.uint8), img, m)
    with pytest.raises(ShapeError, match=r"mask must have shape \(1, 16, 16\) or \(16, 16\).*got \(16, 15\)"):
        poisson_blend(img, img, m[:, :15])
    with pytest.raises(ShapeError, match="torch.float64 on cpu but target is torch.float32"):
        poisson_blend(img.double(), img, m)
    with pytest.raises(ValueError, match="iterations must be an int >= 0, got 1.5"):
        poisson_blend(img, img, m, iterations=1.5)
    with pytest.raises(ValueError, match="mode must be one of"):
        color_transfer(img, img, m, mode="histogram")
    with pytest.raises(ShapeError, match="needs 3 channels"):
        color_transfer(torch.rand(16, 16, 4), torch.rand(16, 16, 4), m)
    with pytest.raises(ShapeError, match="batch 1 or B"):
        poisson_blend(torch.rand(2, 16, 16, 3), torch.rand(3, 16, 16, 3), m)
