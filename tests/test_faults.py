"""Fault injection, the fast cases (issue 19; docs/errors.md). Each CLI case asserts the exit code of its class, ONE
error line on stderr naming the file or argument, no traceback, and nothing half-written. The slow cases (full disk,
read-only home, long conversions, tracking an upside-down clip) are in benchmarks/fault_injection.py.

Every bug found later gets its case here (or there, when it needs minutes)."""
from __future__ import annotations

import argparse
import errno
import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from facerender import cli_support
from facerender.cli import build_parser, main
from facerender.cli_support import ExitCode
from facerender.errors import InputFileError, OutputError, UsageError

from conftest import IN_CI

HAVE_DLIB = importlib.util.find_spec("dlib") is not None and importlib.util.find_spec("face_recognition_models")


@pytest.fixture(scope="module")
def dlib_ready():
    if not HAVE_DLIB:
        msg = 'dlib-bin and face-recognition-models are not installed (pip install "facerender[landmarks]")'
        if IN_CI:
            pytest.fail(msg + "; CI installs the 'all' extras, so this is an error")
        pytest.skip(msg)


def run(argv, capsys):
    """``facerender argv`` in-process: (exit code, stdout, stderr)."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def error_lines(err: str):
    """The lines a terminal keeps (a progress bar's carriage returns overwrite it), without warnings and notes."""
    lines = [ln.split("\r")[-1] for ln in err.split("\n")]
    return [ln for ln in lines if ln.strip() and "warning:" not in ln and not ln.startswith("note:")]


def assert_refused(rc, err, code, *names, folder: Path = None, absent=()):
    lines = error_lines(err)
    assert "Traceback" not in err, err
    assert rc == int(code), (rc, err)
    assert len(lines) == 1, lines
    for n in names:
        assert str(n) in lines[0], (n, lines[0])
    for a in absent:
        assert not Path(a).exists(), f"{a} was created by a refused command"
    if folder is not None:
        assert not [p for p in folder.rglob("*") if ".partial" in p.name or ".tmp-" in p.name]
    return lines[0]


@pytest.fixture()
def files(tmp_path, faces_dir):
    t = tmp_path
    (t / "empty.png").write_bytes(b"")
    jpg = (faces_dir / "breakingbad.jpg").read_bytes()
    (t / "trunc.jpg").write_bytes(jpg[: len(jpg) // 3])
    (t / "text.png").write_text("not an image\n")
    (t / "adir").mkdir()
    (t / "existing").write_text("a file in the way\n")
    shutil.copy(faces_dir / "takeo.pts", t / "face.pts")
    (t / "bad.pts").write_text("version: 1\nn_points: 68\n{\n1 2\nthree 4\n}\n")
    (t / "same.pts").write_text("version: 1\nn_points: 68\n{\n" + "100 100\n" * 68 + "}\n")
    (t / "text.mp4").write_text("not a video\n")
    return t


# ------------------------------------------------------------------------------------------------ arguments (exit 2)


@pytest.mark.parametrize("argv, name", [
    (["fit", "{lenna}", "-o", "{t}/out", "--size", "0"], "--size"),
    (["fit", "{lenna}", "-o", "{t}/out", "--size", "-5"], "--size"),
    (["fit", "{lenna}", "-o", "{t}/out", "--size", "abc"], "--size"),
    (["fit", "{lenna}", "-o", "{t}/out", "--box", "900,300,700,100"], "--box"),
    (["fit", "{lenna}", "-o", "{t}/out", "--box", "nan,0,10,10"], "--box"),
    (["fit", "{lenna}", "-o", "{t}/out", "--box", "1,2,3"], "--box"),
    (["fit", "{lenna}", "-o", "{t}/out", "--face-index", "-1"], "--face-index"),
    (["render", "-o", "{t}/r.png", "--size", "0"], "--size"),
    (["render", "-o", "{t}/r.png", "--yaw", "nan"], "--yaw"),
    (["track", "{lenna}", "-o", "{t}/out", "--max-frames", "0"], "--max-frames"),
    (["track", "{lenna}", "-o", "{t}/out", "--size", "0"], "--size"),
    (["reenact", "--source", "{lenna}", "--target", "{lenna}", "-o", "{t}/out", "--crop-size", "0"], "--crop-size"),
    (["train", "dvp", "--target", "{lenna}", "-o", "{t}/out", "--steps", "0"], "--steps"),
    (["train", "dvp", "--target", "{lenna}", "-o", "{t}/out", "--dropout", "1.5"], "--dropout"),
    (["model", "build-multilinear", "--ranks", "0", "5"], "--ranks"),
    (["fit", "{lenna}", "-o", "{t}/out", "--sise", "3"], "--sise"),
    (["fit", "{lenna}"], "-o"),
])
def test_bad_arguments_are_refused_by_the_parser_in_one_line(argv, name, tmp_path, faces_dir, capsys):
    argv = [a.format(t=tmp_path, lenna=faces_dir / "lenna.png") for a in argv]
    rc, out, err = run(argv, capsys)
    line = assert_refused(rc, err, ExitCode.USAGE, name, absent=[tmp_path / "out", tmp_path / "r.png"])
    assert line.startswith("facerender") and "error:" in line and "usage:" not in err


def test_off_image_and_tiny_boxes_are_refused_before_the_model_loads(files, faces_dir, capsys):
    img = faces_dir / "breakingbad.jpg"
    rc, _, err = run(["fit", img, "-o", files / "out", "--box", "5000,5000,5200,5200"], capsys)
    assert "1920x1080" in assert_refused(rc, err, ExitCode.USAGE, "--box", absent=[files / "out"])
    rc, _, err = run(["fit", img, "-o", files / "out", "--box", "100,100,102,102"], capsys)
    assert_refused(rc, err, ExitCode.USAGE, "--box", "too small", absent=[files / "out"])


# --------------------------------------------------------------------------------------------------- inputs (exit 3)


@pytest.mark.parametrize("image, name", [
    ("nope.jpg", "nope.jpg"), ("empty.png", "empty"), ("trunc.jpg", "trunc.jpg"), ("text.png", "text.png"),
    ("adir", "adir"), ("face.pts", "face.pts"),
])
def test_unusable_images_give_one_line_and_exit_3(files, image, name, capsys):
    rc, _, err = run(["fit", files / image, "-o", files / "out"], capsys)
    assert_refused(rc, err, ExitCode.INPUT, name, folder=files, absent=[files / "out"])


@pytest.mark.parametrize("lm, name, code", [
    ("nope.pts", "nope.pts", ExitCode.INPUT), ("bad.pts", "bad.pts", ExitCode.INPUT),
    ("adir", "adir", ExitCode.INPUT), ("same.pts", "same.pts", ExitCode.FAILED),
])
def test_unusable_landmark_files(files, faces_dir, lm, name, code, capsys):
    rc, _, err = run(["fit", faces_dir / "takeo.ppm", "-o", files / "out", "--landmarks", files / lm], capsys)
    assert_refused(rc, err, code, name, absent=[files / "out"])


@pytest.mark.parametrize("argv, name", [
    (["track", "{t}/nope.mp4", "-o", "{t}/out"], "nope.mp4"),
    (["track", "{t}/text.mp4", "-o", "{t}/out"], "text.mp4"),
    (["track", "{t}/adir", "-o", "{t}/out"], "adir"),
    (["reenact", "--source", "{t}/nope.mp4", "--target", "{t}/text.mp4", "-o", "{t}/out"], "nope.mp4"),
    (["reenact", "--source", "{t}/text.mp4", "--target", "{t}/adir", "-o", "{t}/out"], "adir"),
    (["reenact", "--method", "dvp", "--model", "{t}/norun", "--source", "{t}/text.mp4", "-o", "{t}/out"], "norun"),
    (["reenact", "--method", "dvp", "--model", "{t}/adir", "--source", "{t}/text.mp4", "-o", "{t}/out"], "adir"),
    (["--home", "{t}/h", "model", "install", "ict-facekit", "--from", "{t}/text.png"], "text.png"),
])
def test_unusable_videos_tracks_and_runs_are_refused_before_any_work(files, argv, name, capsys):
    argv = [a.format(t=files) for a in argv]
    rc, _, err = run(argv, capsys)
    code = ExitCode.MODEL if "install" in argv else ExitCode.INPUT
    assert_refused(rc, err, code, name, folder=files, absent=[files / "out"])


# -------------------------------------------------------------------------------------------------- outputs (exit 4)


@pytest.mark.parametrize("argv, names", [
    (["fit", "{lenna}", "-o", "{t}/existing"], ["existing", "a file of that name exists"]),
    (["fit", "{lenna}", "-o", "{t}/existing/sub"], ["existing", "is a file"]),
    (["render", "-o", "{t}/render"], ["render", "no suffix"]),
    (["render", "-o", "{t}/r.xyz"], ["r.xyz", ".png"]),
    (["render", "-o", "{t}/adir"], ["adir", "is a folder"]),
    (["track", "{lenna}", "-o", "{t}/existing"], ["existing"]),
    (["train", "dvp", "--target", "{lenna}", "-o", "{t}/existing"], ["existing"]),
])
def test_outputs_are_checked_before_any_work(files, faces_dir, argv, names, capsys):
    argv = [a.format(t=files, lenna=faces_dir / "lenna.png") for a in argv]
    rc, _, err = run(argv, capsys)
    assert_refused(rc, err, ExitCode.OUTPUT, *names, folder=files)
    assert (files / "existing").read_text() == "a file in the way\n"


def test_model_install_into_a_file_home_fails_at_once(files, monkeypatch, capsys):
    monkeypatch.setenv("FACERENDER_HOME", str(files / "existing"))
    rc, _, err = run(["model", "install", "ict-facekit", "-q"], capsys)
    assert_refused(rc, err, ExitCode.OUTPUT, "FACERENDER_HOME", "existing")
    rc, _, err = run(["--home", files / "existing", "model", "info"], capsys)
    assert_refused(rc, err, ExitCode.USAGE, "--home", "is a file")


def test_read_only_and_full_locations_are_refused_by_the_probe(files, faces_dir, monkeypatch, capsys):
    """The probe write maps EROFS / ENOSPC to one line and exit 4 (benchmarks/fault_injection.py does it with real
    read-only and full tmpfs mounts)."""
    def refuse(code):
        def mkstemp(*a, **k):
            raise OSError(code, os.strerror(code), str(k.get("dir", "")))
        return mkstemp

    monkeypatch.setattr(cli_support.tempfile, "mkstemp", refuse(errno.EROFS))
    rc, _, err = run(["fit", faces_dir / "lenna.png", "-o", files / "out"], capsys)
    assert_refused(rc, err, ExitCode.OUTPUT, "out", "read-only file system")
    monkeypatch.setattr(cli_support.tempfile, "mkstemp", refuse(errno.ENOSPC))
    rc, _, err = run(["--home", files / "h", "model", "install", "ict-facekit"], capsys)
    assert_refused(rc, err, ExitCode.OUTPUT, "--home", "no space left")


def test_disk_full_while_writing_leaves_nothing_half_written(files, ict_home, monkeypatch, capsys):
    """ENOSPC in the middle of writing the PNG: one line naming the cause, exit 4, no partial file left."""
    from PIL import Image

    real_save = Image.Image.save

    def save(self, fp, *a, **k):
        real_save(self, fp, *a, **k)  # a complete temporary file ...
        raise OSError(errno.ENOSPC, "No space left on device", str(fp))  # ... then the disk is full

    monkeypatch.setattr(Image.Image, "save", save)
    out = files / "r.png"
    rc, _, err = run(["--home", ict_home, "render", "-o", out, "--single", "--size", "16"], capsys)
    assert_refused(rc, err, ExitCode.OUTPUT, "no space left", folder=files, absent=[out])


# ---------------------------------------------------------------------------------------------- the mechanism itself


def test_unexpected_exceptions_are_one_line_exit_70_and_debug_gives_the_traceback(files, monkeypatch, capsys):
    import facerender.cli as cli

    def boom(args):
        return 1 / 0

    monkeypatch.setattr(cli, "_cmd_render", boom)
    rc, _, err = run(["render", "-o", files / "r.png"], capsys)
    line = assert_refused(rc, err, ExitCode.INTERNAL, "internal error", "ZeroDivisionError", "--debug")
    assert "facerender/cli.py" not in line or ":" in line  # where it happened, without a traceback
    rc, _, err = run(["render", "-o", files / "r.png", "--debug"], capsys)
    assert rc == ExitCode.INTERNAL and "Traceback (most recent call last)" in err and "ZeroDivisionError" in err
    monkeypatch.setenv("FACERENDER_DEBUG", "1")
    rc, _, err = run(["render", "-o", files / "r.png"], capsys)
    assert rc == ExitCode.INTERNAL and "Traceback" in err


def test_classify_maps_each_class_to_its_exit_code():
    from morphable_models.errors import ModelFileError, ModelNotInstalledError

    from facerender.errors import FittingError, NoFaceError, VideoError

    cases = [
        (UsageError("--x: bad"), ExitCode.USAGE), (InputFileError("a.png: truncated"), ExitCode.INPUT),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "a.png"), ExitCode.INPUT),
        (VideoError("v.mp4: corrupt"), ExitCode.INPUT), (OutputError("o: read-only"), ExitCode.OUTPUT),
        (OSError(errno.ENOSPC, "No space left on device", "o.png"), ExitCode.OUTPUT),
        (OSError(errno.EROFS, "Read-only file system", "o"), ExitCode.OUTPUT),
        (ModelFileError("cache broken"), ExitCode.MODEL), (ModelNotInstalledError("install it"), ExitCode.MODEL),
        (NoFaceError("no face"), ExitCode.FAILED), (FittingError("nothing to fit"), ExitCode.FAILED),
        (MemoryError(), ExitCode.FAILED), (ZeroDivisionError("division by zero"), ExitCode.INTERNAL),
        (KeyboardInterrupt(), ExitCode.INTERRUPTED),
    ]
    for e, code in cases:
        c, msg = cli_support.classify(e)
        assert c == int(code), (e, c)
        assert "\n" not in msg
    # a full disk below a typed error is still an output problem, and the message keeps the cause
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise VideoError("error encoding frame 3 of 'out.mp4'") from inner
    except VideoError as e:
        c, msg = cli_support.classify(e)
    assert c == ExitCode.OUTPUT and "out.mp4" in msg and "no space" in msg


def test_every_number_argument_of_every_command_is_range_checked():
    """New commands join the mechanism: a bare int / float type lets 0, negative, NaN or inf through (docs/errors.md
    lists the argument types to use)."""
    bare = []

    def walk(parser, path):
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sp in a.choices.items():
                    walk(sp, path + [name])
            elif a.type in (int, float):
                bare.append(" ".join(path + [a.option_strings[0] if a.option_strings else a.dest]))

    p = build_parser()
    assert isinstance(p, cli_support.CLIParser)
    walk(p, ["facerender"])
    assert not bare, f"arguments with a bare int/float type (use facerender.cli_support types): {bare}"


def test_argument_types_values():
    assert cli_support.int_in(16, 64)("32") == 32
    assert cli_support.float_in(0, 1, hi_open=True)("0.25") == 0.25
    assert cli_support.box_type("1, 2, 30.5, 40") == (1.0, 2.0, 30.5, 40.0)
    for t, bad in ((cli_support.positive_int, "0"), (cli_support.positive_float, "0"), (cli_support.finite_float,
                                                                                         "inf"),
                   (cli_support.fraction_in(), "1"), (cli_support.int_in(16), "8"), (cli_support.box_type, "3,3,1,1")):
        with pytest.raises(argparse.ArgumentTypeError):
            t(bad)


def test_exit_codes_are_documented():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "errors.md").read_text()
    for code, name, _ in cli_support.EXIT_CODES:
        assert f"| {code} |" in doc and name in doc, (code, name)


