"""The photometric (colour) term of a face fit, with a structured Gauss-Newton Jacobian.

Definition. The visible face surface is sampled by rasterising the model at the current parameters: every covered
pixel (on a stride when there are more than ``max_samples``) gives a surface point ``s`` = (triangle, barycentrics).
Within one solve these surface points are held fixed ON THE SURFACE (like the contour correspondences), so they move
with the parameters; between solves (pyramid levels, outer rounds) they are re-drawn. For a sample,

    C_model(s) = a(s) * E(R n(s); L) / pi          (per colour channel; a = interpolated per-vertex albedo,
                                                    n = interpolated model-space normal at sampling time,
                                                    E = SH irradiance, see facerender.render.lighting)
    C_image(s) = I(pi(X_cam(s)))                    (bilinear sample of the photo at the projected point)

and the energy is Face2Face's robust l2,1 colour term, averaged over the samples:

    E_col = w_col / S * sum_s ||C_model(s) - C_image(s)||_2

written for the least-squares solver as residuals ``r_s = sqrt(2 w / S) (C_model - C_image) / sqrt(||.|| + eps)``
with the IRLS factor frozen in the Jacobian. The Jacobian is analytic:

* geometry (rotation, translation, identity, expression): ``-grad I(u_s) . d pi / d X . d X / d theta`` with the image
  gradient of a lightly smoothed photo (the "inverse" formulation: the photo's gradient gives a wide basin), plus
  the rotation of the normals in the shading;
* SH coefficients: linear, ``a A_l Y_k(R n) / pi``.

Normals are held at their sampling-time shape (identity / expression do not change them within a solve; rotation
does). This is the only approximation, documented in docs/fitting.md.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from morphable_models import LinearFaceModel, vertex_normals

from ..render.lighting import LAMBERTIAN_KERNEL, SH_CONSTANTS, sh_basis
from ..render.rasterize import RasterSettings, rasterize
from .energies import Kinematics, Term, robust_point_residuals


def sh_basis_derivative(n: torch.Tensor) -> torch.Tensor:
    """``d Y_k / d n`` of :func:`facerender.render.lighting.sh_basis`: ``(..., 3) -> (..., 9, 3)``."""
    x, y, z = n.unbind(-1)
    c = SH_CONSTANTS
    zero = torch.zeros_like(x)
    rows = [
        (zero, zero, zero),
        (zero, zero + c[1], zero),
        (zero, zero, zero + c[2]),
        (zero + c[3], zero, zero),
        (c[4] * y, c[4] * x, zero),
        (zero, c[5] * z, c[5] * y),
        (zero, zero, 6 * c[6] * z),
        (c[7] * z, zero, c[7] * x),
        (2 * c[8] * x, -2 * c[8] * y, zero),
    ]
    return torch.stack([torch.stack(r, -1) for r in rows], -2)


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``image (B, H, W, C)`` (replicate border)."""
    x = image.permute(0, 3, 1, 2)
    r = max(1, int(math.ceil(2.5 * sigma)))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    C = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)
    return x.permute(0, 2, 3, 1)


def image_gradient(image: torch.Tensor, sigma: float = 0.8) -> torch.Tensor:
    """Smoothed central-difference gradient of ``image (B, H, W, C)`` -> ``(B, H, W, C, 2)`` (d/dx, d/dy per pixel)."""
    x = (gaussian_blur(image, sigma) if sigma > 0 else image).permute(0, 3, 1, 2)
    xp = F.pad(x, (1, 1, 1, 1), mode="replicate")
    gx = 0.5 * (xp[..., 1:-1, 2:] - xp[..., 1:-1, :-2])
    gy = 0.5 * (xp[..., 2:, 1:-1] - xp[..., :-2, 1:-1])
    return torch.stack([gx, gy], -1).permute(0, 2, 3, 1, 4)


