"""Cameras: the pixel convention, round trips, pyramids, OpenGL / PyTorch3D conversions, Jacobians, errors."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

from facerender.cameras import (
    OrthographicCamera,
    PinholeCamera,
    WeakPerspectiveCamera,
    camera_to_opengl,
    camera_to_pytorch3d,
    opengl_ndc_to_pixels,
    pixels_to_opengl_ndc,
    pixels_to_pytorch3d_ndc,
    project_points,
    projection_jacobian,
    projection_jacobian_intrinsics,
    pytorch3d_ndc_to_pixels,
    unproject_points,
)
from morphable_models.errors import ShapeError

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-4), torch.float64: dict(rtol=1e-10, atol=1e-9)}


def make_camera(B=2, dtype=torch.float64, size=(120, 160)):
    g = torch.Generator().manual_seed(0)
    fx = 300 + 50 * torch.rand(B, generator=g, dtype=dtype)
    fy = fx * (1 + 0.1 * torch.rand(B, generator=g, dtype=dtype))
    cx = size[1] / 2 + 5 * torch.randn(B, generator=g, dtype=dtype)
    cy = size[0] / 2 + 5 * torch.randn(B, generator=g, dtype=dtype)
    return PinholeCamera(fx=fx, fy=fy, cx=cx, cy=cy, image_size=size)


def make_points(B=2, N=50, dtype=torch.float64, zmin=20.0):
    g = torch.Generator().manual_seed(1)
    p = torch.randn(B, N, 3, generator=g, dtype=dtype) * torch.tensor([5.0, 5.0, 3.0], dtype=dtype)
    p[..., 2] += zmin + 10
    return p


# --------------------------------------------------------------------------------------------------------------
# convention


def test_optical_axis_lands_on_principal_point(dtype):
    cam = make_camera(dtype=dtype)
    pts = torch.tensor([[[0.0, 0.0, 7.0], [0.0, 0.0, 300.0]]], dtype=dtype).expand(2, 2, 3)
    px = cam.project(pts)
    torch.testing.assert_close(px[..., 0], cam.cx[:, None].expand(2, 2), **TOL[dtype])
    torch.testing.assert_close(px[..., 1], cam.cy[:, None].expand(2, 2), **TOL[dtype])


def test_pixel_centre_convention():
    # centred camera on a 4 x 6 image: cx = 3, cy = 2; pixel (col i, row j) has its centre at (i + .5, j + .5)
    cam = PinholeCamera(fx=10.0, fy=10.0, cx=3.0, cy=2.0, image_size=(4, 6))
    Z = 5.0
    for i, j in [(0, 0), (5, 3), (2, 1)]:
        X, Y = (i + 0.5 - 3.0) * Z / 10.0, (j + 0.5 - 2.0) * Z / 10.0
        px = cam.project(torch.tensor([[[X, Y, Z]]]))[0, 0]
        assert px.tolist() == pytest.approx([i + 0.5, j + 0.5], abs=1e-6)
        assert (int(px[0].floor()), int(px[1].floor())) == (i, j)
    # the image edges: X/Z = -cx/fx is the left edge of the image (x = 0), +(W - cx)/fx the right edge (x = W)
    edges = cam.project(torch.tensor([[[-3.0 / 10 * Z, -2.0 / 10 * Z, Z], [3.0 / 10 * Z, 2.0 / 10 * Z, Z]]]))[0]
    torch.testing.assert_close(edges, torch.tensor([[0.0, 0.0], [6.0, 4.0]]))


def test_from_fov_spans_the_image_edge_to_edge():
    cam = PinholeCamera.from_fov(90.0, (100, 200))
    assert cam.fx.item() == pytest.approx(100.0) and cam.fy.item() == pytest.approx(100.0)
    assert (cam.cx.item(), cam.cy.item()) == (100.0, 50.0)
    px = cam.project(torch.tensor([[[1.0, 0.0, 1.0], [-1.0, 0.0, 1.0]]]))[0]
    torch.testing.assert_close(px, torch.tensor([[200.0, 50.0], [0.0, 50.0]]))
    camv = PinholeCamera.from_fov(torch.tensor([math.pi / 2, math.pi / 3], dtype=torch.float64), (100, 200),
                                  degrees=False, axis="vertical")
    assert camv.dtype == torch.float64 and len(camv) == 2
    torch.testing.assert_close(camv.fy, torch.tensor([50.0, 50.0 / math.tan(math.pi / 6)], dtype=torch.float64))


def test_from_K_and_opencv_half_pixel():
    K = torch.tensor([[500.0, 0.0, 99.5], [0.0, 510.0, 79.5], [0.0, 0.0, 1.0]], dtype=torch.float64)
    cam = PinholeCamera.from_K(K, (160, 200), opencv=True)  # OpenCV centre of a 200 x 160 image: (99.5, 79.5)
    assert (cam.cx.item(), cam.cy.item()) == (100.0, 80.0)
    torch.testing.assert_close(cam.intrinsic_matrix(opencv=True)[0], K)
    cam2 = PinholeCamera.from_K(K[None].repeat(3, 1, 1), (160, 200))
    assert len(cam2) == 3 and cam2.cx.tolist() == [99.5] * 3
    torch.testing.assert_close(cam2.intrinsic_matrix(), K[None].expand(3, 3, 3))
    # OpenCV's projection (pixel centres at integers) + 0.5 == ours
    p = make_points(B=1, N=10)
    Kp = p @ K.T
    cv = Kp[..., :2] / Kp[..., 2:]
    torch.testing.assert_close(cam.project(p), cv + 0.5)


# --------------------------------------------------------------------------------------------------------------
# round trips


def test_project_unproject_round_trip(dtype):
    cam = make_camera(dtype=dtype)
    p = make_points(dtype=dtype)
    torch.testing.assert_close(cam.unproject(cam.project(p), p[..., 2]), p, **TOL[dtype])
    screen = cam.to_screen(p)
    assert screen.shape == p.shape
    torch.testing.assert_close(screen[..., :2], cam.project(p))
    torch.testing.assert_close(screen[..., 2], p[..., 2])
    torch.testing.assert_close(cam.from_screen(screen), p, **TOL[dtype])
    # functional form == method
    torch.testing.assert_close(project_points(p, cam.fx, cam.fy, cam.cx, cam.cy), cam.project(p))
    torch.testing.assert_close(unproject_points(screen[..., :2], p[..., 2], cam.fx, cam.fy, cam.cx, cam.cy),
                               cam.unproject(screen[..., :2], p[..., 2]))


def test_pixel_centre_unprojects_and_projects_exactly():
    cam = PinholeCamera(fx=256.0, fy=256.0, cx=64.0, cy=64.0, image_size=(128, 128), )
    cam = cam.apply(lambda t: t.double())
    j, i = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")
    centres = torch.stack([i + 0.5, j + 0.5], -1).reshape(1, -1, 2).double()
    depth = torch.full(centres.shape[:2], 32.0, dtype=torch.float64)
    back = cam.project(cam.unproject(centres, depth))
    assert torch.equal(back, centres)  # powers of two: exact


def test_orthographic_round_trip_and_convention(dtype):
    cam = OrthographicCamera(scale=torch.tensor([4.0, 8.0], dtype=dtype), tx=50.0, ty=40.0, image_size=(80, 100))
    assert WeakPerspectiveCamera is OrthographicCamera
    p = make_points(dtype=dtype)
    px = cam.project(p)
    torch.testing.assert_close(px[..., 0], cam.scale[:, None] * p[..., 0] + 50.0)
    torch.testing.assert_close(cam.unproject(px, p[..., 2]), p, **TOL[dtype])
    torch.testing.assert_close(cam.from_screen(cam.to_screen(p)), p, **TOL[dtype])
    axis = cam.project(torch.zeros(2, 1, 3, dtype=dtype))
    torch.testing.assert_close(axis, torch.tensor([[[50.0, 40.0]]] * 2, dtype=dtype))


# --------------------------------------------------------------------------------------------------------------
# pyramids and crops


@pytest.mark.parametrize("size", [(64, 96), (63, 95)])
def test_scaled_camera_matches_2x_pyramid(size):
    """A 2x2 average pool (and bilinear interpolate, align_corners=False) follow the scaled camera exactly."""
    cam = make_camera(B=1, size=size)
    half = cam.scaled(0.5)
    assert half.image_size == (size[0] // 2, size[1] // 2)
    torch.testing.assert_close(half.fx, cam.fx / 2)
    torch.testing.assert_close(half.cx, cam.cx / 2)
    H, W = size
    # a linear ramp image: value at continuous pixel position (x, y) is a x + b y + c
    a, b, c = 0.3, -0.7, 2.0
    j, i = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    fine = (a * (i + 0.5) + b * (j + 0.5) + c)[None, None]
    for coarse in (F.avg_pool2d(fine, 2), F.interpolate(fine, scale_factor=0.5, mode="bilinear", align_corners=False)):
        Hc, Wc = coarse.shape[-2:]
        assert (Hc, Wc) == half.image_size
        jc, ic = torch.meshgrid(torch.arange(Hc, dtype=torch.float64), torch.arange(Wc, dtype=torch.float64),
                                indexing="ij")
        centres = torch.stack([ic + 0.5, jc + 0.5], -1).reshape(1, -1, 2)
        # the 3D point seen at each coarse pixel centre is seen by the fine camera where the ramp has that value
        pts = half.unproject(centres, torch.full(centres.shape[:2], 40.0, dtype=torch.float64))
        xf = cam.project(pts)[0]
        expected = a * xf[:, 0] + b * xf[:, 1] + c
        torch.testing.assert_close(coarse.reshape(-1), expected, rtol=1e-12, atol=1e-12)
    # round trip and a point's pixel halves
    p = make_points(B=1)
    torch.testing.assert_close(half.project(p), cam.project(p) / 2)
    torch.testing.assert_close(half.scaled(2.0).project(p), cam.project(p))


def test_resized_and_crop():
    cam = make_camera(B=2)
    p = make_points()
    r = cam.resized((60, 40))
    assert r.image_size == (60, 40)
    torch.testing.assert_close(r.project(p), cam.project(p) * torch.tensor([40 / 160, 60 / 120], dtype=torch.float64))
    c = cam.crop(top=10, left=torch.tensor([3.0, 7.0], dtype=torch.float64), image_size=(50, 50))
    assert c.image_size == (50, 50)
    shift = torch.tensor([[[3.0, 10.0]], [[7.0, 10.0]]], dtype=torch.float64)
    torch.testing.assert_close(c.project(p), cam.project(p) - shift)
    o = OrthographicCamera(2.0, 10.0, 12.0, (20, 30))
    po = make_points(B=1, dtype=torch.float32)
    torch.testing.assert_close(o.scaled(0.5).project(po), o.project(po) / 2)
    torch.testing.assert_close(o.crop(2, 1, (5, 5)).project(po), o.project(po) - torch.tensor([1.0, 2.0]))


# --------------------------------------------------------------------------------------------------------------
# OpenGL / nvdiffrast


@pytest.mark.parametrize("size", [(120, 160), (161, 90)])
def test_opengl_path_lands_on_same_pixel(size):
    cam = make_camera(size=size)
    p = make_points()
    near, far = 1.0, 500.0
    clip = cam.to_opengl_clip(p, near, far)
    assert clip.shape == (2, 50, 4)
    ndc = clip[..., :3] / clip[..., 3:]
    torch.testing.assert_close(opengl_ndc_to_pixels(ndc[..., :2], size), cam.project(p), rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(pixels_to_opengl_ndc(cam.project(p), size), ndc[..., :2])
    # same via the matrix on eye space
    P = cam.opengl_projection(near, far)
    eye = camera_to_opengl(p)
    clip2 = torch.cat([eye, torch.ones_like(eye[..., :1])], -1) @ P.transpose(-1, -2)
    torch.testing.assert_close(clip2, clip)
    # nvdiffrast's pixel (its row 0 at y_ndc = -1) is our pixel flipped upside down
    H, W = size
    inside = (ndc[..., :2].abs() < 1).all(-1)
    assert inside.sum() > 20
    col_gl = torch.floor((ndc[..., 0] + 1) / 2 * W)
    row_gl = torch.floor((ndc[..., 1] + 1) / 2 * H)
    px = cam.project(p)
    assert torch.equal(col_gl[inside], px[..., 0].floor()[inside])
    assert torch.equal(row_gl[inside], (H - 1 - px[..., 1].floor())[inside])
    # depth: near -> -1, far -> +1
    zs = torch.tensor([[[0.0, 0.0, near], [0.0, 0.0, far]]], dtype=torch.float64).expand(2, 2, 3)
    cz = cam.to_opengl_clip(zs, near, far)
    torch.testing.assert_close(cz[..., 2] / cz[..., 3], torch.tensor([[-1.0, 1.0]] * 2, dtype=torch.float64))
    # and back
    cam2, n2, f2 = PinholeCamera.from_opengl_projection(P, size)
    for k in ("fx", "fy", "cx", "cy"):
        torch.testing.assert_close(getattr(cam2, k), getattr(cam, k))
    torch.testing.assert_close(n2, torch.full((2,), near, dtype=torch.float64))
    torch.testing.assert_close(f2, torch.full((2,), far, dtype=torch.float64))


def test_opengl_orthographic():
    size = (90, 120)
    cam = OrthographicCamera(scale=torch.tensor([3.0, 5.0], dtype=torch.float64), tx=60.0, ty=44.0, image_size=size)
    p = make_points()
    clip = cam.to_opengl_clip(p, 0.5, 80.0)
    torch.testing.assert_close(clip[..., 3], torch.ones_like(clip[..., 3]))
    torch.testing.assert_close(opengl_ndc_to_pixels(clip[..., :2], size), cam.project(p))
    zs = torch.tensor([[[0.0, 0.0, 0.5], [0.0, 0.0, 80.0]]], dtype=torch.float64).expand(2, 2, 3)
    torch.testing.assert_close(cam.to_opengl_clip(zs, 0.5, 80.0)[..., 2],
                               torch.tensor([[-1.0, 1.0]] * 2, dtype=torch.float64))
    cam2, n, f = OrthographicCamera.from_opengl_projection(cam.opengl_projection(0.5, 80.0), size)
    torch.testing.assert_close(cam2.scale, cam.scale)
    torch.testing.assert_close(cam2.tx, cam.tx)
    torch.testing.assert_close(cam2.ty, cam.ty)
    torch.testing.assert_close(n, torch.full((2,), 0.5, dtype=torch.float64))
    torch.testing.assert_close(f, torch.full((2,), 80.0, dtype=torch.float64))


# --------------------------------------------------------------------------------------------------------------
# PyTorch3D (its documented maths, re-implemented here as the oracle: cameras.py of PyTorch3D 0.7)


def _p3d_transform_points_screen(kw, points_world, image_size, orthographic=False):
    """PyTorch3D PerspectiveCameras / OrthographicCameras.transform_points_screen (with_xyflip=True)."""
    H, W = image_size
    S = min(H, W) / 2.0  # its "scale"
    R, T = kw["R"], kw["T"]
    view = points_world @ R + T[:, None]  # X_view = X_world R + T (row vectors)
    fx, fy = kw["focal_length"][:, 0:1], kw["focal_length"][:, 1:2]
    px, py = kw["principal_point"][:, 0:1], kw["principal_point"][:, 1:2]
    X, Y, Z = view.unbind(-1)
    if orthographic:
        x, y = fx * X + px, fy * Y + py
    else:
        x, y = fx * X / Z + px, fy * Y / Z + py
    if not kw["in_ndc"]:
        # get_ndc_camera_transform of screen cameras: principal-point fix, then screen->ndc without flip
        x, y = x - 2 * px, y - 2 * py
        x, y = (x + W / 2.0) / S, (y + H / 2.0) / S
    # get_ndc_to_screen_transform(with_xyflip=True)
    return torch.stack([-(S * x - W / 2.0), -(S * y - H / 2.0)], -1)


@pytest.mark.parametrize("size", [(120, 160), (161, 90), (64, 64)])
@pytest.mark.parametrize("in_ndc", [True, False])
def test_pytorch3d_conventions_land_on_same_pixel(size, in_ndc):
    cam = make_camera(size=size)
    p = make_points()
    kw = cam.to_pytorch3d(in_ndc=in_ndc)
    assert kw["focal_length"].shape == (2, 2) and kw["principal_point"].shape == (2, 2)
    assert kw["image_size"].tolist() == [list(size)] * 2 and kw["in_ndc"] is in_ndc
    torch.testing.assert_close(_p3d_transform_points_screen(kw, p, size), cam.project(p), rtol=1e-10, atol=1e-9)
    back = PinholeCamera.from_pytorch3d(kw["focal_length"], kw["principal_point"], size, in_ndc=in_ndc)
    for k in ("fx", "fy", "cx", "cy"):
        torch.testing.assert_close(getattr(back, k), getattr(cam, k))
    # view space and NDC helpers
    view = camera_to_pytorch3d(p)
    torch.testing.assert_close(view, p @ kw["R"])
    if in_ndc:
        X, Y, Z = view.unbind(-1)
        ndc = torch.stack([kw["focal_length"][:, :1] * X / Z + kw["principal_point"][:, :1],
                           kw["focal_length"][:, 1:] * Y / Z + kw["principal_point"][:, 1:]], -1)
        torch.testing.assert_close(pixels_to_pytorch3d_ndc(cam.project(p), size), ndc)
        torch.testing.assert_close(pytorch3d_ndc_to_pixels(ndc, size), cam.project(p))


def test_pytorch3d_ndc_corners_and_pixel_centres():
    H, W = 40, 60  # W > H: x spans [-1.5, 1.5], y spans [-1, 1]; +X left, +Y up
    corners = torch.tensor([[0.0, 0.0], [W, H]])
    torch.testing.assert_close(pixels_to_pytorch3d_ndc(corners, (H, W)), torch.tensor([[1.5, 1.0], [-1.5, -1.0]]))
    # PyTorch3D's rasterizer puts pixel (col i, row j) at NDC ((W - 1 - 2 i) / S, (H - 1 - 2 j) / S), S = min(H, W)
    i, j = 7.0, 3.0
    got = pixels_to_pytorch3d_ndc(torch.tensor([i + 0.5, j + 0.5]), (H, W))
    torch.testing.assert_close(got, torch.tensor([(W - 1 - 2 * i) / H, (H - 1 - 2 * j) / H]))
    # OpenGL NDC: image corners at (-1, 1) (top left) and (1, -1)
    torch.testing.assert_close(pixels_to_opengl_ndc(corners, (H, W)), torch.tensor([[-1.0, 1.0], [1.0, -1.0]]))
    # extra channels pass through
    assert pixels_to_opengl_ndc(torch.tensor([[1.0, 2.0, 3.0]]), (H, W))[0, 2] == 3.0


def test_pytorch3d_orthographic():
    size = (50, 70)
    cam = OrthographicCamera(scale=torch.tensor([3.0, 5.0], dtype=torch.float64), tx=30.0, ty=20.0, image_size=size)
    p = make_points()
    for in_ndc in (True, False):
        kw = cam.to_pytorch3d(in_ndc=in_ndc)
        got = _p3d_transform_points_screen(kw, p, size, orthographic=True)
        torch.testing.assert_close(got, cam.project(p))
        back = OrthographicCamera.from_pytorch3d(kw["focal_length"], kw["principal_point"], size, in_ndc=in_ndc)
        torch.testing.assert_close(back.scale, cam.scale)
        torch.testing.assert_close(back.tx, cam.tx)
    with pytest.raises(ValueError, match="scales differ"):
        OrthographicCamera.from_pytorch3d(torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2), size)


# --------------------------------------------------------------------------------------------------------------
# derivatives


def test_projection_jacobian_matches_autograd():
    cam = make_camera()
    p = make_points(N=7)
    J = cam.projection_jacobian(p)
    assert J.shape == (2, 7, 2, 3)
    for b in range(2):
        for n in range(7):
            Ja = torch.autograd.functional.jacobian(
                lambda x: project_points(x.reshape(1, 1, 3), cam.fx[b:b + 1], cam.fy[b:b + 1], cam.cx[b:b + 1],
                                         cam.cy[b:b + 1]).reshape(2), p[b, n])
            torch.testing.assert_close(J[b, n], Ja)
    torch.testing.assert_close(projection_jacobian(p, cam.fx, cam.fy), J)
    # w.r.t. intrinsics
    Ji = projection_jacobian_intrinsics(p)
    assert Ji.shape == (2, 7, 2, 4)
    for b in range(2):
        f = lambda k: project_points(p[b:b + 1], k[0:1], k[1:2], k[2:3], k[3:4]).reshape(7, 2)
        Ja = torch.autograd.functional.jacobian(f, torch.stack([cam.fx[b], cam.fy[b], cam.cx[b], cam.cy[b]]))
        torch.testing.assert_close(Ji[b], Ja)
    o = OrthographicCamera(torch.tensor([2.0, 3.0], dtype=torch.float64), 0.0, 0.0, (10, 10))
    Jo = o.projection_jacobian(p)
    torch.testing.assert_close(Jo[1, 3], torch.tensor([[3.0, 0, 0], [0, 3.0, 0]], dtype=torch.float64))


def test_gradcheck_project_unproject():
    cam = make_camera(B=2)
    p = make_points(N=4).requires_grad_()
    k = [t.detach().clone().requires_grad_() for t in (cam.fx, cam.fy, cam.cx, cam.cy)]
    assert gradcheck(project_points, (p, *k))
    px = cam.project(p).detach().requires_grad_()
    d = p[..., 2].detach().clone().requires_grad_()
    assert gradcheck(unproject_points, (px, d, *k))
    # through the camera object (intrinsics that require grad stay in the graph)
    assert gradcheck(lambda pts, fx: PinholeCamera(fx, k[1], k[2], k[3], (120, 160)).to_screen(pts), (p, k[0]))
    o_s = torch.tensor([2.0, 3.0], dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda pts, s: OrthographicCamera(s, 1.0, 2.0, (10, 10)).project(pts), (p, o_s))
    assert gradcheck(lambda fx: PinholeCamera(fx, k[1], k[2], k[3], (120, 160)).opengl_projection(1.0, 100.0), (k[0],))


# --------------------------------------------------------------------------------------------------------------
# bad data, batching, dtype/device, errors


def test_bad_data_returns_math_and_valid_mask():
    cam = PinholeCamera(fx=torch.tensor([100.0, -100.0]), fy=100.0, cx=50.0, cy=50.0, image_size=(100, 100))
    p = torch.tensor([[[1.0, 1.0, 10.0], [1.0, 1.0, -10.0], [1.0, 1.0, 0.0]]]).expand(2, 3, 3)
    px = cam.project(p)  # no error
    torch.testing.assert_close(px[0, 1], torch.tensor([40.0, 40.0]))  # behind the camera: mirrored, as the formula
    assert torch.isinf(px[0, 2]).all()
    assert cam.valid_mask(p).tolist() == [[True, False, False], [False, False, False]]
    assert cam.valid_mask(p, min_depth=20.0).tolist() == [[False, False, False]] * 2
    o = OrthographicCamera(torch.tensor([1.0, -1.0]), 0.0, 0.0, (10, 10))
    assert o.valid_mask(p).tolist() == [[True] * 3, [False] * 3]
    assert o.valid_mask(p, min_depth=0.0).tolist() == [[True, False, False], [False] * 3]


def test_batching_helpers(dtype):
    cam = make_camera(B=3, dtype=dtype)
    assert len(cam) == 3 and cam.dtype == dtype and cam.device.type == "cpu"
    c1 = cam[1]
    assert len(c1) == 1 and c1.fx.item() == cam.fx[1].item()
    assert cam[-1].cx.item() == cam.cx[2].item()
    assert len(cam[1:]) == 2 and len(cam[[0, 2]]) == 2 and len(cam[torch.tensor([True, False, True])]) == 2
    with pytest.raises(IndexError):
        cam[3]
    e = c1.expand(4)
    assert len(e) == 4 and (e.fx == cam.fx[1]).all()
    cat = PinholeCamera.cat([cam, c1])
    assert len(cat) == 4 and cat.fy[3] == cam.fy[1]
    c32 = cam.apply(lambda t: t.to(torch.float32))
    assert c32.dtype == torch.float32 and cam.dtype == dtype  # functional: original unchanged
    r = cam.replace(fx=cam.fx * 2)
    torch.testing.assert_close(r.fx, cam.fx * 2)
    # a batch-1 camera broadcasts over points, and vice versa
    p = make_points(B=3, dtype=dtype)
    torch.testing.assert_close(c1.project(p), c1.expand(3).project(p))
    torch.testing.assert_close(cam.project(p[:1]), cam.project(p[:1].expand(3, -1, -1)))
    # numbers become (1,) tensors; numbers + tensors broadcast to the tensors' batch, dtype and device
    c = PinholeCamera(fx=torch.tensor([1.0, 2.0], dtype=dtype), fy=3.0, cx=0.0, cy=0.0, image_size=[10, 10])
    assert c.fy.shape == (2,) and c.fy.dtype == dtype and c.image_size == (10, 10)


def test_noncontiguous_points():
    cam = make_camera()
    p = make_points()
    pt = p.transpose(0, 1).contiguous().transpose(0, 1)  # same values, non-contiguous
    assert not pt.is_contiguous()
    torch.testing.assert_close(cam.project(pt), cam.project(p))
    torch.testing.assert_close(cam.projection_jacobian(pt), cam.projection_jacobian(p))


def test_errors_state_what_was_received():
    cam = make_camera(B=2)
    with pytest.raises(ShapeError, match=r"\(B, N, 3\), got \(2, 5, 2\)"):
        cam.project(torch.zeros(2, 5, 2, dtype=torch.float64))
    with pytest.raises(ShapeError, match="floating-point.*int64"):
        cam.project(torch.zeros(2, 5, 3, dtype=torch.int64))
    with pytest.raises(ShapeError, match="float32.*camera is torch.float64"):
        cam.project(torch.zeros(2, 5, 3))
    with pytest.raises(ShapeError, match="batch mismatch.*3.*2"):
        cam.project(torch.zeros(3, 5, 3, dtype=torch.float64))
    with pytest.raises(ShapeError, match="depth"):
        cam.unproject(torch.zeros(2, 5, 2, dtype=torch.float64), torch.zeros(2, 4, dtype=torch.float64))
    with pytest.raises(ShapeError, match="image_size"):
        PinholeCamera(1.0, 1.0, 0.0, 0.0, image_size=(0, 5))
    with pytest.raises(ShapeError, match="image_size"):
        PinholeCamera(1.0, 1.0, 0.0, 0.0, image_size=(2.5, 5))
    with pytest.raises(ShapeError, match=r"fx must have shape \(B,\), got \(2, 2\)"):
        PinholeCamera(torch.ones(2, 2), 1.0, 0.0, 0.0, image_size=(5, 5))
    with pytest.raises(ShapeError, match="incompatible batch"):
        PinholeCamera(torch.ones(2), torch.ones(3), 0.0, 0.0, image_size=(5, 5))
    with pytest.raises(ShapeError, match="float64"):
        PinholeCamera(torch.ones(2), torch.ones(2, dtype=torch.float64), 0.0, 0.0, image_size=(5, 5))
    with pytest.raises(ShapeError, match="floating-point tensor, got torch.int64"):
        PinholeCamera(torch.ones(2, dtype=torch.int64), 1.0, 0.0, 0.0, image_size=(5, 5))
    with pytest.raises(ValueError, match="fov must be in"):
        PinholeCamera.from_fov(180.0, (10, 10))
    with pytest.raises(ValueError, match="axis"):
        PinholeCamera.from_fov(60.0, (10, 10), axis="diagonal")
    with pytest.raises(ValueError, match="factor must be a positive"):
        cam.scaled(0)
    with pytest.raises(ValueError, match="skew"):
        PinholeCamera.from_K(torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), (5, 5))
    with pytest.raises(ShapeError, match=r"K must be.*\(4, 4\)"):
        PinholeCamera.from_K(torch.eye(4), (5, 5))
    with pytest.raises(ValueError, match="near < far"):
        cam.opengl_projection(10.0, 1.0)
    with pytest.raises(ValueError, match="0 < near"):
        cam.opengl_projection(0.0, 1.0)
    with pytest.raises(ShapeError, match="cannot expand a batch of 2"):
        cam.expand(3)
    with pytest.raises(ShapeError, match="different image sizes"):
        PinholeCamera.cat([cam, cam.resized((10, 10))])
    with pytest.raises(ShapeError, match=r"\(\.\.\., 3\)"):
        camera_to_opengl(torch.zeros(4, 2))


def test_device_follows_the_tensors(device):
    cam = make_camera(B=2, dtype=torch.float32).apply(lambda t: t.to(device))
    assert cam.device.type == device.type
    p = make_points(dtype=torch.float32).to(device)
    px = cam.project(p)
    assert px.device.type == device.type
    torch.testing.assert_close(px.cpu(), make_camera(B=2, dtype=torch.float32).project(p.cpu()))
    assert cam.opengl_projection(1.0, 10.0).device.type == device.type
    assert cam.to_pytorch3d()["R"].device.type == device.type
    # depth of a batch of 1 broadcasts over the camera batch
    assert cam.unproject(px[:1], p[:1, :, 2]).shape == (2, 50, 3)
