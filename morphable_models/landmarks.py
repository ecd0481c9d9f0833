"""Landmark embeddings: points on the mesh given as vertex ids or barycentric points on triangles."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from .errors import ShapeError


@dataclass(frozen=True)
class LandmarkEmbedding:
    """``L`` points on a mesh: point ``l`` is ``sum_k weights[l, k] * vertices[vertex_ids[l, k]]``.

    A vertex landmark has ``vertex_ids[l] = (v, v, v)`` and ``weights[l] = (1, 0, 0)``; a barycentric landmark
    on triangle ``(a, b, c)`` has ``vertex_ids[l] = (a, b, c)`` and barycentric weights summing to 1.

    Attributes:
        name: e.g. ``"ibug68"``.
        vertex_ids: ``(L, 3)`` int64 numpy array.
        weights: ``(L, 3)`` float64 numpy array.
        labels: optional names of the points.
    """

    name: str
    vertex_ids: np.ndarray
    weights: np.ndarray
    labels: Optional[tuple] = None

    def __post_init__(self):
        ids = np.asarray(self.vertex_ids, dtype=np.int64)
        w = np.asarray(self.weights, dtype=np.float64)
        if ids.ndim != 2 or ids.shape[1] != 3 or w.shape != ids.shape:
            raise ShapeError(
                f"landmark set {self.name!r}: vertex_ids and weights must both be (L, 3), "
                f"got {ids.shape} and {w.shape}"
            )
        if not np.allclose(w.sum(1), 1.0, atol=1e-6):
            raise ShapeError(f"landmark set {self.name!r}: weights must sum to 1 per point")
        object.__setattr__(self, "vertex_ids", ids)
        object.__setattr__(self, "weights", w)

    @classmethod
    def from_vertices(cls, name: str, vertex_ids: Sequence[int], labels: Optional[Sequence[str]] = None):
        """Landmarks that are mesh vertices."""
        v = np.asarray(vertex_ids, dtype=np.int64).reshape(-1)
        ids = np.repeat(v[:, None], 3, axis=1)
        w = np.zeros((len(v), 3))
        w[:, 0] = 1.0
        return cls(name, ids, w, tuple(labels) if labels is not None else None)

    @classmethod
    def from_barycentric(cls, name: str, triangles: np.ndarray, faces: np.ndarray, bary: np.ndarray, labels=None):
        """Landmarks on triangles ``triangles (L,)`` of ``faces (F, 3)`` at barycentric ``bary (L, 3)``."""
        faces = np.asarray(faces, dtype=np.int64)
        return cls(name, faces[np.asarray(triangles, dtype=np.int64)], np.asarray(bary, dtype=np.float64),
                   tuple(labels) if labels is not None else None)

    def __len__(self) -> int:
        return int(self.vertex_ids.shape[0])

    @property
    def is_vertex_set(self) -> bool:
        """True when every point is a single vertex."""
        return bool(np.all(self.weights[:, 0] == 1.0))

    @property
    def vertex_index(self) -> np.ndarray:
        """``(L,)`` vertex ids of a vertex set (raises for barycentric sets)."""
        if not self.is_vertex_set:
            raise ShapeError(f"landmark set {self.name!r} has barycentric points; use vertex_ids and weights")
        return self.vertex_ids[:, 0].copy()

    def subset(self, index: Sequence[int], name: Optional[str] = None) -> "LandmarkEmbedding":
        """The points ``index`` (a new embedding)."""
        idx = np.asarray(index, dtype=np.int64)
        labels = tuple(self.labels[i] for i in idx) if self.labels is not None else None
        return LandmarkEmbedding(name or self.name, self.vertex_ids[idx], self.weights[idx], labels)

    def reindex(self, old_to_new: np.ndarray, name: Optional[str] = None) -> Optional["LandmarkEmbedding"]:
        """Map vertex ids through ``old_to_new (V_old,)`` (-1 = removed). Returns None if any point is lost."""
        new = old_to_new[self.vertex_ids]
        used = self.weights > 0
        if np.any(new[used] < 0):
            return None
        new = np.where(used, new, np.maximum(new, 0))
        new = np.where(new < 0, new[:, :1], new)
        return LandmarkEmbedding(name or self.name, new, self.weights, self.labels)

    def gather(self, vertices: torch.Tensor) -> torch.Tensor:
        """Landmark positions ``(B, L, 3)`` from ``vertices (B, V, 3)`` (differentiable)."""
        return vertices_to_landmarks(
            vertices,
            torch.as_tensor(self.vertex_ids, device=vertices.device),
            torch.as_tensor(self.weights, dtype=vertices.dtype, device=vertices.device),
        )


def vertices_to_landmarks(vertices: torch.Tensor, vertex_ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``(B, V, 3)``, ``(L, 3)`` ids and ``(L, 3)`` weights -> ``(B, L, 3)`` (as smplx's ``vertices2landmarks``)."""
    if vertices.ndim != 3:
        raise ShapeError(f"vertices must be (B, V, 3), got {tuple(vertices.shape)}")
    pts = vertices[:, vertex_ids.reshape(-1)].reshape(vertices.shape[0], -1, 3, vertices.shape[-1])
    return torch.einsum("blkc,lk->blc", pts, weights)


IBUG68_LABELS = tuple(
    [f"jaw_{i}" for i in range(17)]
    + [f"brow_right_{i}" for i in range(5)]
    + [f"brow_left_{i}" for i in range(5)]
    + [f"nose_bridge_{i}" for i in range(4)]
    + [f"nose_base_{i}" for i in range(5)]
    + [f"eye_right_{i}" for i in range(6)]
    + [f"eye_left_{i}" for i in range(6)]
    + [f"mouth_outer_{i}" for i in range(12)]
    + [f"mouth_inner_{i}" for i in range(8)]
)
"""Names of the iBUG / Multi-PIE 68 points (0-based; "right" = the subject's right, image left)."""
