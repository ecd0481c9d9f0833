"""Face models beyond ICT-FaceKit: BFM 2009 / 2017 / Deep3DFaceRecon, FLAME, eos (Surrey), the Tucker model, the
cache format and ``facerender model`` (issue 18).

None of these models may be redistributed: every test writes small files in each exact format itself (from a
decimated ICT mesh: key names, dtypes, index bases, units, winding, byte layout), loads them with the real loader and
compares with the arrays written. ``test_real_files`` runs on the real models when ``FACERENDER_MODELS`` points to a
folder holding them.
"""
from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from morphable_models import LinearFaceModel
from morphable_models.errors import ModelFileError, ModelNotInstalledError, ShapeError

# the fitting energies' torch.jit.script helpers (facerender.fitting) warn on torch 2.13
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def small(ict_model):
    from morphable_models.synthetic import decimate

    return decimate(ict_model, 1.0)


@pytest.fixture(scope="module")
def files(small, tmp_path_factory):
    from morphable_models.synthetic import write_all_formats

    return write_all_formats(small, tmp_path_factory.mktemp("formats"))


def _T(m):
    return m.template.detach().double().numpy()


def _basis(m, which):
    b = getattr(m, which + "_basis")
    return b.detach().double().numpy().reshape(b.shape[0], -1, 3)


# ------------------------------------------------------------------------------------------------------------------
# BFM 2009


def test_bfm2009_arrays_units_indices(files, ict_model):
    from morphable_models.bfm import load_bfm2009

    f = files["bfm2009"]
    a = f["arrays"]
    m = load_bfm2009(f["path"], expression=f["expression"], landmarks=f["landmarks"], contours=f["contours"],
                     ict_model=ict_model)
    # micrometres -> cm, float32 in the file: about 1e-3 um
    np.testing.assert_allclose(_T(m), a["mean"], atol=2e-5)
    # tl: 1-based, clockwise in the file -> 0-based counter-clockwise, the exact triangles written
    np.testing.assert_array_equal(m.faces.numpy(), a["faces"])
    # identity basis = shapePC * shapeEV (standard-normal coefficients)
    np.testing.assert_allclose(_basis(m, "identity").reshape(len(a["std"]), -1).T, a["pcs"] * a["std"], atol=2e-5)
    np.testing.assert_allclose(m.identity_std.numpy(), 1.0)
    # albedo 0..255 -> 0..1
    np.testing.assert_allclose(m.albedo_mean.double().numpy(), a["albedo_mean"], atol=1e-6)
    # the Exp_Pca.bin add-on: scaled by std_exp.txt, placed by trimIndex (the last 10 vertices uncovered)
    sub = f["expression_vertices"]
    ex = _basis(m, "expression")
    ref = (f["expression_pcs"] * f["expression_std"]).T.reshape(len(f["expression_std"]), len(sub), 3)
    np.testing.assert_allclose(ex[:, sub], ref, atol=2e-5)
    assert np.all(ex[:, len(sub):] == 0)
    assert m.expression_kind == "pca" and float(m.expression_upper[0]) == 4.0
    # the eos mapping (INFO syntax) is used as given; the jaw points come from the contour file
    lm = m.landmarks["ibug68"].vertex_index
    given = [k for k in range(17, 68) if k not in (60, 64)]
    np.testing.assert_array_equal(lm[given], a["ibug68"][given])
    assert lm[8] == a["ibug68"][8]
    np.testing.assert_array_equal(np.sort(m.landmarks["jawline_right_extended"].vertex_index), np.sort(a["right"]))
    src = m.extra["annotations"]["source"]
    assert src["jawline_right_extended"] == "model contour file" and "face" in m.regions
    assert m.units == "cm" and "Basel" in m.license


def test_bfm2009_bad_input(files, small, tmp_path):
    import scipy.io

    from morphable_models.bfm import load_bfm2009
    from morphable_models.synthetic import write_bfm2009

    a = files["bfm2009"]["arrays"]
    p = tmp_path / "zero_based.mat"
    write_bfm2009(p, a["mean"], a["pcs"], a["std"], a["faces"], one_based=False)
    with pytest.raises(ModelFileError, match=r"zero_based\.mat: tl contains index 0 .*1-based"):
        load_bfm2009(p)
    p = tmp_path / "missing.mat"
    scipy.io.savemat(p, {"shapeMU": np.zeros((9, 1)), "shapePC": np.zeros((9, 2))})
    with pytest.raises(ModelFileError, match=r"missing\.mat: not a BFM 2009 .*missing shapeEV, tl \(found: shapeMU, "
                                             r"shapePC\)"):
        load_bfm2009(p)
    p = tmp_path / "shapes.mat"
    scipy.io.savemat(p, {"shapeMU": np.zeros((9, 1)), "shapePC": np.zeros((12, 2)), "shapeEV": np.ones((2, 1)),
                         "tl": np.array([[1, 2, 3]])})
    with pytest.raises(ModelFileError, match=r"shapes\.mat: shape basis has 12 rows, expected 3N = 9"):
        load_bfm2009(p)
    raw = files["bfm2009"]["path"].read_bytes()
    p = tmp_path / "truncated.mat"
    p.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(ModelFileError, match=r"truncated\.mat"):
        load_bfm2009(p)
    with pytest.raises(ModelFileError, match=r"std_exp\.txt"):
        (tmp_path / "Exp_Pca.bin").write_bytes(files["bfm2009"]["expression"].read_bytes())
        load_bfm2009(files["bfm2009"]["path"], expression=tmp_path / "Exp_Pca.bin")


