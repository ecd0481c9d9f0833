"""Fault injection: bad inputs, bad arguments and broken environments through the CLI and the Python API, and
what each one ends in (issue 19; docs/errors.md prints the table).

    python benchmarks/fault_injection.py                 # every case (about 10 minutes on 2 busy cores)
    python benchmarks/fault_injection.py --fast          # without the slow cases (installs, tracking, tmpfs)
    python benchmarks/fault_injection.py --only cache    # one class
    python benchmarks/fault_injection.py --json out.json --code DIR   # run another checkout (DIR) for a baseline

Each case runs in a child process forked from a parent that has imported torch and facerender once (so a case costs
its own work, not the imports), in a fresh temporary folder, with a time limit. The outcome is one of

* ``handled``   the command did the right thing with the odd input (e.g. fitted an upside-down photo);
* ``clear``     refused: a non-zero exit and ONE error line on stderr that names the file / argument, no traceback;
* ``flag``      it ran, and said that the result cannot be fully trusted (a ``warning:`` line / a flag);
* ``unclear``   refused in one line, but the line does not name what is wrong (or exit 70, an internal error);
* ``traceback`` a Python traceback reached the user;
* ``crash``     killed by a signal, or ran past the time limit;
* ``garbage``   exit 0 without a word, with a result that is wrong (or a half-written output left behind).

The slow cases need root for tiny tmpfs mounts (a full disk, a read-only home); without it they are skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence

OUTCOMES = ("handled", "clear", "flag", "unclear", "traceback", "crash", "garbage")


def _use_code(code_dir: Optional[str]) -> None:
    """Import facerender from ``code_dir`` (another checkout) instead of the installed editable package."""
    if not code_dir:
        return
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()
                        and "editable" not in getattr(f, "__name__", "").lower()]
    sys.path.insert(0, str(Path(code_dir).resolve()))


@dataclass
class Case:
    """One fault: ``run(ctx)`` returns a CLI argv (a list) or a callable run in the child (API cases)."""

    name: str
    cls: str
    argv: Optional[Callable] = None  # ctx -> list of CLI arguments
    api: Optional[Callable] = None  # ctx -> None | "handled" | "flag: ..." | "garbage: ..." (raise = refused)
    expect: str = "refuse"  # refuse | flag | handle
    mention: Sequence[str] = ()  # what the error line must name (any of); {tmp} is substituted
    check: Optional[Callable] = None  # (ctx, rc, stdout, stderr) -> None | "handled" | "garbage: ..."
    env: dict = field(default_factory=dict)
    slow: bool = False
    needs_root: bool = False
    timeout: float = 240.0
    outputs: Sequence[str] = ()  # paths (relative to tmp) that must not exist after a refusal
    setup: Optional[Callable] = None  # ctx -> None, in the parent (mounts)
    teardown: Optional[Callable] = None


# ------------------------------------------------------------------------------------------------------------------
# context: sample files


class Ctx:
    def __init__(self, tmp: Path, data: Path, home: Path, facex: Optional[Path]):
        self.tmp, self.data, self.home, self.facex = tmp, data, home, facex
        self.faces = data / "data" / "faces"
        self.video = data / "data" / "video"

    def p(self, name: str) -> str:
        return str(self.tmp / name)


def _prepare_files(ctx: Ctx) -> None:
    t = ctx.tmp
    (t / "empty.png").write_bytes(b"")
    jpg = (ctx.faces / "breakingbad.jpg").read_bytes()
    (t / "trunc.jpg").write_bytes(jpg[: len(jpg) // 3])
    (t / "random.png").write_bytes(os.urandom(5000))
    (t / "text.png").write_text("not an image\n")
    (t / "adir").mkdir()
    (t / "existing").write_text("a file in the way\n")
    shutil.copy(ctx.faces / "breakingbad.pts", t / "face.pts")
    (t / "bad.pts").write_text("version: 1\nn_points: 68\n{\n1 2\nthree 4\n}\n")
    (t / "five.pts").write_text("version: 1\nn_points: 5\n{\n" + "".join(f"{i} {i}\n" for i in range(5)) + "}\n")
    (t / "same.pts").write_text("version: 1\nn_points: 68\n{\n" + "100 100\n" * 68 + "}\n")
    import numpy as np

    from facerender.landmarks.files import read_pts, write_pts

    pts = read_pts(ctx.faces / "takeo.pts")
    write_pts(t / "far.pts", pts + 1e5)
    rng = np.random.default_rng(0)
    write_pts(t / "shuffled.pts", pts[rng.permutation(68)])
    write_pts(t / "scrambled.pts", pts.min(0) + rng.random((68, 2)) * (pts.max(0) - pts.min(0)))
    (t / "lm.txt").write_text("1 2\n")
    vid = (ctx.video / "lp_d0.mp4").read_bytes()
    (t / "empty.mp4").write_bytes(b"")
    (t / "trunc.mp4").write_bytes(vid[: 20000])
    (t / "text.mp4").write_text("not a video\n")
    shutil.copy(ctx.faces / "lenna.png", t / "lenna_as_video.mp4")
    (t / "notrack").mkdir()
    (t / "emptyrun").mkdir()
    arc = (ctx.data / "models" / "ict-facekit" / "ICT-FaceKit.tar.xz").read_bytes()
    (t / "trunc.tar.xz").write_bytes(arc[: 1 << 20])


def _rotated_image(src: Path, dst: Path, k: int) -> None:
    import numpy as np

    from facerender.io.image import read_image, write_image

    write_image(dst, np.rot90(read_image(src), k=k).copy())


# ------------------------------------------------------------------------------------------------------------------
# checks used by several cases


def _fit_landmark_error(ctx: Ctx, out: Path, gt_pts: Path, k: int, size) -> Optional[float]:
    """Mean distance (in eye-corner distances) between the fitted landmarks of params.json and the ground truth
    rotated like the image (``k`` quarter turns counter-clockwise)."""
    import numpy as np

    from facerender.landmarks.files import read_landmarks

    p = out / "params.json"
    if not p.is_file():
        return None
    prm = json.loads(p.read_text())
    fitted = np.asarray(prm["landmarks_projected"], dtype=float)
    gt = read_landmarks(gt_pts)
    H, W = size
    for _ in range(k % 4):  # rot90 counter-clockwise: (x, y) -> (y, W - x), then H, W swap
        gt = np.stack([gt[:, 1], W - gt[:, 0]], 1)
        H, W = W, H
    iod = np.linalg.norm(gt[36] - gt[45])
    return float(np.linalg.norm(fitted - gt, axis=1).mean() / iod)


def _rotated_fit_check(k: int, gt_name: str, img_name: str):
    def check(ctx: Ctx, rc: int, out: str, err: str):
        if rc != 0:
            return None
        from facerender.io.image import read_image

        H, W = read_image(ctx.faces / img_name).shape[:2]
        e = _fit_landmark_error(ctx, ctx.tmp / "out", ctx.faces / gt_name, k, (H, W))
        if e is None:
            return "garbage: no params.json"
        if e < 0.15:
            return "handled"
        return None if "warning" in err else f"garbage: landmark error {e:.2f} eye distances, no warning"
    return check


def _params_flagged(ctx: Ctx, rc: int, out: str, err: str):
    if rc != 0:
        return None
    p = ctx.tmp / "out" / "params.json"
    if p.is_file() and json.loads(p.read_text()).get("flags") and "warning" in err:
        return None  # flag
    return "garbage: fitted and reported without a flag"


# ------------------------------------------------------------------------------------------------------------------
# API cases (run in the child; raising = refused, the message is classified like a CLI line)


def _ict(ctx):
    from morphable_models import load_ict

    return load_ict(ctx.home)


def _api_fit_landmarks(**kw):
    def run(ctx):
        import numpy as np
        import torch

        from facerender.fitting.landmark_fit import fit_landmarks
        from facerender.landmarks.files import read_pts

        m = _ict(ctx)
        pts = torch.as_tensor(read_pts(ctx.faces / "takeo.pts"))
        conf = kw.get("confidence")
        res = fit_landmarks(m, pts, (150, 225), None if conf is None else torch.as_tensor(conf),
                            focal=kw.get("focal"))
        idn = float((res.identity.abs()).max())
        if res.status[0] == "converged" and (idn > 5 or not np.isfinite(idn)):
            return f"garbage: converged with identity {idn:.1f} sd"
        return "flag: " + res.status[0] if res.status[0] != "converged" else "garbage: converged"
    return run


def _api_render(what: str):
    def run(ctx):
        import torch

        from facerender.cameras import PinholeCamera
        from facerender.render.renderer import default_camera_for, render_face

        m = _ict(ctx).submodel("face")
        v = m(torch.zeros(1, m.num_identity), torch.zeros(1, m.num_expression)).vertices
        cam, R, t = default_camera_for(m, 64)
        sh = albedo = None
        if what == "nan_sh":
            sh = torch.full((1, 9, 3), float("nan"))
        elif what == "nan_albedo":
            albedo = torch.full((m.num_vertices, 3), 0.5)
            albedo[10] = float("nan")
        elif what == "nan_vertices":
            v = v.clone()
            v[0, 5] = float("nan")
        elif what == "nan_focal":
            cam = PinholeCamera(float("nan"), float("nan"), 32.0, 32.0, (64, 64))
        elif what == "negative_focal":
            cam = PinholeCamera(-100.0, -100.0, 32.0, 32.0, (64, 64))
        elif what == "float16":
            v = v.half()
        elif what == "nan_rotation":
            R = torch.full((1, 3), float("nan"))
        out = render_face(v, m.faces, cam, R, t, albedo=albedo, sh=sh)
        img = out.image
        if not torch.isfinite(img.float()).all():
            return "garbage: NaN image"
        if what == "float16":
            ref = render_face(v.float(), m.faces, cam, R, t).image
            d = float((img.float() - ref).abs().max())
            return "handled" if d < 0.02 else f"garbage: float16 render differs by {d:.3f}"
        return "garbage: rendered without a word"
    return run


def _api_model_nan(ctx):
    import torch

    m = _ict(ctx)
    idc = torch.zeros(1, m.num_identity)
    idc[0, 3] = float("nan")
    out = m(idc, torch.zeros(1, m.num_expression)).vertices
    return "garbage: NaN vertices" if not torch.isfinite(out).all() else "garbage: accepted"


def _api_fit_image_nan_image(ctx):
    import numpy as np

    from facerender.fitting.fit_image import fit_image
    from facerender.landmarks.files import read_pts

    img = np.full((150, 225, 3), 0.5, dtype=np.float32)
    img[3, 3] = np.nan
    fit_image(_ict(ctx), img, landmarks=read_pts(ctx.faces / "takeo.pts"))
    return "garbage: fitted a NaN image"


def _one_frame_track(ctx: Ctx, rc: int, out: str, err: str):
    """A photo renamed .mp4 is a one-frame video to FFmpeg: tracking its one frame is the right answer."""
    p = ctx.tmp / "out" / "summary.json"
    if rc == 0 and p.is_file() and json.loads(p.read_text()).get("frames") == 1:
        return "handled"
    return None


def _api_audio_warning(ctx):
    try:
        from facerender.reenact.common import audio_warning
    except ImportError:
        return "garbage: no check before the work"

    w = audio_warning("source", "source", ctx.video / "lp_d0.mp4", ctx.video / "talking_d3.mp4")
    return f"flag: {w}" if w else "garbage: no warning"


# ------------------------------------------------------------------------------------------------------------------
# model cache cases


def _copy_cache(ctx: Ctx) -> Path:
    """A copy of the installed ICT cache in tmp/home (hard links for the big file would share corruption)."""
    src = ctx.home / "models" / "ict-facekit"
    dst = ctx.tmp / "home" / "models" / "ict-facekit"
    shutil.copytree(src, dst)
    return ctx.tmp / "home"


def _cache_case(mutate: Callable, expect_repair: bool = False):
    def argv(ctx: Ctx):
        home = _copy_cache(ctx)
        mutate(home / "models" / "ict-facekit")
        if expect_repair:
            return ["--home", str(home), "model", "install", "ict-facekit", "-q"]
        return ["--home", str(home), "model", "info"]
    return argv


def _drop_array(name: str):
    def mutate(d: Path):
        import numpy as np

        with np.load(d / "model.npz") as z:
            arrays = {k: z[k] for k in z.files if k != name}
        with open(d / "model.npz", "wb") as f:
            np.savez(f, **arrays)
    return mutate


def _flip_bytes(d: Path):
    p = d / "model.npz"
    size = p.stat().st_size
    with open(p, "r+b") as f:
        f.seek(size // 2)
        b = f.read(64)
        f.seek(size // 2)
        f.write(bytes(x ^ 0xFF for x in b))


def _nan_in_array(d: Path):
    import numpy as np

    with np.load(d / "model.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["identity_deltas"] = arrays["identity_deltas"].copy()
    arrays["identity_deltas"][3, 100, 1] = np.nan
    with open(d / "model.npz", "wb") as f:
        np.savez(f, **arrays)


def _truncate(d: Path):
    p = d / "model.npz"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _repaired(ctx: Ctx, rc: int, out: str, err: str):
    if rc != 0:
        return None
    try:
        from morphable_models import load_ict

        m = load_ict(ctx.tmp / "home")
        return "handled" if m.num_vertices == 26719 else "garbage: wrong model after install"
    except Exception as e:  # noqa: BLE001
        return f"garbage: install said ok, the cache is still broken ({type(e).__name__}: {e})"


def _facex_variant(ctx: Ctx, edit: Callable) -> Path:
    """A symlinked copy of the extracted FaceXModel folder with one file replaced by ``edit(dst_folder)``."""
    src = ctx.facex / "FaceXModel"
    dst = ctx.tmp / "clone" / "FaceXModel"
    dst.mkdir(parents=True)
    for p in src.iterdir():
        os.symlink(p, dst / p.name)
    for extra in ("LICENSE",):
        if (ctx.facex / extra).exists():
            os.symlink(ctx.facex / extra, ctx.tmp / "clone" / extra)
    edit(dst)
    return ctx.tmp / "clone"


def _nan_obj(dst: Path):
    p = dst / "identity007.obj"
    src = p.resolve()
    p.unlink()
    lines = src.read_text().splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith("v "))
    lines[i + 10] = "v nan nan nan"
    p.write_text("\n".join(lines) + "\n")


def _huge_obj(dst: Path):
    p = dst / "jawOpen.obj"
    src = p.resolve()
    p.unlink()
    lines = src.read_text().splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith("v "))
    lines[i + 10] = "v 1e30 0 0"
    p.write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------------------------------
# slow environment cases (tmpfs)


def _mount_tmpfs(path: Path, size: str, ro: bool = False) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}" + (",ro" if ro else ""), "tmpfs", str(path)],
                   check=True)


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(path: Path) -> None:
    """Fill a tmpfs so that only a few KB remain."""
    try:
        with open(path / "filler", "wb") as f:
            while True:
                f.write(b"\0" * 65536)
    except OSError:
        pass
    try:  # leave a little room for the probe to succeed and the real writes to fail
        with open(path / "filler", "r+b") as f:
            f.truncate(max(0, (path / "filler").stat().st_size - 64 * 1024))
    except OSError:
        pass


# ------------------------------------------------------------------------------------------------------------------
# the cases


def cases() -> List[Case]:
    C: List[Case] = []
    lenna = lambda c: str(c.faces / "lenna.png")  # noqa: E731
    bb = lambda c: str(c.faces / "breakingbad.jpg")  # noqa: E731
    d0 = lambda c: str(c.video / "lp_d0.mp4")  # noqa: E731
    d3 = lambda c: str(c.video / "talking_d3.mp4")  # noqa: E731

    def cli(name, cls, argv, mention=(), expect="refuse", **kw):
        C.append(Case(name, cls, argv=argv, mention=mention, expect=expect, **kw))

    # --- arguments -------------------------------------------------------------------------------------------
    A = "arguments"
    cli("fit --size 0", A, lambda c: ["fit", lenna(c), "-o", c.p("out"), "--size", "0"], ["--size"],
        outputs=["out"])
    cli("fit --size -5", A, lambda c: ["fit", lenna(c), "-o", c.p("out"), "--size", "-5"], ["--size"])
    cli("fit --size abc", A, lambda c: ["fit", lenna(c), "-o", c.p("out"), "--size", "abc"], ["--size"])
    cli("render --size 0", A, lambda c: ["render", "-o", c.p("r.png"), "--size", "0"], ["--size"],
        outputs=["r.png"])
    cli("render --size -5", A, lambda c: ["render", "-o", c.p("r.png"), "--size", "-5"], ["--size"])
    cli("render --yaw nan", A, lambda c: ["render", "-o", c.p("r.png"), "--yaw", "nan"], ["--yaw"])
    cli("render --expressions jawOpen=2", A, lambda c: ["render", "-o", c.p("r.png"), "--expressions", "jawOpen=2",
                                                        "--single", "--size", "32"], ["jawOpen"], outputs=["r.png"])
    cli("render --expressions foo=1", A, lambda c: ["render", "-o", c.p("r.png"), "--expressions", "foo=1",
                                                    "--single", "--size", "32"], ["foo"], outputs=["r.png"])
    cli("render --expressions jawOpen", A, lambda c: ["render", "-o", c.p("r.png"), "--expressions", "jawOpen"],
        ["--expressions"])
    cli("track --max-frames 0", A, lambda c: ["track", d0(c), "-o", c.p("out"), "--max-frames", "0"],
        ["--max-frames"], outputs=["out"])
    cli("track --max-frames -1", A, lambda c: ["track", d0(c), "-o", c.p("out"), "--max-frames", "-1"],
        ["--max-frames"])
    cli("track --size 0", A, lambda c: ["track", d0(c), "-o", c.p("out"), "--size", "0"], ["--size"])
    cli("track --smoothing-lambda 0", A, lambda c: ["track", d0(c), "-o", c.p("out"), "--smoothing-lambda", "0"],
        ["--smoothing-lambda"])
    cli("reenact --crop-size 0", A, lambda c: ["reenact", "--source", d0(c), "--target", d3(c), "-o", c.p("out"),
                                               "--crop-size", "0"], ["--crop-size"], outputs=["out"])
    cli("reenact --max-frames 0", A, lambda c: ["reenact", "--source", d0(c), "--target", d3(c), "-o",
                                                c.p("out"), "--max-frames", "0"], ["--max-frames"])
    cli("reenact face2face without --target", A, lambda c: ["reenact", "--source", d0(c), "-o", c.p("out")],
        ["--target"], outputs=["out"])
    cli("fit --box inverted", A, lambda c: ["fit", bb(c), "-o", c.p("out"), "--box", "900,300,700,100"], ["--box"],
        outputs=["out"])
    cli("fit --box 3 numbers", A, lambda c: ["fit", bb(c), "-o", c.p("out"), "--box", "1,2,3"], ["--box"])
    cli("fit --box nan", A, lambda c: ["fit", bb(c), "-o", c.p("out"), "--box", "nan,0,10,10"], ["--box"])
    cli("fit --box off the image", A, lambda c: ["fit", bb(c), "-o", c.p("out"), "--box", "5000,5000,5200,5200"],
        ["--box"], outputs=["out"])
    cli("fit --box 2 px", A, lambda c: ["fit", bb(c), "-o", c.p("out"), "--box", "100,100,102,102"], ["--box"],
        outputs=["out"])
    cli("fit --face-index -1", A, lambda c: ["fit", lenna(c), "-o", c.p("out"), "--face-index", "-1"],
        ["--face-index"])
    cli("fit --face-index 7 (one face)", A, lambda c: ["fit", lenna(c), "-o", c.p("out"), "--face-index", "7",
                                                       "--no-photometric"], ["7", "face"], outputs=["out"])
    cli("train dvp --size 100", A, lambda c: ["train", "dvp", "--target", d0(c), "-o", c.p("run"), "--size", "100"],
        ["--size"])
    cli("train dvp --steps 0", A, lambda c: ["train", "dvp", "--target", d0(c), "-o", c.p("run"), "--steps", "0"],
        ["--steps"])
    cli("train dvp --val-fraction 1.5", A, lambda c: ["train", "dvp", "--target", d0(c), "-o", c.p("run"),
                                                      "--val-fraction", "1.5"], ["--val-fraction"], outputs=["run"])
    cli("train dvp without --target", A, lambda c: ["train", "dvp", "-o", c.p("run")], ["--target"],
        outputs=["run"])
    cli("reenact --method dvp without --model", A, lambda c: ["reenact", "--method", "dvp", "--source", d0(c), "-o",
                                                              c.p("out")], ["--model"], outputs=["out"])
    cli("model build-multilinear --ranks 0 5", A, lambda c: ["model", "build-multilinear", "--ranks", "0", "5"],
        ["--ranks"])
    cli("model convert --name ../x", A, lambda c: ["--home", c.p("home"), "model", "convert",
                                                   str(c.faces / "lenna.png"), "--name", "../x"], ["name", "../x"])
    cli("model install unknown", A, lambda c: ["model", "install", "bfm"], ["bfm", "name"])
    cli("fit without -o", A, lambda c: ["fit", lenna(c)], ["-o"])
    cli("unknown option", A, lambda c: ["fit", lenna(c), "-o", c.p("out"), "--sise", "3"], ["--sise"])

    # --- inputs ----------------------------------------------------------------------------------------------
    I = "inputs"
    cli("fit: missing image", I, lambda c: ["fit", c.p("nope.jpg"), "-o", c.p("out")], ["nope.jpg"],
        outputs=["out"])
    cli("fit: 0-byte image", I, lambda c: ["fit", c.p("empty.png"), "-o", c.p("out")], ["empty.png"],
        outputs=["out"])
    cli("fit: truncated jpg", I, lambda c: ["fit", c.p("trunc.jpg"), "-o", c.p("out")], ["trunc.jpg"],
        outputs=["out"])
    cli("fit: random bytes", I, lambda c: ["fit", c.p("random.png"), "-o", c.p("out")], ["random.png"],
        outputs=["out"])
    cli("fit: text file", I, lambda c: ["fit", c.p("text.png"), "-o", c.p("out")], ["text.png"], outputs=["out"])
    cli("fit: a folder as the image", I, lambda c: ["fit", c.p("adir"), "-o", c.p("out")], ["adir"],
        outputs=["out"])
    cli("fit: a .pts as the image", I, lambda c: ["fit", c.p("face.pts"), "-o", c.p("out")], ["face.pts"],
        outputs=["out"])
    cli("fit: --landmarks missing", I, lambda c: ["fit", lenna(c), "-o", c.p("out"), "--landmarks", c.p("no.pts")],
        ["no.pts"], outputs=["out"])
    cli("fit: --landmarks malformed", I, lambda c: ["fit", lenna(c), "-o", c.p("out"), "--landmarks",
                                                    c.p("bad.pts")], ["bad.pts"], outputs=["out"])
    cli("fit: --landmarks 5 points", I, lambda c: ["fit", lenna(c), "-o", c.p("out"), "--landmarks",
                                                   c.p("five.pts")], ["five.pts", "68", "5"], outputs=["out"])
    cli("fit: --landmarks .txt", I, lambda c: ["fit", lenna(c), "-o", c.p("out"), "--landmarks", c.p("lm.txt")],
        ["lm.txt"], outputs=["out"])
    cli("fit: --landmarks a folder", I, lambda c: ["fit", lenna(c), "-o", c.p("out"), "--landmarks", c.p("adir")],
        ["adir"], outputs=["out"])
    cli("track: missing video", I, lambda c: ["track", c.p("nope.mp4"), "-o", c.p("out")], ["nope.mp4"],
        outputs=["out"])
    cli("track: 0-byte video", I, lambda c: ["track", c.p("empty.mp4"), "-o", c.p("out")], ["empty.mp4"],
        outputs=["out"])
    cli("track: truncated mp4", I, lambda c: ["track", c.p("trunc.mp4"), "-o", c.p("out"), "--no-overlay"],
        ["trunc.mp4"], expect="refuse")
    cli("track: text as video", I, lambda c: ["track", c.p("text.mp4"), "-o", c.p("out")], ["text.mp4"],
        outputs=["out"])
    cli("track: a photo named .mp4", I, lambda c: ["track", c.p("lenna_as_video.mp4"), "-o", c.p("out"),
                                                   "--no-overlay"], ["lenna_as_video.mp4", "frame"], expect="handle",
        check=_one_frame_track)
    cli("track: a folder as video", I, lambda c: ["track", c.p("adir"), "-o", c.p("out")], ["adir"],
        outputs=["out"])
    cli("reenact: missing source", I, lambda c: ["reenact", "--source", c.p("nope.mp4"), "--target", d3(c), "-o",
                                                 c.p("out")], ["nope.mp4"], outputs=["out"])
    cli("reenact: missing target", I, lambda c: ["reenact", "--source", d0(c), "--target", c.p("nope.mp4"), "-o",
                                                 c.p("out")], ["nope.mp4"], outputs=["out"])
    cli("reenact: a folder that is no track", I, lambda c: ["reenact", "--source", c.p("notrack"), "--target",
                                                            d3(c), "-o", c.p("out")], ["notrack"], outputs=["out"])
    cli("reenact dvp: missing run", I, lambda c: ["reenact", "--method", "dvp", "--model", c.p("norun"), "--source",
                                                  d0(c), "-o", c.p("out")], ["norun"], outputs=["out"])
    cli("reenact dvp: empty run folder", I, lambda c: ["reenact", "--method", "dvp", "--model", c.p("emptyrun"),
                                                       "--source", d0(c), "-o", c.p("out")], ["emptyrun"],
        outputs=["out"])
    cli("train dvp: missing target", I, lambda c: ["train", "dvp", "--target", c.p("nope.mp4"), "-o", c.p("run")],
        ["nope.mp4"], outputs=["run"])
    cli("train dvp: text as target", I, lambda c: ["train", "dvp", "--target", c.p("text.mp4"), "-o", c.p("run")],
        ["text.mp4"])
    cli("train dvp --resume: empty folder", I, lambda c: ["train", "dvp", "--resume", "-o", c.p("emptyrun")],
        ["emptyrun"])
    cli("model install --from missing", I, lambda c: ["--home", c.p("home"), "model", "install", "ict-facekit",
                                                      "--from", c.p("nope.zip")], ["nope.zip"], outputs=["home"])
    cli("model install --from text file", I, lambda c: ["--home", c.p("home"), "model", "install", "ict-facekit",
                                                        "--from", c.p("text.png")], ["text.png"])
    cli("model install --from truncated archive", I, lambda c: ["--home", c.p("home"), "model", "install",
                                                                "ict-facekit", "-q", "--from", c.p("trunc.tar.xz")],
        ["trunc.tar.xz"])
    cli("model info missing file", I, lambda c: ["model", "info", c.p("nope.mat")], ["nope.mat"])
    cli("model convert random bytes", I, lambda c: ["--home", c.p("home"), "model", "convert", c.p("random.png"),
                                                    "--name", "x"], ["random.png"])
    cli("fit --model unknown name", I, lambda c: ["fit", lenna(c), "-o", c.p("out"), "--model", "nosuchmodel"],
        ["nosuchmodel"], outputs=["out"])
    cli("fit --model random bytes", I, lambda c: ["fit", lenna(c), "-o", c.p("out"), "--model", c.p("random.png")],
        ["random.png"], outputs=["out"])

    # --- outputs ---------------------------------------------------------------------------------------------
    O = "outputs"
    cli("fit -o an existing file", O, lambda c: ["fit", lenna(c), "-o", c.p("existing")], ["existing"])
    cli("fit -o below a file", O, lambda c: ["fit", lenna(c), "-o", c.p("existing/sub")], ["existing"])
    cli("render -o without suffix", O, lambda c: ["render", "-o", c.p("render")], ["render", "suffix"],
        outputs=["render"])
    cli("render -o .xyz", O, lambda c: ["render", "-o", c.p("r.xyz")], ["r.xyz", ".xyz"], outputs=["r.xyz"])
    cli("render -o a folder", O, lambda c: ["render", "-o", c.p("adir")], ["adir"])
    cli("render -o in a missing folder", O, lambda c: ["render", "-o", c.p("new/sub/r.png"), "--single", "--size",
                                                       "32"], ["new"], expect="handle",
        check=lambda c, rc, o, e: "handled" if rc == 0 and (c.tmp / "new/sub/r.png").is_file() else None)
    cli("track -o an existing file", O, lambda c: ["track", d0(c), "-o", c.p("existing")], ["existing"])
    cli("reenact -o an existing file", O, lambda c: ["reenact", "--source", d0(c), "--target", d3(c), "-o",
                                                     c.p("existing")], ["existing"])
    cli("train dvp -o an existing file", O, lambda c: ["train", "dvp", "--target", d0(c), "-o", c.p("existing")],
        ["existing"])
    cli("model install: home is a file", O, lambda c: ["--home", c.p("existing"), "model", "install",
                                                       "ict-facekit"], ["existing"])
    cli("model install: FACERENDER_HOME is a file", O, lambda c: ["model", "install", "ict-facekit", "-q"],
        ["existing"], env={"FACERENDER_HOME": "{tmp}/existing"})
    cli("model convert: home below a file", O, lambda c: ["--home", c.p("existing/h"), "model", "convert",
                                                          str(c.faces / "lenna.png"), "--name", "x"], ["existing"])

    # --- results that cannot be trusted ------------------------------------------------------------------------
    T = "trust"

    def rot_case(name, k, img, gt):
        def argv(c):
            _rotated_image(c.faces / img, c.tmp / f"rot{k}.png", k)
            return ["fit", c.p(f"rot{k}.png"), "-o", c.p("out"), "--no-photometric"]
        cli(name, T, argv, ["rot"], expect="handle", check=_rotated_fit_check(k, gt, img), timeout=300)

    rot_case("fit an upside-down photo (lenna)", 2, "lenna.png", "lenna.ljson")
    rot_case("fit an upside-down photo (takeo)", 2, "takeo.ppm", "takeo.pts")
    rot_case("fit a photo turned 90 degrees (lenna)", 1, "lenna.png", "lenna.ljson")
    rot_case("fit a photo turned 270 degrees (breakingbad)", 3, "breakingbad.jpg", "breakingbad.pts")
    cli("fit --landmarks 68 identical points", T, lambda c: ["fit", str(c.faces / "takeo.ppm"), "-o", c.p("out"),
                                                             "--landmarks", c.p("same.pts"), "--no-photometric"],
        ["same.pts", "landmarks"], outputs=["out"])
    cli("fit --landmarks 1e5 px off the image", T, lambda c: ["fit", str(c.faces / "takeo.ppm"), "-o", c.p("out"),
                                                              "--landmarks", c.p("far.pts"), "--no-photometric"],
        ["far.pts", "landmarks"], outputs=["out"])
    cli("fit --landmarks shuffled order", T, lambda c: ["fit", str(c.faces / "takeo.ppm"), "-o", c.p("out"),
                                                        "--landmarks", c.p("shuffled.pts"), "--no-photometric"],
        ["shuffled.pts", "landmarks"], expect="flag", check=_params_flagged)
    cli("fit --landmarks random points in the box", T, lambda c: ["fit", str(c.faces / "takeo.ppm"), "-o",
                                                                  c.p("out"), "--landmarks", c.p("scrambled.pts"),
                                                                  "--no-photometric"],
        ["scrambled.pts", "landmarks"], expect="flag", check=_params_flagged)
    C.append(Case("fit_landmarks: all-zero confidence", T, api=_api_fit_landmarks(confidence=[0.0] * 68),
                  mention=["confidence"]))
    C.append(Case("fit_landmarks: negative focal", T, api=_api_fit_landmarks(focal=-500.0), mention=["focal"]))
    C.append(Case("fit_landmarks: NaN focal", T, api=_api_fit_landmarks(focal=float("nan")), mention=["focal"]))
    for what, arg in (("nan_sh", "sh"), ("nan_albedo", "albedo"), ("nan_vertices", "vertices"),
                      ("nan_focal", "f"), ("negative_focal", "f"), ("nan_rotation", "rotation")):
        C.append(Case(f"render_face: {what.replace('_', ' ')}", T, api=_api_render(what), mention=[arg]))
    C.append(Case("render_face: float16 vertices", T, api=_api_render("float16"), expect="handle",
                  mention=["float16"]))
    C.append(Case("model: NaN identity coefficients", T, api=_api_model_nan, mention=["identity"]))
    C.append(Case("fit_image: NaN in the image", T, api=_api_fit_image_nan_image, mention=["image", "NaN"]))
    C.append(Case("reenact --audio source, source without audio (check)", T, api=_api_audio_warning, expect="flag",
                  mention=["audio"]))

    # --- model cache -------------------------------------------------------------------------------------------
    M = "cache"
    cli("cache: model.npz lacks an array", M, _cache_case(_drop_array("faces_uv")), ["faces_uv", "model.npz"])
    cli("cache: bytes flipped inside model.npz", M, _cache_case(_flip_bytes), ["model.npz", "ict-facekit"])
    cli("cache: NaN in an array", M, _cache_case(_nan_in_array), ["identity_deltas", "ict-facekit"])
    cli("cache: truncated model.npz", M, _cache_case(_truncate), ["model.npz", "ict-facekit"])
    cli("cache: meta.json not JSON", M, _cache_case(lambda d: (d / "meta.json").write_text("{")),
        ["meta.json", "ict-facekit"])
    cli("cache: manifest edited", M, _cache_case(lambda d: (d / "manifest.json").write_text("[]")
                                                 if (d / "manifest.json").exists() else _flip_bytes(d)),
        ["manifest", "model.npz", "ict-facekit"])
    cli("install without --force over a truncated cache", M, _cache_case(_truncate, expect_repair=True),
        expect="handle", check=_repaired, slow=True)
    cli("install without --force over a cache lacking an array", M,
        _cache_case(_drop_array("neutral"), expect_repair=True), expect="handle", check=_repaired, slow=True)
    cli("install from a clone with a NaN vertex", M,
        lambda c: ["--home", c.p("home"), "model", "install", "ict-facekit", "-q", "--from",
                   str(_facex_variant(c, _nan_obj))], ["identity007", "nan"], slow=True, outputs=["home/models"])
    cli("install from a clone with a 1e30 vertex", M,
        lambda c: ["--home", c.p("home"), "model", "install", "ict-facekit", "-q", "--from",
                   str(_facex_variant(c, _huge_obj))], ["jawOpen"], slow=True, outputs=["home/models"])
    cli("install from a clone missing an OBJ", M,
        lambda c: ["--home", c.p("home"), "model", "install", "ict-facekit", "-q", "--from",
                   str(_facex_variant(c, lambda d: (d / "identity042.obj").unlink()))], ["identity042"],
        slow=True, outputs=["home/models"])

    # --- environment (slow: tmpfs) -------------------------------------------------------------------------------
    E = "environment"

    def ro_home(c):
        _mount_tmpfs(c.tmp / "rohome", "4m", ro=True)

    def full_out(c):
        _mount_tmpfs(c.tmp / "full", "1m")
        _fill(c.tmp / "full")

    def tiny_home(c):
        _mount_tmpfs(c.tmp / "tinyhome", "8m")

    def um(*names):
        return lambda c: [_umount(c.tmp / n) for n in names]

    cli("model install into a read-only home", E, lambda c: ["--home", c.p("rohome"), "model", "install",
                                                            "ict-facekit", "-q"], ["rohome", "read-only"],
        slow=True, needs_root=True, setup=ro_home, teardown=um("rohome"), timeout=120)
    cli("model install into an 8 MB home", E, lambda c: ["--home", c.p("tinyhome"), "model", "install",
                                                        "ict-facekit", "-q"], ["tinyhome"],
        slow=True, needs_root=True, setup=tiny_home, teardown=um("tinyhome"), timeout=120)
    cli("fit -o on a full disk", E, lambda c: ["fit", lenna(c), "-o", c.p("full/out"), "--no-photometric"],
        ["full", "space"], slow=True, needs_root=True, setup=full_out, teardown=um("full"))
    cli("render -o on a full disk", E, lambda c: ["render", "-o", c.p("full/r.png"), "--size", "128"],
        ["full", "space"], slow=True, needs_root=True, setup=full_out, teardown=um("full"))
    cli("track -o on a full disk", E, lambda c: ["track", d0(c), "-o", c.p("full/out"), "--max-frames", "6"],
        ["full", "space"], slow=True, needs_root=True, setup=full_out, teardown=um("full"), timeout=400)
    cli("fit -o on a read-only disk", E, lambda c: ["fit", lenna(c), "-o", c.p("rohome/out")], ["rohome",
                                                                                               "read-only"],
        slow=True, needs_root=True, setup=ro_home, teardown=um("rohome"))
    cli("model convert into a read-only home", E, lambda c: ["--home", c.p("rohome"), "model", "convert",
                                                            str(c.faces / "lenna.png"), "--name", "x"],
        ["rohome", "read-only"], slow=True, needs_root=True, setup=ro_home, teardown=um("rohome"))

    def upside_down_clip(c):
        from facerender.io.video import VideoReader, VideoWriter
        import numpy as np

        r = VideoReader(c.video / "talking_d3.mp4")
        with VideoWriter(c.tmp / "flipped.mp4", fps=r.fps) as w:
            for i, fr in enumerate(r):
                if i >= 30:
                    break
                w.write(np.ascontiguousarray(fr.image[::-1, ::-1]))
        return ["track", c.p("flipped.mp4"), "-o", c.p("out"), "--no-overlay"]

    def _track_flagged(c, rc, out, err):
        if rc != 0:
            return None
        s = json.loads((c.tmp / "out" / "summary.json").read_text())
        fc = s.get("flag_counts", {}) or {}
        rot = s.get("orientation") or {}
        n = s.get("frames", 0)
        bad = sum(v for k, v in fc.items() if "upside" in k or "rotat" in k or "orientation" in k)
        if rot.get("frames_flagged", 0) >= 0.8 * n or bad >= 0.8 * n:
            return None  # flag
        return f"garbage: {n} frames tracked, flags {fc}, no orientation flag"

    cli("track an upside-down clip (30 frames)", T, upside_down_clip, ["upside", "rotat"], expect="flag",
        check=_track_flagged, slow=True, timeout=600)

    def audio_cli(c):
        return ["reenact", "--source", d0(c), "--target", d3(c), "-o", c.p("out"), "--audio", "source",
                "--max-frames", "4", "--crop-size", "64"]

    def _audio_flag(c, rc, out, err):
        if "no audio" in err and "warning" in err:
            return None
        return "garbage: silent result without a warning" if rc == 0 else None

    cli("reenact --audio source, source without audio", T, audio_cli, ["audio"], expect="flag", check=_audio_flag,
        slow=True, timeout=900)
    return C


# ------------------------------------------------------------------------------------------------------------------
# running one case in a forked child


def _child(case: Case, ctx: Ctx, out_path: Path, err_path: Path) -> None:
    fo = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    fe = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fo, 1)
    os.dup2(fe, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    os.chdir(ctx.tmp)
    for k, v in case.env.items():
        os.environ[k] = v.replace("{tmp}", str(ctx.tmp))
    rc = 0
    try:
        if case.argv is not None:
            from facerender.cli import main

            try:
                rc = main(case.argv(ctx))
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                if not isinstance(e.code, int) and e.code is not None:
                    print(e.code, file=sys.stderr)
            except BaseException:  # what the interpreter would do with an uncaught exception
                traceback.print_exc()
                rc = 1
        else:
            try:
                verdict = case.api(ctx)
                print(f"RESULT {verdict}")
                rc = 0
            except BaseException as e:  # noqa: BLE001
                from facerender.errors import FaceRenderError
                from morphable_models.errors import FaceModelError

                typed = isinstance(e, (FaceRenderError, FaceModelError, ValueError, TypeError))
                deep = not typed or "holds NaN or inf at" in str(e)
                print(f"ERROR {type(e).__name__}: {' '.join(str(e).split())}", file=sys.stderr)
                if deep:
                    traceback.print_exc()
                rc = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(rc) & 0xFF)


_NOISE = re.compile(r"^(\s*$|note:|.*\d+%\|.*|.*it/s.*|.*s/it.*|INFO |DEBUG |wrote |WARNING |"
                    r"facerender: warning:|warning:)")


def classify_run(case: Case, ctx: Ctx, rc: Optional[int], sig: Optional[int], out: str, err: str) -> tuple:
    """``(outcome, detail)`` of one run (see the module docstring)."""
    if sig is not None:
        return "crash", f"signal {sig}" if sig > 0 else "time limit"
    if "Traceback (most recent call last)" in err:
        last = [ln for ln in err.strip().splitlines() if ln.strip()][-1]
        return "traceback", last[:160]
    left = [str(p.relative_to(ctx.tmp)) for p in ctx.tmp.rglob("*.partial*")] + \
        [str(p.relative_to(ctx.tmp)) for p in ctx.tmp.rglob(".*.tmp-*")]
    if left:
        return "garbage", f"left half-written: {', '.join(left[:3])}"
    mention = [m.replace("{tmp}", str(ctx.tmp)) for m in case.mention]
    if case.check is not None:
        v = case.check(ctx, rc, out, err)
        if v == "handled":
            return "handled", ""
        if isinstance(v, str) and v.startswith("garbage"):
            return "garbage", v[9:]
    if case.api is not None and rc == 0:
        m = re.search(r"RESULT (.*)", out)
        v = m.group(1) if m else "None"
        if v.startswith("handled"):
            return "handled", ""
        if v.startswith("flag"):
            return "flag", v[6:][:160]
        return "garbage", v[:160]
    if rc == 0:
        if case.expect == "handle":
            return ("flag", "") if "warning" in err else ("garbage", "no result check passed")
        warned = [ln for ln in err.splitlines() if "warning" in ln]
        if warned:
            return "flag", warned[0][:160]
        return "garbage", "exit 0 without a word"
    lines = [ln for ln in err.splitlines() if not _NOISE.match(ln)]
    if case.api is not None:
        lines = [ln for ln in lines if ln.startswith("ERROR")]
    for o in case.outputs:
        if (ctx.tmp / o).exists() and not case.setup:
            return "garbage", f"refused but created {o}"
    if rc == 70 or len(lines) != 1:
        return "unclear", (" | ".join(lines))[:200]
    line = lines[0]
    if mention and not any(m.lower() in line.lower() for m in mention):
        return "unclear", line[:200]
    return "clear", line[:200]


def run_case(case: Case, ctx: Ctx) -> dict:
    out_path, err_path = ctx.tmp / ".stdout", ctx.tmp / ".stderr"
    t0 = time.perf_counter()
    if case.setup:
        case.setup(ctx)
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                _child(case, ctx, out_path, err_path)
            finally:
                os._exit(99)
        deadline = time.time() + case.timeout
        sig = None
        rc = None
        while True:
            wpid, status = os.waitpid(pid, os.WNOHANG)
            if wpid:
                if os.WIFSIGNALED(status):
                    sig = os.WTERMSIG(status)
                else:
                    rc = os.WEXITSTATUS(status)
                break
            if time.time() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                sig = -1
                break
            time.sleep(0.05)
        out = out_path.read_text(errors="replace") if out_path.exists() else ""
        err = err_path.read_text(errors="replace") if err_path.exists() else ""
        for p in (out_path, err_path):
            if p.exists():
                p.unlink()
        outcome, detail = classify_run(case, ctx, rc, sig, out, err)
    finally:
        if case.teardown:
            case.teardown(ctx)
    return {"name": case.name, "class": case.cls, "outcome": outcome, "exit": rc, "detail": detail,
            "seconds": round(time.perf_counter() - t0, 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fast", action="store_true", help="skip the slow cases")
    ap.add_argument("--only", default=None, help="run one class (arguments, inputs, outputs, trust, cache, "
                                                   "environment) or cases whose name contains this text")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--code", default=None, help="import facerender from this checkout (a baseline)")
    ap.add_argument("--home", default=None, help="model cache holding ICT-FaceKit (default: the usual one)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print each case's detail")
    a = ap.parse_args(argv)
    _use_code(a.code)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch  # noqa: F401 - imported once in the parent, shared by the forked children

    torch.set_num_threads(1)
    import facerender.cli  # noqa: F401
    import facerender.fitting.fit_image  # noqa: F401
    import facerender.tracking.video  # noqa: F401
    from morphable_models import ict
    from morphable_models.paths import facerender_home, shared_data_dir

    data = shared_data_dir(required=True)
    home = Path(a.home).expanduser() if a.home else facerender_home()
    if not ict.is_installed(home):
        print(f"installing ICT-FaceKit into {home} first")
        ict.install_ict(data / "models" / "ict-facekit" / "ICT-FaceKit.tar.xz", home=home, progress=False)
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    todo = [c for c in cases() if not (a.fast and c.slow)]
    if a.only:
        todo = [c for c in todo if c.cls == a.only or a.only.lower() in c.name.lower()]
    work = Path(tempfile.mkdtemp(prefix="faults-"))
    facex = None
    if any("clone" in c.name for c in todo):
        facex = work / "ICT-FaceKit-master"
        facex.mkdir()
        with tarfile.open(data / "models" / "ict-facekit" / "ICT-FaceKit.tar.xz") as tf:
            tf.extractall(facex, filter="data")
    results = []
    t_all = time.perf_counter()
    try:
        for i, case in enumerate(todo):
            if case.needs_root and not is_root:
                results.append({"name": case.name, "class": case.cls, "outcome": "skipped", "exit": None,
                                "detail": "needs root for a tmpfs mount", "seconds": 0})
                continue
            tmp = work / f"case{i:03d}"
            tmp.mkdir()
            ctx = Ctx(tmp, data, home, facex)
            _prepare_files(ctx)
            r = run_case(case, ctx)
            results.append(r)
            print(f"[{i + 1:3d}/{len(todo)}] {r['outcome']:<9s} exit {str(r['exit']):>4s} {r['seconds']:6.1f} s  "
                  f"{case.cls:<11s} {case.name}" + (f"\n      {r['detail']}" if a.verbose and r["detail"] else ""),
                  flush=True)
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{len(results)} cases in {time.perf_counter() - t_all:.0f} s "
          f"({'root' if is_root else 'not root'}; {os.cpu_count()} cores; load {os.getloadavg()[0]:.1f})\n")
    print(table(results))
    bad = [r for r in results if r["outcome"] in ("unclear", "traceback", "crash", "garbage")]
    if bad:
        print("\nnot yet right:")
        for r in bad:
            print(f"  {r['outcome']:<9s} {r['class']:<11s} {r['name']}: {r['detail']}")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


def table(results: List[dict]) -> str:
    """The markdown table of docs/errors.md: cases per class and outcome."""
    classes = []
    for r in results:
        if r["class"] not in classes:
            classes.append(r["class"])
    cols = list(OUTCOMES) + (["skipped"] if any(r["outcome"] == "skipped" for r in results) else [])
    head = "| class | cases | " + " | ".join(cols) + " |"
    rows = [head, "|" + "---|" * (len(cols) + 2)]
    for c in classes + ["all"]:
        rs = [r for r in results if c == "all" or r["class"] == c]
        cells = [str(sum(r["outcome"] == o for r in rs)) for o in cols]
        name = f"**{c}**" if c == "all" else c
        rows.append(f"| {name} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
