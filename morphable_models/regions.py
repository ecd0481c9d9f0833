"""Named regions of a mesh (vertex and triangle index sets) used for sub-models, masks and region maps."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Tuple

import numpy as np

from .errors import ShapeError


@dataclass(frozen=True)
class Region:
    """A named part of a mesh.

    Attributes:
        name: e.g. ``"face"``.
        vertex_ids: ``(N,)`` sorted unique int64 vertex indices.
        face_ids: ``(M,)`` sorted unique int64 triangle indices (into the model's triangulated ``faces``).
        description: free text (e.g. where the definition comes from).
    """

    name: str
    vertex_ids: np.ndarray
    face_ids: np.ndarray
    description: str = ""

    def __post_init__(self):
        v = np.unique(np.asarray(self.vertex_ids, dtype=np.int64))
        f = np.unique(np.asarray(self.face_ids, dtype=np.int64))
        object.__setattr__(self, "vertex_ids", v)
        object.__setattr__(self, "face_ids", f)

    @property
    def num_vertices(self) -> int:
        return int(self.vertex_ids.size)

    @property
    def num_faces(self) -> int:
        return int(self.face_ids.size)

    @classmethod
    def from_ranges(
        cls,
        name: str,
        vertex_range: Tuple[int, int],
        polygon_range: Tuple[int, int],
        polygon_offsets: np.ndarray,
        description: str = "",
    ) -> "Region":
        """Build a region from INCLUSIVE vertex and polygon ranges (as ICT-FaceKit's README tables give them).

        ``polygon_offsets (P + 1,)`` maps polygons to triangles (see :func:`morphable_models.obj_io.triangulate`).
        """
        v0, v1 = vertex_range
        p0, p1 = polygon_range
        if v1 < v0 or p1 < p0:
            raise ShapeError(f"region {name!r}: empty or reversed range {vertex_range}, {polygon_range}")
        faces = np.arange(polygon_offsets[p0], polygon_offsets[p1 + 1], dtype=np.int64)
        return cls(name, np.arange(v0, v1 + 1, dtype=np.int64), faces, description)

    @classmethod
    def from_vertices(cls, name: str, vertex_ids: Iterable[int], faces: np.ndarray, description: str = "") -> "Region":
        """A region made of vertices; its triangles are those whose three corners are all inside."""
        v = np.unique(np.asarray(list(vertex_ids) if not isinstance(vertex_ids, np.ndarray) else vertex_ids,
                                 dtype=np.int64))
        inside = np.zeros(int(max(faces.max() + 1, v.max() + 1 if v.size else 0)), dtype=bool)
        inside[v] = True
        f = np.nonzero(inside[faces].all(1))[0]
        return cls(name, v, f, description)

    def union(self, other: "Region", name: Optional[str] = None) -> "Region":
        return Region(
            name or f"{self.name}+{other.name}",
            np.union1d(self.vertex_ids, other.vertex_ids),
            np.union1d(self.face_ids, other.face_ids),
        )

    def vertex_mask(self, num_vertices: int) -> np.ndarray:
        """``(V,)`` bool mask of the region's vertices."""
        m = np.zeros(num_vertices, dtype=bool)
        m[self.vertex_ids] = True
        return m

    def face_mask(self, num_faces: int) -> np.ndarray:
        """``(F,)`` bool mask of the region's triangles."""
        m = np.zeros(num_faces, dtype=bool)
        m[self.face_ids] = True
        return m
