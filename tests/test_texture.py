"""Texture sampling (UV convention, tiles, wrap modes, gradients) and compositing / layout helpers."""
from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from facerender.render.compositing import Compositor, composite, from_uint8, to_bchw, to_bhwc, to_uint8
from facerender.render.texture import TextureSampler, sample_texture
from morphable_models.errors import ShapeError


def texel_centres(Ht, Wt, dtype=torch.float64):
    """uv of every texel centre, laid out like the texture: (1, Ht, Wt, 2)."""
    j, i = torch.meshgrid(torch.arange(Ht, dtype=dtype), torch.arange(Wt, dtype=dtype), indexing="ij")
    return torch.stack([(i + 0.5) / Wt, 1 - (j + 0.5) / Ht], -1)[None]


# --------------------------------------------------------------------------------------------------------------
# convention


def test_texel_centres_return_texels_exactly(dtype):
    tex = torch.rand(2, 4, 8, 3, dtype=dtype)  # power-of-two sizes: the uv arithmetic is exact
    uv = texel_centres(4, 8, dtype).expand(2, 4, 8, 2)
    assert torch.equal(sample_texture(tex, uv), tex)
    # other sizes: equal to rounding
    tex = torch.rand(5, 7, 2, dtype=dtype)
    out = sample_texture(tex, texel_centres(5, 7, dtype))
    torch.testing.assert_close(out[0], tex, rtol=0, atol=1e-6 if dtype == torch.float32 else 1e-12)


def test_v_points_up():
    tex = torch.zeros(2, 3, 3)
    tex[0, :, 0] = 1.0  # top row red
    tex[1, :, 2] = 1.0  # bottom row blue
    uv = torch.tensor([[[[0.5, 0.75], [0.5, 0.25], [0.5, 1.0], [0.5, 0.0]]]])  # texel centres: v = .75 top, .25 bottom
    out = sample_texture(tex, uv)[0, 0]
    torch.testing.assert_close(out, torch.tensor([[1.0, 0, 0], [0, 0, 1], [1, 0, 0], [0, 0, 1]]))
    # halfway between the two rows: the average
    torch.testing.assert_close(sample_texture(tex, torch.tensor([[[[0.5, 0.5]]]]))[0, 0, 0],
                               torch.tensor([0.5, 0.0, 0.5]))
    # u right: a left-to-right ramp
    ramp = torch.arange(4.0).reshape(1, 4, 1).expand(2, 4, 1)
    out = sample_texture(ramp, torch.tensor([[[[0.125, 0.5], [0.375, 0.5], [0.5, 0.5]]]]))
    torch.testing.assert_close(out[0, 0, :, 0], torch.tensor([0.0, 1.0, 1.5]))


def test_udim_tile_selection():
    tex = torch.rand(1, 6, 10, 3, dtype=torch.float64)
    uv = torch.rand(1, 5, 5, 2, dtype=torch.float64)
    ref = sample_texture(tex, uv)
    shifted = uv + torch.tensor([1.0, 0.0], dtype=torch.float64)  # u in [1, 2]: tile 1 (UDIM 1002)
    torch.testing.assert_close(sample_texture(tex, shifted, tile=1), ref)
    torch.testing.assert_close(sample_texture(tex, uv + torch.tensor([3.0, 0.0], dtype=torch.float64), tile=3), ref)
    # without selecting the tile, clamp mode sees u > 1: the right border column
    torch.testing.assert_close(sample_texture(tex, shifted)[..., :], sample_texture(tex, torch.stack(
        [torch.ones_like(uv[..., 0]), uv[..., 1]], -1)))


def test_wrap_modes():
    tex = torch.arange(4.0, dtype=torch.float64).reshape(1, 4, 1).expand(1, 4, 1)  # one row: 0 1 2 3
    def at(u, **kw):
        return sample_texture(tex, torch.tensor([[[[u, 0.5]]]], dtype=torch.float64), **kw)[0, 0, 0, 0].item()
    # clamp: outside the image and between the border texel centre and the edge, the border texel
    assert at(-0.5) == 0.0 and at(0.05) == 0.0 and at(1.7) == 3.0 and at(0.97) == 3.0
    # repeat: periodic, and blends across the seam
    assert at(1.375, wrap="repeat") == pytest.approx(at(0.375))
    assert at(-0.625, wrap="repeat") == pytest.approx(at(0.375))
    assert at(0.0, wrap="repeat") == pytest.approx(1.5)  # halfway between texel 3 and texel 0
    assert at(1.0, wrap="repeat") == pytest.approx(1.5)
    assert at(0.125, wrap="repeat") == pytest.approx(0.0) and at(0.875, wrap="repeat") == pytest.approx(3.0)
    # zeros: blends with 0 outside
    assert at(-0.5, wrap="zeros") == 0.0 and at(1.0, wrap="zeros") == pytest.approx(1.5)
    tex1 = tex + 1
    assert sample_texture(tex1, torch.tensor([[[[0.0, 0.5]]]], dtype=torch.float64), wrap="zeros").item() == 0.5