# ------------------------------------------------------------------------------------ results that cannot be trusted


def test_degenerate_landmarks_are_refused_naming_what_is_wrong(faces_dir):
    from facerender.errors import FittingError
    from facerender.fitting.landmark_fit import check_landmarks
    from facerender.landmarks.files import read_pts

    pts = read_pts(faces_dir / "takeo.pts")
    check_landmarks(pts, (225, 150))  # real points pass
    check_landmarks(pts + [100.0, 0.0], (225, 150))  # a face partly out of the frame passes
    bad = [(np.full((68, 2), 100.0), "span"), (pts + 1e5, "far outside"),
           (np.stack([np.arange(68.0), 2 * np.arange(68.0)], 1), "on a line"), (pts * np.nan, "NaN")]
    for p, what in bad:
        with pytest.raises(FittingError, match=what):
            check_landmarks(p, (225, 150), name="x.pts")
    with pytest.raises(FittingError, match="confidence is 0"):
        check_landmarks(pts, (225, 150), np.zeros(68))
    with pytest.raises(FittingError, match="confidence must be finite"):
        check_landmarks(pts, (225, 150), np.full(68, np.nan))


def test_converged_means_plausible(ict_model, faces_dir):
    """A real face converges with no flag; shuffled points give an implausible result, flagged, never 'converged';
    a negative or NaN focal length is refused naming it."""
    from facerender.fitting.landmark_fit import MAX_LANDMARK_ERROR, fit_landmarks
    from facerender.landmarks.files import read_pts

    pts = torch.as_tensor(read_pts(faces_dir / "takeo.pts"))
    good = fit_landmarks(ict_model, pts, (225, 150))
    assert good.flags == [[]] and good.status[0] in ("converged", "max_iterations")
    err = float((good.landmarks_2d[0, 17:] - pts[17:].float()).norm(dim=-1).mean() / (pts[36] - pts[45]).norm())
    assert err < 0.5 * MAX_LANDMARK_ERROR
    shuffled = pts[torch.as_tensor(np.random.default_rng(0).permutation(68))]
    bad = fit_landmarks(ict_model, shuffled, (225, 150))
    assert bad.status == ["implausible"] and bad.converged == [False]
    assert any("eye distances" in f for f in bad.flags[0]) and any("standard deviations" in f for f in bad.flags[0])
    for f in (-500.0, float("nan")):
        with pytest.raises(UsageError, match="focal"):
            fit_landmarks(ict_model, pts, (225, 150), focal=f)