# ------------------------------------------------------------------------------------------------------------------
# BFM 2017 and Deep3DFaceRecon


def test_bfm2017_variances_and_millimetres(files, ict_model):
    from morphable_models.bfm import load_bfm2017

    f = files["bfm2017"]
    a = f["arrays"]
    m = load_bfm2017(f["path"], landmarks=f["landmarks"], contours=f["contours"], ict_model=ict_model)
    np.testing.assert_allclose(_T(m), a["mean"], atol=2e-5)
    np.testing.assert_array_equal(m.faces.numpy(), a["faces"])  # cells (3, F), 0-based
    # pcaVariance are variances: the basis is pcaBasis * sqrt(variance), converted mm -> cm
    np.testing.assert_allclose(_basis(m, "identity").reshape(len(a["std"]), -1).T, a["pcs"] * a["std"], atol=2e-5)
    np.testing.assert_allclose(_basis(m, "expression").reshape(len(a["estd"]), -1).T, a["epcs"] * a["estd"],
                               atol=2e-5)
    np.testing.assert_allclose(m.albedo_mean.double().numpy(), a["albedo_mean"], atol=1e-6)
    assert m.extra["bfm_landmarks"] == ["center.nose.tip"]


def test_bfm2017_bad_input(files, tmp_path):
    import h5py

    from morphable_models.bfm import load_bfm2017
    from morphable_models.synthetic import write_bfm2017

    a = files["bfm2017"]["arrays"]
    p = tmp_path / "one_based.h5"
    write_bfm2017(p, a["mean"], a["pcs"], a["std"], a["faces"], one_based=True)
    with pytest.raises(ModelFileError, match=r"one_based\.h5: shape/representer/cells .*looks 1-based"):
        load_bfm2017(p)
    p = tmp_path / "neg.h5"
    write_bfm2017(p, a["mean"], a["pcs"], a["std"], a["faces"])
    with h5py.File(p, "r+") as f:
        v = np.asarray(f["shape/model/pcaVariance"])
        del f["shape/model/pcaVariance"]
        f["shape/model/pcaVariance"] = -v
    with pytest.raises(ModelFileError, match=r"neg\.h5: shape/model/pcaVariance has negative entries: these are "
                                             r"variances"):
        load_bfm2017(p)
    p = tmp_path / "other.h5"
    with h5py.File(p, "w") as f:
        f["shape/model/mean"] = np.zeros(9)
    with pytest.raises(ModelFileError, match=r"other\.h5: not a BFM 2017 .*missing shape/model/pcaBasis"):
        load_bfm2017(p)
    p = tmp_path / "cut.h5"
    p.write_bytes(files["bfm2017"]["path"].read_bytes()[:4000])
    with pytest.raises(ModelFileError, match=r"cut\.h5: not a readable HDF5 file, or truncated"):
        load_bfm2017(p)


def test_bfm_front_keypoints_and_face_mask(files, ict_model):
    from morphable_models.bfm import load_bfm_front

    f = files["bfm-front"]
    a = f["arrays"]
    m = load_bfm_front(f["path"], ict_model=ict_model)
    np.testing.assert_allclose(_T(m), a["mean"], atol=2e-5)  # decimetres -> cm
    np.testing.assert_array_equal(m.faces.numpy(), a["faces"])
    np.testing.assert_array_equal(m.landmarks["ibug68"].vertex_index, a["ibug68"])  # 1-based keypoints
    assert m.regions["face"].num_vertices == m.num_vertices  # frontmask2_idx
    assert m.extra["annotations"]["source"]["ibug68"] == "model files"


# ------------------------------------------------------------------------------------------------------------------
# eos / Surrey


@pytest.mark.parametrize("version", [1, 2, 4])
def test_eos_versions_roundtrip(files, ict_model, tmp_path, version):
    from morphable_models.surrey import load_surrey, read_eos_model
    from morphable_models.synthetic import write_eos_model

    a = files["eos"]["arrays"]
    p = tmp_path / f"v{version}.bin"
    write_eos_model(p, ((a["mean"] * 10).reshape(-1), a["pcs"], (a["std"] * 10) ** 2, a["faces"]), version=version,
                    expression=(np.zeros(a["mean"].size), a["epcs"], (a["estd"] * 10) ** 2, a["faces"]) if version >= 2
                    else None)
    raw = read_eos_model(p)
    assert raw.version == version and raw.shape.basis.shape == a["pcs"].shape
    np.testing.assert_allclose(raw.shape.basis, a["pcs"], atol=1e-6)  # column-major float32
    m = load_surrey(p, landmarks=files["eos"]["landmarks"], contours=files["eos"]["contours"], ict_model=ict_model,
                    blendshapes=files["eos"]["blendshapes"])
    np.testing.assert_allclose(_T(m), a["mean"], atol=2e-5)  # mm -> cm
    np.testing.assert_array_equal(m.faces.numpy(), a["faces"])
    np.testing.assert_allclose(_basis(m, "identity").reshape(len(a["std"]), -1).T, a["pcs"] * a["std"], atol=2e-5)
    if version >= 2:  # the archive's PCA expression model wins over the blendshape file
        assert m.expression_kind == "pca"
        np.testing.assert_allclose(_basis(m, "expression").reshape(len(a["estd"]), -1).T, a["epcs"] * a["estd"],
                                   atol=2e-5)
    else:  # version 1 has no expression model: the blendshapes (names, weights in [0, 1]) are used
        assert m.expression_kind == "blendshape" and m.expression_names[0] == "browDown_L"
        assert float(m.expression_upper.max()) == 1.0


