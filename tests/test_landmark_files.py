"""Landmark files (.pts, .ljson, dlib conventions) and the NME metric."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facerender.io import read_image
from facerender.landmarks import (
    box_from_dlib_rect,
    box_to_dlib_ltrb,
    from_dlib_points,
    nme,
    normalized_point_errors,
    outer_eye_distance,
    read_landmarks,
    read_ljson,
    read_ljson_groups,
    read_pts,
    to_dlib_points,
    write_pts,
)

PTS_FILES = {"takeo": "takeo.ppm", "einstein": "einstein.jpg", "breakingbad": "breakingbad.jpg"}


def _inside(points, image):
    h, w = image.shape[:2]
    return bool(np.all((points[:, 0] > 0) & (points[:, 0] < w) & (points[:, 1] > 0) & (points[:, 1] < h)))


# ---------------------------------------------------------------------------------------------------------------
# The sample files


@pytest.mark.parametrize("name", sorted(PTS_FILES))
def test_read_pts_sample_files(faces_dir, name):
    pts = read_pts(faces_dir / f"{name}.pts")
    assert pts.shape == (68, 2) and pts.dtype == np.float64
    assert np.all(np.isfinite(pts))
    image = read_image(faces_dir / PTS_FILES[name])
    assert _inside(pts, image)
    # Points 36 / 45 are the outer eye corners: the subject's right eye is on the image's left.
    assert pts[36, 0] < pts[45, 0]
    # The first value of the file, minus 0.5.
    first = (faces_dir / f"{name}.pts").read_text().split("{")[1].split()[:2]
    np.testing.assert_allclose(pts[0], np.array(first, float) - 0.5, rtol=0, atol=1e-12)


def test_read_ljson_sample_file(faces_dir):
    groups = read_ljson_groups(faces_dir / "lenna.ljson")
    assert set(groups) == {"LJSON", "pupils"}
    assert groups["LJSON"].shape == (68, 2) and groups["pupils"].shape == (2, 2)
    image = read_image(faces_dir / "lenna.png")
    for pts in groups.values():
        assert _inside(pts, image)
    raw = json.loads((faces_dir / "lenna.ljson").read_text())["groups"]["LJSON"]["landmarks"]["points"][0]
    np.testing.assert_allclose(groups["LJSON"][0], [raw[1] + 0.5, raw[0] + 0.5], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(read_ljson(faces_dir / "lenna.ljson"), groups["LJSON"])
    np.testing.assert_array_equal(read_landmarks(faces_dir / "lenna.ljson"), groups["LJSON"])
    # The pupils lie between the eye corners of the 68-point group.
    eyes = groups["LJSON"]
    assert eyes[36, 0] < groups["pupils"][:, 0].min() and groups["pupils"][:, 0].max() < eyes[45, 0]


# ---------------------------------------------------------------------------------------------------------------
# Exact conventions on synthetic files


def test_pts_convention_exact(tmp_path):
    p = tmp_path / "a.pts"
    p.write_text("version: 1\nn_points:  3\n{\n1 1\n10.25 3\n-2 7.5\n}\n")
    np.testing.assert_array_equal(read_pts(p), [[0.5, 0.5], [9.75, 2.5], [-2.5, 7.0]])
    # Without a header.
    p.write_text("{\n1 2\n}\n")
    np.testing.assert_array_equal(read_pts(p), [[0.5, 1.5]])


def test_ljson_convention_exact(tmp_path):
    p = tmp_path / "a.ljson"
    data = {"version": 3, "groups": {
        "LJSON": {"landmarks": {"points": [[0, 0], [2, 5], None, [7.25, 1.0]], "connectivity": []}, "labels": []},
        "other": {"landmarks": {"points": [[1, 1]]}, "labels": []}}}
    p.write_text(json.dumps(data))
    got = read_ljson(p)
    np.testing.assert_array_equal(got[[0, 1, 3]], [[0.5, 0.5], [5.5, 2.5], [1.5, 7.75]])  # [y, x] -> (x, y) + 0.5
    assert np.all(np.isnan(got[2]))
    np.testing.assert_array_equal(read_ljson(p, "other"), [[1.5, 1.5]])
    with pytest.raises(KeyError, match="groups: \\['LJSON', 'other'\\]"):
        read_ljson(p, "pupils")
    # menpo's older single-group layout (versions 1 and 2).
    p.write_text(json.dumps({"version": 2, "landmarks": {"points": [[3, 4]]}, "labels": []}))
    np.testing.assert_array_equal(read_ljson(p), [[4.5, 3.5]])


def test_write_pts_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 500, size=(68, 2))
    out = write_pts(tmp_path / "x.pts", pts)
    np.testing.assert_allclose(read_pts(out), pts, rtol=0, atol=1e-6)
    lines = out.read_text().splitlines()
    assert lines[:3] == ["version: 1", "n_points:  68", "{"] and lines[-1] == "}"
    assert lines[3] == f"{pts[0, 0] + 0.5:.6f} {pts[0, 1] + 0.5:.6f}"
    assert [f.name for f in tmp_path.iterdir()] == ["x.pts"]  # no temporary file left
    write_pts(tmp_path / "y.pts", [[0.5, 0.5]])
    assert (tmp_path / "y.pts").read_text().splitlines()[3] == "1.000000 1.000000"


def test_write_pts_rejects_bad_points(tmp_path):
    with pytest.raises(ValueError, match=r"\(L, 2\).*\(68, 3\)"):
        write_pts(tmp_path / "x.pts", np.zeros((68, 3)))
    with pytest.raises(ValueError, match="NaN"):
        write_pts(tmp_path / "x.pts", [[np.nan, 1.0]])
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("text, match", [
    ("version: 1\nn_points: 3\n{\n1 1\n2 2\n}\n", "declares n_points: 3 but holds 2"),
    ("{\n1 1\n2 2\n", "missing the closing"),
    ("{\n1 1\nhello\n}\n", "line 3: expected 'x y'"),
    ("just text\n", "not a .pts file"),
])
def test_read_pts_errors(tmp_path, text, match):
    p = tmp_path / "bad.pts"
    p.write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        read_pts(p)
    assert "bad.pts" in str(info.value)


def test_read_ljson_errors(tmp_path):
    p = tmp_path / "bad.ljson"
    p.write_text("{not json")
    with pytest.raises(ValueError, match="bad.ljson.*not valid JSON"):
        read_ljson(p)
    p.write_text(json.dumps({"version": 3, "stuff": 1}))
    with pytest.raises(ValueError, match="not an LJSON file"):
        read_ljson(p)
    with pytest.raises(ValueError, match="supported suffixes are .pts and .ljson"):
        read_landmarks(tmp_path / "x.txt")
    with pytest.raises(FileNotFoundError):
        read_pts(tmp_path / "missing.pts")


def test_dlib_conventions():
    np.testing.assert_array_equal(from_dlib_points(np.array([[0, 0], [10, 3]])), [[0.5, 0.5], [10.5, 3.5]])
    np.testing.assert_array_equal(to_dlib_points([[0.5, 0.5], [10.5, 3.5]]), [[0, 0], [10, 3]])
    dlib = pytest.importorskip("dlib", reason="dlib is the optional 'landmarks' extra")
    rect = dlib.rectangle(10, 20, 29, 39)  # inclusive pixel indices: 20 x 20 pixels
    box = box_from_dlib_rect(rect)
    assert box == (10.0, 20.0, 30.0, 40.0)
    assert box[2] - box[0] == rect.width() and box[3] - box[1] == rect.height()
    assert box_to_dlib_ltrb(box) == (10, 20, 29, 39)
    shape = dlib.full_object_detection(rect, [dlib.point(3, 4), dlib.point(0, 0)])
    np.testing.assert_array_equal(from_dlib_points(shape), [[3.5, 4.5], [0.5, 0.5]])


# ---------------------------------------------------------------------------------------------------------------
# NME


def _gt(n=68, seed=0):
    rng = np.random.default_rng(seed)
    g = rng.uniform(0, 100, size=(n, 2))
    g[36], g[45] = (20.0, 50.0), (60.0, 20.0)  # eye distance 50
    return g


def test_nme_known_value():
    gt = _gt()
    pred = gt + [3.0, 4.0]  # every point 5 pixels off
    assert nme(pred, gt) == pytest.approx(0.1, abs=1e-12)
    assert outer_eye_distance(gt) == pytest.approx(50.0)
    pred2 = gt.copy()
    pred2[0] += [0.0, 68 * 50 * 0.01]  # one point off by 68 * 0.5 px: mean error 0.5 px = 1 %
    assert nme(pred2, gt) == pytest.approx(0.01, abs=1e-12)
    # Custom normalising points.
    assert nme(pred, gt, left=0, right=1) == pytest.approx(5.0 / np.linalg.norm(gt[0] - gt[1]))


def test_nme_batched_numpy_torch_agree():
    gt = np.stack([_gt(seed=s) for s in range(3)])
    pred = gt + np.random.default_rng(5).normal(0, 2, size=gt.shape)
    batched = nme(pred, gt)
    assert batched.shape == (3,)
    np.testing.assert_allclose(batched, [nme(p, g) for p, g in zip(pred, gt)], rtol=1e-12)
    for dtype in (torch.float32, torch.float64):
        t = nme(torch.tensor(pred, dtype=dtype), torch.tensor(gt, dtype=dtype))
        assert t.dtype == dtype and t.shape == (3,)
        np.testing.assert_allclose(t.numpy(), batched, rtol=1e-5 if dtype == torch.float32 else 1e-12)
    single = nme(torch.tensor(pred[0]), torch.tensor(gt[0]))
    assert single.ndim == 0 and float(single) == pytest.approx(batched[0], rel=1e-12)
    assert isinstance(nme(pred[0], gt[0]), float)


def test_nme_ignores_missing_points():
    gt = _gt()
    pred = gt + [3.0, 4.0]
    pred[5] += 1000.0
    gt_missing = gt.copy()
    gt_missing[5] = np.nan
    assert nme(pred, gt_missing) == pytest.approx(0.1, abs=1e-12)
    t = nme(torch.tensor(pred), torch.tensor(gt_missing))
    assert float(t) == pytest.approx(0.1, abs=1e-12)
    errs = normalized_point_errors(pred, gt_missing)
    assert np.isnan(errs[5]) and np.isfinite(np.delete(errs, 5)).all()


def test_nme_gradcheck_and_no_input_change():
    gt = torch.tensor(_gt(), dtype=torch.float64).unsqueeze(0).repeat(2, 1, 1)
    pred = (gt + torch.randn(gt.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    pred.requires_grad_(True)
    gt.requires_grad_(True)
    before = pred.detach().clone()
    assert torch.autograd.gradcheck(lambda p, g: nme(p, g), (pred, gt))
    assert torch.equal(pred.detach(), before)
    # A point exactly on its ground truth gives a finite (zero) gradient, not NaN.
    p = gt.detach().clone().requires_grad_(True)
    nme(p, gt.detach()).sum().backward()
    assert torch.isfinite(p.grad).all()


def test_nme_errors():
    gt = _gt()
    with pytest.raises(ValueError, match=r"same shape.*\(68, 2\) and \(67, 2\)"):
        nme(gt, gt[:67])
    with pytest.raises(ValueError, match="must both be numpy arrays or both torch tensors"):
        nme(torch.tensor(gt), gt)
    with pytest.raises(ValueError, match="not two distinct points among 20"):
        nme(gt[:20], gt[:20])
    bad = gt.copy()
    bad[45] = bad[36]
    with pytest.raises(ValueError, match="normalising distance between gt points 36 and 45 is zero"):
        nme(gt, bad)
