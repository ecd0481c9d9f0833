"""ICT-FaceKit: install from archive/folder/zip, counts, reproduction of the OBJs, landmarks, regions, bad input."""
from __future__ import annotations

import json
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from morphable_models import ict, load_ict, read_obj_vertices
from morphable_models.errors import ModelFileError, ModelNotInstalledError


@pytest.fixture(scope="module")
def facex_dir(ict_archive, tmp_path_factory) -> Path:
    """The archive extracted once (as a user's clone would look: FaceXModel/ below a top folder)."""
    root = tmp_path_factory.mktemp("ict_clone") / "ICT-FaceKit-master"
    root.mkdir()
    with tarfile.open(ict_archive) as tf:
        tf.extractall(root, filter="data")
    return root


def test_counts(ict_model):
    m = ict_model
    assert m.num_vertices == 26719
    assert m.num_faces == 52220
    assert m.uvs.shape == (28911, 2)
    assert m.faces_uv.shape == (52220, 3)
    assert m.num_identity == 100
    assert m.num_expression == 53
    meta = json.loads((Path(m.extra["cache_dir"]) / "meta.json").read_text())
    assert meta["num_polygons"] == 26384
    assert sorted(meta["extra_expressions"]) == ["PupilDilate_L", "PupilDilate_R", "cheekRaiser_L", "cheekRaiser_R"]
    assert len(meta["expression_names"]) == 57
    # 25,836 quads + 548 triangles
    offsets = m.extra["polygon_offsets"]
    sizes = np.diff(offsets) + 2
    assert (sizes == 4).sum() == 25836 and (sizes == 3).sum() == 548
    assert "MIT" in (Path(m.extra["cache_dir"]) / "LICENSE").read_text()


def test_all_expressions(ict_home):
    m = load_ict(ict_home, expressions="all")
    assert m.num_expression == 57
    assert "cheekRaiser_L" in m.expression_names
    with pytest.raises(KeyError, match="notAShape"):
        load_ict(ict_home, expressions=["jawOpen", "notAShape"])


def test_uv_faces_valid(ict_model):
    fuv = ict_model.faces_uv
    assert int(fuv.min()) >= 0 and int(fuv.max()) < 28911
    # every UV is used by some corner
    assert torch.unique(fuv).numel() == 28911
    # the face area lies in UDIM tile 0
    face = ict_model.regions["face"]
    uv = ict_model.uvs[fuv[torch.as_tensor(face.face_ids)]]
    assert float(uv[..., 0].min()) >= 0 and float(uv[..., 0].max()) <= 1


def test_reproduces_objs(ict_model, facex_dir):
    """jawOpen = 1 and each identity coefficient reproduce their OBJ files to 1e-5 (cm)."""
    fx = facex_dir / "FaceXModel"
    neutral = read_obj_vertices(fx / "generic_neutral_mesh.obj")
    out = ict_model()
    assert torch.allclose(out.vertices[0].double(), torch.from_numpy(neutral), atol=1e-5, rtol=0)
    rig = ict_model.rig
    out = ict_model(expression=rig.weights({"jawOpen": 1.0}))
    ref = read_obj_vertices(fx / "jawOpen.obj")
    assert np.abs(out.vertices[0].double().numpy() - ref).max() < 1e-5
    # every identity mode, batched
    eye = torch.eye(100)
    verts = ict_model(identity=eye).vertices.double().numpy()
    for k in range(100):
        ref = read_obj_vertices(fx / f"identity{k:03d}.obj")
        err = np.abs(verts[k] - ref).max()
        assert err < 1e-5, f"identity{k:03d}: max error {err}"