def test_eos_v4_extras_and_blendshape_file(files, small, ict_model):
    from morphable_models.surrey import load_surrey, read_eos_blendshapes

    f = files["eos"]
    m = load_surrey(f["path"], blendshapes=f["blendshapes"], landmarks=f["landmarks"], contours=f["contours"],
                    ict_model=ict_model)
    assert m.extra["eos_landmark_definitions"] == {"center.nose.tip": int(f["arrays"]["ibug68"][30])}
    np.testing.assert_allclose(m.albedo_mean.double().numpy(), f["arrays"]["albedo_mean"], atol=1e-6)
    bs = read_eos_blendshapes(f["blendshapes"])
    assert [n for n, _ in bs][:3] == list(small.expression_names[:3])
    ref = small.expression_basis.double().numpy()[0] * 10  # mm in the file
    np.testing.assert_allclose(bs[0][1], ref, atol=1e-5)


def test_eos_bad_input(files, tmp_path):
    from morphable_models.surrey import read_eos_blendshapes, read_eos_model

    raw = files["eos"]["path"].read_bytes()
    p = tmp_path / "cut.bin"
    p.write_bytes(raw[:1000])
    with pytest.raises(ModelFileError, match=r"cut\.bin: truncated: shape_model.* needs \d+ bytes at offset \d+"):
        read_eos_model(p)
    p = tmp_path / "v9.bin"
    p.write_bytes(struct.pack("<I", 9) + raw[4:])
    with pytest.raises(ModelFileError, match=r"v9\.bin: not an eos MorphableModel archive: class version 9"):
        read_eos_model(p)
    with pytest.raises(ModelFileError, match=r"it looks like an eos blendshape file"):
        read_eos_model(files["eos"]["blendshapes"])
    p = tmp_path / "tail.bin"
    p.write_bytes(raw + b"\0" * 8)
    with pytest.raises(ModelFileError, match=r"tail\.bin: 8 unread bytes"):
        read_eos_model(p)
    p = tmp_path / "bs.bin"
    p.write_bytes(files["eos"]["blendshapes"].read_bytes()[:-3])
    with pytest.raises(ModelFileError, match=r"bs\.bin: truncated"):
        read_eos_blendshapes(p)


def test_eos_mapping_files(tmp_path):
    from morphable_models.format_utils import read_eos_contours, read_eos_landmark_mapping
    from morphable_models.synthetic import write_eos_contours, write_eos_mapping

    for syntax in ("toml", "info"):
        p = tmp_path / f"m_{syntax}.txt"
        write_eos_mapping(p, {8: 33, 17: 225, 67: 404}, syntax=syntax)
        assert read_eos_landmark_mapping(p) == {8: 33, 17: 225, 67: 404}  # 1-based points -> 0-based
    with pytest.raises(ModelFileError, match=r"vertex id 225 of iBUG point 18 is outside 0\.\.99"):
        read_eos_landmark_mapping(tmp_path / "m_toml.txt", num_vertices=100)
    (tmp_path / "bad.txt").write_text("hello")
    with pytest.raises(ModelFileError, match=r"bad\.txt: not an eos landmark mapping"):
        read_eos_landmark_mapping(tmp_path / "bad.txt")
    write_eos_contours(tmp_path / "c.json", [1, 2, 3], [4, 5, 6])
    r, l = read_eos_contours(tmp_path / "c.json")
    assert r.tolist() == [1, 2, 3] and l.tolist() == [4, 5, 6]
    (tmp_path / "c2.json").write_text('{"contour": []}')
    with pytest.raises(ModelFileError, match=r"c2\.json: expected .*model_contour"):
        read_eos_contours(tmp_path / "c2.json")


# ------------------------------------------------------------------------------------------------------------------
# FLAME


