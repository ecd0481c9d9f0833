"""Face models beyond ICT-FaceKit (issue 18): loading time and memory per format, the same real photo fitted with
every model through ``facerender fit --model``, the multilinear model's reconstruction error and fit speed, and
FLAME's linearisation against exact LBS.

Usage:  python benchmarks/bench_models.py [--photo lenna] [--skip-fits] [--json out.json]

BFM, FLAME and the Surrey model may not be redistributed and none is on this machine: every format is exercised with
a SYNTHETIC file written in its exact layout from ICT-FaceKit geometry (``morphable_models.synthetic``), and the tables
say so. With ``FACERENDER_MODELS=FOLDER`` holding real files, the loading table adds rows for them.

Prints Markdown tables. Timings are wall clock on a shared 2-core machine (noisy; compare rows of one run).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from morphable_models import load_ict
from morphable_models.paths import shared_data_dir

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


# ------------------------------------------------------------------------------------------------------------------
# synthetic files at the public models' array sizes (for loading time and memory)


def _tiled(ict, copies: int):
    """ICT's head tiled ``copies`` times (each copy shifted 0.05 mm): vertex counts of the size of BFM's."""
    T = ict.template.double().numpy()
    F = ict.faces.numpy()
    V = len(T)
    verts = np.concatenate([T + 0.005 * k for k in range(copies)])
    faces = np.concatenate([F + V * k for k in range(copies)])
    return verts, faces


def _random_pca(rng, n: int, K: int, scale: float):
    Q, _ = np.linalg.qr(rng.standard_normal((n, K)).astype(np.float32))
    return Q, scale * np.linspace(1.0, 0.05, K)


def write_sized_files(ict, folder: Path) -> dict:
    """Files with the array sizes of the public models (listed in the table) and ICT geometry."""
    from morphable_models.synthetic import (decimate, flame_rig_from_ict, write_bfm2009, write_bfm2017,
                                            write_bfm_front, write_eos_model, write_flame_pickle)

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    V2, F2 = _tiled(ict, 2)
    n = 3 * len(V2)
    pc, sd = _random_pca(rng, n, 199, 2.0)
    tpc, tsd = _random_pca(rng, n, 199, 0.05)
    alb = np.full((len(V2), 3), 0.6)
    p = folder / "01_MorphableModel.mat"
    write_bfm2009(p, V2, pc, sd, F2, alb, tpc, tsd)
    out["bfm2009"] = (p, len(V2), "199 shape + 199 colour")
    epc, esd = _random_pca(rng, n, 100, 1.0)
    p = folder / "model2017-1_sized.h5"
    write_bfm2017(p, V2, pc, sd, F2, expression=(np.zeros_like(V2), epc, esd), color=(alb, tpc, tsd))
    out["bfm2017"] = (p, len(V2), "199 shape + 100 expression + 199 colour")
    face = ict.submodel("face")
    V4 = np.concatenate([face.template.double().numpy() + 0.005 * k for k in range(4)])
    F4 = np.concatenate([face.faces.numpy() + face.num_vertices * k for k in range(4)])
    ib = rng.standard_normal((80, len(V4), 3)) * 0.1
    eb = rng.standard_normal((64, len(V4), 3)) * 0.1
    tb = rng.standard_normal((80, len(V4), 3)) * 0.01
    p = folder / "BFM_model_front.mat"
    write_bfm_front(p, V4, ib, eb, F4, face.landmarks["ibug68"].vertex_index, np.arange(len(V4)), np.full_like(V4, .6),
                    tb)
    out["bfm-front"] = (p, len(V4), "80 identity + 64 expression + 80 colour")
    small = decimate(ict, 0.62, region=None)
    rig = flame_rig_from_ict(small)
    (folder / "flame").mkdir(exist_ok=True)
    p = folder / "flame" / "generic_model.pkl"
    write_flame_pickle(p, rig["v_template"], rig["faces"], rig["shapedirs"], rig["posedirs"], rig["J_regressor"],
                       rig["kintree_table"], rig["weights"])
    out["flame"] = (p, small.num_vertices, "300 shape + 100 expression, 36 pose correctives")
    small = decimate(ict, 0.75, region=None)
    Ts = small.template.double().numpy()
    spc, ssd = _random_pca(rng, 3 * len(Ts), 63, 20.0)
    p = folder / "sfm_sized.bin"
    write_eos_model(p, ((Ts * 10).reshape(-1), spc, ssd ** 2, small.faces.numpy()), version=4)
    out["eos"] = (p, len(Ts), "63 shape")
    return out


_LOAD_SNIPPET = r"""
import json, sys, time
import torch
torch.set_num_threads(2)
from morphable_models.store import load_model, as_linear
import morphable_models.bfm, morphable_models.flame, morphable_models.surrey, morphable_models.correspondence
import scipy.io, scipy.spatial, h5py
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current RSS
    f.write("5")
