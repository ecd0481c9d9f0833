"""Per-frame cost of the Face2Face image-space pieces: reprojection of the current target frame, recolouring,
seamless blending, mouth retrieval and warping, at 256^2 and 512^2.

Usage:  python benchmarks/bench_compositing.py [--sizes 256 512] [--repeats 20] [--rounds 3] [--db 1000]
                                               [--threads 2] [--json out.json]

Scene: ICT-FaceKit (the drawn set of ``conditioning_maps``: everything but eyelashes and eye-occlusion films,
49,548 triangles), framed frontally (``frame_face``, fill 0.9) in a square face crop. The TRACKED target mesh has a
closed mouth with a little smile, the REENACTED mesh opens the jaw (``jawOpen`` 0.5) and smiles, so part of the
render is not visible in the frame (mouth interior, inner lips) and takes the fallback. The frame is a smooth
synthetic picture with noise (timings do not depend on its content). The mouth database holds ``--db`` entries built
from ICT's projected landmarks under random mouth / jaw expressions and small head rotations (noise frames).

Each row is the median of ``--repeats`` runs after 3 warm-up runs; with ``--rounds N`` the lowest of N medians
(the machine is shared: other jobs inflate some rounds). Baselines in the same run: the reenacted render itself
(``render_face``, what the pipeline pays anyway), the UV round trip against the direct reprojection, and an exact
sparse solve (scipy ``spsolve``) of the same Poisson problem against the multigrid solver (``--no-exact`` skips it).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from facerender.reenact.blend import alpha_blend, color_transfer, erode_mask, multiband_blend, poisson_blend
from facerender.reenact.mouth import MouthDatabase
from facerender.reenact.reproject import frame_texture, recolor, reproject_frame, sample_frame_texture
from facerender.render.bake import uv_fragments
from facerender.render.conditioning import SKIPPED_REGIONS, _tables, conditioning_maps, region_albedo
from facerender.render.rasterize import rasterize
from facerender.render.renderer import frame_face, render_face
from morphable_models import load_ict, model_to_camera


from _timing import median_ms  # noqa: E402


def synthetic_frame(size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(size) / size, torch.arange(size) / size, indexing="ij")
    base = torch.stack([0.6 + 0.2 * torch.sin(6 * x), 0.45 + 0.15 * torch.cos(5 * y),
                        0.4 + 0.1 * torch.sin(4 * (x + y))], -1)
    return (base + 0.05 * torch.rand(size, size, 3, generator=g)).clamp(0, 1)[None]


def mouth_landmarks(cx, cy, width, opening, smile=0.0, roll=0.0):
    lm = np.zeros((68, 2))
    for k in range(12):
        a = math.pi - k * math.pi / 6
        lm[48 + k] = (math.cos(a) * width / 2,
                      -math.sin(a) * (0.25 * width + opening / 2) - smile * math.cos(a) ** 2 * width * 0.1)
    for k in range(8):
        a = math.pi - k * math.pi / 4
        lm[60 + k] = (math.cos(a) * width * 0.38, -math.sin(a) * (opening / 2 + 0.02 * width))
    R = np.array([[math.cos(roll), -math.sin(roll)], [math.sin(roll), math.cos(roll)]])
    lm = lm @ R.T + (cx, cy)
    lm[:48] = (cx, cy - width)
    return lm


def build_db(model, n: int, size: int) -> MouthDatabase:
    """``n`` entries from ICT's projected landmarks under random mouth / jaw expressions and small pose changes (the
    frames are noise: the cost does not depend on their content)."""
    names = list(model.expression_names)
    mouth = [i for i, k in enumerate(names) if k.startswith(("jaw", "mouth"))]
    rng = np.random.default_rng(0)
    db = MouthDatabase(expression_names=names)
    cam, R, t = frame_face(model, size)
    chunk = 50
    frames = (rng.random((chunk, size, size, 3)) * 255).astype(np.uint8)
    for start in range(0, n, chunk):
        k = min(chunk, n - start)
        w = torch.zeros(k, len(names))  # jaw opening, smiles and two other mouth shapes per entry
        w[:, names.index("jawOpen")] = torch.from_numpy(rng.random(k) * 0.8).float()
        smile = torch.from_numpy(rng.random(k) * 0.7).float()
        w[:, names.index("mouthSmile_L")] = smile
        w[:, names.index("mouthSmile_R")] = smile
        for j in range(k):
            w[j, rng.choice(mouth, 2)] += torch.from_numpy(rng.random(2) * 0.3).float()
        rot = torch.from_numpy(rng.normal(0, 0.05, (k, 3))).float()
        with torch.no_grad():
            X = model_to_camera(model(expression=w).vertices, rot, t.expand(k, 3))
            lms = cam.project(model.landmarks["ibug68"].gather(X)).numpy()
        db.add_frames(frames[:k], lms, w.numpy())
    return db


def exact_poisson_ms(src, tgt, mask) -> float:
    """The same guided Poisson problem solved exactly with scipy (sparse LU), one channel at a time."""
    import scipy.sparse as sp
    import scipy.sparse.linalg as spl

    t0 = time.perf_counter()
    om = erode_mask(mask[0], 2).numpy()
    d = (tgt[0] - src[0]).numpy().astype(np.float64)
    H, W = om.shape
    idx = -np.ones((H, W), int)
    ids = np.flatnonzero(om)
    idx.flat[ids] = np.arange(len(ids))
    ys, xs = np.divmod(ids, W)
    rows, cols = [], []
    rhs = np.zeros((len(ids), 3))
    diag = np.zeros(len(ids))
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        yy, xx = ys + dy, xs + dx
        inimg = (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
        diag += inimg
        nid = np.where(inimg, idx[yy.clip(0, H - 1), xx.clip(0, W - 1)], -1)
        unk = inimg & (nid >= 0)
        rows.append(np.arange(len(ids))[unk]); cols.append(nid[unk])
        known = inimg & (nid < 0)
        rhs[known] += d[yy[known], xx[known]]
    r = np.concatenate(rows + [np.arange(len(ids))])
    c = np.concatenate(cols + [np.arange(len(ids))])
    v = np.concatenate([-np.ones(len(r) - len(ids)), diag])
    A = sp.csc_matrix((v, (r, c)), shape=(len(ids), len(ids)))
    spl.splu(A).solve(rhs)
    return (time.perf_counter() - t0) * 1e3


def bench_size(model, faces, faces_uv, size: int, args, db: MouthDatabase) -> list:
    names = list(model.expression_names)
    cam, R, t = frame_face(model, size)
    w_t = torch.zeros(1, len(names))
    w_t[0, names.index("mouthSmile_L")] = w_t[0, names.index("mouthSmile_R")] = 0.2
    w_r = w_t.clone()
    w_r[0, names.index("jawOpen")] = 0.5
    w_r[0, names.index("mouthSmile_L")] = w_r[0, names.index("mouthSmile_R")] = 0.5
    out_t, out_r = model(expression=w_t), model(expression=w_r)
    albedo = region_albedo(model)
    frame = synthetic_frame(size)
    with torch.no_grad():
        tracked = cam.to_screen(model_to_camera(out_t.vertices, R, t))
        rr = render_face(out_r.vertices, faces, cam, R, t, albedo, antialias=False)
        tracked_fr = rasterize(tracked, faces, (size, size))
        rep = reproject_frame(frame, rr.fragments, tracked, tracked_fragments=tracked_fr)
        face = recolor(rep.colors, rep.valid, rr.image, rr.mask)
        lm_r = cam.project(model.landmarks["ibug68"].gather(model_to_camera(out_r.vertices, R, t)))[0].numpy()
        uv_maps = conditioning_maps(model, out_r, cam, R, t, maps=("uv", "uv_tile"))
        uvr = uv_fragments(model.uvs, faces_uv, 256, tile=0)
    # the database was built at 256^2: bring the query landmarks into its frame size
    lm_q = lm_r * (256.0 / size)
    match = db.query(lm_q, w_r[0])
    if match is None:
        raise RuntimeError("the benchmark's mouth query found no entry within max_cost")
    seq_lm = np.stack([lm_q + np.random.default_rng(i).normal(0, 0.3, lm_q.shape) for i in range(100)])
    seq_ex = w_r.expand(100, -1)
    mask = rr.mask
    rows = []

    def row(group, piece, fn, note=""):
        with torch.no_grad():
            ms = min(median_ms(fn, args.repeats) for _ in range(args.rounds))
        rows.append(dict(size=size, group=group, piece=piece, ms=ms, note=note))
        print(f"{size}^2  {group:10s} {piece:46s} {ms:8.2f} ms  {note}", flush=True)
        return ms

    def render():
        return render_face(out_r.vertices, faces, cam, R, t, albedo, antialias=False)

    row("baseline", "render_face (reenacted, not antialiased)", render, "paid by the pipeline anyway")
    row("reproject", "tracked z-buffer (rasterize)", lambda: rasterize(tracked, faces, (size, size)),
        "skip by passing tracked_fragments")
    row("reproject", "reproject_frame (tracked_fragments given)",
        lambda: reproject_frame(frame, rr.fragments, tracked, tracked_fragments=tracked_fr))
    row("reproject", "recolor (gain-matched fallback, feather 3)",
        lambda: recolor(rep.colors, rep.valid, rr.image, rr.mask))
    row("reproject", "UV path: frame_texture 256^2 (uv raster cached)",
        lambda: frame_texture(frame[0], tracked[0], faces, model.uvs, faces_uv, 256, uv_raster=uvr),
        "baseline of the direct path")
    tex, tvalid = frame_texture(frame[0], tracked[0], faces, model.uvs, faces_uv, 256, uv_raster=uvr)
    row("reproject", "UV path: sample_frame_texture",
        lambda: sample_frame_texture(tex, tvalid, uv_maps["uv"], uv_maps["uv_tile"][..., 0] == 0))
    row("blend", "poisson_blend, pull-push only (iterations=0)", lambda: poisson_blend(face, frame, mask, iterations=0))
    row("blend", "poisson_blend, 1 V-cycle (default)", lambda: poisson_blend(face, frame, mask))
    row("blend", "poisson_blend, 2 V-cycles", lambda: poisson_blend(face, frame, mask, iterations=2))
    row("blend", "poisson_blend mixed, 2 V-cycles",
        lambda: poisson_blend(face, frame, mask, mixed=True, iterations=2))
    row("blend", "multiband_blend", lambda: multiband_blend(face, frame, mask))
    row("blend", "alpha_blend (feather 4)", lambda: alpha_blend(face, frame, mask))
    row("blend", "color_transfer meanstd (YCbCr)", lambda: color_transfer(face, frame, mask))
    row("blend", "color_transfer gain", lambda: color_transfer(face, frame, mask, mode="gain"))
    if args.exact and size <= 256:
        ms = min(exact_poisson_ms(face, frame, mask) for _ in range(2))
        rows.append(dict(size=size, group="blend", piece="exact Poisson (scipy splu, 3 channels)", ms=ms,
                         note="baseline of the multigrid solver"))
        print(f"{size}^2  blend      exact Poisson (scipy splu)  {ms:8.2f} ms", flush=True)
    row("mouth", f"query (online, {len(db)} entries)", lambda: db.query(lm_q, w_r[0], previous=match))
    row("mouth", f"retrieve (beam Viterbi, {len(db)} entries), per frame",
        lambda: db.retrieve(seq_lm[:20], seq_ex[:20]), "timed over 20 frames, shown / 20")
    rows[-1]["ms"] /= 20
    print(f"        -> {rows[-1]['ms']:.2f} ms per frame")
    row("mouth", "warp (TPS + grid_sample + inner-lip alpha)", lambda: db.warp(match, lm_r, (size, size)))
    wp = db.warp(match, lm_r, (size, size))
    row("mouth", "composite (alpha over the blended frame)",
        lambda: torch.lerp(frame[0], wp.image, wp.alpha[..., None]))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=1, help="rounds per row; the lowest median is kept")
    ap.add_argument("--db", type=int, default=1000, help="mouth database entries")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-exact", dest="exact", action="store_false", help="skip the scipy Poisson baseline")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_ict()
    tables = _tables(model, SKIPPED_REGIONS, "cpu", torch.float32)
    faces, faces_uv = tables.faces, tables.faces_uv
    t0 = time.perf_counter()
    db = build_db(model, args.db, 256)
    build_ms = (time.perf_counter() - t0) * 1e3 / args.db
    print(f"mouth database: {len(db)} entries, {db.memory_bytes / 2**20:.1f} MiB, built in {build_ms:.2f} ms per "
          f"frame (256^2 frames)\n", flush=True)
    rows = []
    for size in args.sizes:
        rows += bench_size(model, faces, faces_uv, size, args, db)
    load = os.getloadavg()
    print()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} "
          f"threads, torch {torch.__version__}; median of {args.repeats} runs after 3 warm-up runs"
          + (f", lowest of {args.rounds} rounds" if args.rounds > 1 else "")
          + f"; load average at the end {load[0]:.2f}")
    print()
    sizes = args.sizes
    print("| group | piece | " + " | ".join(f"{s}^2 ms" for s in sizes) + " | note |")
    print("|---|---|" + "---|" * len(sizes) + "---|")
    seen = []
    for r in rows:
        key = (r["group"], r["piece"])
        if key in seen:
            continue
        seen.append(key)
        cells = []
        for s in sizes:
            m = [x for x in rows if x["size"] == s and (x["group"], x["piece"]) == key]
            cells.append(f"{m[0]['ms']:.2f}" if m else "-")
        print(f"| {r['group']} | {r['piece']} | " + " | ".join(cells) + f" | {r['note']} |")
    default_chain = ("tracked z-buffer (rasterize)", "reproject_frame (tracked_fragments given)",
                     "recolor (gain-matched fallback, feather 3)", "poisson_blend, 1 V-cycle (default)",
                     f"query (online, {len(db)} entries)", "warp (TPS + grid_sample + inner-lip alpha)",
                     "composite (alpha over the blended frame)")
    totals = []
    for s in sizes:
        tot = sum(x["ms"] for x in rows if x["size"] == s and x["piece"] in default_chain)
        totals.append(f"{tot:.1f}")
    print("| total | default chain (z-buffer, reproject, recolor, Poisson, query, warp, composite) | "
          + " | ".join(totals) + " | |")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(
            machine=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
            torch=torch.__version__, repeats=args.repeats, rounds=args.rounds, db_entries=len(db),
            db_build_ms_per_frame=build_ms, rows=rows), indent=1))


if __name__ == "__main__":
    main()