def _chain():
    """A tiny FLAME-layout chain: 5 joints, 6 vertices each bound to one joint (one vertex blended 50/50)."""
    from morphable_models.flame import FlameModel

    J = np.array([[0, 0, 0], [0, -1, 0], [0, 0, 1], [-1, 1, 1], [1, 1, 1]], dtype=np.float64)
    V = np.array([[0, 2, 0], [0, -2, 0], [0, -1, 3], [-1, 1, 2], [1, 1, 2], [0, -1, 2]], dtype=np.float64)
    W = np.zeros((6, 5))
    W[0, 0] = W[1, 1] = W[2, 2] = W[3, 3] = W[4, 4] = 1.0
    W[5, 1] = W[5, 2] = 0.5
    Jr = np.zeros((5, 6))
    # joint k = the vertex-space point J[k] as an affine combination of vertices 0..3 (rows sum to 1)
    A = np.vstack([V[:4].T, np.ones(4)])
    for k in range(5):
        Jr[k, :4] = np.linalg.solve(A, np.append(J[k], 1.0))
    m = FlameModel(V, np.zeros((6, 3, 1)), np.zeros((6, 3, 1)), np.zeros((6, 3, 36)), Jr, [-1, 0, 1, 1, 1], W,
                   np.array([[0, 1, 2]]), dtype=torch.float64)
    return m, V, J


