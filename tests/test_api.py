"""The public API (docs/api.md): one import per task, lazy imports, names listed and tested, suggestions for unknown
names, results that re-render, and the CLI's --threads."""
from __future__ import annotations

import importlib
import re
import subprocess
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

#: every package whose ``__all__`` is public API (docs/api.md lists them)
PUBLIC_PACKAGES = [
    "morphable_models", "facerender", "facerender.render", "facerender.fitting", "facerender.tracking",
    "facerender.reenact", "facerender.landmarks", "facerender.io", "facerender.metrics", "facerender.identity",
    "facerender.audio", "facerender.errors", "facerender.threads", "neural_renderers", "neural_renderers.dvp",
    "neural_renderers.nvp", "neural_renderers.training",
]


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True,
                          text=True).stdout


# ------------------------------------------------------------------------------------------------ names
@pytest.mark.parametrize("package", PUBLIC_PACKAGES)
def test_every_name_in_all_imports(package):
    mod = importlib.import_module(package)
    names = list(mod.__all__)
    assert names, package
    assert len(names) == len(set(names)), f"{package}.__all__ has duplicates"
    for name in names:
        value = getattr(mod, name)
        assert not isinstance(value, types.ModuleType) or name in ("render", "reenact"), (package, name)
    ns: dict = {}
    exec(f"from {package} import *", ns)  # what a user gets
    assert set(names) <= set(ns)


def _documented_names():
    """``(package, name)`` pairs listed in docs/api.md (``### package`` headings, then `` `name` `` items)."""
    text = (ROOT / "docs" / "api.md").read_text()
    pairs, pkg = [], None
    for line in text.splitlines():
        m = re.match(r"^### `([a-z_.]+)`", line)
        if m:
            pkg = m.group(1)
            continue
        if line.startswith("## "):
            pkg = None
        if pkg and line.startswith("| `"):
            for name in re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", line.split("|")[1]):
                pairs.append((pkg, name))
    return pairs


def test_every_documented_name_imports():
    pairs = _documented_names()
    assert len(pairs) > 40
    for pkg, name in pairs:
        mod = importlib.import_module(pkg)
        assert name in mod.__all__ or name in ("render", "reenact"), f"docs/api.md lists {pkg}.{name}, not in __all__"
        getattr(mod, name)


def test_the_one_import_per_task():
    import facerender
    import neural_renderers

    from facerender.fitting.fit_image import fit_image
    from facerender.reenact.face2face import face2face
    from facerender.render.model_render import render
    from facerender.metrics.video import evaluate
    from facerender.tracking.video import track_video
    from morphable_models.store import load_model
    from neural_renderers.dvp import dvp_reenact, train_dvp

    assert facerender.load_model is load_model
    assert facerender.fit_image is fit_image and facerender.fitting.fit_image is fit_image
    assert facerender.track_video is track_video
    assert facerender.reenact.face2face is face2face
    assert facerender.reenact.dvp is dvp_reenact
    assert facerender.evaluate is evaluate
    assert facerender.render.render is render and callable(facerender.render)
    assert neural_renderers.train_dvp is train_dvp and neural_renderers.dvp_reenact is dvp_reenact
    # the modules keep their other names
    from facerender.fitting.fit_image import FitConfig
    from facerender.render import rasterize

    assert callable(rasterize)

    assert FitConfig is facerender.fitting.FitConfig


def test_functions_named_like_their_module_stay_functions():
    """``from facerender.fitting import fit_image`` was the module ("module object is not callable")."""
    code = ("from facerender.fitting.fit_image import FitConfig\n"      # the import system binds the module first
            "from facerender.reenact.face2face import Face2FaceConfig\n"
            "import facerender.fitting, facerender.reenact, types\n"
            "from facerender.fitting import fit_image\n"
            "assert isinstance(fit_image, types.FunctionType), fit_image\n"
            "assert isinstance(facerender.reenact.face2face, types.FunctionType)\n"
            "import sys; assert callable(sys.modules['facerender.fitting.fit_image'])\n")
    _run(code)


@pytest.mark.parametrize("package,wrong,right", [
    ("facerender", "fit_imge", "fit_image"), ("facerender", "track_vdeo", "track_video"),
    ("facerender", "Track", None), ("facerender.reenact", "face2fce", "face2face"),
    ("morphable_models", "load_ic", "load_ict"), ("neural_renderers", "train_dpv", "train_dvp"),
    ("facerender.render", "render_fce", "render_face"), ("facerender.fitting", "FitConfg", "FitConfig"),
])
def test_unknown_names_suggest(package, wrong, right):
    mod = importlib.import_module(package)
    if right is None:  # exists
        getattr(mod, wrong)
        return
    with pytest.raises(AttributeError, match=rf"has no attribute '{wrong}'; did you mean .*'{right}'"):
        getattr(mod, wrong)
    with pytest.raises(ImportError):
        exec(f"from {package} import {wrong}", {})