t = time.perf_counter()
m = load_model(sys.argv[1], home=sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] != "-" else None)
dt = time.perf_counter() - t
ann = m.extra.get("annotations") or {}
print(json.dumps({"seconds": dt, "peak_mb": status("VmHWM") - before, "resident_mb": status("VmRSS") - before,
                  "vertices": m.num_vertices, "class": type(m).__name__, "annotation_s": ann.get("seconds", 0.0)}))
"""


def load_in_subprocess(spec, home=None, repeats=3) -> dict:
    runs = []
    for _ in range(repeats):
        r = subprocess.run([sys.executable, "-c", _LOAD_SNIPPET, str(spec), str(home) if home else "-"],
                           capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"}, cwd=ROOT)
        if r.returncode:
            raise RuntimeError(f"loading {spec} failed: {r.stderr[-2000:]}")
        runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
    out = dict(runs[0])
    out["seconds"] = statistics.median(x["seconds"] for x in runs)
    for k in ("peak_mb", "resident_mb", "annotation_s"):
        out[k] = statistics.median(x[k] for x in runs)
    return out


def bench_loading(ict, tmp: Path, home: Path) -> list:
    from morphable_models.store import convert_model

    rows = []
    sized = write_sized_files(ict, tmp / "sized")
    for fmt, (p, V, comps) in sized.items():
        size = sum(f.stat().st_size for f in [p]) / 2 ** 20
        r = load_in_subprocess(p)
        convert_model(p, f"sized-{fmt}", home, ict_model=ict)
        c = load_in_subprocess(f"sized-{fmt}", home)
        rows.append({"format": fmt, "file": f"synthetic {p.name}", "vertices": V, "components": comps,
                     "file_mb": round(size, 1), "load_s": round(r["seconds"], 2),
                     "of_which_annotations_s": round(r["annotation_s"], 2), "load_peak_mb": round(r["peak_mb"]),
                     "model_mb": round(r["resident_mb"]), "cached_load_s": round(c["seconds"], 3),
                     "cached_peak_mb": round(c["peak_mb"])})
    ict_r = load_in_subprocess("ict-facekit")
    rows.append({"format": "ict-facekit", "file": "installed cache", "vertices": ict_r["vertices"],
                 "components": "100 identity + 53 expression", "file_mb": 52, "load_s": None, "load_peak_mb": None,
                 "cached_load_s": round(ict_r["seconds"], 3), "cached_peak_mb": round(ict_r["peak_mb"])})
    real = os.environ.get("FACERENDER_MODELS")
    if real:
        for pat in ("01_MorphableModel.mat", "model2017-1_*.h5", "BFM_model_front.mat", "generic_model.pkl",
                    "sfm_shape_*.bin"):
            for p in sorted(Path(real).rglob(pat))[:1]:
                r = load_in_subprocess(p)
                rows.append({"format": "REAL", "file": p.name, "vertices": r["vertices"], "components": "",
                             "file_mb": round(p.stat().st_size / 2 ** 20, 1), "load_s": round(r["seconds"], 2),
                             "of_which_annotations_s": round(r["annotation_s"], 2),
                             "load_peak_mb": round(r["peak_mb"]), "model_mb": round(r["resident_mb"])})
    return rows


# ------------------------------------------------------------------------------------------------------------------
# fits of one real photo through the CLI


def bench_fits(ict, tmp: Path, home: Path, photo: str) -> list:
    from morphable_models.multilinear import build_from_ict, ict_tensor_data
    from morphable_models.store import save_model
    from morphable_models.synthetic import write_all_formats

    from facerender.landmarks.files import read_landmarks
    from facerender.landmarks.metrics import nme

    faces = shared_data_dir(required=True) / "data" / "faces"
    img = next(p for p in faces.iterdir() if p.stem == photo and p.suffix in (".png", ".jpg", ".ppm"))
    ann = next(p for p in faces.iterdir() if p.stem == photo and p.suffix in (".pts", ".ljson"))
    gt = read_landmarks(ann)
    face = ict.submodel("face")
    files = write_all_formats(face, tmp / "fit_formats", n_identity=100, n_expression=53, n_albedo=10)
    data = ict_tensor_data(ict)
    for name, ranks in (("ict-tucker-60x30", (None, 60, 30)), ("ict-tucker-full", (None, 101, 54))):
        save_model(build_from_ict(ict, ranks, data=data, name=name), name, home)
    models = [("ict-facekit", "ICT-FaceKit (real)", None)]
    for fmt, label in (("bfm2009", "BFM 2009 format (synthetic, ICT face)"),
                       ("bfm2017", "BFM 2017 format (synthetic, ICT face)"),
                       ("bfm-front", "Deep3DFaceRecon format (synthetic, ICT face)"),
                       ("eos", "eos/Surrey format (synthetic, ICT face)"),
                       ("flame", "FLAME format (synthetic rig on ICT face)")):
        models.append((str(files[fmt]["path"]), label, fmt))
    models += [("ict-tucker-60x30", "Tucker from ICT, ranks 154/60/30", None),
               ("ict-tucker-full", "Tucker from ICT, full ranks 154/101/54", None)]
    rows = []
    for spec, label, fmt in models:
        for source in ("dlib", "annotation"):
            out = tmp / "fits" / f"{Path(spec).stem}_{source}"
            named = not Path(spec).exists() and spec != "ict-facekit"  # converted names live in the temporary home
            cmd = ([sys.executable, "-m", "facerender.cli"] + (["--home", str(home)] if named else [])
                   + ["fit", str(img), "-o", str(out)] + (["--model", spec] if spec != "ict-facekit" else []))
            if source == "annotation":
                cmd += ["--landmarks", str(ann)]
            t = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "2"})
            wall = time.perf_counter() - t
            if r.returncode:
                rows.append({"model": label, "landmarks": source, "error": r.stderr.strip()[-300:]})
                continue
            params = json.loads((out / "params.json").read_text())
            pred = np.asarray(params["landmarks_projected"])
            det = np.asarray(params["landmarks"])
            rows.append({"model": label, "landmarks": source, "nme_model_vs_annotation": float(nme(pred, gt)),
                         "nme_detector_vs_annotation": float(nme(det, gt)),
                         "fit_s": params["timings_s"].get("total"), "cli_wall_s": wall,
                         "photometric_error": params.get("photometric_error"),
                         "linearization_error_px": params.get("linearization_error_px")})
    return rows


# ------------------------------------------------------------------------------------------------------------------
# multilinear model


def bench_multilinear(ict, photo: str) -> dict:
    from morphable_models.multilinear import build_from_ict, ict_tensor_data, reconstruction_error

    from facerender.fitting.landmark_fit import fit_landmarks
    from facerender.fitting.relinearize import fit_landmarks_relinearized
    from facerender.landmarks.files import read_landmarks
    from facerender.landmarks.metrics import nme

    t = time.perf_counter()
    data = ict_tensor_data(ict)
    t_data = time.perf_counter() - t
    mask = ict.regions["face"].vertex_mask(ict.num_vertices)
    recon = []
    for ranks in ((None, 101, 54), (None, 80, 40), (None, 60, 30), (None, 40, 20), (None, 20, 10), (None, 10, 5),
                  (100, 60, 30), (60, 60, 30)):
        t = time.perf_counter()
        e = reconstruction_error(data, ranks, vertex_mask=mask)
        recon.append({"ranks": [ranks[0] or data.coords.shape[0], ranks[1], ranks[2]], "rms_mm": e["rms_cm"] * 10,
                      "max_face_mm": e["max_cm"] * 10, "seconds": time.perf_counter() - t})
    e = reconstruction_error(data, (None, 60, 30), hooi_iterations=5, vertex_mask=mask)
    recon.append({"ranks": [154, 60, 30], "hooi": 5, "rms_mm": e["rms_cm"] * 10, "max_face_mm": e["max_cm"] * 10})
    faces = shared_data_dir(required=True) / "data" / "faces"
    gt = read_landmarks(next(p for p in faces.iterdir() if p.stem == photo and p.suffix in (".pts", ".ljson")))
    from PIL import Image

    img = next(p for p in faces.iterdir() if p.stem == photo and p.suffix in (".png", ".jpg", ".ppm"))
    W, H = Image.open(img).size
    pts = torch.as_tensor(gt)
    speed = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # both fits are small kernels; one thread is their fastest setting on this machine

    def timed(fn, reps):
        fn()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            r = fn()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts), r

    s, r = timed(lambda: fit_landmarks(ict, pts, (H, W)), 20)
    speed.append({"model": "ICT-FaceKit linear (100 id + 53 blendshapes)", "mode": "-", "ms": s * 1e3,
                  "nme": float(nme(r.landmarks_2d[0].numpy(), gt)), "rounds": 1})
    for ranks in ((None, 60, 30), (None, 101, 54)):
        tm = build_from_ict(ict, ranks, data=data)
        tm.linearize()
        for mode in ("joint", "alternating"):
            s, r = timed(lambda: fit_landmarks_relinearized(tm, pts, (H, W), mode=mode), 3)
            speed.append({"model": f"Tucker 154/{ranks[1]}/{ranks[2]}", "mode": mode, "ms": s * 1e3,
                          "nme": float(nme(r.result.landmarks_2d[0].numpy(), gt)), "rounds": r.rounds})
        t0 = time.perf_counter()
        for _ in range(5):
            tm.linearize(torch.randn(1, ranks[1]) * 0.3, torch.randn(1, ranks[2]) * 0.3)
        speed.append({"model": f"Tucker 154/{ranks[1]}/{ranks[2]}", "mode": "one linearisation (26,719 vertices)",
                      "ms": (time.perf_counter() - t0) / 5 * 1e3, "nme": None, "rounds": None})
    torch.set_num_threads(threads)
    return {"data_seconds": t_data, "reconstruction": recon, "fit_speed": speed}


# ------------------------------------------------------------------------------------------------------------------
# FLAME linearisation vs exact LBS


def bench_flame_linearization(ict, tmp: Path) -> list:
    from morphable_models.flame import load_flame
    from morphable_models.synthetic import write_all_formats

    files = write_all_formats(ict.submodel("face"), tmp / "flame_lin", n_identity=20, n_expression=20)
    m = load_flame(files["flame"]["path"], n_shape=20, n_expression=20, ict_model=ict, dtype=torch.float64)
    lin0 = m.linearize()
    ids = torch.as_tensor(m.landmarks["ibug68"].vertex_index)
    rows = []
    zero = torch.zeros(1, 20, dtype=torch.float64)
    for a in (0.05, 0.1, 0.2, 0.3, 0.4):
        x = torch.zeros(1, 27, dtype=torch.float64)
        x[0, 20] = a
        exact = m.evaluate_linear_coefficients(zero, x)
        approx = lin0(zero, x).vertices
        disp = (exact - m.v_template.double()).norm(dim=-1).max()
        err = (exact - approx).norm(dim=-1)
        # pixels for a face 60 cm from an 800-px focal camera (about a 150-px wide face)
        rows.append({"jaw_rx_rad": a, "max_jaw_motion_mm": float(disp) * 10, "max_error_mm": float(err.max()) * 10,
                     "landmark_error_mm": float(err[0, ids].max()) * 10,
                     "landmark_error_px_at_60cm_f800": float(err[0, ids].max()) * 800 / 60})
    return rows


# ------------------------------------------------------------------------------------------------------------------


def _md(rows, cols):
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join("" if r.get(c) is None else (f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]))
                                     for c in cols) + " |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--photo", default="lenna", help="annotated photo of ../shared/data/faces (stem)")
    ap.add_argument("--skip-fits", action="store_true")
    ap.add_argument("--skip-loading", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    ict = load_ict()
    res = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
                      f"{torch.__version__}, 2 threads"}
    print(f"# bench_models ({res['machine']})\n")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        home = tmp / "home"
        if not args.skip_loading:
            res["loading"] = bench_loading(ict, tmp, home)
            print("## Loading time and memory (synthetic files at the public models' sizes, ICT geometry; "
                  "median of 3 fresh processes)\n")
            print(_md(res["loading"], ["format", "file", "vertices", "components", "file_mb", "load_s",
                                       "of_which_annotations_s", "load_peak_mb", "model_mb", "cached_load_s",
                                       "cached_peak_mb"]) + "\n")
        res["flame_linearization"] = bench_flame_linearization(ict, tmp)
        print("## FLAME: the neutral-pose linearisation (tracking, first fit round) vs exact LBS (synthetic rig on "
              "ICT's face)\n")
        print(_md(res["flame_linearization"], ["jaw_rx_rad", "max_jaw_motion_mm", "max_error_mm", "landmark_error_mm",
                                                "landmark_error_px_at_60cm_f800"]) + "\n")
        res["multilinear"] = bench_multilinear(ict, args.photo)
        print(f"## Multilinear (Tucker) model from ICT-FaceKit: reconstruction of the 101 x 54 meshes "
              f"(data tensor in {res['multilinear']['data_seconds']:.1f} s)\n")
        print(_md(res["multilinear"]["reconstruction"], ["ranks", "hooi", "rms_mm", "max_face_mm", "seconds"]) + "\n")
        print(f"## Landmark fit speed on {args.photo} (annotation as input; median wall time, 1 thread)\n")
        print(_md(res["multilinear"]["fit_speed"], ["model", "mode", "ms", "rounds", "nme"]) + "\n")
        if not args.skip_fits:
            res["fits"] = bench_fits(ict, tmp, home, args.photo)
            print(f"## `facerender fit --model ...` on {args.photo}: landmark NME against the human annotation\n")
            print(_md(res["fits"], ["model", "landmarks", "nme_model_vs_annotation", "nme_detector_vs_annotation",
                                    "fit_s", "cli_wall_s", "photometric_error", "linearization_error_px", "error"]))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