def test_mask_and_garbage_uv():
    tex = torch.rand(4, 4, 3, dtype=torch.float64, requires_grad=True)
    uv = torch.rand(2, 3, 3, 2, dtype=torch.float64)
    mask = torch.rand(2, 3, 3) > 0.5
    mask[0, 0, 0], mask[0, 0, 1] = False, True
    uv_bad = uv.clone()
    uv_bad[~mask] = float("nan")
    uv_bad.requires_grad_()
    out = sample_texture(tex, uv_bad, mask)
    assert (out[~mask] == 0).all()
    torch.testing.assert_close(out[mask], sample_texture(tex, uv)[mask])
    out.sum().backward()
    assert torch.isfinite(tex.grad).all() and torch.isfinite(uv_bad.grad).all()
    assert (uv_bad.grad[~mask] == 0).all()
    # (B, H, W, 1) float 0/1 mask is the same
    torch.testing.assert_close(sample_texture(tex, uv, mask[..., None].double()), sample_texture(tex, uv, mask))


def test_shared_and_batched_textures(dtype):
    tex = torch.rand(6, 5, 3, dtype=dtype)
    uv = torch.rand(3, 4, 7, 2, dtype=dtype)
    shared = sample_texture(tex, uv)
    assert shared.shape == (3, 4, 7, 3) and shared.dtype == dtype
    torch.testing.assert_close(shared, sample_texture(tex[None].expand(3, 6, 5, 3), uv))
    torch.testing.assert_close(shared, sample_texture(tex[None], uv))
    tb = torch.rand(3, 6, 5, 3, dtype=dtype)
    per = sample_texture(tb, uv)
    for b in range(3):
        torch.testing.assert_close(per[b:b + 1], sample_texture(tb[b], uv[b:b + 1]))
    # one uv map for a batch of textures
    torch.testing.assert_close(sample_texture(tb, uv[:1]), sample_texture(tb, uv[:1].expand(3, 4, 7, 2)))
    # non-contiguous inputs
    uv_nc = uv.transpose(1, 2).contiguous().transpose(1, 2)
    assert not uv_nc.is_contiguous()
    torch.testing.assert_close(sample_texture(tex, uv_nc), shared)


def test_gradient_direction_wrt_uv():
    ramp = torch.arange(8.0, dtype=torch.float64).reshape(1, 8, 1).expand(4, 8, 1)  # value = column index
    uv = torch.tensor([[[[0.3, 0.4]]]], dtype=torch.float64, requires_grad=True)
    sample_texture(ramp, uv).sum().backward()
    torch.testing.assert_close(uv.grad[0, 0, 0], torch.tensor([8.0, 0.0], dtype=torch.float64))  # d/du = Wt
    rows = torch.arange(4.0, dtype=torch.float64).reshape(4, 1, 1).expand(4, 8, 1)  # value = row index (0 at top)
    uv.grad = None
    sample_texture(rows, uv).sum().backward()
    torch.testing.assert_close(uv.grad[0, 0, 0], torch.tensor([0.0, -4.0], dtype=torch.float64))  # v up