def test_no_suggestion_for_nonsense():
    import facerender

    with pytest.raises(AttributeError) as e:
        facerender.qqqqzzz
    assert "did you mean" not in str(e.value)


# ------------------------------------------------------------------------------------------------ lazy imports
def test_import_facerender_imports_no_torch():
    out = _run("import sys, facerender, morphable_models, neural_renderers, facerender.fitting, "
               "facerender.reenact, facerender.metrics, facerender.identity\n"
               "print(sorted(m for m in ('torch', 'numpy', 'scipy', 'dlib', 'av') if m in sys.modules))")
    assert out.strip() == "[]"


def test_help_imports_no_torch():
    """``facerender --help`` and every command's help build without torch (15-22 s under load before)."""
    code = ("import sys, contextlib, io\nfrom facerender.cli import build_parser, main\n"
            "cmds = [[], ['fit'], ['track'], ['reenact'], ['render'], ['model', 'info'], ['train', 'dvp'], "
            "['evaluate']]\n"
            "for c in cmds:\n"
            "    try:\n"
            "        with contextlib.redirect_stdout(io.StringIO()):\n"
            "            main(c + ['--help'])\n"
            "    except SystemExit as e:\n"
            "        assert e.code == 0, (c, e.code)\n"
            "print('torch' in sys.modules, 'numpy' in sys.modules)")
    assert _run(code).strip() == "False False"


# ------------------------------------------------------------------------------------------------ re-rendering
def _fake_fit(model, **kw):
    from facerender.fitting import FitResult

    dt = model.dtype
    base = dict(rotation=torch.tensor([[0.05, -0.2, 0.02]], dtype=dt), translation=torch.tensor([[0.5, -1.0, 95.0]],
                dtype=dt), identity=torch.zeros(1, model.num_identity, dtype=dt),
                expression=torch.zeros(1, model.num_expression, dtype=dt),
                sh=torch.zeros(1, 9, 3, dtype=dt), albedo=None, focal=torch.tensor([300.0], dtype=dt),
                principal_point=torch.tensor([[61.0, 70.0]], dtype=dt), image_size=(128, 120),
                landmarks=np.zeros((68, 2)), confidence=np.ones(68), landmarks_2d=np.zeros((68, 2)))
    base["sh"][0, 0] = 3.0
    base.update(kw)
    return FitResult(**base)


def test_fit_result_camera(ict_model):
    fit = _fake_fit(ict_model)
    cam = fit.camera()
    assert cam.image_size == (128, 120)
    assert float(cam.fx[0]) == 300.0 and float(cam.fy[0]) == 300.0
    assert (float(cam.cx[0]), float(cam.cy[0])) == (61.0, 70.0)
    assert fit.camera(torch.float64).fx.dtype == torch.float64
    # the camera projects a point on the optical axis to the principal point
    p = cam.project(torch.tensor([[[0.0, 0.0, 50.0]]]))
    assert torch.allclose(p, torch.tensor([[[61.0, 70.0]]]))


def test_render_a_fit_equals_render_face(ict_model):
    import facerender
    from facerender.render.renderer import render_face

    model = ict_model
    ids = torch.as_tensor(model.regions["face"].vertex_ids)
    albedo = torch.rand(len(ids), 3, generator=torch.Generator().manual_seed(0))
    fit = _fake_fit(model, albedo=albedo, expression=model.rig.weights({"jawOpen": 0.5}))
    out = facerender.render(model, fit)
    verts = model(fit.identity, fit.expression).vertices[:, ids]
    ref = render_face(verts, model.submodel("face").faces, fit.camera(), fit.rotation, fit.translation,
                      albedo=albedo, sh=fit.sh)
    assert out.image.shape == (1, 128, 120, 3)
    assert 1500 < int(out.mask.sum()) < 128 * 120
    assert torch.equal(out.image, ref.image)
    # background from a photo array; pixels outside the face keep it exactly
    photo = np.full((128, 120, 3), 200, np.uint8)
    outb = facerender.render(model, fit, background=photo)
    alpha = outb.alpha[0, ..., 0] if outb.alpha.ndim == 4 else outb.alpha[0]
    far = alpha == 0
    assert torch.allclose(outb.image[0][far], torch.full_like(outb.image[0][far], 200 / 255))


