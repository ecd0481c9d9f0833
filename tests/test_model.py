"""LinearFaceModel, BlendshapeRig, geometry, rotations, landmarks, the generic blendshape-folder loader."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation as SciRot

from morphable_models import (
    LandmarkEmbedding,
    LinearFaceModel,
    Region,
    axis_angle_to_matrix,
    camera_to_model,
    euler_to_matrix,
    load_blendshape_folder,
    matrix_to_axis_angle,
    matrix_to_euler,
    matrix_to_rotation_6d,
    model_to_camera,
    rotation_6d_to_matrix,
    vertex_normals,
    write_obj,
)
from morphable_models.errors import ModelFileError, ShapeError
from morphable_models.linear import linear_blend


def tiny_model(dtype=torch.float64, albedo=True) -> LinearFaceModel:
    """A tetrahedron-like model with 2 identity, 3 expression and 2 albedo components."""
    g = torch.Generator().manual_seed(0)
    V = 5
    template = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 4]])
    kw = {}
    if albedo:
        kw = dict(albedo_mean=torch.full((V, 3), 0.5, dtype=torch.float64),
                  albedo_basis=torch.randn(2, V, 3, generator=g, dtype=torch.float64) * 0.1,
                  albedo_std=torch.tensor([1.0, 0.5]))
    return LinearFaceModel(
        template, faces,
        torch.randn(2, V, 3, generator=g, dtype=torch.float64),
        torch.randn(3, V, 3, generator=g, dtype=torch.float64),
        identity_std=[2.0, 1.0], expression_names=["jawOpen", "mouthSmile_L", "mouthSmile_R"],
        landmarks={"pts": LandmarkEmbedding.from_barycentric("pts", [0, 3], faces.numpy(),
                                                             np.array([[0.2, 0.3, 0.5], [1, 0, 0]]))},
        regions={"front": Region.from_vertices("front", [0, 1, 2], faces.numpy())},
        dtype=dtype, **kw,
    )


def test_forward_matches_formula():
    m = tiny_model()
    idc = torch.tensor([[0.5, -1.0], [1.0, 2.0]], dtype=torch.float64)
    exc = torch.tensor([[0.1, 0.2, 0.3], [0.0, 1.0, 0.0]], dtype=torch.float64)
    out = m(idc, exc, torch.zeros(2, 2, dtype=torch.float64))
    ref = m.template + torch.einsum("bk,kvc->bvc", idc, m.identity_basis_3d()) + torch.einsum(
        "bk,kvc->bvc", exc, m.expression_basis_3d())
    assert torch.allclose(out.vertices, ref)
    assert out.vertices.shape == (2, 5, 3)
    assert torch.allclose(out.albedo, torch.full((2, 5, 3), 0.5, dtype=torch.float64))
    # defaults: zeros -> template; batch_size
    out = m(batch_size=3)
    assert out.vertices.shape == (3, 5, 3) and torch.equal(out.vertices[1], m.template)
    # 1-D coefficients are a batch of one and broadcast against other inputs
    out = m(idc[0], exc)
    assert out.vertices.shape == (2, 5, 3)


def test_linear_blend_functional():
    g = torch.Generator().manual_seed(1)
    t, b, c = torch.randn(4, 3, generator=g), torch.randn(6, 4, 3, generator=g), torch.randn(2, 6, generator=g)
    assert torch.allclose(linear_blend(t, b, c), t + torch.einsum("bk,kvc->bvc", c, b), atol=1e-6)
    tb = torch.randn(2, 4, 3, generator=g)
    assert torch.allclose(linear_blend(tb, b, c), tb + torch.einsum("bk,kvc->bvc", c, b), atol=1e-6)


def test_gradcheck_forward():
    m = tiny_model()
    idc = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    exc = torch.rand(2, 3, dtype=torch.float64, requires_grad=True)
    alc = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: (m(a, b, c).vertices, m(a, b, c).albedo), (idc, exc, alc))


def test_gradcheck_normals_and_landmarks():
    m = tiny_model()
    v = (m.template + 0.1 * torch.randn(5, 3, dtype=torch.float64)).unsqueeze(0).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: vertex_normals(x, m.faces), (v,))
    assert torch.autograd.gradcheck(lambda x: m.get_landmarks(x, "pts"), (v,))


def test_vertex_normals_sparse_equals_scatter_reference():
    """The CSR incidence product gives the plain scatter's normals (batches, a degenerate face, an unused vertex),
    its gradient passes gradcheck with a batch of 2, and the cached matrix follows in-place changes of the faces."""
    from morphable_models import geometry as G

    g = torch.Generator().manual_seed(0)
    V = 40
    faces = torch.randint(0, V - 1, (70, 3), generator=g)  # vertex V - 1 unused
    faces[5] = torch.tensor([3, 3, 7])  # degenerate: a repeated corner
    verts = torch.randn(3, V, 3, generator=g, dtype=torch.float64)

    def reference(v, f):
        fn = G.face_normals(v, f, normalize=False)
        out = torch.zeros_like(v).index_add(1, f.reshape(-1), fn.repeat_interleave(3, dim=1))
        return out / out.norm(dim=-1, keepdim=True).clamp_min(1e-20)

    torch.testing.assert_close(vertex_normals(verts, faces), reference(verts, faces), rtol=1e-12, atol=1e-12)
    assert torch.all(vertex_normals(verts, faces)[:, V - 1] == 0)
    torch.testing.assert_close(vertex_normals(verts.float(), faces), reference(verts.float(), faces))
    v = verts[:2].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: vertex_normals(x, faces), (v,))
    faces[1, 0] = V - 1  # in place: the cached incidence matrix must not be reused
    torch.testing.assert_close(vertex_normals(verts, faces), reference(verts, faces), rtol=1e-12, atol=1e-12)
    assert torch.all(vertex_normals(verts, faces)[:, V - 1] != 0)


@pytest.mark.parametrize("dt", [torch.float32, torch.float64])
def test_dtype_device(dt, device):
    m = tiny_model(dtype=dt).to(device)
    assert m.template.dtype == dt and m.template.device.type == device.type
    out = m(torch.zeros(1, 2, dtype=dt, device=device))
    assert out.vertices.dtype == dt and out.vertices.device.type == device.type


def test_bad_coefficients():
    m = tiny_model()
    with pytest.raises(ShapeError, match=r"identity must have shape \(B, 2\), got \(1, 3\)"):
        m(torch.zeros(1, 3, dtype=torch.float64))
    with pytest.raises(ShapeError, match="floating point"):
        m(torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ShapeError, match="dtype torch.float32 but the model is torch.float64"):
        m(torch.zeros(1, 2, dtype=torch.float32))
    with pytest.raises(ShapeError, match="NaN"):
        m(expression=torch.tensor([[0.1, float("nan"), 0.0]], dtype=torch.float64))
    with pytest.raises(ShapeError, match="batch size 2, other inputs have 3"):
        m(torch.zeros(2, 2, dtype=torch.float64), torch.zeros(3, 3, dtype=torch.float64))
    with pytest.raises(ShapeError, match="torch.Tensor"):
        m([0.0, 1.0])
    with pytest.raises(ShapeError, match="no albedo basis"):
        tiny_model(albedo=False)(albedo=torch.zeros(1, 2, dtype=torch.float64))
    with pytest.raises(ShapeError, match=r"template must be \(V, 3\)"):
        LinearFaceModel(torch.zeros(4, 2), torch.tensor([[0, 1, 2]]))
    with pytest.raises(ShapeError, match=r"index out of range: found \[0, 7\]"):
        LinearFaceModel(torch.zeros(4, 3), torch.tensor([[0, 1, 7]]))


def test_bad_coefficients_ict(ict_model):
    with pytest.raises(ShapeError, match=r"expression must have shape \(B, 53\), got \(2, 52\)"):
        ict_model(expression=torch.zeros(2, 52))
    if torch.cuda.is_available():
        with pytest.raises(ShapeError, match="cuda"):
            ict_model(identity=torch.zeros(1, 100, device="cuda"))


def test_spec_split_join():
    m = tiny_model()
    spec = m.spec
    assert spec.sizes == {"identity": 2, "expression": 3, "albedo": 2}
    assert spec["expression"].index("jawOpen") == 0 and spec["identity"].std.tolist() == [2.0, 1.0]
    assert spec["expression"].lower.tolist() == [0, 0, 0] and spec["expression"].upper.tolist() == [1, 1, 1]
    flat = torch.arange(7.0).reshape(1, 7)
    parts = spec.split(flat)
    assert parts["expression"].tolist() == [[2.0, 3.0, 4.0]]
    assert torch.equal(spec.join(parts), flat)
    assert spec.join({"expression": torch.ones(1, 3)}).tolist() == [[0, 0, 1, 1, 1, 0, 0]]
    with pytest.raises(ShapeError):
        spec.split(torch.zeros(1, 6))
    with pytest.raises(KeyError, match="noSuch"):
        spec["expression"].index("noSuch")


def test_rig_ict(ict_model):
    rig = ict_model.rig
    assert len(rig) == 53
    assert ("eyeBlink_L", "eyeBlink_R") in rig.left_right_pairs
    assert "jawOpen" in rig.groups["center"] and "mouthSmile_L" in rig.groups["left"]
    assert rig.facs["AU12"][1] == ("mouthSmile_L", "mouthSmile_R")
    assert rig.facs["AU27"][1] == ("jawOpen",)
    assert len(rig.facs) == 29
    w = rig.au_to_weights({"AU12": 0.7, "AU45": 1.0})
    assert w[0, rig.index("mouthSmile_R")] == pytest.approx(0.7) and w[0, rig.index("eyeBlink_L")] == 1.0
    aus = rig.weights_to_au(w)
    assert float(aus["AU12"]) == pytest.approx(0.7) and float(aus["AU1"]) == 0
    perm = rig.mirror_permutation()
    wm = w.clone()
    wm[0, rig.index("mouthSmile_L")] = 0.2
    assert float(wm[:, perm][0, rig.index("mouthSmile_R")]) == pytest.approx(0.2)
    assert int(perm[rig.index("jawLeft")]) == rig.index("jawRight")
    with pytest.raises(ShapeError, match=r"outside its range \[0.0, 1.0\]"):
        rig.weights({"jawOpen": 1.5})
    assert rig.clamp(torch.tensor([[-1.0] + [2.0] * 52])).tolist()[0][:2] == [0.0, 1.0]
    # mirroring a one-sided smile gives the other side's geometry mirrored in x
    vl = rig.apply(ict_model.template, rig.weights({"mouthSmile_L": 1.0}))[0]
    vr = rig.apply(ict_model.template, rig.weights({"mouthSmile_R": 1.0}))[0]
    dl, dr = vl - ict_model.template, vr - ict_model.template
    assert float(dl[:9409, 0].abs().sum()) > 0 and float(dr.norm(dim=-1).max()) > 0.1
    assert abs(float(dl.norm(dim=-1).sum() - dr.norm(dim=-1).sum())) / float(dl.norm(dim=-1).sum()) < 0.05


def test_rotations_against_scipy():
    g = torch.Generator().manual_seed(3)
    aa = torch.randn(50, 3, generator=g, dtype=torch.float64)
    R = axis_angle_to_matrix(aa)
    ref = SciRot.from_rotvec(aa.numpy()).as_matrix()
    assert np.allclose(R.numpy(), ref, atol=1e-12)
    back = matrix_to_axis_angle(R)
    assert np.allclose(SciRot.from_rotvec(back.numpy()).as_matrix(), ref, atol=1e-10)
    assert torch.allclose(rotation_6d_to_matrix(matrix_to_rotation_6d(R)), R, atol=1e-12)
    e = torch.tensor([[0.3, -0.5, 0.2]], dtype=torch.float64)
    Re = euler_to_matrix(e)
    assert np.allclose(Re.numpy(), SciRot.from_euler("ZYX", e.numpy()[:, ::-1]).as_matrix(), atol=1e-12)
    assert torch.allclose(matrix_to_euler(Re), e, atol=1e-12)
    # near zero: identity and exact first-order gradient
    z = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(axis_angle_to_matrix, (z,))
    assert torch.autograd.gradcheck(axis_angle_to_matrix, (aa[:3].clone().requires_grad_(True),))
    # angle pi
    pi_aa = torch.tensor([[np.pi, 0, 0]], dtype=torch.float64)
    assert torch.allclose(axis_angle_to_matrix(matrix_to_axis_angle(axis_angle_to_matrix(pi_aa))),
                          axis_angle_to_matrix(pi_aa), atol=1e-9)


def test_model_to_camera_convention(ict_model):
    """Frontal pose: the face looks at the camera, y flips to down, the nose tip is the nearest landmark."""
    v = ict_model.template[None]
    cam = model_to_camera(v, torch.zeros(1, 3), torch.tensor([[0.0, 0.0, 60.0]]))
    lm = ict_model.get_landmarks(cam)[0]
    assert lm[30, 2] == lm[:, 2].min()       # nose tip (30) nearest to the camera
    assert lm[8, 1] > lm[27, 1]              # chin below (larger y) than the nose bridge
    assert lm[36, 0] < lm[45, 0]             # subject's right eye on the image left
    # yaw +30 deg about the model's up axis turns the nose towards +x (image right)
    yaw = euler_to_matrix(torch.tensor([[0.0, np.deg2rad(30), 0.0]], dtype=torch.float32))
    cam2 = model_to_camera(v, yaw, torch.tensor([[0.0, 0.0, 60.0]]))
    assert ict_model.get_landmarks(cam2)[0, 30, 0] > lm[30, 0] + 3
    back = camera_to_model(cam2, yaw, torch.tensor([[0.0, 0.0, 60.0]]))
    assert torch.allclose(back, v, atol=1e-4)


def test_vertex_normals_point_outwards(ict_model):
    n = vertex_normals(ict_model.template[None], ict_model.faces)[0]
    lm = ict_model.landmarks["ibug68"].vertex_index
    assert float(n[lm[30], 2]) > 0.8  # nose tip normal points towards the viewer (+z in model space)
    assert torch.allclose(n.norm(dim=-1)[:9409], torch.ones(9409), atol=1e-5)


def test_landmark_embedding():
    m = tiny_model()
    pts = m.get_landmarks(m.template[None], "pts")[0]
    f = m.faces[0]
    assert torch.allclose(pts[0], 0.2 * m.template[f[0]] + 0.3 * m.template[f[1]] + 0.5 * m.template[f[2]])
    with pytest.raises(ShapeError, match="sum to 1"):
        LandmarkEmbedding("bad", np.zeros((2, 3), dtype=int), np.ones((2, 3)))
    with pytest.raises(KeyError, match="no landmark set"):
        m.get_landmarks(m.template[None], "nope")


def test_submodel_tiny():
    m = tiny_model()
    sub = m.submodel("front")
    assert sub.num_vertices == 3 and sub.num_faces == 1
    out = sub(torch.ones(1, 2, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64))
    full = m(torch.ones(1, 2, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64))
    assert torch.allclose(out.vertices, full.vertices[:, :3])
    # both points lie on region vertices (the second's zero-weight corner 4 is outside): kept, same positions
    assert torch.allclose(sub.get_landmarks(out.vertices, "pts"), m.get_landmarks(full.vertices, "pts"))
    m.landmarks["apex"] = LandmarkEmbedding.from_vertices("apex", [3])
    assert "apex" not in m.submodel("front").landmarks  # vertex 3 is outside the region -> dropped


def test_blendshape_folder(tmp_path):
    m = tiny_model()
    faces = m.faces.numpy()
    write_obj(tmp_path / "neutral.obj", m.template.numpy(), faces)
    (tmp_path / "shapes").mkdir()
    deltas = m.expression_basis_3d().numpy()
    for k, n in enumerate(m.expression_names):
        write_obj(tmp_path / "shapes" / f"{n}.obj", m.template.numpy() + deltas[k], faces)
    write_obj(tmp_path / "shapes" / "identity000.obj", m.template.numpy() + m.identity_basis_3d().numpy()[0], faces)
    loaded = load_blendshape_folder(tmp_path / "neutral.obj", tmp_path / "shapes", identity_pattern=r"identity\d+",
                                    dtype=torch.float64)
    assert loaded.num_identity == 1 and loaded.num_expression == 3
    k = loaded.expression_names.index("mouthSmile_L")
    assert np.allclose(loaded.expression_basis_3d()[k].numpy(), deltas[1], atol=1e-5)
    # wrong vertex count names the file
    write_obj(tmp_path / "shapes" / "broken.obj", m.template.numpy()[:4], faces[:2])
    with pytest.raises(ModelFileError, match=r"broken.obj.*4 vertices, expected 5"):
        load_blendshape_folder(tmp_path / "neutral.obj", tmp_path / "shapes")
    with pytest.raises(ModelFileError, match="missing blendshape OBJ"):
        load_blendshape_folder(tmp_path / "neutral.obj", tmp_path / "shapes", names=["jawOpen", "nope"])
    with pytest.raises(ModelFileError, match="cannot read OBJ"):
        load_blendshape_folder(tmp_path / "missing.obj", tmp_path / "shapes")