def _rx(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def test_flame_lbs_hand_computed_chain():
    m, V, J = _chain()
    neck, jaw = 0.4, np.pi / 2
    out = m(neck=torch.tensor([[neck, 0, 0]], dtype=torch.float64), jaw=torch.tensor([[jaw, 0, 0]],
                                                                                    dtype=torch.float64))
    Rn, Rj = _rx(neck), _rx(jaw)

    def neck_t(p):  # the neck rotates about its joint
        return Rn @ (p - J[1]) + J[1]

    def jaw_t(p):  # the jaw rotates about its joint, then moves with the neck
        return neck_t(Rj @ (p - J[2]) + J[2])

    exp = np.stack([V[0], neck_t(V[1]), jaw_t(V[2]), neck_t(V[3]), neck_t(V[4]),
                    0.5 * neck_t(V[5]) + 0.5 * jaw_t(V[5])])
    np.testing.assert_allclose(out.vertices[0].numpy(), exp, atol=1e-12)
    np.testing.assert_allclose(out.joints[0, 2].numpy(), neck_t(J[2]), atol=1e-12)
    # the jaw opens downwards for positive x rotation: vertex 2 (chin, in front of the jaw joint) goes down
    assert exp[2, 1] < V[2, 1]


def test_flame_pose_correctives_and_eyes():
    m, V, J = _chain()
    pd = np.zeros((6, 3, 36))
    pd[3, 1, 9 * 2 + 4] = 2.0  # the left eye's R[1, 1] - 1 moves vertex 3 along y (before skinning)
    from morphable_models.flame import FlameModel

    m2 = FlameModel(V, np.zeros((6, 3, 1)), np.zeros((6, 3, 1)), pd, m.J_regressor.numpy(), [-1, 0, 1, 1, 1],
                    m.lbs_weights.numpy(), np.array([[0, 1, 2]]), dtype=torch.float64)
    a = 0.3
    out = m2(eyes=torch.tensor([[a, 0, 0, 0, 0, 0]], dtype=torch.float64))
    Re = _rx(a)
    v3 = V[3] + np.array([0, 2.0 * (np.cos(a) - 1), 0])
    np.testing.assert_allclose(out.vertices[0, 3].numpy(), Re @ (v3 - J[3]) + J[3], atol=1e-12)


def test_flame_gradcheck_and_errors():
    from morphable_models.flame import lbs

    m, V, J = _chain()
    v = torch.tensor(V[None], requires_grad=True)
    pose = (torch.randn(1, 5, 3, dtype=torch.float64) * 0.3).requires_grad_()
    assert torch.autograd.gradcheck(lambda v, p: lbs(v, p, m.posedirs, m.J_regressor, m.parents,
                                                     m.lbs_weights)[0], (v, pose))
    with pytest.raises(ShapeError, match=r"jaw must have shape \(B, 3\), got \(1, 2\)"):
        m(jaw=torch.zeros(1, 2, dtype=torch.float64))
    with pytest.raises(ShapeError, match=r"pose must be \(B, 5, 3\)"):
        lbs(v, torch.zeros(1, 4, 3, dtype=torch.float64), m.posedirs, m.J_regressor, m.parents, m.lbs_weights)


def test_flame_pickle_without_chumpy(files, ict_model):
    import sys

    from morphable_models.flame import load_flame, read_flame_pickle

    f = files["flame"]
    rig = f["rig"]
    assert "chumpy" not in sys.modules
    d, seen = read_flame_pickle(f["path"])
    assert seen == ["chumpy.ch.Ch"]
    m = load_flame(f["path"], landmarks=f["landmarks"], n_shape=20, n_expression=10, ict_model=ict_model)
    np.testing.assert_allclose(m.v_template.double().numpy(), rig["v_template"] * 100, atol=1e-5)  # m -> cm
    np.testing.assert_allclose(m.shapedirs.double().numpy(), rig["shapedirs"][:, :, :20] * 100, atol=1e-5)
    np.testing.assert_allclose(m.exprdirs.double().numpy(), rig["shapedirs"][:, :, 300:310] * 100, atol=1e-5)
    np.testing.assert_allclose(m.J_regressor.double().numpy(), rig["J_regressor"], atol=1e-6)  # sparse -> dense
    assert m.parents == (-1, 0, 1, 1, 1)
    out = m()
    np.testing.assert_allclose(out.vertices[0].double().numpy(), rig["v_template"] * 100, atol=1e-4)
    # DECA's embedding: barycentric, snapped to the largest weight (the vertex the writer put 0.6 on)
    assert not m.landmarks["ibug68_barycentric"].is_vertex_set
    np.testing.assert_array_equal(m.landmarks["ibug68"].vertex_index, f["arrays"]["ibug68"])
    assert m.extra["annotations"]["snap_distance_cm"][1] < 1.0


def test_flame_bad_input(files, tmp_path):
    from morphable_models.flame import load_flame, read_flame_pickle
    from morphable_models.synthetic import _fake_chumpy, write_flame_pickle

    rig = files["flame"]["rig"]
    p = tmp_path / "nokeys.pkl"
    write_flame_pickle(p, rig["v_template"], rig["faces"], rig["shapedirs"], rig["posedirs"], rig["J_regressor"],
                       rig["kintree_table"], rig["weights"], drop=("posedirs", "weights"))
    with pytest.raises(ModelFileError, match=r"nokeys\.pkl: not a FLAME .*missing posedirs, weights"):
        load_flame(p)
    p = tmp_path / "evil.pkl"

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo should-not-run",))

    p.write_bytes(pickle.dumps({"v_template": Evil()}, protocol=2))
    with pytest.raises(ModelFileError, match=r"evil\.pkl: the pickle needs class posix\.system|evil\.pkl: the pickle "
                                             r"needs class os\.system"):
        read_flame_pickle(p)
    p = tmp_path / "expr.pkl"
    with _fake_chumpy() as Ch:
        obj = Ch(np.zeros(3))
        del obj.__dict__["x"]  # a chumpy expression, not a stored array
        d = {k: np.zeros(1) for k in ("f", "posedirs", "J_regressor", "kintree_table", "weights", "shapedirs")}
        d["v_template"] = obj
        p.write_bytes(pickle.dumps(d, protocol=2))
    with pytest.raises(ModelFileError, match=r"expr\.pkl: v_template is a chumpy\.ch\.Ch object without a stored "
                                             r"array"):
        load_flame(p)
    p = tmp_path / "cut.pkl"
    p.write_bytes(files["flame"]["path"].read_bytes()[:5000])
    with pytest.raises(ModelFileError, match=r"cut\.pkl: not a readable pickle, or truncated"):
        read_flame_pickle(p)


def test_flame_linearization_exact_at_point(files, ict_model):
    from morphable_models.flame import POSE_NAMES, load_flame

    f = files["flame"]
    m = load_flame(f["path"], landmarks=f["landmarks"], n_shape=10, n_expression=6, ict_model=ict_model,
                   dtype=torch.float64)
    b0 = torch.randn(1, 10, dtype=torch.float64) * 0.5
    x0 = torch.zeros(1, 6 + len(POSE_NAMES), dtype=torch.float64)
    x0[0, :6] = torch.randn(6, dtype=torch.float64) * 0.3
    x0[0, 6:9] = torch.tensor([0.25, 0.05, -0.03])
    lin = m.linearize(b0, x0)
    V0 = m.evaluate_linear_coefficients(b0, x0)
    torch.testing.assert_close(lin(b0, x0).vertices, V0, atol=1e-10, rtol=0)
    # shape/expression columns are exact (LBS is linear in them for a fixed pose), pose columns first order
    b1 = b0.clone()
    b1[0, 3] += 1.0
    torch.testing.assert_close(lin(b1, x0).vertices, m.evaluate_linear_coefficients(b1, x0), atol=1e-10, rtol=0)
    e = 1e-6
    x1 = x0.clone()
    x1[0, 6] += e
    fd = (m.evaluate_linear_coefficients(b0, x1) - V0) / e
    torch.testing.assert_close(lin.expression_basis_3d()[6], fd[0], atol=1e-4, rtol=0)
    assert tuple(lin.expression_names[6:]) == POSE_NAMES
    assert float(lin.expression_lower[6]) == -0.1 and float(lin.expression_upper[6]) == 0.7


def test_flame_fit_recovers_jaw_by_relinearization(files, ict_model):
    """Landmarks projected from a FLAME pose with the jaw open 0.3 rad: the re-linearised Gauss-Newton fit recovers
    the jaw angle; a single linearisation at the neutral pose (what tracking uses) is measurably off."""
    from morphable_models.flame import load_flame
    from morphable_models.geometry import model_to_camera

    from facerender.fitting.landmark_fit import LandmarkFitConfig
    from facerender.fitting.relinearize import fit_landmarks_relinearized

    f = files["flame"]
    m = load_flame(f["path"], landmarks=f["landmarks"], n_shape=10, n_expression=6, ict_model=ict_model,
                   dtype=torch.float64)
    x = torch.zeros(1, 13, dtype=torch.float64)
    x[0, 6] = 0.3
    V = m.evaluate_linear_coefficients(torch.zeros(1, 10, dtype=torch.float64), x)
    ids = torch.as_tensor(m.landmarks["ibug68"].vertex_index)
    rot, trans = torch.tensor([[0.05, 0.2, 0.0]], dtype=torch.float64), torch.tensor([[0.0, 0.0, 60.0]],
                                                                                      dtype=torch.float64)
    X = model_to_camera(V[:, ids], rot, trans)
    f_px = 800.0
    pts = X[0, :, :2] / X[0, :, 2:] * f_px + 256.0
    cfg = LandmarkFitConfig(fit_identity=False, sliding_contour=False, huber=None)
    fit = fit_landmarks_relinearized(m, pts, (512, 512), config=cfg, focal=f_px, rounds=8, tol=1e-4, rtol=0.0)
    jaw = fit.native["jaw"][0]
    assert abs(jaw - 0.3) < 0.01, fit.history
    assert fit.linearization_error_cm < 1e-6  # exact at the point it stopped
    assert fit.history[-1]["energy"] < 1e-6
    one = fit_landmarks_relinearized(m, pts, (512, 512), config=cfg, focal=f_px, rounds=1)
    assert one.history[0]["energy"] > 10 * fit.history[-1]["energy"]


# ------------------------------------------------------------------------------------------------------------------
# multilinear


def test_hosvd_exact_and_truncated():
    from morphable_models.multilinear import hosvd, mode_product

    rng = np.random.default_rng(0)
    core = rng.normal(size=(4, 3, 2))
    U = [np.linalg.qr(rng.normal(size=(n, r)))[0] for n, r in ((9, 4), (5, 3), (6, 2))]
    t = mode_product(mode_product(mode_product(core, U[0], 0), U[1], 1), U[2], 2)
    c, (A, B, C) = hosvd(t, (4, 3, 2))
    back = mode_product(mode_product(mode_product(c, A, 0), B, 1), C, 2)
    np.testing.assert_allclose(back, t, atol=1e-12)
    noisy = t + 0.01 * rng.normal(size=t.shape)
    errs = []
    for r in ((4, 3, 2), (2, 2, 1)):
        c, (A, B, C) = hosvd(noisy, r, hooi_iterations=2)
        errs.append(np.linalg.norm(mode_product(mode_product(mode_product(c, A, 0), B, 1), C, 2) - noisy))
    assert errs[0] < errs[1]
    with pytest.raises(ShapeError, match=r"ranks \(10, 3, 2\) must lie in"):
        hosvd(t, (10, 3, 2))


def test_tucker_from_ict_reproduces_and_linearizes(small):
    from morphable_models.multilinear import build_from_ict, ict_tensor_data, reconstruction_error

    small = LinearFaceModel(small.template, small.faces, small.identity_basis.view(100, -1, 3)[:12],
                            small.expression_basis.view(53, -1, 3)[:8], expression_names=small.expression_names[:8],
                            landmarks=small.landmarks, regions=small.regions, dtype=torch.float64)
    data = ict_tensor_data(small)
    assert data.coords.shape == (1 + 12 + 8, 13, 9)
    full = build_from_ict(small, (None, 13, 9), data=data, dtype=torch.float64)
    # identity 3 with expression 5: neutral + delta_id + delta_exp, reproduced exactly at full rank
    w = full.vertices_from_weights(full.identity_rows[4:5], full.expression_rows[6:7])[0]
    ref = small.template + small.identity_basis_3d()[3] + small.expression_basis_3d()[5]
    torch.testing.assert_close(w, ref, atol=1e-9, rtol=0)
    torch.testing.assert_close(full().vertices[0], small.template, atol=1e-9, rtol=0)
    # blendshape weights map onto the expression modes exactly at full rank
    wts = torch.zeros(1, 8, dtype=torch.float64)
    wts[0, 2] = 0.5
    d = full.expression_from_blendshapes(wts)
    torch.testing.assert_close(full(expression=d).vertices[0], small.template + 0.5 * small.expression_basis_3d()[2],
                               atol=1e-9, rtol=0)
    errs = [reconstruction_error(data, (None, ri, re))["rms_cm"] for ri, re in ((13, 9), (6, 6), (3, 3))]
    assert errs[0] < 1e-10 < errs[1] < errs[2]
    # truncated model: bilinear, so each factor alone is exact in the linearisation
    m = build_from_ict(small, (None, 6, 5), data=data, dtype=torch.float64)
    a0, d0 = torch.randn(1, 6, dtype=torch.float64), torch.randn(1, 5, dtype=torch.float64)
    lin = m.linearize(a0, d0)
    a1 = a0 + torch.randn(1, 6, dtype=torch.float64)
    torch.testing.assert_close(lin(a1, d0).vertices, m(a1, d0).vertices, atol=1e-9, rtol=0)
    d1 = d0 + torch.randn(1, 5, dtype=torch.float64)
    torch.testing.assert_close(lin(a0, d1).vertices, m(a0, d1).vertices, atol=1e-9, rtol=0)
    gap = (lin(a1, d1).vertices - m(a1, d1).vertices).abs().max()
    assert gap > 1e-6  # jointly it is first order only
    assert torch.autograd.gradcheck(lambda a, d: m(a, d).vertices[:, :20],
                                    (a0.clone().requires_grad_(), d0.clone().requires_grad_()))
    sub = m.submodel("face")
    torch.testing.assert_close(sub(a0, d0).vertices, m(a0, d0).vertices, atol=1e-12, rtol=0)


# ------------------------------------------------------------------------------------------------------------------
# the cache format, detection, the pipelines' checks


def test_store_roundtrip_every_class(files, small, ict_model, tmp_path):
    from morphable_models.flame import load_flame
    from morphable_models.multilinear import build_from_ict
    from morphable_models.store import load_model, load_saved, save_model

    bfm = load_model(files["bfm2009"]["path"], ict_model=ict_model, expression=files["bfm2009"]["expression"])
    flame = load_flame(files["flame"]["path"], n_shape=5, n_expression=4, ict_model=ict_model)
    tucker = build_from_ict(small, (None, 10, 6))
    for m in (bfm, flame, tucker):
        d = save_model(m, "x", tmp_path)
        back = load_model("x", home=tmp_path)
        assert type(back) is type(m) and (d / "LICENSE").read_text().strip() == m.license
        torch.testing.assert_close(back().vertices, m().vertices)
        assert back.landmarks.keys() == m.landmarks.keys() and back.regions.keys() == m.regions.keys()
        np.testing.assert_array_equal(back.landmarks["ibug68"].vertex_ids, m.landmarks["ibug68"].vertex_ids)
    assert load_saved(d).ranks == tucker.ranks
    assert json.loads((d / "meta.json").read_text())["format"] == "multilinear"


def test_store_no_partial_model_and_messages(files, tmp_path, monkeypatch):
    from morphable_models import store

    bad = tmp_path / "bad.mat"
    bad.write_bytes(files["bfm2009"]["path"].read_bytes()[:2000])
    with pytest.raises(ModelFileError, match=r"bad\.mat"):
        store.convert_model(bad, "broken", tmp_path)
    assert not (tmp_path / "models" / "broken").exists()
    m = store.load_model(files["bfm-front"]["path"])

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        store.save_model(m, "half", tmp_path)
    assert list((tmp_path / "models").iterdir()) == []  # no partial folder, no temporary left
    monkeypatch.undo()
    with pytest.raises(ModelNotInstalledError, match=r"no model named 'nope' in .*facerender model convert"):
        store.load_model("nope", home=tmp_path)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\xff" * 64)
    with pytest.raises(ModelFileError, match=r"junk\.bin: unknown model format"):
        store.detect_format(junk)
    for fmt, f in files.items():
        assert store.detect_format(f["path"]) == fmt
    assert store.detect_format(files["eos"]["blendshapes"]) == "eos-blendshapes"
    with pytest.raises(ModelFileError, match=r"an eos blendshape file, not a model"):
        store.load_model(files["eos"]["blendshapes"])


def test_annotations_need_ict_or_files(files, small):
    from morphable_models.correspondence import complete_annotations

    T, F = _T(small), small.faces.numpy()
    with pytest.raises(ModelFileError, match=r"m\.x: the model defines 0 of the 68 iBUG landmarks .*install "
                                             r"ict-facekit"):
        complete_annotations(T, F, where="m.x", home="/nonexistent")
    lm, rg, info = complete_annotations(T, F, where="m.x", landmarks={"ibug68": small.landmarks["ibug68"]},
                                        home="/nonexistent")
    assert rg["face"].num_vertices == len(T) and "jaw polylines" in " ".join(info["derived"])
    # mirrored x is caught
    with pytest.raises(ModelFileError, match=r"unexpected axes .*x is mirrored"):
        complete_annotations(T * np.array([-1, 1, 1]), F, where="m.x", landmarks={"ibug68": small.landmarks["ibug68"]},
                             home="/nonexistent")


def test_derived_landmarks_match_ict(small, ict_model):
    """ICT registered onto a shifted, rotated, rescaled copy of its own face finds its landmarks again."""
    from morphable_models.correspondence import derive_landmarks, register_ict

    th = 0.15
    R = np.array([[np.cos(th), 0, np.sin(th)], [0, 1, 0], [-np.sin(th), 0, np.cos(th)]])
    face = ict_model.submodel("face")
    T = 1.02 * _T(face) @ R.T + np.array([2.0, -1.0, 5.0])
    reg = register_ict(T, ict_model)
    lms, dist = derive_landmarks(T, reg, ict_model)
    ok = lms["ibug68"].vertex_index == face.landmarks["ibug68"].vertex_index
    err = np.linalg.norm(T[lms["ibug68"].vertex_index] - T[face.landmarks["ibug68"].vertex_index], axis=1)
    assert ok.mean() > 0.8 and err.max() < 0.3, (ok.mean(), err.max())


def test_pipeline_checks(files, small, ict_model, monkeypatch):
    from facerender.model_cli import load_pipeline_model

    model, linear, notes = load_pipeline_model(str(files["bfm2009"]["path"]), purpose="reenact",
                                               ict_model=ict_model)
    assert linear is model
    assert any("no ICT eye blendshapes" in n for n in notes) and any("mouth-interior" in n for n in notes)
    _, lin, notes = load_pipeline_model(str(files["flame"]["path"]), purpose="fit", ict_model=ict_model,
                                        n_shape=5, n_expression=4)
    assert isinstance(lin, LinearFaceModel) and lin.expression_names[-7:][0] == "jaw_rx"
    assert any("re-linearisation" in n for n in notes)
    from morphable_models import store

    bare = LinearFaceModel(small.template, small.faces, regions=small.regions)
    monkeypatch.setattr(store, "load_model", lambda *a, **k: bare)
    with pytest.raises(ModelFileError, match=r"needs the 'ibug68' landmark set"):
        load_pipeline_model("x")


def test_fit_bounds_follow_the_model(small):
    """The fitter takes expression bounds from the model: PCA coefficients may go negative, ICT weights may not."""
    from facerender.fitting.params import Block, ParameterLayout, model_bounds

    lay = ParameterLayout([Block("rotation", 3), Block("expression", small.num_expression, 0.0, 1.0)])
    lo, hi = model_bounds(lay, torch.zeros(1), small)
    assert float(lo[3]) == 0.0 and float(hi[3]) == 1.0
    pca = LinearFaceModel(small.template, small.faces, None, small.expression_basis.view(53, -1, 3),
                          expression_kind="pca", expression_lower=-np.arange(53.0) - 1,
                          expression_upper=np.arange(53.0) + 1)
    lo, hi = model_bounds(lay, torch.zeros(1, dtype=torch.float64), pca)
    np.testing.assert_array_equal(lo[3:].numpy(), -np.arange(53.0) - 1)
    assert torch.isinf(lo[:3]).all()


# ------------------------------------------------------------------------------------------------------------------
# CLI


def test_cli_info_convert_build(files, small, tmp_path, monkeypatch, capsys):
    from facerender.cli import main

    p = str(files["bfm2009"]["path"])
    assert main(["--home", str(tmp_path), "model", "info", p, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "bfm2009" and info["vertices"] == small.num_vertices
    assert info["identity_components"] == 20 and info["expression_components"] == 20  # Exp_Pca.bin found beside
    assert main(["--home", str(tmp_path), "model", "convert", p, "--name", "bfm", "--n-identity", "7"]) == 0
    assert "use it with --model bfm" in capsys.readouterr().out
    assert main(["--home", str(tmp_path), "model", "convert", p, "--name", "bfm"]) == 4  # an output in the way
    assert "exists; pass --force" in capsys.readouterr().err
    assert main(["--home", str(tmp_path), "model", "info", "bfm"]) == 0
    out = capsys.readouterr().out
    assert "identity_components    7" in out and "bfm2009" in out
    assert main(["--home", str(tmp_path), "model", "info", str(files["eos"]["blendshapes"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["blendshapes"][0] == "browDown_L"
    assert main(["--home", str(tmp_path), "model", "info", str(tmp_path / "missing.mat")]) == 5  # the model
    assert "missing.mat: no such file" in capsys.readouterr().err
    import morphable_models

    monkeypatch.setattr(morphable_models, "load_ict", lambda home=None: small)
    assert main(["--home", str(tmp_path), "model", "build-multilinear", "--ranks", "20", "10", "--name", "ml"]) == 0
    out = capsys.readouterr().out
    assert "ranks (vertex, identity, expression) = (154, 20, 10)" in out and "use it with --model ml" in out
    from morphable_models.store import load_model

    assert load_model("ml", home=tmp_path).ranks == (154, 20, 10)


# ------------------------------------------------------------------------------------------------------------------
# real files (not redistributable: run when FACERENDER_MODELS points to a folder holding them)

REAL = {"bfm2009": ("01_MorphableModel.mat", 53490), "bfm2017": ("model2017-1_*.h5", None),
        "bfm-front": ("BFM_model_front.mat", 35709), "flame": ("generic_model.pkl", 5023),
        "eos": ("sfm_shape_*.bin", None)}


@pytest.mark.parametrize("fmt", sorted(REAL))
def test_real_files(fmt, faces_dir):
    root = os.environ.get("FACERENDER_MODELS")
    if not root:
        pytest.skip(f"FACERENDER_MODELS is not set: no real {fmt} file to test (the synthetic-format tests ran)")
    pattern, count = REAL[fmt]
    hits = sorted(Path(root).rglob(pattern))
    if not hits:
        pytest.skip(f"no {pattern} under FACERENDER_MODELS={root}")
    from morphable_models.store import as_linear, detect_format, load_model

    from facerender.fitting.landmark_fit import fit_landmarks
    from facerender.landmarks.files import read_landmarks
    from facerender.landmarks.metrics import nme

    assert detect_format(hits[0]) == fmt
    model = load_model(hits[0])
    if count:
        assert model.num_vertices == count
    lin = as_linear(model)
    span = np.ptp(lin.template.double().numpy(), axis=0)
    assert 10 < span[0] < 40, f"{hits[0]}: a head {span[0]:.1f} cm wide: units?"
    pts = read_landmarks(faces_dir / "lenna.ljson")
    res = fit_landmarks(lin, torch.as_tensor(pts), (512, 512))
    assert nme(res.landmarks_2d[0].numpy(), pts) < 0.05