def test_render_coefficients_and_dict(ict_model):
    import facerender

    out = facerender.render(ict_model, expression={"jawOpen": 1.0}, image_size=64)
    neutral = facerender.render(ict_model, image_size=64)
    assert out.image.shape == (1, 64, 64, 3)
    assert 0.2 < float(neutral.mask.float().mean()) < 0.9  # framed: the head fills the picture
    assert float((out.image - neutral.image).abs().max()) > 0.2  # the open jaw shows
    with pytest.raises(Exception, match="jawOpn"):
        facerender.render(ict_model, expression={"jawOpn": 1.0})
    with pytest.raises(facerender.UsageError, match="did you mean 'face'"):
        facerender.render(ict_model, region="fase", image_size=32)


def test_render_a_track_frame(ict_model):
    import facerender

    model = ict_model
    fit = _fake_fit(model)
    N = 3
    track = SimpleNamespace(
        identity=np.zeros(model.num_identity), expression=np.zeros((N, model.num_expression)),
        rotation=np.repeat(fit.rotation.numpy(), N, 0), translation=np.repeat(fit.translation.numpy(), N, 0),
        sh=np.repeat(fit.sh.numpy(), N, 0), albedo=None, face_found=np.ones(N, bool), keyframes=np.array([0]),
        camera=fit.camera)
    track.__len__ = lambda: N
    track = type("T", (), dict(vars(track), __len__=lambda self: N))()
    track.expression[2, model.expression_names.index("jawOpen")] = 1.0
    a = facerender.render(model, track, frame=0)
    b = facerender.render(model, fit)
    assert torch.equal(a.image, b.image)
    c = facerender.render(model, track, frame=2)
    assert not torch.equal(a.image, c.image)
    with pytest.raises(facerender.UsageError, match="frame="):
        facerender.render(model, track)
    with pytest.raises(facerender.UsageError, match="3 frames"):
        facerender.render(model, track, frame=3)
    with pytest.raises(facerender.UsageError, match="FitResult or a Track"):
        facerender.render(model, object())


# ------------------------------------------------------------------------------------------------ threads
def test_threads_option_everywhere():
    from facerender.cli import build_parser

    p = build_parser()
    assert p.parse_args(["--threads", "3", "render", "-o", "x.png"]).threads == 3
    assert p.parse_args(["render", "-o", "x.png", "--threads", "2"]).threads == 2
    assert p.parse_args(["render", "-o", "x.png"]).threads is None  # -> the default when the command runs
    assert p.parse_args(["--threads", "2", "train", "dvp", "-o", "r"]).threads == 2  # the subcommand's own
    assert p.parse_args(["train", "dvp", "-o", "r", "--threads", "3"]).threads == 3
    assert p.parse_args(["--threads", "2", "model", "info"]).threads == 2


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_bad_threads_is_an_argparse_error(value, capsys):
    from facerender.cli import main

    for argv in (["--threads", value, "model", "info"], ["model", "info", "--threads", value]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "--threads" in err and "integer >= 1" in err and len(err.strip().splitlines()) == 1


def test_threads_env_and_set_threads(monkeypatch):
    from facerender import threads

    monkeypatch.delenv(threads.ENV_VAR, raising=False)
    assert threads.default_threads() == threads.DEFAULT_THREADS
    monkeypatch.setenv(threads.ENV_VAR, "2")
    assert threads.default_threads() == 2
    monkeypatch.setenv(threads.ENV_VAR, "0")
    with pytest.raises(ValueError, match="FACERENDER_THREADS='0'"):
        threads.default_threads()
    before = torch.get_num_threads()
    try:
        assert threads.set_threads(1) == before
        assert torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="got 0"):
            threads.set_threads(0)
    finally:
        torch.set_num_threads(before)


def test_a_command_runs_with_the_default_threads(monkeypatch):
    """The handler sees the thread count it ran with (``args.threads``), and torch is set to it."""
    from facerender import threads
    from facerender.cli import build_parser

    monkeypatch.delenv(threads.ENV_VAR, raising=False)
    seen = {}
    args = build_parser().parse_args(["model", "info"])
    before = torch.get_num_threads()
    try:
        threads.run_with_threads(lambda a: seen.update(n=a.threads, torch=torch.get_num_threads()))(args)
    finally:
        torch.set_num_threads(before)
    assert seen == {"n": threads.DEFAULT_THREADS, "torch": threads.DEFAULT_THREADS}
    monkeypatch.setenv(threads.ENV_VAR, "x")
    args = build_parser().parse_args(["model", "info"])
    from facerender.cli_support import run_handler

    assert run_handler(threads.run_with_threads(lambda a: 0), args) == 2  # a usage error, one line


