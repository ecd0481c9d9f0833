"""Cameras in ONE pixel convention, and converters to the conventions of the optional backends.

Our convention (written once, see docs/rendering.md "Cameras" and docs/architecture.md "Screen space"):
  * camera space (OpenCV): x right, y down, z forward (the camera looks along +z), in the units of the
    model (cm for ICT-FaceKit);
  * pixels: x right, y down; pixel (col ``i``, row ``j``) has its centre at ``(i + 0.5, j + 0.5)``, so the image
    spans ``[0, W] x [0, H]`` edge to edge and its centre is ``(W / 2, H / 2)``;
  * perspective intrinsics in pixels: ``x_px = fx * X / Z + cx``, ``y_px = fy * Y / Z + cy``;
  * orthographic / weak perspective: ``x_px = s * X + tx``, ``y_px = s * Y + ty``;
  * screen space (what rasterizers take): ``(x_px, y_px, z)`` with ``z`` the camera-space depth ``Z``.

Design: cameras are frozen dataclasses of tensors (not ``nn.Module``): a batch of ``B`` cameras holds 1-D tensors
of shape ``(B,)`` and an image size ``(H, W)`` shared by the batch. Device and dtype are those of the tensors; change
them with the functional helpers ``camera.apply(lambda t: t.to("cuda"))`` or ``camera.replace(fx=new_fx)`` (both
return a new camera; nothing is modified in place). Every operation is differentiable w.r.t. the points and the
intrinsics (pass intrinsics that require grad to optimise them). The maths lives in plain functions
(:func:`project_points`, :func:`unproject_points`, :func:`projection_jacobian`, ...), the classes call them.

Bad data is not an error: points with ``Z <= 0`` or a non-positive focal length give what the formula gives (``inf``
or ``nan`` at ``Z == 0``); :meth:`PinholeCamera.valid_mask` tells which projections are meaningful. Wrong shapes,
dtypes or devices raise :class:`~morphable_models.errors.ShapeError` (a ``ValueError``) stating what was received.

Backend conventions (converters below, tested to land on the same pixel):
  * OpenGL / nvdiffrast: eye space x right, y up, z backward (``OPENGL_FROM_CAMERA = diag(1, -1, -1)``), clip space
    from a 4x4 projection matrix, NDC ``[-1, 1]^3`` with y up (``y_ndc = +1`` is the top edge of our image) and
    ``z_ndc = -1`` at the near plane; nvdiffrast writes image row 0 at ``y_ndc = -1``, i.e. its rows are ours flipped
    upside down (``row_nvdiffrast = H - 1 - row``).
  * PyTorch3D: view space +X left, +Y up, +Z forward (``PYTORCH3D_FROM_CAMERA = diag(-1, -1, 1)``); its NDC has +X
    left, +Y up and the shorter image side spanning ``[-1, 1]``; its "screen" space is ours exactly (``(0, 0)`` is the
    top-left corner of the top-left pixel, ``(W, H)`` the bottom-right corner of the bottom-right one).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, TypeVar, Union

import torch

from morphable_models.errors import ShapeError

Number = Union[int, float]
TensorLike = Union[torch.Tensor, Number, Sequence[float]]

#: Per-axis signs taking our camera space to OpenGL eye space (x right, y up, z backward); self-inverse.
OPENGL_FROM_CAMERA = (1.0, -1.0, -1.0)
#: Per-axis signs taking our camera space to PyTorch3D view space (+X left, +Y up, +Z forward); self-inverse.
PYTORCH3D_FROM_CAMERA = (-1.0, -1.0, 1.0)

__all__ = [
    "OPENGL_FROM_CAMERA",
    "PYTORCH3D_FROM_CAMERA",
    "PinholeCamera",
    "OrthographicCamera",
    "WeakPerspectiveCamera",
    "project_points",
    "unproject_points",
    "projection_jacobian",
    "projection_jacobian_intrinsics",
    "orthographic_project",
    "orthographic_unproject",
    "camera_to_opengl",
    "camera_to_pytorch3d",
    "pixels_to_opengl_ndc",
    "opengl_ndc_to_pixels",
    "pixels_to_pytorch3d_ndc",
    "pytorch3d_ndc_to_pixels",
]


# --------------------------------------------------------------------------------------------------------------
# input checks


def _check_tensor(x: Any, name: str, shape_doc: str, ndim: int, last: Optional[int]) -> None:
    if not isinstance(x, torch.Tensor):
        raise ShapeError(f"{name} must be a torch.Tensor of shape {shape_doc}, got {type(x).__name__}")
    if x.ndim != ndim or (last is not None and x.shape[-1] != last):
        raise ShapeError(f"{name} must have shape {shape_doc}, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ShapeError(f"{name} must be a floating-point tensor, got {x.dtype}")


def _check_points(points: Any, name: str = "points", last: int = 3) -> None:
    _check_tensor(points, name, f"(B, N, {last})", 3, last)


def _check_params(ref: torch.Tensor, ref_name: str, **params: torch.Tensor) -> None:
    """Intrinsics must be ``(B,)`` (or ``(1,)``) tensors with the dtype and device of ``ref``, batch compatible."""
    B = ref.shape[0]
    for name, p in params.items():
        if not isinstance(p, torch.Tensor):
            raise ShapeError(f"{name} must be a torch.Tensor of shape (B,), got {type(p).__name__}")
        if p.ndim != 1:
            raise ShapeError(f"{name} must have shape (B,), got {tuple(p.shape)}")
        if p.dtype != ref.dtype or p.device != ref.device:
            raise ShapeError(
                f"{name} is {p.dtype} on {p.device} but {ref_name} is {ref.dtype} on {ref.device}; "
                f"convert one of them (e.g. camera.apply(lambda t: t.to({ref_name}.dtype)))"
            )
        if p.shape[0] != B and p.shape[0] != 1 and B != 1:
            raise ShapeError(f"batch mismatch: {ref_name} has batch {B}, {name} has batch {p.shape[0]}")


def _col(p: torch.Tensor) -> torch.Tensor:
    return p.reshape(-1, 1)


# --------------------------------------------------------------------------------------------------------------
# functional core


def project_points(
    points: torch.Tensor, fx: torch.Tensor, fy: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor
) -> torch.Tensor:
    """Perspective projection ``x_px = fx * X / Z + cx``, ``y_px = fy * Y / Z + cy``.

    Args:
        points: ``(B, N, 3)`` camera-space points (x right, y down, z forward).
        fx, fy, cx, cy: ``(B,)`` intrinsics in pixels (``(1,)`` broadcasts over the batch).
    Returns:
        ``(B, N, 2)`` pixel coordinates (pixel centres at ``+0.5``). ``Z <= 0`` gives what the formula gives.
    """
    _check_points(points)
    _check_params(points, "points", fx=fx, fy=fy, cx=cx, cy=cy)
    X, Y, Z = points.unbind(-1)
    return torch.stack([_col(fx) * X / Z + _col(cx), _col(fy) * Y / Z + _col(cy)], dim=-1)


def unproject_points(
    pixels: torch.Tensor,
    depth: torch.Tensor,
    fx: torch.Tensor,
    fy: torch.Tensor,
    cx: torch.Tensor,
    cy: torch.Tensor,
) -> torch.Tensor:
    """Inverse of :func:`project_points`: ``X = (x_px - cx) * Z / fx``, ``Y = (y_px - cy) * Z / fy``.

    Args:
        pixels: ``(B, N, 2)`` pixel coordinates.
        depth: ``(B, N)`` camera-space depth ``Z``.
        fx, fy, cx, cy: ``(B,)``.
    Returns:
        ``(B, N, 3)`` camera-space points.
    """
    _check_points(pixels, "pixels", last=2)
    _check_depth(depth, pixels)
    _check_params(pixels, "pixels", fx=fx, fy=fy, cx=cx, cy=cy)
    x, y = pixels.unbind(-1)
    X, Y = (x - _col(cx)) * depth / _col(fx), (y - _col(cy)) * depth / _col(fy)
    return torch.stack([X, Y, depth.expand_as(X)], dim=-1)


def _check_depth(depth: Any, pixels: torch.Tensor) -> None:
    _check_tensor(depth, "depth", "(B, N)", 2, None)
    if depth.dtype != pixels.dtype or depth.device != pixels.device:
        raise ShapeError(f"depth is {depth.dtype} on {depth.device}, pixels are {pixels.dtype} on {pixels.device}")
    try:
        torch.broadcast_shapes(depth.shape, pixels.shape[:2])
    except RuntimeError:
        raise ShapeError(
            f"depth {tuple(depth.shape)} does not match pixels {tuple(pixels.shape)} (expected (B, N) and (B, N, 2))"
        ) from None


def projection_jacobian(points: torch.Tensor, fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
    """Analytic Jacobian of :func:`project_points` w.r.t. the camera-space point.

    ``d(x_px, y_px) / d(X, Y, Z) = [[fx / Z, 0, -fx X / Z^2], [0, fy / Z, -fy Y / Z^2]]``.

    Args:
        points: ``(B, N, 3)``.
        fx, fy: ``(B,)``.
    Returns:
        ``(B, N, 2, 3)``.
    """
    _check_points(points)
    _check_params(points, "points", fx=fx, fy=fy)
    X, Y, Z = points.unbind(-1)
    iz = 1.0 / Z
    fx_, fy_ = _col(fx) * iz, _col(fy) * iz
    zero = torch.zeros_like(fx_ * X)
    row0 = torch.stack([fx_ + zero, zero, -fx_ * X * iz], dim=-1)
    row1 = torch.stack([zero, fy_ + zero, -fy_ * Y * iz], dim=-1)
    return torch.stack([row0, row1], dim=-2)


def projection_jacobian_intrinsics(points: torch.Tensor) -> torch.Tensor:
    """Analytic Jacobian of :func:`project_points` w.r.t. the intrinsics ``(fx, fy, cx, cy)``.

    ``[[X / Z, 0, 1, 0], [0, Y / Z, 0, 1]]``.

    Args:
        points: ``(B, N, 3)``.
    Returns:
        ``(B, N, 2, 4)``.
    """
    _check_points(points)
    X, Y, Z = points.unbind(-1)
    zero, one = torch.zeros_like(X), torch.ones_like(X)
    row0 = torch.stack([X / Z, zero, one, zero], dim=-1)
    row1 = torch.stack([zero, Y / Z, zero, one], dim=-1)
    return torch.stack([row0, row1], dim=-2)


def orthographic_project(points: torch.Tensor, scale: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    """Orthographic / weak-perspective projection ``x_px = s * X + tx``, ``y_px = s * Y + ty``.

    Args:
        points: ``(B, N, 3)`` camera-space points.
        scale, tx, ty: ``(B,)`` (scale in pixels per unit, offsets in pixels).
    Returns:
        ``(B, N, 2)``.
    """
    _check_points(points)
    _check_params(points, "points", scale=scale, tx=tx, ty=ty)
    X, Y, _ = points.unbind(-1)
    return torch.stack([_col(scale) * X + _col(tx), _col(scale) * Y + _col(ty)], dim=-1)


def orthographic_unproject(
    pixels: torch.Tensor, depth: torch.Tensor, scale: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor
) -> torch.Tensor:
    """Inverse of :func:`orthographic_project`: ``(B, N, 2)`` pixels and ``(B, N)`` depth -> ``(B, N, 3)``."""
    _check_points(pixels, "pixels", last=2)
    _check_depth(depth, pixels)
    _check_params(pixels, "pixels", scale=scale, tx=tx, ty=ty)
    x, y = pixels.unbind(-1)
    s = _col(scale)
    X, Y = (x - _col(tx)) / s, (y - _col(ty)) / s
    return torch.stack([X, Y, depth.expand_as(X)], dim=-1)


def _flip(points: torch.Tensor, signs: Tuple[float, float, float]) -> torch.Tensor:
    if not isinstance(points, torch.Tensor) or points.ndim < 1 or points.shape[-1] != 3:
        got = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
        raise ShapeError(f"points must have shape (..., 3), got {got}")
    return points * points.new_tensor(signs)


def camera_to_opengl(points: torch.Tensor) -> torch.Tensor:
    """Our camera space -> OpenGL eye space (x right, y up, z backward): ``(..., 3) -> (..., 3)``; self-inverse."""
    return _flip(points, OPENGL_FROM_CAMERA)


def camera_to_pytorch3d(points: torch.Tensor) -> torch.Tensor:
    """Our camera space -> PyTorch3D view space (+X left, +Y up, +Z forward): ``(..., 3) -> (..., 3)``; self-inverse."""
    return _flip(points, PYTORCH3D_FROM_CAMERA)


def _check_xy(xy: Any, name: str) -> None:
    if not isinstance(xy, torch.Tensor) or xy.ndim < 1 or xy.shape[-1] < 2 or not xy.is_floating_point():
        got = f"{tuple(xy.shape)} {xy.dtype}" if isinstance(xy, torch.Tensor) else type(xy).__name__
        raise ShapeError(f"{name} must be a floating-point tensor of shape (..., 2) or (..., 3), got {got}")


def _xy_map(xy: torch.Tensor, ax: float, bx: float, ay: float, by: float) -> torch.Tensor:
    out = torch.stack([xy[..., 0] * ax + bx, xy[..., 1] * ay + by], dim=-1)
    return torch.cat([out, xy[..., 2:]], dim=-1) if xy.shape[-1] > 2 else out


def pixels_to_opengl_ndc(xy: torch.Tensor, image_size: Tuple[int, int]) -> torch.Tensor:
    """Pixels (ours) -> OpenGL NDC: ``x_ndc = 2 x / W - 1``, ``y_ndc = 1 - 2 y / H``.

    ``xy``: ``(..., 2)`` (or ``(..., 3)``: extra channels pass through). The image spans ``[-1, 1]`` on both axes,
    y up: our row 0 is at the top (``y_ndc`` near 1); nvdiffrast stores the row at ``y_ndc = -1`` first.
    """
    _check_xy(xy, "xy")
    H, W = _image_size(image_size)
    return _xy_map(xy, 2.0 / W, -1.0, -2.0 / H, 1.0)


def opengl_ndc_to_pixels(ndc: torch.Tensor, image_size: Tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`pixels_to_opengl_ndc`: ``x = (x_ndc + 1) W / 2``, ``y = (1 - y_ndc) H / 2``."""
    _check_xy(ndc, "ndc")
    H, W = _image_size(image_size)
    return _xy_map(ndc, W / 2.0, W / 2.0, -H / 2.0, H / 2.0)