def sample_bilinear(image: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Sample ``image (B, H, W, C)`` at pixel positions ``uv (B, S, 2)`` (centres at +0.5, border clamped) ->
    ``(B, S, C)``; differentiable w.r.t. ``uv`` and ``image`` (autograd of ``grid_sample``)."""
    B, H, W, C = image.shape
    grid = torch.stack([uv[..., 0] / W * 2 - 1, uv[..., 1] / H * 2 - 1], -1).unsqueeze(1)  # (B, 1, S, 2)
    out = F.grid_sample(image.permute(0, 3, 1, 2), grid, mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out[:, :, 0].permute(0, 2, 1)


def sample_bilinear_with_gradient(image: torch.Tensor, uv: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Bilinear samples ``(B, S, C)`` of ``image (B, H, W, C)`` at ``uv (B, S, 2)`` AND their exact derivative w.r.t.
    ``uv`` ``(B, S, C, 2)`` (the derivative of the bilinear interpolant; border clamped, zero outside). No autograd."""
    B, H, W, C = image.shape
    x = uv[..., 0] - 0.5
    y = uv[..., 1] - 0.5
    x0f, y0f = torch.floor(x), torch.floor(y)
    fx, fy = (x - x0f)[..., None], (y - y0f)[..., None]
    x0 = x0f.long()
    y0 = y0f.long()
    xa, xb = x0.clamp(0, W - 1), (x0 + 1).clamp(0, W - 1)
    ya, yb = y0.clamp(0, H - 1), (y0 + 1).clamp(0, H - 1)
    flat = image.reshape(B, H * W, C)

    def g(yy, xx):
        return torch.gather(flat, 1, (yy * W + xx)[..., None].expand(-1, -1, C))

    i00, i01, i10, i11 = g(ya, xa), g(ya, xb), g(yb, xa), g(yb, xb)
    top = i00 + fx * (i01 - i00)
    bot = i10 + fx * (i11 - i10)
    val = top + fy * (bot - top)
    gx = (1 - fy) * (i01 - i00) + fy * (i11 - i10)
    gy = bot - top
    return val, torch.stack([gx, gy], -1)


def sample_bspline(image: torch.Tensor, uv: torch.Tensor, with_gradient: bool = False
                   ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Cubic B-spline samples ``(B, S, C)`` of ``image (B, H, W, C)`` at pixel positions ``uv (B, S, 2)`` (centres at
    +0.5, border clamped), differentiable w.r.t. ``uv`` by autograd, and (``with_gradient``) their exact derivative
    w.r.t. ``uv`` ``(B, S, C, 2)``.

    The photometric energy samples the photo with this C2-continuous approximating spline rather than bilinearly: a
    bilinear interpolant has kinks at every pixel centre (where the surface samples are drawn), which makes
    Gauss-Newton converge slowly; the spline is smooth and acts as a light low-pass (about a 0.6 px blur).
    """
    B, H, W, C = image.shape
    x = uv[..., 0] - 0.5
    y = uv[..., 1] - 0.5
    x0f, y0f = torch.floor(x.detach()), torch.floor(y.detach())
    tx, ty = x - x0f, y - y0f

    def weights(t):
        t2, t3 = t * t, t * t * t
        return torch.stack([(1 - t) ** 3 / 6, (3 * t3 - 6 * t2 + 4) / 6, (-3 * t3 + 3 * t2 + 3 * t + 1) / 6, t3 / 6], -1)

    def dweights(t):
        t2 = t * t
        return torch.stack([-(1 - t) ** 2 / 2, (3 * t2 - 4 * t) / 2, (-3 * t2 + 2 * t + 1) / 2, t2 / 2], -1)

    off = torch.arange(-1, 3, device=uv.device)
    xi = (x0f.long()[..., None] + off).clamp(0, W - 1)  # (B, S, 4)
    yi = (y0f.long()[..., None] + off).clamp(0, H - 1)
    idx = (yi[..., :, None] * W + xi[..., None, :]).reshape(B, -1)  # (B, S*16) row-major (y, x)
    S = uv.shape[1]
    taps = torch.gather(image.reshape(B, H * W, C), 1, idx[..., None].expand(-1, -1, C)).reshape(B, S, 16, C)
    wx, wy = weights(tx), weights(ty)  # (B, S, 4)
    # the 16 tap weights (row-major y, x like ``idx``) and, for the derivative, those of d/dx and d/dy: every output
    # is one batched product with the taps (3 x 16 @ 16 x C per sample instead of broadcast-and-sum passes)
    w = (wy[..., :, None] * wx[..., None, :]).reshape(B, S, 1, 16)
    if not with_gradient:
        return (w @ taps).squeeze(2), None
    with torch.no_grad():
        wxd, wyd = wx.detach(), wy.detach()
        wg = torch.stack([wyd[..., :, None] * dweights(tx.detach())[..., None, :],
                          dweights(ty.detach())[..., :, None] * wxd[..., None, :]], 2).reshape(B, S, 2, 16)
    if w.requires_grad or taps.requires_grad:  # autograd through the value only; the derivative is exact data
        val = (w @ taps).squeeze(2)
        with torch.no_grad():
            g = wg @ taps.detach()
    else:
        out = torch.cat([w, wg], 2) @ taps  # (B, S, 3, C)
        val, g = out[:, :, 0], out[:, :, 1:]
    return val, g.transpose(-1, -2)


def _basis_rows(model: LinearFaceModel, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """The model's identity and expression bases stacked ``(K, V, 3)`` in ``dtype`` and a vertex-major copy
    ``(V, 3, K)``, cached on the model (a tracker builds a colour term per frame)."""
    key = ("photometric_basis", dtype, str(model.template.device), model.template.data_ptr())
    if key not in model.extra:
        V = model.num_vertices
        basis = torch.cat([model.identity_basis.view(-1, V, 3), model.expression_basis.view(-1, V, 3)]).to(dtype)
        model.extra[key] = (basis, basis.permute(1, 2, 0).contiguous())
    return model.extra[key]


class PhotometricTerm(Term):
    """Face2Face's robust colour term over visible surface samples (see the module docstring).

    Args:
        model: the model whose triangles are rasterised for sampling (typically the ``face`` sub-model).
        image: ``(B, H, W, 3)`` photo in [0, 1] at the resolution of this pyramid level.
        albedo: ``(B, V, 3)`` or ``(V, 3)`` per-vertex albedo in [0, 1].
        weight: ``w_col``.
        max_samples: at most this many samples per image (a pixel stride when the face covers more pixels).
        eps: smoothing of the l2,1 norm (colour units).
        min_cos: samples whose normal makes a grazing angle with the view ray (``-n.v < min_cos``) are dropped.
        sample_mask: optional ``(B, H, W)`` bool, pixels allowed to be sampled (e.g. a skin mask).
        smooth: standard deviation (pixels) of the Gaussian blur applied to the photo the energy compares with.
    The SH block ``sh`` holds ``L (9, 3)`` flattened row-major (index ``3 k + c``).
    """

    name = "photometric"

    def __init__(self, model: LinearFaceModel, image: torch.Tensor, albedo: torch.Tensor, weight: float,
                 max_samples: int = 4000, eps: float = 0.05, min_cos: float = 0.15,
                 sample_mask: Optional[torch.Tensor] = None, smooth: float = 0.0):
        self.model = model
        self.image = image
        # the energy samples the photo with a cubic B-spline (see sample_bspline), optionally pre-blurred
        self.image_s = gaussian_blur(image, smooth) if smooth > 0 else image
        self.albedo = albedo if albedo.ndim == 3 else albedo.unsqueeze(0).expand(image.shape[0], -1, -1)
        self.weight = weight
        self.max_samples = max_samples
        self.eps = eps
        self.min_cos = min_cos
        self.sample_mask = sample_mask
        self.basis, self._basis_vmajor = _basis_rows(model, image.dtype)  # (K, V, 3), (V, 3, K)
        self.kernel = torch.tensor([LAMBERTIAN_KERNEL[0]] + [LAMBERTIAN_KERNEL[1]] * 3 + [LAMBERTIAN_KERNEL[2]] * 5,
                                   dtype=image.dtype, device=image.device) / math.pi
        self.samples = None
        self.last_model_colour = None
        self.last_image_colour = None

    # ------------------------------------------------------------------------------------------------- samples
    @torch.no_grad()
    def update_samples(self, kin: Kinematics) -> int:
        """Rasterise at ``kin``'s parameters and draw the surface samples. Returns the smallest per-image count."""
        m = self.model
        dt = self.image.dtype
        B, H, W, _ = self.image.shape
        verts = m.template.to(dt) + torch.einsum("bk,kvc->bvc", kin.coeffs, self.basis)  # (B, V, 3)
        Xc = kin.camera_points(verts)
        uv = kin.project(Xc)
        screen = torch.cat([uv, Xc[..., 2:]], -1)
        frag = rasterize(screen, m.faces, (H, W), RasterSettings(cull_backfaces=True))
        n_model = vertex_normals(verts, m.faces)
        pix, tri, bary = frag.pixel_index, frag.pixel_triangle, frag.pixel_barycentrics.detach()
        b_of = torch.div(pix, H * W, rounding_mode="floor")
        if self.sample_mask is not None:
            keep = self.sample_mask.reshape(-1)[pix]
            pix, tri, bary, b_of = pix[keep], tri[keep], bary[keep], b_of[keep]
        faces = m.faces[tri]  # (P, 3)
        # drop grazing samples (their colour mixes background and the gradient is unreliable)
        nrm = (n_model[b_of[:, None], faces] * bary[..., None]).sum(1)
        nrm = F.normalize(nrm, dim=-1)
        Xs = (Xc[b_of[:, None], faces] * bary[..., None]).sum(1)
        n_cam = (kin.M[b_of] @ nrm.unsqueeze(-1)).squeeze(-1)
        cos = -(n_cam * F.normalize(Xs, dim=-1)).sum(-1)
        ok = cos > self.min_cos
        pix, tri, bary, b_of, nrm = pix[ok], tri[ok], bary[ok], b_of[ok], nrm[ok]
        counts = torch.bincount(b_of, minlength=B)
        S = int(min(self.max_samples, int(counts.max()) if counts.numel() else 0))
        S = max(S, 1)
        # per image: an even subsample of its covered pixels
        order = torch.argsort(b_of, stable=True)
        pix, tri, bary, b_of, nrm = pix[order], tri[order], bary[order], b_of[order], nrm[order]
        starts = torch.cumsum(counts, 0) - counts
        j = torch.arange(S, device=pix.device)
        take = (j[None].to(dt) * (counts[:, None].to(dt) / S).clamp_min(1.0)).long()  # (B, S)
        valid = take < counts[:, None]
        idx = (starts[:, None] + take.clamp_max((counts - 1).clamp_min(0)[:, None])).clamp_min(0)
        if pix.numel() == 0:
            valid = torch.zeros(B, S, dtype=torch.bool, device=pix.device)
            idx = torch.zeros(B, S, dtype=torch.long, device=pix.device)
            tri = torch.zeros(1, dtype=torch.long, device=pix.device)
            bary = torch.full((1, 3), 1 / 3, dtype=dt, device=pix.device)
            nrm = torch.tensor([[0.0, 0.0, 1.0]], dtype=dt, device=pix.device)
        fv = m.faces[tri[idx]]  # (B, S, 3)
        bw = bary[idx] * valid[..., None]  # (B, S, 3)
        bw = torch.where(valid[..., None], bw, torch.full_like(bw, 1 / 3))
        # surface-point rows of the model: template and basis interpolated at the samples
        T = (m.template.to(dt)[fv] * bw[..., None]).sum(2)  # (B, S, 3)
        # (B, S, 3, K): the three corners' rows (vertex-major copy of the basis: one gather of contiguous (3, K)
        # blocks) weighted by the barycentrics in one batched product; 0.8 ms instead of 6.9 ms for an einsum over
        # the K-major basis at S = 1500, K = 53
        Bs = (bw.unsqueeze(-2) @ self._basis_vmajor[fv].flatten(-2)).view(B, fv.shape[1], 3, -1)
        alb = (self.albedo[torch.arange(B, device=fv.device)[:, None, None], fv] * bw[..., None]).sum(2)
        self.samples = dict(T=T, Bs=Bs, normal=nrm[idx], albedo=alb, valid=valid.to(dt),
                            count=valid.sum(1).clamp_min(1).to(dt), face_vertices=fv, bary=bw)
        return int(valid.sum(1).min())

    @torch.no_grad()
    def psnr(self) -> torch.Tensor:
        """PSNR (dB, peak 1) of the model colour against the photo over the valid samples of the last
        :meth:`evaluate`, per image -> ``(B,)`` (NaN for an image without samples). The samples are an even
        subsample of the rendered face mask's front-facing pixels, so this estimates the PSNR inside the mask."""
        if self.last_model_colour is None:
            raise RuntimeError("psnr() needs a previous evaluate()")
        v = self.samples["valid"]
        se = ((self.last_model_colour - self.last_image_colour) ** 2).mean(-1)  # (B, S)
        n = v.sum(1)
        mse = (se * v).sum(1) / n.clamp_min(1)
        out = -10.0 * torch.log10(mse.clamp_min(1e-12))
        return torch.where(n > 0, out, torch.full_like(out, float("nan")))

    # ------------------------------------------------------------------------------------------------- evaluate
    def evaluate(self, kin: Kinematics):
        s = self.samples
        if s is None:
            self.update_samples(kin)
            s = self.samples
        B = kin.B
        X = s["T"] + (s["Bs"] @ kin.coeffs[:, None, :, None]).squeeze(-1)  # (B, S, 3)
        Xc = kin.camera_points(X)
        uv = kin.project(Xc)
        n = (s["normal"] @ kin.M.transpose(1, 2))  # (B, S, 3) camera-space normals
        Y = sh_basis(n)  # (B, S, 9)
        L = kin.p["sh"].reshape(B, 9, 3)
        irr = (Y * self.kernel) @ L  # (B, S, 3)
        model_col = s["albedo"] * irr
        img_col, g = sample_bspline(self.image_s, uv, with_gradient=kin.need_jacobian)
        k = (self.weight / s["count"])[:, None, None] * s["valid"][..., None]  # (B, S, 1)
        d = k * (model_col - img_col)
        r, omega = robust_point_residuals(d, "l21", k * self.eps)
        r = r.reshape(B, -1)
        self.last_model_colour = model_col.detach()
        self.last_image_colour = img_col.detach()
        if not kin.need_jacobian:
            return r, None
        lay = kin.layout
        S = X.shape[1]
        sw = omega.sqrt() * k  # (B, S, 1): IRLS-weighted scale of the raw colour difference
        # geometry through the photo: -dI/duv (S, 3c, 2) @ dpi/dX (S, 2, 3)
        Jp = kin.projection_jacobian(Xc)  # (B, S, 2, 3)
        left = -(g @ Jp) * sw[..., None]  # (B, S, 3, 3)
        J = kin.image_jacobian(X, Xc, s["Bs"], left)  # (B, S, 3, P)
        if "focal" in lay:
            z = Xc[..., 2:3].clamp_min(1e-6)
            J[..., lay.slices["focal"]] += -(g @ (Xc[..., :2] / z)[..., None]) * sw[..., None]
        # shading: sh coefficients (linear) and the rotation of the normals
        if "sh" in lay:
            a = s["albedo"] * sw  # (B, S, 3)
            Jsh = (Y * self.kernel)[..., None, :, None] * a[..., :, None, None] * torch.eye(
                3, dtype=a.dtype, device=a.device)[:, None, :]  # (B, S, 3c, 9, 3)
            J[..., lay.slices["sh"]] += Jsh.reshape(B, S, 3, 27)
        if "rotation" in lay:
            dY = sh_basis_derivative(n)  # (B, S, 9, 3)
            dirr_dn = torch.einsum("bkc,bskj->bscj", L * self.kernel[:, None], dY)  # (B, S, 3c, 3)
            dRf = kin.dR * kin.flip[None, :, :, None]  # (B, 3, 3, 3)
            dn = torch.einsum("bijk,bsj->bsik", dRf, s["normal"])  # (B, S, 3, 3k)
            J[..., lay.slices["rotation"]] += (s["albedo"] * sw)[..., None] * (dirr_dn @ dn)
        self._rw = (omega.sqrt() * d.detach()).reshape(B, -1)  # J^T rw is the exact gradient
        return r, J.reshape(B, -1, lay.P)

    def normal_equations(self, kin: Kinematics):
        r, J = self.evaluate(kin)
        return J.mT @ J, (J.mT @ self._rw.unsqueeze(-1)).squeeze(-1), 0.5 * r.square().sum(1)