def test_landmark_ids(ict_model, facex_dir):
    lm = ict_model.landmarks["ibug68"]
    assert len(lm) == 68 and lm.is_vertex_set
    vi = json.loads((facex_dir / "FaceXModel" / "vertex_indices.json").read_text())
    assert list(lm.vertex_index) == vi["idx_to_landmark_verts"]
    assert tuple(lm.vertex_index) == ict.ICT_IBUG68
    # README: substitutes; extended jawlines are supersets
    assert set(ict.ICT_JAWLINE_RIGHT) <= set(ict.ICT_JAWLINE_RIGHT_EXTENDED)
    assert set(ict.ICT_JAWLINE_LEFT) <= set(ict.ICT_JAWLINE_LEFT_EXTENDED)
    alt = ict_model.landmarks["ibug68_alt_jawline"].vertex_index
    assert list(alt[:8]) == list(ict.ICT_JAWLINE_RIGHT) and list(alt[9:17]) == list(ict.ICT_JAWLINE_LEFT)
    assert alt[8] == lm.vertex_index[8]
    # geometry sanity: the subject's right eye corner (36) is at negative x (image left), left (45) positive
    v = ict_model.template
    p = v[torch.as_tensor(lm.vertex_index)]
    assert p[36, 0] < 0 < p[45, 0]
    assert p[8, 1] < p[30, 1] < p[27, 1]  # chin below the nose tip below the nose bridge (y up)
    assert len(ict_model.landmarks["jawline_right_extended"]) == 17


def test_regions(ict_model):
    r = ict_model.regions
    assert r["face"].num_vertices == 9409 and r["face"].num_faces == 18460
    assert r["narrow_face"].num_vertices == 6706 and r["narrow_face"].num_faces == 13120
    assert r["all"].num_vertices == 26719 and r["all"].num_faces == 52220
    assert r["teeth"].num_vertices == 4412
    # the eyeball "left" is the subject's left: positive x
    assert float(ict_model.template[torch.as_tensor(r["eyeball_left"].vertex_ids), 0].mean()) > 0
    # face triangles only use face vertices
    f = ict_model.faces[torch.as_tensor(r["face"].face_ids)]
    assert int(f.max()) == 9408


def test_submodel_consistent(ict_model, ict_face_model):
    sub = ict_face_model
    assert sub.num_vertices == 9409 and sub.num_faces == 18460
    assert int(sub.faces.max()) < sub.num_vertices
    assert int(sub.faces_uv.max()) < sub.uvs.shape[0]
    torch.manual_seed(0)
    idc, exc = torch.randn(2, 100), torch.rand(2, 53)
    full = ict_model(idc, exc).vertices[:, :9409]
    part = sub(idc, exc).vertices
    assert torch.allclose(full, part, atol=1e-6)
    # landmarks re-indexed to the same points
    assert torch.allclose(ict_model.get_landmarks(ict_model(idc, exc).vertices), sub.get_landmarks(part), atol=1e-6)
    # UVs per corner preserved
    fid = torch.as_tensor(ict_model.regions["face"].face_ids)
    assert torch.equal(ict_model.uvs[ict_model.faces_uv[fid]], sub.uvs[sub.faces_uv])
    # a sub-model of a region that excludes landmark vertices drops that set
    teeth = ict_model.submodel("teeth")
    assert "ibug68" not in teeth.landmarks and teeth.num_vertices == 4412


def test_load_repeats_exactly(ict_home):
    """Loading twice gives the same model (the load time is measured by benchmarks/bench_model.py, not asserted:
    wall-clock limits fail on a busy machine)."""
    a, b = load_ict(ict_home), load_ict(ict_home)
    assert torch.equal(a.template, b.template) and torch.equal(a.faces, b.faces)
    assert torch.equal(a.expression_basis, b.expression_basis) and a.expression_names == b.expression_names


# ---------------------------------------------------------------------------------------------- install paths


def _small_facex(facex_dir: Path, dest: Path, drop=None, corrupt=None):
    """A copy of FaceXModel with a few files changed (for bad-input tests); symlinks keep it cheap."""
    fx = dest / "deep" / "nest" / "FaceXModel"
    fx.mkdir(parents=True)
    for p in (facex_dir / "FaceXModel").iterdir():
        if p.name == drop:
            continue
        if p.name == corrupt:
            lines = p.read_text().splitlines()
            vlines = [i for i, ln in enumerate(lines) if ln.startswith("v ")]
            del lines[vlines[-1]]
            (fx / p.name).write_text("\n".join(lines))
        else:
            os.symlink(p, fx / p.name)
    (dest / "deep" / "nest" / "LICENSE").write_text((facex_dir / "LICENSE").read_text())
    return dest