def pixels_to_pytorch3d_ndc(xy: torch.Tensor, image_size: Tuple[int, int]) -> torch.Tensor:
    """Pixels (ours) -> PyTorch3D NDC (+X left, +Y up, shorter side in ``[-1, 1]``).

    ``x_ndc = (W - 2 x) / S``, ``y_ndc = (H - 2 y) / S`` with ``S = min(H, W)``. ``xy``: ``(..., 2)`` or ``(..., 3)``.
    """
    _check_xy(xy, "xy")
    H, W = _image_size(image_size)
    S = float(min(H, W))
    return _xy_map(xy, -2.0 / S, W / S, -2.0 / S, H / S)


def pytorch3d_ndc_to_pixels(ndc: torch.Tensor, image_size: Tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`pixels_to_pytorch3d_ndc`: ``x = (W - S x_ndc) / 2``, ``y = (H - S y_ndc) / 2``."""
    _check_xy(ndc, "ndc")
    H, W = _image_size(image_size)
    S = float(min(H, W))
    return _xy_map(ndc, -S / 2.0, W / 2.0, -S / 2.0, H / 2.0)


# --------------------------------------------------------------------------------------------------------------
# camera classes


def _image_size(image_size: Any) -> Tuple[int, int]:
    try:
        H, W = (int(v) for v in image_size)
        ok = all(float(v) == int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ShapeError(f"image_size must be (H, W) positive integers, got {image_size!r}") from None
    if not ok or H <= 0 or W <= 0:
        raise ShapeError(f"image_size must be (H, W) positive integers, got {image_size!r}")
    return H, W


def _as_batch(values: Dict[str, Any], cls_name: str) -> Dict[str, torch.Tensor]:
    """Numbers / sequences / tensors -> 1-D tensors of one dtype and device, broadcast to a common ``(B,)``."""
    ref = next((v for v in values.values() if isinstance(v, torch.Tensor)), None)
    dtype = ref.dtype if ref is not None else torch.get_default_dtype()
    device = ref.device if ref is not None else torch.device("cpu")
    out = {}
    for name, v in values.items():
        if isinstance(v, torch.Tensor):
            if not v.is_floating_point():
                raise ShapeError(f"{cls_name}.{name} must be a floating-point tensor, got {v.dtype}")
            if v.dtype != dtype or v.device != device:
                raise ShapeError(
                    f"{cls_name}: {name} is {v.dtype} on {v.device} but other parameters are {dtype} on {device}"
                )
            t = v
        else:
            try:
                t = torch.as_tensor(v, dtype=dtype, device=device)
            except (TypeError, ValueError, RuntimeError):
                raise ShapeError(f"{cls_name}.{name} must be a number or a (B,) tensor, got {v!r}") from None
        if t.ndim == 0:
            t = t.reshape(1)
        if t.ndim != 1:
            raise ShapeError(f"{cls_name}.{name} must have shape (B,), got {tuple(t.shape)}")
        out[name] = t
    try:
        B = torch.broadcast_shapes(*(t.shape for t in out.values()))[0]
    except RuntimeError:
        shapes = {k: tuple(t.shape) for k, t in out.items()}
        raise ShapeError(f"{cls_name}: parameters have incompatible batch sizes {shapes}") from None
    return {k: (t if t.shape[0] == B else t.expand(B)) for k, t in out.items()}


def _near_far(near: TensorLike, far: TensorLike, like: torch.Tensor, perspective: bool) -> Tuple[torch.Tensor, ...]:
    if not isinstance(near, torch.Tensor) and not isinstance(far, torch.Tensor):
        if not (float(far) > float(near)) or (perspective and float(near) <= 0):
            raise ValueError(f"need {'0 < ' if perspective else ''}near < far, got near={near}, far={far}")
    p = _as_batch({"near": near, "far": far, "ref": like}, "opengl_projection")
    return p["near"], p["far"]


C = TypeVar("C", bound="_Camera")


@dataclass(frozen=True, eq=False)
class _Camera:
    """Shared batching helpers. Subclasses list their ``(B,)`` tensor fields in ``_TENSOR_FIELDS``."""

    _TENSOR_FIELDS = ()  # type: Tuple[str, ...]

    def __post_init__(self) -> None:
        vals = _as_batch({k: getattr(self, k) for k in self._TENSOR_FIELDS}, type(self).__name__)
        for k, v in vals.items():
            object.__setattr__(self, k, v)
        object.__setattr__(self, "image_size", _image_size(self.image_size))  # type: ignore[attr-defined]

    # ---- properties
    @property
    def batch_size(self) -> int:
        return getattr(self, self._TENSOR_FIELDS[0]).shape[0]

    def __len__(self) -> int:
        return self.batch_size

    @property
    def device(self) -> torch.device:
        return getattr(self, self._TENSOR_FIELDS[0]).device

    @property
    def dtype(self) -> torch.dtype:
        return getattr(self, self._TENSOR_FIELDS[0]).dtype

    @property
    def height(self) -> int:
        return self.image_size[0]  # type: ignore[attr-defined]

    @property
    def width(self) -> int:
        return self.image_size[1]  # type: ignore[attr-defined]

    # ---- functional helpers (return new cameras)
    def replace(self: C, **changes: Any) -> C:
        """A copy with some fields replaced (``dataclasses.replace`` + validation), e.g. ``cam.replace(fx=fx2)``."""
        return dataclasses.replace(self, **changes)

    def apply(self: C, fn: Callable[[torch.Tensor], torch.Tensor]) -> C:
        """A copy with ``fn`` applied to every tensor field: ``cam.apply(lambda t: t.to("cuda", torch.float64))``,
        ``cam.apply(torch.Tensor.detach)``."""
        return dataclasses.replace(self, **{k: fn(getattr(self, k)) for k in self._TENSOR_FIELDS})

    def __getitem__(self: C, index: Union[int, slice, torch.Tensor, Sequence[int]]) -> C:
        """Select cameras; an integer keeps the batch dimension (returns a batch of 1)."""
        B = self.batch_size
        if isinstance(index, int):
            if not -B <= index < B:
                raise IndexError(f"camera index {index} out of range for a batch of {B}")
            i = index % B
            return self.apply(lambda t: t[i : i + 1])
        if isinstance(index, (list, tuple)):
            index = torch.as_tensor(index, device=self.device)
        return self.apply(lambda t: t[index])

    def expand(self: C, batch_size: int) -> C:
        """Broadcast a batch of 1 (or ``batch_size``) to ``batch_size`` cameras (views, no copy)."""
        if self.batch_size not in (1, batch_size):
            raise ShapeError(f"cannot expand a batch of {self.batch_size} cameras to {batch_size}")
        return self.apply(lambda t: t.expand(batch_size))

    @classmethod
    def cat(cls: type, cameras: Sequence["_Camera"]) -> Any:
        """Concatenate cameras of the same type and image size along the batch."""
        cameras = list(cameras)
        if not cameras or any(type(c) is not cls for c in cameras):
            raise ShapeError(f"{cls.__name__}.cat needs a non-empty list of {cls.__name__}, got "
                             f"{[type(c).__name__ for c in cameras]}")
        sizes = {c.image_size for c in cameras}
        if len(sizes) != 1:
            raise ShapeError(f"{cls.__name__}.cat: cameras have different image sizes {sorted(sizes)}")
        fields = {k: torch.cat([getattr(c, k) for c in cameras]) for k in cls._TENSOR_FIELDS}
        return cls(**fields, image_size=cameras[0].image_size)

    # ---- checks
    def _check(self, x: Any, name: str, last: int) -> None:
        _check_points(x, name, last)
        if x.dtype != self.dtype or x.device != self.device:
            raise ShapeError(
                f"{name} are {x.dtype} on {x.device} but the camera is {self.dtype} on {self.device}; "
                f"convert the camera with camera.apply(lambda t: t.to({name}))"
            )
        if x.shape[0] not in (1, self.batch_size) and self.batch_size != 1:
            raise ShapeError(f"batch mismatch: {name} have batch {x.shape[0]}, the camera has {self.batch_size}")

    # ---- screen space
    def project(self, points: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def to_screen(self, points: torch.Tensor) -> torch.Tensor:
        """Camera space ``(B, N, 3)`` -> screen space ``(B, N, 3)`` = ``(x_px, y_px, Z)``, what rasterizers take."""
        xy = self.project(points)
        z = points[..., 2:]
        if z.shape[0] != xy.shape[0]:
            z = z.expand(xy.shape[0], -1, -1)
        return torch.cat([xy, z], dim=-1)

    def from_screen(self, screen: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_screen`: ``(B, N, 3)`` screen points -> ``(B, N, 3)`` camera-space points."""
        self._check(screen, "screen", 3)
        return self.unproject(screen[..., :2], screen[..., 2])

    def unproject(self, pixels: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def to_opengl_clip(self, points: torch.Tensor, near: TensorLike, far: TensorLike) -> torch.Tensor:
        """Camera space ``(B, N, 3)`` -> OpenGL / nvdiffrast clip space ``(B, N, 4)``.

        ``clip = P @ [camera_to_opengl(points), 1]`` with ``P = self.opengl_projection(near, far)``. Dividing by
        ``w`` gives NDC with ``opengl_ndc_to_pixels(ndc) == self.project(points)``.
        """
        self._check(points, "points", 3)
        P = self.opengl_projection(near, far)  # type: ignore[attr-defined]
        eye = camera_to_opengl(points)
        homog = torch.cat([eye, torch.ones_like(eye[..., :1])], dim=-1)
        return homog @ P.transpose(-1, -2)


def _stack_matrix(rows: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
    """Rows of ``(B,)`` tensors -> ``(B, R, C)``."""
    return torch.stack([torch.stack(list(r), dim=-1) for r in rows], dim=-2)


@dataclass(frozen=True, eq=False)
class PinholeCamera(_Camera):
    """A batch of ``B`` pinhole cameras: ``x_px = fx * X / Z + cx``, ``y_px = fy * Y / Z + cy`` (pixels).

    Attributes:
        fx, fy: ``(B,)`` focal lengths in pixels (numbers are accepted and become ``(1,)`` tensors of the
            dtype/device of the tensor arguments, else float32 on CPU).
        cx, cy: ``(B,)`` principal point in pixels, in OUR convention (pixel centres at ``+0.5``; an ideal centred
            camera has ``cx = W / 2``, ``cy = H / 2``).
        image_size: ``(H, W)`` shared by the batch.

    Camera space is x right, y down, z forward. Instances are immutable; see :meth:`replace` and :meth:`apply`.
    """

    fx: torch.Tensor
    fy: torch.Tensor
    cx: torch.Tensor
    cy: torch.Tensor
    image_size: Tuple[int, int]

    _TENSOR_FIELDS = ("fx", "fy", "cx", "cy")

    # ---- constructors
    @classmethod
    def from_fov(
        cls,
        fov: TensorLike,
        image_size: Tuple[int, int],
        *,
        degrees: bool = True,
        axis: str = "horizontal",
        dtype: Optional[torch.dtype] = None,
        device: Optional[Union[str, torch.device]] = None,
    ) -> "PinholeCamera":
        """A centred camera with square pixels from a field of view spanning the full image width or height.

        Args:
            fov: a number or ``(B,)`` tensor: the angle between the left and right image EDGES (``axis="horizontal"``)
                or the top and bottom edges (``axis="vertical"``).
            image_size: ``(H, W)``.
            degrees: whether ``fov`` is in degrees (else radians).
            dtype, device: for numeric ``fov`` (a tensor keeps its own).
        Returns:
            ``fx = fy = (size / 2) / tan(fov / 2)``, ``cx = W / 2``, ``cy = H / 2``.
        """
        H, W = _image_size(image_size)
        if axis not in ("horizontal", "vertical"):
            raise ValueError(f"axis must be 'horizontal' or 'vertical', got {axis!r}")
        if not isinstance(fov, torch.Tensor):
            limit = 180.0 if degrees else math.pi
            if not 0 < float(fov) < limit:
                raise ValueError(f"fov must be in (0, {limit}) {'degrees' if degrees else 'radians'}, got {fov}")
            fov = torch.tensor([float(fov)], dtype=dtype or torch.get_default_dtype(), device=device)
        fov_t = fov.reshape(-1)
        if degrees:
            fov_t = fov_t * (math.pi / 180.0)
        size = W if axis == "horizontal" else H
        f = (size / 2.0) / torch.tan(fov_t / 2)
        return cls(fx=f, fy=f, cx=torch.full_like(f, W / 2.0), cy=torch.full_like(f, H / 2.0), image_size=(H, W))

    @classmethod
    def from_K(cls, K: Any, image_size: Tuple[int, int], *, opencv: bool = False) -> "PinholeCamera":
        """From a ``(3, 3)`` or ``(B, 3, 3)`` intrinsic matrix ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``.

        Args:
            K: tensor or array. A non-zero skew ``K[..., 0, 1]`` is not supported (ValueError).
            image_size: ``(H, W)``.
            opencv: ``True`` when ``K`` follows OpenCV's pixel convention (pixel centres at INTEGER coordinates, as
                from ``cv2.calibrateCamera``): 0.5 is added to ``cx`` and ``cy``. ``False``: ``K`` already uses ours.
        """
        K = torch.as_tensor(K) if not isinstance(K, torch.Tensor) else K
        if K.ndim not in (2, 3) or K.shape[-2:] != (3, 3) or not K.is_floating_point():
            raise ShapeError(f"K must be a floating (3, 3) or (B, 3, 3) matrix, got {tuple(K.shape)} {K.dtype}")
        if K.ndim == 2:
            K = K[None]
        skew = K[:, 0, 1].detach().abs()
        if bool((skew > 1e-9 * K[:, 0, 0].detach().abs().clamp_min(1.0)).any()):
            raise ValueError(f"K has a non-zero skew K[0, 1] = {K[:, 0, 1].tolist()}; skewed pixels are not supported")
        off = 0.5 if opencv else 0.0
        return cls(fx=K[:, 0, 0], fy=K[:, 1, 1], cx=K[:, 0, 2] + off, cy=K[:, 1, 2] + off, image_size=image_size)

    def intrinsic_matrix(self, *, opencv: bool = False) -> torch.Tensor:
        """``(B, 3, 3)`` matrix ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` (OpenCV pixel convention if ``opencv``)."""
        z, o = torch.zeros_like(self.fx), torch.ones_like(self.fx)
        off = 0.5 if opencv else 0.0
        return _stack_matrix([[self.fx, z, self.cx - off], [z, self.fy, self.cy - off], [z, z, o]])

    # ---- image pyramids and crops
    def scaled(self, factor: float) -> "PinholeCamera":
        """The camera of the image resampled by ``factor`` (e.g. 0.5 for the next level of a 2x pyramid).

        With pixel centres at ``+0.5`` the continuous image coordinates simply scale: ``fx, fy, cx, cy`` are all
        multiplied by ``factor`` (a 2x2 average pool, ``F.interpolate(scale_factor=0.5, align_corners=False)`` and
        ``F.avg_pool2d(2)`` follow exactly this mapping). The image size becomes ``(floor(H f), floor(W f))``, the
        size those torch functions produce. Use :meth:`resized` to resample to an explicit size.
        """
        f = _positive_factor(factor)
        H, W = self.image_size
        return self.replace(fx=self.fx * f, fy=self.fy * f, cx=self.cx * f, cy=self.cy * f,
                            image_size=(max(1, int(math.floor(H * f))), max(1, int(math.floor(W * f)))))

    def resized(self, image_size: Tuple[int, int]) -> "PinholeCamera":
        """The camera of the image resized to ``(H', W')`` (x scales by ``W'/W``, y by ``H'/H``), matching
        ``F.interpolate(size=(H', W'), align_corners=False)`` and ``cv2.resize``."""
        H, W = self.image_size
        H2, W2 = _image_size(image_size)
        sx, sy = W2 / W, H2 / H
        return self.replace(fx=self.fx * sx, fy=self.fy * sy, cx=self.cx * sx, cy=self.cy * sy, image_size=(H2, W2))

    def crop(self, top: TensorLike, left: TensorLike, image_size: Tuple[int, int]) -> "PinholeCamera":
        """The camera of the crop ``image[top:top + H', left:left + W']`` (``top``/``left`` numbers or ``(B,)``)."""
        return self.replace(cx=self.cx - _like(left, self.cx), cy=self.cy - _like(top, self.cy),
                            image_size=_image_size(image_size))

    # ---- projection
    def project(self, points: torch.Tensor) -> torch.Tensor:
        """Camera space ``(B, N, 3)`` -> pixels ``(B, N, 2)``. ``Z <= 0`` gives what the formula gives (see
        :meth:`valid_mask`)."""
        self._check(points, "points", 3)
        return project_points(points, self.fx, self.fy, self.cx, self.cy)

    def unproject(self, pixels: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """Pixels ``(B, N, 2)`` and camera depth ``Z`` ``(B, N)`` -> camera space ``(B, N, 3)``."""
        self._check(pixels, "pixels", 2)
        return unproject_points(pixels, depth, self.fx, self.fy, self.cx, self.cy)

    def valid_mask(self, points: torch.Tensor, min_depth: float = 0.0) -> torch.Tensor:
        """``(B, N)`` bool: ``Z > min_depth`` and ``fx, fy > 0`` (where the projection means something)."""
        self._check(points, "points", 3)
        ok = (self.fx > 0) & (self.fy > 0)
        return (points[..., 2] > min_depth) & ok[:, None]

    def projection_jacobian(self, points: torch.Tensor) -> torch.Tensor:
        """``(B, N, 2, 3)``: ``d(x_px, y_px) / d(X, Y, Z)`` (see :func:`projection_jacobian`)."""
        self._check(points, "points", 3)
        return projection_jacobian(points, self.fx, self.fy)

    # ---- OpenGL / nvdiffrast
    def opengl_projection(self, near: TensorLike, far: TensorLike) -> torch.Tensor:
        """``(B, 4, 4)`` OpenGL projection matrix acting on OpenGL eye space (x right, y up, z backward).

        Maps ``camera_to_opengl(points)`` to clip space so that NDC = clip[:3] / w satisfies
        ``opengl_ndc_to_pixels(ndc) == project(points)`` and ``z_ndc = -1`` at ``Z = near``, ``+1`` at ``Z = far``::

            [[2 fx / W, 0,        1 - 2 cx / W,         0               ],
             [0,        2 fy / H, 2 cy / H - 1,         0               ],
             [0,        0,        -(f + n) / (f - n),   -2 f n / (f - n)],
             [0,        0,        -1,                   0               ]]

        ``near``/``far``: numbers (``0 < near < far``) or ``(B,)`` tensors.
        """
        n, f = _near_far(near, far, self.fx, perspective=True)
        H, W = self.image_size
        z, o = torch.zeros_like(self.fx) + torch.zeros_like(n), torch.ones_like(self.fx)
        return _stack_matrix([
            [2 * self.fx / W + z, z, 1 - 2 * self.cx / W + z, z],
            [z, 2 * self.fy / H + z, 2 * self.cy / H - 1 + z, z],
            [z, z, -(f + n) / (f - n) + z, -2 * f * n / (f - n) + z],
            [z, z, -o + z, z],
        ])

    @classmethod
    def from_opengl_projection(
        cls, P: torch.Tensor, image_size: Tuple[int, int]
    ) -> Tuple["PinholeCamera", torch.Tensor, torch.Tensor]:
        """Inverse of :meth:`opengl_projection`: ``P`` ``(4, 4)`` or ``(B, 4, 4)`` -> ``(camera, near (B,), far (B,))``.

        Skew and off-axis terms other than the principal point are ignored.
        """
        P = _check_matrix(P, "P")
        H, W = _image_size(image_size)
        cam = cls(fx=P[:, 0, 0] * W / 2, fy=P[:, 1, 1] * H / 2, cx=(1 - P[:, 0, 2]) * W / 2,
                  cy=(P[:, 1, 2] + 1) * H / 2, image_size=(H, W))
        near = P[:, 2, 3] / (P[:, 2, 2] - 1)
        far = P[:, 2, 3] / (P[:, 2, 2] + 1)
        return cam, near, far

    # ---- PyTorch3D
    def to_pytorch3d(self, *, in_ndc: bool = True) -> Dict[str, Any]:
        """Keyword arguments for ``pytorch3d.renderer.PerspectiveCameras(**kw, device=...)``.

        The returned ``R = diag(-1, -1, 1)``, ``T = 0`` make PyTorch3D's world space equal to OUR camera space, so
        our camera-space points are passed to PyTorch3D unchanged and its ``transform_points_screen`` returns our
        pixels. ``in_ndc=True``: ``focal_length = 2 (fx, fy) / S``, ``principal_point = ((W - 2 cx) / S,
        (H - 2 cy) / S)`` with ``S = min(H, W)``; ``in_ndc=False`` (PyTorch3D "screen" cameras): ``(fx, fy)`` and
        ``(cx, cy)`` unchanged (PyTorch3D's screen space is ours).

        Returns:
            dict with ``focal_length (B, 2)``, ``principal_point (B, 2)``, ``R (B, 3, 3)``, ``T (B, 3)``,
            ``image_size (B, 2)`` int64 ``(H, W)``, ``in_ndc``.
        """
        f = torch.stack([self.fx, self.fy], dim=-1)
        c = torch.stack([self.cx, self.cy], dim=-1)
        return _pytorch3d_kwargs(self, f, c, in_ndc)

    @classmethod
    def from_pytorch3d(
        cls, focal_length: torch.Tensor, principal_point: torch.Tensor, image_size: Tuple[int, int], *,
        in_ndc: bool = True,
    ) -> "PinholeCamera":
        """Inverse of :meth:`to_pytorch3d` (intrinsics only; PyTorch3D's view space is ``camera_to_pytorch3d`` of
        ours). ``focal_length``: ``(B,)``, ``(B, 1)`` or ``(B, 2)``; ``principal_point``: ``(B, 2)``."""
        H, W = _image_size(image_size)
        f, c = _p3d_inputs(focal_length, principal_point)
        if in_ndc:
            S = float(min(H, W))
            f = f * (S / 2)
            c = torch.stack([(W - S * c[:, 0]) / 2, (H - S * c[:, 1]) / 2], dim=-1)
        return cls(fx=f[:, 0], fy=f[:, 1], cx=c[:, 0], cy=c[:, 1], image_size=(H, W))


@dataclass(frozen=True, eq=False)
class OrthographicCamera(_Camera):
    """A batch of ``B`` orthographic / weak-perspective cameras: ``x_px = s * X + tx``, ``y_px = s * Y + ty``.

    Attributes:
        scale: ``(B,)`` pixels per camera-space unit (weak perspective: ``f / Z_mean``).
        tx, ty: ``(B,)`` pixel position of the optical axis (pixel centres at ``+0.5``).
        image_size: ``(H, W)``.

    Screen space ``z`` is the camera-space ``Z`` (depth along the optical axis), as for the pinhole camera.
    """

    scale: torch.Tensor
    tx: torch.Tensor
    ty: torch.Tensor
    image_size: Tuple[int, int]

    _TENSOR_FIELDS = ("scale", "tx", "ty")

    def scaled(self, factor: float) -> "OrthographicCamera":
        """See :meth:`PinholeCamera.scaled`: ``scale, tx, ty`` times ``factor``, size ``floor``-ed."""
        f = _positive_factor(factor)
        H, W = self.image_size
        return self.replace(scale=self.scale * f, tx=self.tx * f, ty=self.ty * f,
                            image_size=(max(1, int(math.floor(H * f))), max(1, int(math.floor(W * f)))))

    def crop(self, top: TensorLike, left: TensorLike, image_size: Tuple[int, int]) -> "OrthographicCamera":
        """The camera of the crop ``image[top:top + H', left:left + W']``."""
        return self.replace(tx=self.tx - _like(left, self.tx), ty=self.ty - _like(top, self.ty),
                            image_size=_image_size(image_size))

    def project(self, points: torch.Tensor) -> torch.Tensor:
        """Camera space ``(B, N, 3)`` -> pixels ``(B, N, 2)``."""
        self._check(points, "points", 3)
        return orthographic_project(points, self.scale, self.tx, self.ty)

    def unproject(self, pixels: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """Pixels ``(B, N, 2)`` and depth ``Z`` ``(B, N)`` -> camera space ``(B, N, 3)``."""
        self._check(pixels, "pixels", 2)
        return orthographic_unproject(pixels, depth, self.scale, self.tx, self.ty)

    def valid_mask(self, points: torch.Tensor, min_depth: Optional[float] = None) -> torch.Tensor:
        """``(B, N)`` bool: ``scale > 0`` (and ``Z > min_depth`` when given; orthographic projection itself does not
        need ``Z > 0``)."""
        self._check(points, "points", 3)
        ok = (self.scale > 0)[:, None]
        if min_depth is None:
            return ok.expand(max(points.shape[0], self.batch_size), points.shape[1])
        return (points[..., 2] > min_depth) & ok

    def projection_jacobian(self, points: torch.Tensor) -> torch.Tensor:
        """``(B, N, 2, 3)``: ``[[s, 0, 0], [0, s, 0]]`` for every point."""
        self._check(points, "points", 3)
        s = self.scale.reshape(-1, 1, 1, 1)
        J = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=self.dtype, device=self.device)
        B = max(points.shape[0], self.batch_size)
        return (s * J).expand(B, points.shape[1], 2, 3)

    def opengl_projection(self, near: TensorLike, far: TensorLike) -> torch.Tensor:
        """``(B, 4, 4)`` OpenGL orthographic matrix on OpenGL eye space (``glOrtho`` form)::

            [[2 s / W, 0,       0,            2 tx / W - 1      ],
             [0,       2 s / H, 0,            1 - 2 ty / H      ],
             [0,       0,       -2 / (f - n), -(f + n) / (f - n)],
             [0,       0,       0,            1                 ]]
        """
        n, f = _near_far(near, far, self.scale, perspective=False)
        H, W = self.image_size
        z, o = torch.zeros_like(self.scale) + torch.zeros_like(n), torch.ones_like(self.scale)
        return _stack_matrix([
            [2 * self.scale / W + z, z, z, 2 * self.tx / W - 1 + z],
            [z, 2 * self.scale / H + z, z, 1 - 2 * self.ty / H + z],
            [z, z, -2 / (f - n) + z, -(f + n) / (f - n) + z],
            [z, z, z, o + z],
        ])

    @classmethod
    def from_opengl_projection(
        cls, P: torch.Tensor, image_size: Tuple[int, int]
    ) -> Tuple["OrthographicCamera", torch.Tensor, torch.Tensor]:
        """Inverse of :meth:`opengl_projection` -> ``(camera, near (B,), far (B,))``. Needs ``2 / W * P[0, 0] ==
        2 / H * P[1, 1]`` (square pixels; ValueError otherwise)."""
        P = _check_matrix(P, "P")
        H, W = _image_size(image_size)
        sx, sy = P[:, 0, 0] * W / 2, P[:, 1, 1] * H / 2
        _check_same_scale(sx, sy, "P")
        cam = cls(scale=sx, tx=(P[:, 0, 3] + 1) * W / 2, ty=(1 - P[:, 1, 3]) * H / 2, image_size=(H, W))
        near = (P[:, 2, 3] + 1) / P[:, 2, 2]
        far = (P[:, 2, 3] - 1) / P[:, 2, 2]
        return cam, near, far

    def to_pytorch3d(self, *, in_ndc: bool = True) -> Dict[str, Any]:
        """Keyword arguments for ``pytorch3d.renderer.OrthographicCameras`` (see :meth:`PinholeCamera.to_pytorch3d`)."""
        f = torch.stack([self.scale, self.scale], dim=-1)
        c = torch.stack([self.tx, self.ty], dim=-1)
        return _pytorch3d_kwargs(self, f, c, in_ndc)

    @classmethod
    def from_pytorch3d(
        cls, focal_length: torch.Tensor, principal_point: torch.Tensor, image_size: Tuple[int, int], *,
        in_ndc: bool = True,
    ) -> "OrthographicCamera":
        """Inverse of :meth:`to_pytorch3d`; both focal components must be equal (ValueError otherwise)."""
        cam = PinholeCamera.from_pytorch3d(focal_length, principal_point, image_size, in_ndc=in_ndc)
        _check_same_scale(cam.fx, cam.fy, "focal_length")
        return cls(scale=cam.fx, tx=cam.cx, ty=cam.cy, image_size=cam.image_size)


#: Alias: a weak-perspective camera is an orthographic camera with ``scale = f / Z_mean``.
WeakPerspectiveCamera = OrthographicCamera


# --------------------------------------------------------------------------------------------------------------
# small helpers


def _positive_factor(factor: Any) -> float:
    try:
        f = float(factor)
    except (TypeError, ValueError):
        raise ValueError(f"factor must be a positive number, got {factor!r}") from None
    if not f > 0 or not math.isfinite(f):
        raise ValueError(f"factor must be a positive number, got {factor!r}")
    return f


def _like(v: TensorLike, ref: torch.Tensor) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        if v.ndim > 1:
            raise ShapeError(f"crop offsets must be numbers or (B,) tensors, got {tuple(v.shape)}")
        return v.to(ref)
    return torch.as_tensor(float(v), dtype=ref.dtype, device=ref.device)


def _check_matrix(P: Any, name: str) -> torch.Tensor:
    if not isinstance(P, torch.Tensor):
        P = torch.as_tensor(P)
    if P.ndim not in (2, 3) or P.shape[-2:] != (4, 4) or not P.is_floating_point():
        raise ShapeError(f"{name} must be a floating (4, 4) or (B, 4, 4) matrix, got {tuple(P.shape)} {P.dtype}")
    return P[None] if P.ndim == 2 else P


def _check_same_scale(sx: torch.Tensor, sy: torch.Tensor, name: str) -> None:
    if not torch.allclose(sx.detach(), sy.detach(), rtol=1e-6, atol=0.0):
        raise ValueError(f"{name}: x and y scales differ ({sx.tolist()} vs {sy.tolist()}); an orthographic camera "
                         f"has one scale")


def _p3d_inputs(focal_length: Any, principal_point: Any) -> Tuple[torch.Tensor, torch.Tensor]:
    f = torch.as_tensor(focal_length)
    c = torch.as_tensor(principal_point)
    if f.ndim == 1:
        f = f[:, None]
    if f.ndim != 2 or f.shape[-1] not in (1, 2) or not f.is_floating_point():
        raise ShapeError(f"focal_length must be (B,), (B, 1) or (B, 2) floats, got {tuple(f.shape)} {f.dtype}")
    if c.ndim == 1:
        c = c[None]
    if c.ndim != 2 or c.shape[-1] != 2 or not c.is_floating_point():
        raise ShapeError(f"principal_point must be (B, 2) floats, got {tuple(c.shape)} {c.dtype}")
    return f.expand(-1, 2), c.to(f)


def _pytorch3d_kwargs(cam: _Camera, f: torch.Tensor, c: torch.Tensor, in_ndc: bool) -> Dict[str, Any]:
    H, W = cam.image_size  # type: ignore[attr-defined]
    if in_ndc:
        S = float(min(H, W))
        f = f * (2.0 / S)
        c = torch.stack([(W - 2 * c[:, 0]) / S, (H - 2 * c[:, 1]) / S], dim=-1)
    B = cam.batch_size
    R = torch.diag(torch.tensor(PYTORCH3D_FROM_CAMERA, dtype=cam.dtype, device=cam.device)).expand(B, 3, 3)
    return dict(
        focal_length=f,
        principal_point=c,
        R=R.clone(),
        T=torch.zeros(B, 3, dtype=cam.dtype, device=cam.device),
        image_size=torch.tensor([[H, W]], dtype=torch.int64, device=cam.device).expand(B, 2).clone(),
        in_ndc=in_ndc,
    )