# ------------------------------------------------------------------------------------------------ progress
def test_stage_bar(capsys, monkeypatch):
    import time

    import morphable_models._progress as progress
    from facerender.progress import NullBar, stage_bar

    monkeypatch.setattr(progress, "is_terminal", lambda: True)  # capsys is not a terminal: see the next test

    bar = stage_bar("quiet", 3, enabled=False)
    assert isinstance(bar, NullBar)
    bar.update()
    bar.total = 5
    bar.close()
    assert capsys.readouterr().err == ""
    with stage_bar("bundling 4 keyframes", None, True, interval=0.05) as bar:
        time.sleep(0.2)  # the elapsed time ticks without updates
        bar.total = 2
        bar.update()
        bar.update()
    err = capsys.readouterr().err
    assert "bundling 4 keyframes" in err and "2/2" in err
    assert err.count("bundling 4 keyframes") >= 3  # refreshed by the ticker before the updates


def test_bars_in_a_log_file_write_a_line_per_half_minute_not_per_update(capsys):
    """stderr redirected to a file (CI, nohup): the bars update every LOG_INTERVAL seconds, plus the first and
    last state, instead of ten times a second (the main job wrote 230 kB of bar updates into a log)."""
    import time

    from facerender.progress import LOG_INTERVAL, progress_bar, stage_bar

    assert LOG_INTERVAL >= 10
    bar = progress_bar(total=200, desc="frames", unit="frame")
    for _ in range(200):
        bar.update(1)
        time.sleep(0.004)
    bar.close()
    with stage_bar("bundling", 3, True, interval=0.01) as sb:
        time.sleep(0.1)  # no ticker lines either
        sb.update(3)
    err = capsys.readouterr().err
    assert "200/200" in err and "3/3" in err
    assert err.count("frames:") <= 3 and err.count("bundling:") <= 3, err


def test_fit_image_shows_progress_and_the_cli_lists_every_file(ict_model, faces_dir, tmp_path, capsys):
    """The photometric fit shows a bar; ``facerender fit`` lists mesh.mtl and mesh.png with the other outputs."""
    import facerender
    from facerender.fitting import FitConfig, write_fit_outputs

    photo = facerender.read_image(faces_dir / "takeo.ppm")
    pts = facerender.read_landmarks(faces_dir / "takeo.pts")
    cfg = FitConfig(size=64, levels=(32, 64), rounds=1, iterations=2)
    fit = facerender.fit_image(ict_model, photo, landmarks=pts, config=cfg, progress=True)
    assert "photometric fit (2 levels x 1 rounds)" in capsys.readouterr().err
    paths = write_fit_outputs(tmp_path, ict_model, photo, fit)
    assert set(paths) == {"overlay", "mesh", "material", "texture", "params"}
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(Path(p).name for p in paths.values())


# ------------------------------------------------------------------------------------------------ CLI papercuts
def test_every_option_has_help():
    import argparse

    from facerender.cli import build_parser

    missing = []

    def walk(p, path):
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sp in a.choices.items():
                    walk(sp, path + [name])
            elif not isinstance(a, argparse._HelpAction) and not a.help:
                missing.append(" ".join(path + [a.option_strings[0] if a.option_strings else a.dest]))

    walk(build_parser(), ["facerender"])
    assert not missing, missing


def test_no_face_hint_names_real_options(tmp_path, capsys):
    """The message suggests options ``facerender fit`` has (it suggested a threshold and upsampling it lacked)."""
    from PIL import Image

    from facerender.cli import build_parser, main

    img = tmp_path / "gray.png"
    Image.fromarray(np.full((96, 96, 3), 128, np.uint8)).save(img)
    rc = main(["fit", str(img), "-o", str(tmp_path / "out"), "--threshold", "0.5"])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the detection's progress bar
    assert err.startswith("facerender: error: no face found")
    named = set(re.findall(r"(--[a-z][a-z-]+)", err))
    assert {"--box", "--landmarks", "--threshold", "--upsample"} <= named
    fit_options = {o for a in build_parser()._subparsers._group_actions[0].choices["fit"]._actions
                   for o in a.option_strings}
    assert named <= fit_options
    assert "--threshold 0.2 (now 0.5)" in err