@pytest.mark.parametrize("what, name", [("sh", "sh"), ("albedo", "albedo"), ("vertices", "vertices"),
                                        ("rotation", "rotation"), ("fx", "camera.fx")])
def test_render_face_names_the_nan_argument(ict_face_model, what, name):
    from morphable_models.errors import ShapeError

    from facerender.cameras import PinholeCamera
    from facerender.render.renderer import default_camera_for, render_face

    m = ict_face_model
    v = m(batch_size=1).vertices
    cam, R, t = default_camera_for(m, 32)
    kw = {"albedo": None, "sh": None}
    if what == "sh":
        kw["sh"] = torch.full((1, 9, 3), float("nan"))
    elif what == "albedo":
        kw["albedo"] = torch.full((m.num_vertices, 3), 0.5)
        kw["albedo"][3, 1] = float("inf")
    elif what == "vertices":
        v = v.clone()
        v[0, 7, 2] = float("nan")
    elif what == "rotation":
        R = torch.tensor([[0.1, float("nan"), 0.0]])
    else:
        cam = PinholeCamera(float("nan"), 100.0, 16.0, 16.0, (32, 32))
    with pytest.raises(ShapeError, match=name.replace(".", r"\.") + " holds 1 NaN or inf" if what != "sh" else name):
        render_face(v, m.faces, cam, R, t, **kw)
    _, R0, t0 = default_camera_for(m, 32)
    with pytest.raises(ShapeError, match="camera.fx must be > 0"):
        render_face(m(batch_size=1).vertices, m.faces, PinholeCamera(-100.0, 100.0, 16.0, 16.0, (32, 32)), R0, t0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_renders_like_float32(ict_face_model, dtype):
    from facerender.render.renderer import default_camera_for, render_face

    m = ict_face_model
    v = m(batch_size=1).vertices
    cam, R, t = default_camera_for(m, 64)
    ref = render_face(v.to(dtype).float(), m.faces, cam, R, t)  # the same (rounded) geometry in float32
    out = render_face(v.to(dtype).requires_grad_(), m.faces, cam, R, t)
    assert out.image.dtype == dtype and out.mask.dtype == torch.bool
    assert torch.equal(out.mask, ref.mask)
    assert float((out.image.detach().float() - ref.image).abs().max()) <= 2 ** -7  # the output's rounding only
    out.image.float().sum().backward()  # gradients reach the half-precision input


def test_orientation_maps_are_exact_inverses():
    from facerender.fitting.orientation import camera_turn, sh_turn_matrix, turn_image, turn_points, unturn_points
    from facerender.render.lighting import sh_basis

    img = np.arange(5 * 7 * 3).reshape(5, 7, 3)
    pts = np.array([[0.5, 0.5], [6.5, 4.5], [3.2, 1.7]])
    for k in range(4):
        t = turn_points(pts, k, (5, 7))
        np.testing.assert_allclose(unturn_points(t, k, (5, 7)), pts, atol=1e-12)
        # a pixel centre follows its pixel
        ti = turn_image(img, k)
        for (x, y), (xt, yt) in zip(pts[:2], t[:2]):
            assert (ti[int(yt), int(xt)] == img[int(y), int(x)]).all()
        Q = camera_turn(k)
        assert torch.allclose(Q @ Q.T, torch.eye(3, dtype=Q.dtype)) and float(torch.det(Q)) == pytest.approx(1.0)
        # SH lighting: the irradiance of a normal n in the original camera equals the turned camera's at Q n
        X = sh_turn_matrix(Q)
        L_turned = torch.randn(9, 3, dtype=torch.float64)
        n = torch.nn.functional.normalize(torch.randn(50, 3, dtype=torch.float64), dim=-1)
        assert torch.allclose(sh_basis(n) @ (X @ L_turned), sh_basis(n @ Q.T) @ L_turned, atol=1e-10)


def test_unturn_fit_gives_the_same_projection_in_the_photo(ict_model):
    """The model's landmarks projected with the mapped-back pose land where the turned fit's projections land once
    mapped back to the photo."""
    from morphable_models.geometry import model_to_camera

    from facerender.fitting.fit_image import FitResult
    from facerender.fitting.orientation import unturn_fit, unturn_points

    H, W = 120, 200
    g = torch.Generator().manual_seed(1)
    X = ict_model.template[torch.as_tensor(ict_model.landmarks["ibug68"].vertex_index)][None].double()
    for k in (1, 2, 3):
        Ht, Wt = (W, H) if k % 2 else (H, W)
        rot = 0.3 * torch.randn(1, 3, generator=g, dtype=torch.float64)
        trans = torch.tensor([[1.0, -2.0, 60.0]], dtype=torch.float64)
        f, pp = torch.tensor([300.0], dtype=torch.float64), torch.tensor([[Wt / 2 + 3.0, Ht / 2 - 5.0]],
                                                                           dtype=torch.float64)

        def project(r, t, c):
            P = model_to_camera(X, r, t)[0]
            return (P[:, :2] / P[:, 2:] * f + c).numpy()

        uv_t = project(rot, trans, pp)
        res = FitResult(rot, trans, torch.zeros(1, 100), torch.zeros(1, 53), torch.randn(1, 9, 3, dtype=torch.float64),
                        None, f, pp, (Ht, Wt), uv_t, np.ones(68), uv_t, box=(10.0, 20.0, 50.0, 70.0))
        back = unturn_fit(res, k, (H, W))
        assert back.image_size == (H, W)
        np.testing.assert_allclose(project(back.rotation, back.translation, back.principal_point),
                                   unturn_points(uv_t, k, (H, W)), atol=1e-8)
        np.testing.assert_allclose(back.landmarks_2d, unturn_points(uv_t, k, (H, W)), atol=1e-12)


def test_an_upside_down_photo_is_fitted_and_mapped_back(dlib_ready, ict_model, faces_dir):
    from facerender.fitting.fit_image import FitConfig, fit_image
    from facerender.fitting.orientation import find_upright_turn, turn_image, turn_points
    from facerender.io.image import read_image
    from facerender.landmarks.files import read_pts

    img, gt = read_image(faces_dir / "takeo.ppm"), read_pts(faces_dir / "takeo.pts")
    assert find_upright_turn(img).turns == 0
    for k in (2, 1):
        turned = turn_image(img, k)
        assert find_upright_turn(turned).turns == (4 - k) % 4
        res = fit_image(ict_model, turned, config=FitConfig(photometric=False))
        assert res.turns == (4 - k) % 4 and res.image_size == turned.shape[:2]
        g = turn_points(gt, k, img.shape[:2])
        err = np.linalg.norm(res.landmarks_2d - g, axis=1).mean() / np.linalg.norm(g[36] - g[45])
        assert err < 0.12, err
        assert not [f for f in res.flags if "landmark fit" in f]


def test_audio_warning_before_the_work(video_dir):
    from facerender.reenact.common import audio_warning

    w = audio_warning("source", "source", video_dir / "lp_d0.mp4", video_dir / "talking_d3.mp4")
    assert w and "lp_d0.mp4" in w and "no audio" in w and "--audio source" in w
    assert audio_warning("target", "source", video_dir / "lp_d0.mp4", video_dir / "talking_d3.mp4") is None
    assert audio_warning("none", "source", video_dir / "lp_d0.mp4", video_dir / "talking_d3.mp4") is None
    assert "follows the source" in audio_warning("auto", "source", video_dir / "lp_d0.mp4", video_dir / "lp_d0.mp4")


def test_an_upside_down_clip_is_reported(dlib_ready, video_dir, tmp_path):
    from facerender.io.video import VideoReader, VideoWriter
    from facerender.tracking.orientation import check_video_orientation, record_orientation

    r = VideoReader(video_dir / "talking_d3.mp4")
    with VideoWriter(tmp_path / "flip.mp4", fps=r.fps) as w:
        for fr in r:
            if fr.index >= 8:
                break
            w.write(np.ascontiguousarray(fr.image[::-1, ::-1]))
    rep = check_video_orientation(tmp_path / "flip.mp4", samples=3)
    assert rep.turns == 2 and rep.frames_turned == rep.frames_with_face == 3 and "upside down" in rep.describe()
    up = check_video_orientation(video_dir / "talking_d3.mp4", samples=3, within=8)
    assert up.turns == 0 and up.frames_with_face == 3
    (tmp_path / "summary.json").write_text(json.dumps({"frames": 8}))
    record_orientation(tmp_path / "summary.json", rep)
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["orientation"]["flag"] == "upside_down" and s["orientation"]["frames_flagged"] == 8


# ------------------------------------------------------------------------------------------------------- model cache


@pytest.fixture()
def cache_copy(ict_home, tmp_path):
    """A copy of the installed ICT cache (with its manifest) in a fresh home."""
    from morphable_models import ict, load_ict

    load_ict(ict_home)  # writes the manifest of a cache from before manifests
    home = tmp_path / "home"
    shutil.copytree(ict.cache_dir(ict_home), ict.cache_dir(home))
    assert (ict.cache_dir(home) / "manifest.json").is_file()
    return home


def _rewrite(npz: Path, edit) -> None:
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    edit(arrays)
    with open(npz, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize("damage, names", [
    (lambda d: _rewrite(d / "model.npz", lambda a: a.pop("faces_uv")), ["faces_uv"]),
    (lambda d: _rewrite(d / "model.npz", lambda a: a["identity_deltas"].__setitem__((3, 100, 1), np.nan)),
     ["identity_deltas"]),
    (lambda d: (d / "model.npz").write_bytes((d / "model.npz").read_bytes()[:1000]), ["model.npz", "bytes"]),
    (lambda d: (d / "meta.json").write_text("{"), ["meta.json"]),
])
def test_a_broken_cache_is_one_line_and_exit_5(cache_copy, damage, names, capsys):
    from morphable_models import ict

    damage(ict.cache_dir(cache_copy))
    rc, _, err = run(["--home", cache_copy, "model", "info"], capsys)
    assert_refused(rc, err, ExitCode.MODEL, "ict-facekit", *names)
    assert "model install ict-facekit" in err  # says how to repair it


def test_bytes_flipped_inside_the_cache_are_caught(cache_copy):
    from morphable_models import ict, load_ict
    from morphable_models.errors import ModelFileError

    p = ict.cache_dir(cache_copy) / "model.npz"
    data = bytearray(p.read_bytes())
    data[len(data) // 2: len(data) // 2 + 16] = bytes(16)
    p.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="CRC|differ"):
        load_ict(cache_copy)
    assert ict.cache_problem(cache_copy) is not None


def test_manifest_and_array_checks():
    from morphable_models.errors import ModelFileError
    from morphable_models.ict import _check_obj_values
    from morphable_models.store import check_arrays

    ok = {"template": np.zeros((4, 3), np.float32), "faces": np.array([[0, 1, 2], [1, 2, 3]]),
          "expression_upper": np.array([np.inf, 1.0])}
    check_arrays(ok, "m")  # inf bounds are fine
    for key, value, what in (("template", np.float32(np.nan), "NaN"), ("template", np.float32(1e30), "implausible")):
        bad = {k: v.copy() for k, v in ok.items()}
        bad[key][2, 1] = value
        with pytest.raises(ModelFileError, match=f"'{key}'.*{what}|{what}.*'{key}'|'{key}'"):
            check_arrays(bad, "m")
    with pytest.raises(ModelFileError, match="faces.*indexes"):
        check_arrays({**ok, "faces": np.array([[0, 1, 4]])}, "m")
    with pytest.raises(ModelFileError, match="x.obj: vertex 1 .*NaN"):
        _check_obj_values(np.array([[0.0, 1, 2], [np.nan, 0, 0]]), "x.obj")
    with pytest.raises(ModelFileError, match="beyond"):
        _check_obj_values(np.array([[0.0, 1, 2], [1e30, 0, 0]]), "x.obj")


def test_manifest_round_trip(tmp_path):
    from morphable_models.errors import ModelFileError
    from morphable_models.store import verify_manifest, write_manifest

    arrays = {"template": np.arange(12, dtype=np.float32).reshape(4, 3), "faces": np.array([[0, 1, 2]])}
    with open(tmp_path / "model.npz", "wb") as f:
        np.savez(f, **arrays)
    assert verify_manifest(tmp_path) is False  # none yet
    write_manifest(tmp_path, arrays)
    assert verify_manifest(tmp_path) and verify_manifest(tmp_path, arrays)
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["arrays"]["template"]["shape"] == [4, 3] and m["bytes"] == (tmp_path / "model.npz").stat().st_size
    with pytest.raises(ModelFileError, match="'template'.*manifest says"):
        verify_manifest(tmp_path, {**arrays, "template": arrays["template"][:3]})
    arrays["template"][0, 0] = 7.0  # same size, other content: the member's CRC differs
    with open(tmp_path / "model.npz", "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ModelFileError, match="template.*checksum"):
        verify_manifest(tmp_path)


def test_an_obj_with_nan_is_refused_naming_it():
    from morphable_models import ict
    from morphable_models.errors import ModelFileError

    lines = ["v 0.1 0.2 0.3"] * ict.NUM_VERTICES
    lines[10] = "v nan nan nan"
    col = ict._Collected("clone")
    with pytest.raises(ModelFileError, match=r"clone:.*FaceXModel/identity007.obj: vertex 10 .*NaN"):
        col.add("top/FaceXModel/identity007.obj", lambda: ("\n".join(lines) + "\n").encode())


@pytest.mark.slow
def test_install_repairs_a_broken_cache_without_force(cache_copy, ict_archive, capsys):
    """The issue's case: a truncated cache, 'model install' without --force printed 'installed (0.0 s)' and left it
    broken. Now it is checked, reinstalled, and a second install only checks it."""
    from morphable_models import ict, load_ict

    p = ict.cache_dir(cache_copy) / "model.npz"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    rc, out, err = run(["--home", cache_copy, "model", "install", "ict-facekit", "-q", "--from", ict_archive], capsys)
    assert rc == 0 and "broken" in out and "reinstalling" in out, (out, err)
    assert load_ict(cache_copy).num_vertices == 26719 and ict.cache_problem(cache_copy) is None
    rc, out, err = run(["--home", cache_copy, "model", "install", "ict-facekit", "-q", "--from", ict_archive], capsys)
    assert rc == 0 and "already installed" in out and "checked" in out