@pytest.mark.parametrize("wrap", ["clamp", "repeat", "zeros"])
def test_gradcheck_texture_and_uv(wrap):
    g = torch.Generator().manual_seed(0)
    tex = torch.rand(2, 5, 6, 2, generator=g, dtype=torch.float64, requires_grad=True)
    uv = (torch.rand(2, 3, 4, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2).requires_grad_()
    f = lambda t, u: sample_texture(t, u, wrap=wrap)
    assert gradcheck(f, (tex, uv))
    assert gradgradcheck(f, (tex, uv))
    # shared texture with tile selection
    tex1 = tex[0].detach().clone().requires_grad_()
    uv1 = (uv.detach() + torch.tensor([1.0, 0.0], dtype=torch.float64)).requires_grad_()
    assert gradcheck(lambda t, u: sample_texture(t, u, tile=1, wrap=wrap), (tex1, uv1))


def test_module_equals_function_and_nearest():
    tex = torch.rand(5, 6, 3)
    uv = torch.rand(2, 4, 4, 2)
    m = TextureSampler(tile=0, wrap="repeat")
    torch.testing.assert_close(m(tex, uv), sample_texture(tex, uv, wrap="repeat"))
    assert "repeat" in repr(m)
    near = sample_texture(tex, uv, mode="nearest")
    i = (uv[..., 0] * 6).floor().long().clamp(0, 5)
    j = ((1 - uv[..., 1]) * 5).floor().long().clamp(0, 4)
    torch.testing.assert_close(near, tex[j, i])


def test_texture_errors_state_what_was_received():
    tex = torch.rand(4, 4, 3)
    uv = torch.rand(2, 3, 3, 2)
    with pytest.raises(ShapeError, match=r"texture must have shape .*got \(4, 4\)"):
        sample_texture(torch.rand(4, 4), uv)
    with pytest.raises(ShapeError, match="floating-point.*uint8"):
        sample_texture(tex.to(torch.uint8), uv)
    with pytest.raises(ShapeError, match=r"uv must have shape \(B, H, W, 2\), got \(2, 3, 3, 3\)"):
        sample_texture(tex, torch.rand(2, 3, 3, 3))
    with pytest.raises(ShapeError, match="uv is torch.float64.*texture is torch.float32"):
        sample_texture(tex, uv.double())
    with pytest.raises(ShapeError, match="batch mismatch: texture has batch 3, uv has batch 2"):
        sample_texture(torch.rand(3, 4, 4, 3), uv)
    with pytest.raises(ShapeError, match=r"mask must have shape \(2, 3, 3\).*got \(2, 3, 4\)"):
        sample_texture(tex, uv, torch.ones(2, 3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="wrap must be one of"):
        sample_texture(tex, uv, wrap="mirror")
    with pytest.raises(ValueError, match="tile must be an int"):
        sample_texture(tex, uv, tile=1.0)
    with pytest.raises(ValueError, match="mode must be one of"):
        TextureSampler(mode="bicubic")


# --------------------------------------------------------------------------------------------------------------
# compositing


def test_composite_values(dtype):
    fg = torch.rand(2, 3, 4, 3, dtype=dtype)
    bg = torch.rand(2, 3, 4, 3, dtype=dtype)
    alpha = torch.rand(2, 3, 4, dtype=dtype)
    out = composite(fg, alpha, bg)
    torch.testing.assert_close(out, alpha[..., None] * fg + (1 - alpha[..., None]) * bg)
    torch.testing.assert_close(composite(fg, alpha[..., None], bg), out)
    torch.testing.assert_close(composite(fg, torch.ones_like(alpha), bg), fg)
    torch.testing.assert_close(composite(fg, torch.zeros_like(alpha), bg), bg)
    # colours, numbers, (H, W, C) images, batch-1 alpha
    c = composite(fg, torch.zeros_like(alpha), (0.1, 0.2, 0.3))
    torch.testing.assert_close(c, torch.tensor([0.1, 0.2, 0.3], dtype=dtype).expand(2, 3, 4, 3))
    assert (composite(fg, torch.zeros_like(alpha), 0.5) == 0.5).all()
    torch.testing.assert_close(composite(fg, alpha, bg[0]), alpha[..., None] * fg + (1 - alpha[..., None]) * bg[0])
    torch.testing.assert_close(composite(fg, alpha[:1], bg), composite(fg, alpha[:1].expand(2, 3, 4), bg))
    # a bool mask selects, and NaN in the hidden layer does not leak
    mask = alpha > 0.5
    fg_nan = fg.clone()
    fg_nan[~mask] = float("nan")
    sel = composite(fg_nan, mask, bg)
    torch.testing.assert_close(sel, torch.where(mask[..., None], fg, bg))
    # module
    m = Compositor((0.0, 1.0, 0.0)).to(dtype)
    torch.testing.assert_close(m(fg, alpha), composite(fg, alpha, torch.tensor([0.0, 1.0, 0.0], dtype=dtype)))
    torch.testing.assert_close(m(fg, alpha, bg), out)


def test_composite_gradcheck():
    g = torch.Generator().manual_seed(0)
    fg = torch.rand(2, 3, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    bg = torch.rand(2, 3, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    alpha = torch.rand(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert gradcheck(composite, (fg, alpha, bg))
    # d/dalpha = fg - bg, also where alpha is exactly 0
    a0 = torch.zeros(2, 3, 4, dtype=torch.float64, requires_grad=True)
    composite(fg.detach(), a0, bg.detach()).sum().backward()
    torch.testing.assert_close(a0.grad, (fg - bg).detach().sum(-1))


def test_layout_and_uint8():
    x = torch.rand(2, 5, 6, 3)
    y = to_bchw(x)
    assert y.shape == (2, 3, 5, 6) and y.data_ptr() == x.data_ptr()
    torch.testing.assert_close(y[1, 2], x[1, :, :, 2])
    assert torch.equal(to_bhwc(y), x)
    assert to_bchw(x[0]).shape == (3, 5, 6) and to_bhwc(to_bchw(x[0])).shape == (5, 6, 3)
    u = to_uint8(torch.tensor([-0.1, 0.0, 0.5, 1.0, 1.5, float("nan"), 0.2]))
    assert u.dtype == torch.uint8 and u.tolist() == [0, 0, 128, 255, 255, 0, 51]
    v = from_uint8(torch.tensor([0, 51, 255], dtype=torch.uint8), dtype=torch.float64)
    assert v.dtype == torch.float64 and v.tolist() == pytest.approx([0.0, 0.2, 1.0])
    img = torch.randint(0, 256, (1, 4, 4, 3), dtype=torch.uint8)
    assert torch.equal(to_uint8(from_uint8(img)), img)


def test_compositing_errors_state_what_was_received():
    fg = torch.rand(2, 3, 4, 3)
    with pytest.raises(ShapeError, match=r"foreground must have shape \(B, H, W, C\), got \(3, 4, 3\)"):
        composite(fg[0], torch.ones(3, 4))
    with pytest.raises(ShapeError, match=r"alpha must have shape \(2, 3, 4\).*got \(2, 4, 3\)"):
        composite(fg, torch.ones(2, 4, 3))
    with pytest.raises(ShapeError, match=r"alpha must have shape.*got \(3, 3, 4\)"):
        composite(fg, torch.ones(3, 3, 4))
    with pytest.raises(ShapeError, match="alpha is torch.float64"):
        composite(fg, torch.ones(2, 3, 4, dtype=torch.float64))
    with pytest.raises(ShapeError, match="bool or floating point, got torch.int64"):
        composite(fg, torch.ones(2, 3, 4, dtype=torch.int64))
    with pytest.raises(ShapeError, match=r"background must be .*got \(2, 3, 5, 3\)"):
        composite(fg, torch.ones(2, 3, 4), torch.zeros(2, 3, 5, 3))
    with pytest.raises(ShapeError, match="colour must have 1 or 3 values"):
        composite(fg, torch.ones(2, 3, 4), (0.0, 1.0))
    with pytest.raises(ShapeError, match=r"to_bchw expects .*got \(5, 6\)"):
        to_bchw(torch.rand(5, 6))
    with pytest.raises(ShapeError, match="uint8 tensor, got torch.float32"):
        from_uint8(torch.rand(3))
    with pytest.raises(ShapeError, match="floating-point tensor, got torch.uint8"):
        to_uint8(torch.zeros(3, dtype=torch.uint8))


def test_device_follows_the_tensors(device):
    tex = torch.rand(6, 5, 3)
    uv = torch.rand(2, 4, 4, 2)
    mask = torch.rand(2, 4, 4) > 0.3
    for wrap in ("clamp", "repeat"):
        out = sample_texture(tex.to(device), uv.to(device), mask.to(device), wrap=wrap)
        assert out.device.type == device.type
        torch.testing.assert_close(out.cpu(), sample_texture(tex, uv, mask, wrap=wrap))
    fg = torch.rand(2, 4, 4, 3)
    c = composite(fg.to(device), mask.to(device), (0.0, 0.5, 1.0))
    torch.testing.assert_close(c.cpu(), composite(fg, mask, (0.0, 0.5, 1.0)))
    assert Compositor(0.5).to(device)(fg.to(device), mask.to(device)).device.type == device.type