def test_install_from_folder_any_depth(facex_dir, tmp_path):
    src = _small_facex(facex_dir, tmp_path / "src")
    home = tmp_path / "home"
    d = ict.install_ict(src, home=home, progress=False)  # its time: benchmarks/bench_model.py
    m = load_ict(home)
    assert m.num_vertices == 26719
    assert "MIT" in (d / "LICENSE").read_text()


def test_install_from_zip_github_layout(facex_dir, tmp_path, ict_model):
    """GitHub archives are zips with a top folder ICT-FaceKit-master/ (only the needed files, stored)."""
    zpath = tmp_path / "ICT-FaceKit-master.zip"
    with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_STORED) as zf:
        for p in sorted((facex_dir / "FaceXModel").iterdir()):
            zf.write(p, f"ICT-FaceKit-master/FaceXModel/{p.name}")
        zf.write(facex_dir / "LICENSE", "ICT-FaceKit-master/LICENSE")
    home = tmp_path / "home"
    ict.install_ict(zpath, home=home, progress=False)
    m = load_ict(home)
    assert torch.equal(m.template, ict_model.template)
    assert torch.equal(m.expression_basis, ict_model.expression_basis)


def test_missing_obj(facex_dir, tmp_path):
    src = _small_facex(facex_dir, tmp_path / "src", drop="identity042.obj")
    home = tmp_path / "home"
    with pytest.raises(ModelFileError, match="identity042.obj"):
        ict.install_ict(src, home=home, progress=False)
    assert not ict.cache_dir(home).exists()
    assert not any(p.name.startswith(".ict-facekit") for p in (home / "models").glob(".*")) if (
        home / "models").exists() else True


def test_wrong_vertex_count(facex_dir, tmp_path):
    src = _small_facex(facex_dir, tmp_path / "src", corrupt="mouthSmile_L.obj")
    home = tmp_path / "home"
    with pytest.raises(ModelFileError, match=r"mouthSmile_L\.obj.*26718 vertices, expected 26719"):
        ict.install_ict(src, home=home, progress=False)
    assert not ict.is_installed(home)


def test_truncated_archive(ict_archive, tmp_path):
    bad = tmp_path / "truncated.tar.xz"
    data = ict_archive.read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    home = tmp_path / "home"
    with pytest.raises(ModelFileError, match="truncated.tar.xz"):
        ict.install_ict(bad, home=home, progress=False)
    assert not ict.cache_dir(home).exists()
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"PK\x03\x04 not really a zip" * 10)
    with pytest.raises(ModelFileError, match="junk.zip"):
        ict.install_ict(junk, home=home, progress=False)
    with pytest.raises(ModelFileError, match="no such file"):
        ict.install_ict(tmp_path / "nope.tar.xz", home=home, progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelFileError, match="no FaceXModel"):
        ict.install_ict(empty, home=home, progress=False)


def test_failed_reinstall_keeps_old_cache(facex_dir, tmp_path):
    home = tmp_path / "home"
    ict.install_ict(_small_facex(facex_dir, tmp_path / "good"), home=home, progress=False)
    before = (ict.cache_dir(home) / "model.npz").stat().st_mtime_ns
    with pytest.raises(ModelFileError):
        ict.install_ict(_small_facex(facex_dir, tmp_path / "bad", drop="jawOpen.obj"), home=home, progress=False,
                        force=True)
    assert (ict.cache_dir(home) / "model.npz").stat().st_mtime_ns == before
    assert load_ict(home).num_vertices == 26719
    leftovers = [p.name for p in (home / "models").iterdir() if p.name != "ict-facekit"]
    assert leftovers == []


def test_not_installed(tmp_path):
    with pytest.raises(ModelNotInstalledError, match="facerender model install ict-facekit"):
        load_ict(tmp_path / "empty_home")
