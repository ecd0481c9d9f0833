"""OBJ reading/writing and quad triangulation."""
import numpy as np
import pytest

from morphable_models import read_obj, read_obj_vertices, triangulate, write_obj
from morphable_models.errors import ModelFileError

OBJ = b"""# test
mtllib m.mtl
v 0 0 0
v 1 0 0
v 1 1 0
v 0 1 0
v 2 0 0 0.5 0.5 0.5
vt 0 0
vt 1 0
vt 1 1
vt 0 1
usemtl A
f 1/1 2/2 3/3 4/4
usemtl B
f -4/2 5/1 -3/3
"""


def test_read_obj_polygons_groups():
    m = read_obj(OBJ)
    assert m.vertices.shape == (5, 3) and m.uvs.shape == (4, 2)
    assert [p.tolist() for p in m.polygons] == [[0, 1, 2, 3], [1, 4, 2]]
    assert [p.tolist() for p in m.polygons_uv] == [[0, 1, 2, 3], [1, 0, 2]]
    assert m.material_groups == {"A": (0, 1), "B": (1, 2)} and m.mtllib == "m.mtl"
    tris, off = triangulate(m.polygons)
    assert tris.tolist() == [[0, 1, 2], [0, 2, 3], [1, 4, 2]] and off.tolist() == [0, 2, 3]


def test_triangulate_preserves_winding():
    poly = [np.array([0, 1, 2, 3, 4])]
    tris, off = triangulate(poly)
    assert tris.tolist() == [[0, 1, 2], [0, 2, 3], [0, 3, 4]] and off.tolist() == [0, 3]


def test_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    v = rng.normal(size=(10, 3))
    f = rng.integers(0, 10, size=(6, 3))
    uv = rng.uniform(size=(7, 2))
    fuv = rng.integers(0, 7, size=(6, 3))
    write_obj(tmp_path / "a.obj", v, f, uv, fuv, mtllib="a.mtl", material="M")
    m = read_obj(tmp_path / "a.obj")
    assert np.allclose(m.vertices, v, atol=1e-6) and np.allclose(m.uvs, uv, atol=1e-6)
    assert np.array_equal(np.stack(m.polygons), f) and np.array_equal(np.stack(m.polygons_uv), fuv)
    assert np.allclose(read_obj_vertices(tmp_path / "a.obj", 10), v, atol=1e-6)


def test_bad_obj(tmp_path):
    with pytest.raises(ModelFileError, match="expected 4"):
        read_obj_vertices(OBJ, expected_count=4)
    with pytest.raises(ModelFileError, match="out of range"):
        read_obj(b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 9\n")
    with pytest.raises(ModelFileError, match="malformed"):
        read_obj(b"v 0 0 zero\nv 1 0 0\n")
    with pytest.raises(ModelFileError, match="fewer than 3"):
        read_obj(b"v 0 0 0\nv 1 0 0\nf 1 2\n")
    with pytest.raises(ModelFileError, match="cannot read"):
        read_obj(tmp_path / "missing.obj")
