"""SH lighting: basis, orthonormality, known lights, Deep3DFaceRecon equivalence, gradients, errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from facerender.render.lighting import (
    LAMBERTIAN_KERNEL,
    SH_CONSTANTS,
    SHShading,
    ambient_light,
    directional_light,
    sh_basis,
    sh_from_deep3d,
    sh_irradiance,
    sh_to_deep3d,
    shade_lambertian,
)
from morphable_models.errors import ShapeError

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float64: dict(rtol=1e-12, atol=1e-12)}


def unit_normals(*shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = torch.randn(*shape, 3, generator=g, dtype=dtype)
    return n / n.norm(dim=-1, keepdim=True)


def sphere_quadrature(n_theta=8, n_phi=16):
    """Gauss-Legendre in cos(theta) x uniform in phi: exact for polynomials of degree <= 2 n_theta - 1 (and < n_phi
    in the azimuthal frequency) on the sphere."""
    t, w = np.polynomial.legendre.leggauss(n_theta)
    phi = (np.arange(n_phi) + 0.5) * 2 * np.pi / n_phi
    T, P = np.meshgrid(t, phi, indexing="ij")
    s = np.sqrt(1 - T ** 2)
    dirs = np.stack([s * np.cos(P), s * np.sin(P), T], -1).reshape(-1, 3)
    weights = (w[:, None] * np.full(n_phi, 2 * np.pi / n_phi)[None]).reshape(-1)
    return torch.from_numpy(dirs), torch.from_numpy(weights)


# --------------------------------------------------------------------------------------------------------------
# basis


def test_constants_and_basis_values():
    assert SH_CONSTANTS == pytest.approx((0.282095, 0.488603, 0.488603, 0.488603, 1.092548, 1.092548, 0.315392,
                                          1.092548, 0.546274), abs=1e-6)
    assert LAMBERTIAN_KERNEL == pytest.approx((math.pi,) + (2 * math.pi / 3,) * 3 + (math.pi / 4,) * 5)
    n = torch.tensor([0.48, 0.6, 0.64], dtype=torch.float64)  # unit
    x, y, z = n.tolist()
    c = SH_CONSTANTS
    expected = [c[0], c[1] * y, c[2] * z, c[3] * x, c[4] * x * y, c[5] * y * z, c[6] * (3 * z * z - 1), c[7] * x * z,
                c[8] * (x * x - y * y)]
    torch.testing.assert_close(sh_basis(n), torch.tensor(expected, dtype=torch.float64))
    assert sh_basis(unit_normals(2, 4, 5)).shape == (2, 4, 5, 9)


def test_basis_orthonormal_on_the_sphere():
    dirs, w = sphere_quadrature()
    assert w.sum().item() == pytest.approx(4 * math.pi)
    Y = sh_basis(dirs)  # (P, 9)
    gram = Y.T @ (w[:, None] * Y)
    torch.testing.assert_close(gram, torch.eye(9, dtype=torch.float64), rtol=0, atol=1e-12)


def test_irradiance_is_the_kernel_times_the_projection():
    """E(n) = int L(w) max(0, n.w) dw for an environment given by SH coefficients (checked by quadrature of the
    clamped cosine against the band-limited radiance; the clamped cosine's l > 2 bands do not meet L)."""
    g = torch.Generator().manual_seed(3)
    coeffs = torch.randn(1, 9, 2, generator=g, dtype=torch.float64)
    dirs, w = sphere_quadrature(n_theta=200, n_phi=400)
    L = sh_basis(dirs) @ coeffs[0]  # (P, 2) radiance
    normals = unit_normals(1, 5)
    E = sh_irradiance(normals, coeffs)[0]
    for k in range(5):
        cos = (dirs @ normals[0, k]).clamp_min(0)
        E_quad = (w[:, None] * cos[:, None] * L).sum(0)
        torch.testing.assert_close(E[k], E_quad, rtol=1e-4, atol=1e-4)  # the kink of max(0, .) limits quadrature


# --------------------------------------------------------------------------------------------------------------
# lights


def test_ambient_light_gives_constant_irradiance(dtype):
    coeffs = ambient_light(torch.tensor([[1.0, 0.5, 0.25]], dtype=dtype), batch_size=2)
    assert coeffs.shape == (2, 9, 3)
    assert coeffs[0, 0, 0].item() == pytest.approx(2 * math.sqrt(math.pi))
    assert (coeffs[:, 1:] == 0).all()
    n = unit_normals(2, 100, dtype=dtype)
    E = sh_irradiance(n, coeffs)
    torch.testing.assert_close(E, (math.pi * torch.tensor([1.0, 0.5, 0.25], dtype=dtype)).expand(2, 100, 3),
                               **TOL[dtype])
    albedo = torch.rand(2, 100, 3, dtype=dtype)
    torch.testing.assert_close(shade_lambertian(albedo, n, ambient_light(1.0, 2, dtype=dtype)), albedo, **TOL[dtype])
    assert ambient_light(0.5).shape == (1, 9, 3) and ambient_light(0.5, channels=1).shape == (1, 9, 1)


def test_directional_light_approximates_clamped_cosine():
    d = torch.tensor([0.3, -0.5, -0.8], dtype=torch.float64)
    d_unit = d / d.norm()
    coeffs = directional_light(d, intensity=2.0)
    assert coeffs.shape == (1, 9, 3)
    n = unit_normals(1, 2000)
    t = n[0] @ d_unit
    E = sh_irradiance(n, coeffs)[0, :, 0] / (2.0 * math.pi)  # in units of the irradiance at normal incidence
    # the 9-term approximation of max(0, t) is exactly 3/32 + t/2 + 15/32 t^2 (Ramamoorthi & Hanrahan 2001) ...
    torch.testing.assert_close(E, 3 / 32 + t / 2 + 15 / 32 * t ** 2)
    # ... whose largest error is 3/32 (at t = 0), 1/16 at t = +-1
    err = (E - t.clamp_min(0)).abs()
    assert err.max().item() <= 3 / 32 + 1e-12
    assert err.max().item() > 0.09
    # shading ~ albedo * intensity * max(0, n.d)
    albedo = torch.full((1, 2000, 3), 0.5, dtype=torch.float64)
    shaded = shade_lambertian(albedo, n, coeffs)[0, :, 0]
    torch.testing.assert_close(shaded, 0.5 * 2.0 * (3 / 32 + t / 2 + 15 / 32 * t ** 2))


def test_frame_normal_facing_camera_is_minus_z():
    # a light at the camera (direction (0, 0, -1)) lights a surface facing the camera (normal (0, 0, -1)) most
    coeffs = directional_light(torch.tensor([0.0, 0.0, -1.0]))
    n = torch.tensor([[[0.0, 0.0, -1.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]])
    E = sh_irradiance(n, coeffs)[0, :, 0] / math.pi
    torch.testing.assert_close(E, torch.tensor([34 / 32, 2 / 32, 3 / 32]))
    # a light from above the image (y down => direction (0, -1, 0)) lights the normal pointing up in the image
    top = directional_light(torch.tensor([0.0, -1.0, 0.0]))
    E = sh_irradiance(n, top)[0, :, 0] / math.pi
    assert E[2] == pytest.approx(34 / 32) and E[0] == pytest.approx(3 / 32)


def test_batches_channels_and_pixel_maps(dtype):
    coeffs = torch.randn(2, 9, 3, dtype=dtype)
    n = unit_normals(2, 4, 5, dtype=dtype)  # (B, H, W, 3) per pixel
    E = sh_irradiance(n, coeffs)
    assert E.shape == (2, 4, 5, 3)
    Y = sh_basis(n)
    k = torch.tensor(LAMBERTIAN_KERNEL, dtype=dtype)
    torch.testing.assert_close(E, torch.einsum("bhwk,bkc->bhwc", Y, coeffs * k[:, None]), **TOL[dtype])
    # batch-1 coefficients broadcast over normals and vice versa
    torch.testing.assert_close(sh_irradiance(n, coeffs[:1]), sh_irradiance(n, coeffs[:1].expand(2, 9, 3)))
    torch.testing.assert_close(sh_irradiance(n[:1], coeffs), sh_irradiance(n[:1].expand(2, 4, 5, 3), coeffs))
    # normalize: non-unit normals shade like unit ones
    torch.testing.assert_close(sh_irradiance(3 * n, coeffs), E, **TOL[dtype])
    assert not torch.allclose(sh_irradiance(3 * n, coeffs, normalize=False), E)


# --------------------------------------------------------------------------------------------------------------
# Deep3DFaceRecon


def deep3d_compute_color(face_texture, face_norm, gamma, init_lit=0.8):
    """Deep3DFaceRecon_pytorch models/bfm.py ParametricFaceModel.compute_color, transcribed as the oracle.

    face_texture (B, N, 3), face_norm (B, N, 3) in ITS frame (x right, y up, z towards the camera), gamma (B, 27).
    """
    a = [np.pi, 2 * np.pi / np.sqrt(3.0), 2 * np.pi / np.sqrt(8.0)]
    c = [1 / np.sqrt(4 * np.pi), np.sqrt(3.0) / np.sqrt(4 * np.pi), 3 * np.sqrt(5.0) / np.sqrt(12 * np.pi)]
    batch_size = gamma.shape[0]
    gamma = gamma.reshape([batch_size, 3, 9])
    gamma = gamma + torch.tensor([init_lit] + [0.0] * 8, dtype=gamma.dtype).reshape(1, 1, 9)
    gamma = gamma.permute(0, 2, 1)
    Y = torch.cat([
        a[0] * c[0] * torch.ones_like(face_norm[..., :1]),
        -a[1] * c[1] * face_norm[..., 1:2],
        a[1] * c[1] * face_norm[..., 2:],
        -a[1] * c[1] * face_norm[..., :1],
        a[2] * c[2] * face_norm[..., :1] * face_norm[..., 1:2],
        -a[2] * c[2] * face_norm[..., 1:2] * face_norm[..., 2:],
        0.5 * a[2] * c[2] / np.sqrt(3.0) * (3 * face_norm[..., 2:] ** 2 - 1),
        -a[2] * c[2] * face_norm[..., :1] * face_norm[..., 2:],
        0.5 * a[2] * c[2] * (face_norm[..., :1] ** 2 - face_norm[..., 1:2] ** 2),
    ], dim=-1)
    r = Y @ gamma[..., :1]
    g = Y @ gamma[..., 1:2]
    b = Y @ gamma[..., 2:]
    return torch.cat([r, g, b], dim=-1) * face_texture


def test_deep3d_converter_renders_the_same_colours(dtype):
    g = torch.Generator().manual_seed(7)
    gamma = (0.3 * torch.randn(3, 27, generator=g, dtype=torch.float64)).to(dtype)
    n = unit_normals(3, 200, dtype=dtype)
    albedo = torch.rand(3, 200, 3, generator=g, dtype=torch.float64).to(dtype)
    ours = shade_lambertian(albedo, n, sh_from_deep3d(gamma))
    n_d3d = n * torch.tensor([1.0, -1.0, -1.0], dtype=dtype)  # its frame: x right, y up, z towards the camera
    theirs = deep3d_compute_color(albedo, n_d3d, gamma)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    if dtype == torch.float64:
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    # gamma = 0: Deep3DFaceRecon's init_lit = 0.8 gives 0.8 * pi * c0 = 0.709 of the albedo for every normal
    zero = shade_lambertian(albedo, n, sh_from_deep3d(torch.zeros(3, 27, dtype=dtype)))
    torch.testing.assert_close(zero, albedo * 0.8 * math.pi * SH_CONSTANTS[0], **TOL[dtype])
    # init_lit = 0 for values that already contain it
    torch.testing.assert_close(sh_from_deep3d(gamma + torch.tensor([0.8] + [0.0] * 8, dtype=dtype).repeat(3),
                                              init_lit=0.0), sh_from_deep3d(gamma), **TOL[dtype])


def test_deep3d_round_trip(dtype):
    gamma = torch.randn(4, 27, dtype=dtype)
    torch.testing.assert_close(sh_to_deep3d(sh_from_deep3d(gamma)), gamma, **TOL[dtype])
    coeffs = torch.randn(4, 9, 3, dtype=dtype)
    torch.testing.assert_close(sh_from_deep3d(sh_to_deep3d(coeffs)), coeffs, **TOL[dtype])
    # and through the oracle: our light, expressed in Deep3DFaceRecon's gamma, renders the same
    n = unit_normals(4, 50, dtype=dtype)
    albedo = torch.rand(4, 50, 3, dtype=dtype)
    torch.testing.assert_close(deep3d_compute_color(albedo, n * torch.tensor([1.0, -1.0, -1.0], dtype=dtype),
                                                    sh_to_deep3d(coeffs)),
                               shade_lambertian(albedo, n, coeffs), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------------------
# gradients, module, errors


def test_gradchecks():
    g = torch.Generator().manual_seed(11)
    n = unit_normals(2, 6).requires_grad_()
    coeffs = torch.randn(2, 9, 3, generator=g, dtype=torch.float64, requires_grad=True)
    albedo = torch.rand(2, 6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert gradcheck(sh_basis, (n,))
    assert gradcheck(lambda a, b: sh_irradiance(a, b), (n, coeffs))
    assert gradcheck(lambda a, b: sh_irradiance(a, b, normalize=False), (n, coeffs))
    assert gradcheck(shade_lambertian, (albedo, n, coeffs))
    assert gradgradcheck(shade_lambertian, (albedo, n, coeffs))
    d = torch.tensor([[0.2, -0.4, -0.9]], dtype=torch.float64, requires_grad=True)
    I = torch.tensor([1.5], dtype=torch.float64, requires_grad=True)
    assert gradcheck(directional_light, (d, I))
    assert gradcheck(lambda i: ambient_light(i, 2), (I,))
    gamma = torch.randn(2, 27, generator=g, dtype=torch.float64, requires_grad=True)
    assert gradcheck(sh_from_deep3d, (gamma,))
    assert gradcheck(sh_to_deep3d, (coeffs,))


def test_module_equals_function():
    n = unit_normals(2, 10)
    coeffs = torch.randn(2, 9, 3, dtype=torch.float64)
    albedo = torch.rand(2, 10, 3, dtype=torch.float64)
    m = SHShading()
    torch.testing.assert_close(m(albedo, n, coeffs), shade_lambertian(albedo, n, coeffs))
    torch.testing.assert_close(SHShading(normalize=False)(albedo, 2 * n, coeffs),
                               shade_lambertian(albedo, 2 * n, coeffs, normalize=False))
    assert "normalize=True" in repr(m)


def test_noncontiguous_inputs():
    n = unit_normals(10, 2).transpose(0, 1)  # (2, 10, 3), non-contiguous
    assert not n.is_contiguous()
    coeffs = torch.randn(2, 3, 9, dtype=torch.float64).transpose(1, 2)
    assert not coeffs.is_contiguous()
    torch.testing.assert_close(sh_irradiance(n, coeffs), sh_irradiance(n.contiguous(), coeffs.contiguous()))


def test_errors_state_what_was_received():
    n = unit_normals(2, 5)
    coeffs = torch.randn(2, 9, 3, dtype=torch.float64)
    with pytest.raises(ShapeError, match=r"\(\.\.\., 3\), got \(2, 5, 2\)"):
        sh_basis(torch.zeros(2, 5, 2))
    with pytest.raises(ShapeError, match="floating-point.*int64"):
        sh_basis(torch.zeros(2, 5, 3, dtype=torch.int64))
    with pytest.raises(ShapeError, match=r"\(B, 9, C\), got \(2, 8, 3\)"):
        sh_irradiance(n, torch.zeros(2, 8, 3, dtype=torch.float64))
    with pytest.raises(ShapeError, match="batch mismatch.*2.*3"):
        sh_irradiance(n, torch.zeros(3, 9, 3, dtype=torch.float64))
    with pytest.raises(ShapeError, match="float32.*float64"):
        sh_irradiance(n, torch.zeros(2, 9, 3))
    with pytest.raises(ShapeError, match=r"albedo \(2, 4, 3\) does not broadcast"):
        shade_lambertian(torch.rand(2, 4, 3, dtype=torch.float64), n, coeffs)
    with pytest.raises(ShapeError, match=r"gamma must have shape \(B, 27\), got \(2, 26\)"):
        sh_from_deep3d(torch.zeros(2, 26))
    with pytest.raises(ShapeError, match=r"\(B, 9, 3\), got \(2, 9, 1\)"):
        sh_to_deep3d(torch.zeros(2, 9, 1))
    with pytest.raises(ShapeError, match="intensity has 2 channels"):
        ambient_light(torch.ones(1, 2))
    with pytest.raises(ShapeError, match=r"direction must have shape \(B, 3\)"):
        directional_light(torch.zeros(1, 2, 3))


def test_device_follows_the_tensors(device):
    n = unit_normals(2, 10, dtype=torch.float32)
    coeffs = torch.randn(2, 9, 3)
    albedo = torch.rand(2, 10, 3)
    out = shade_lambertian(albedo.to(device), n.to(device), coeffs.to(device))
    assert out.device.type == device.type
    torch.testing.assert_close(out.cpu(), shade_lambertian(albedo, n, coeffs))
    assert directional_light(torch.tensor([0.0, 0.0, -1.0], device=device)).device.type == device.type
    assert ambient_light(1.0, device=device).device.type == device.type
    assert sh_from_deep3d(torch.zeros(1, 27, device=device)).device.type == device.type
