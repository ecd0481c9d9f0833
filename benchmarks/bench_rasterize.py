"""Benchmark the rasterizer chain on the ICT face: the torch backend against the in-repo reference, same run.

Usage:  python benchmarks/bench_rasterize.py [--repeats 20] [--ref-repeats 3] [--rounds 1] [--quick]
                                             [--json out.json] [--sizes 256 512] [--batches 1 8]
                                             [--meshes face head]

The timed chain (what a fitting step does) starts from screen-space vertices that require grad:
rasterize -> interpolate -> shading -> composite over a background -> antialias -> L2 loss against a fixed target
-> backward to the screen vertices. Shading (``--shading``):

* ``vertex`` (default; Gouraud): per-vertex colour ``albedo * (0.2 + 0.8 * max(n . l, 0))`` from fixed camera-space
  vertex normals, then ONE interpolation (C = 3);
* ``pixel``: albedo and normal interpolated separately (C = 3 each), the normal renormalised per pixel, Lambert per
  pixel (more dense per-pixel work: about 2 ms more at 256^2, batch 1).
"forward" stops after the loss, "fwd+bwd" includes the backward pass. Medians of ``--repeats`` runs after warm-up
for the torch backend, of ``--ref-repeats`` runs (1 warm-up) for the reference. The ICT model is posed frontally
(``model_to_camera`` with zero rotation, 60 cm away) and projected with a pinhole camera whose focal length makes the
mesh span 90 % of the image height. Torch runs with 2 threads (the reference machine has 2 cores).

``--rounds N`` repeats each torch measurement N times (spread over the run) and keeps the lowest median: on a shared
machine other processes inflate some rounds; the table says how many rounds were taken.

``--quick`` runs the reference at batch 1 only: the batch-8 rows show 8 x the reference's batch-1 time at the same
size (it loops over the batch items, so its cost is linear in the batch), marked "~" and "extrap.".
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from facerender.render.antialias import antialias
from facerender.render.interpolate import interpolate
from facerender.render.rasterize import rasterize
from morphable_models import load_ict, model_to_camera, vertex_normals

DISTANCE_CM = 60.0


def frontal_screen(model, B: int, size: int):
    """Screen-space vertices ``(B, V, 3)`` of the neutral model, frontal, spanning 90 % of the image height."""
    verts = model().vertices
    X = model_to_camera(verts, rotation=torch.zeros(1, 3), translation=torch.tensor([[0.0, 0.0, DISTANCE_CM]]))
    u, v = X[..., 0] / X[..., 2], X[..., 1] / X[..., 2]
    f = 0.9 * size / float(v.max() - v.min())
    cx = size / 2 - f * float(u.max() + u.min()) / 2
    cy = size / 2 - f * float(v.max() + v.min()) / 2
    sv = torch.stack([f * u + cx, f * v + cy, X[..., 2]], -1)
    normals = vertex_normals(X, model.faces)  # camera-space normals
    return sv.expand(B, -1, -1).contiguous(), normals.expand(B, -1, -1).contiguous()


def make_chain(model, B: int, size: int, backend: str, shading: str = "vertex"):
    sv, normals = frontal_screen(model, B, size)
    gen = torch.Generator().manual_seed(0)
    albedo = 0.3 + 0.6 * torch.rand(1, sv.shape[1], 3, generator=gen)
    light = torch.tensor([0.2, -0.3, -1.0])
    light = light / light.norm()  # towards the camera (camera looks along +z)
    background = torch.tensor([0.1, 0.2, 0.4])
    target = torch.rand(B, size, size, 3, generator=gen)
    faces = model.faces

    def forward(requires_grad: bool = True):
        x = sv.detach().requires_grad_(requires_grad)
        fr = rasterize(x, faces, (size, size), backend=backend)
        if shading == "pixel":
            a = interpolate(albedo, fr)
            n = torch.nn.functional.normalize(interpolate(normals, fr), dim=-1)
            shade = a * (0.2 + 0.8 * (n @ light).clamp(min=0))[..., None]
        else:
            shade = interpolate(albedo * (0.2 + 0.8 * (normals @ light).clamp(min=0))[..., None], fr)
        img = torch.where(fr.mask[..., None], shade, background)
        out = antialias(img, fr)
        return x, (out - target).square().mean()

    def fwd():
        forward()

    def fwd_bwd():
        x, loss = forward()
        loss.backward()
        return x.grad

    return fwd, fwd_bwd, sv


from _timing import median_ms  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--ref-repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1, help="torch rounds per row; the lowest median is kept")
    ap.add_argument("--quick", action="store_true", help="reference at batch 1 only (batch rows extrapolated)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--meshes", nargs="+", default=["face", "head"], choices=["face", "head"])
    ap.add_argument("--shading", default="vertex", choices=["vertex", "pixel"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    full = load_ict()
    models = {"face": full.submodel("face"), "head": full}
    rows = []
    ref_base = {}  # (mesh, size) -> reference ms per batch item from the measured batch-1 row
    for mesh in args.meshes:
        model = models[mesh]
        for size in args.sizes:
            for B in args.batches:
                fwd, fwd_bwd, _ = make_chain(model, B, size, "torch", args.shading)
                t_f = min(median_ms(fwd, args.repeats, warmup=3) for _ in range(args.rounds))
                t_fb = min(median_ms(fwd_bwd, args.repeats, warmup=3) for _ in range(args.rounds))
                if args.quick and B > 1 and (mesh, size) in ref_base:
                    r_f, r_fb = (x * B for x in ref_base[(mesh, size)])
                    ref_note = "extrap."
                else:
                    rf, rfb, _ = make_chain(model, B, size, "reference", args.shading)
                    r_f = median_ms(rf, args.ref_repeats, warmup=1)
                    r_fb = median_ms(rfb, args.ref_repeats, warmup=1)
                    ref_note = f"median of {args.ref_repeats}"
                    ref_base[(mesh, size)] = (r_f / B, r_fb / B)
                rows.append(dict(mesh=mesh, triangles=int(model.faces.shape[0]), size=size, batch=B,
                                 torch_fwd_ms=t_f, torch_fwd_bwd_ms=t_fb, ref_fwd_ms=r_f, ref_fwd_bwd_ms=r_fb,
                                 ref_note=ref_note, images_per_s=1e3 * B / t_fb))
                print(f"{mesh} {size} B={B}: torch {t_f:.1f}/{t_fb:.1f} ms, reference {r_f:.0f}/{r_fb:.0f} ms "
                      f"({ref_note})", flush=True)
    print()
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; {args.shading} shading; "
          f"torch: median of {args.repeats} runs after 3 warm-up runs"
          + (f", lowest of {args.rounds} rounds" if args.rounds > 1 else "")
          + f"; reference: median of {args.ref_repeats} after 1 warm-up")
    print()
    print("| mesh (triangles) | image | batch | torch fwd ms | torch fwd+bwd ms | reference fwd ms "
          "| reference fwd+bwd ms | speed-up fwd+bwd | images/s (torch, fwd+bwd) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mark = "~" if r["ref_note"] == "extrap." else ""
        print(f"| {r['mesh']} ({r['triangles']:,}) | {r['size']}^2 | {r['batch']} | {r['torch_fwd_ms']:.1f} "
              f"| {r['torch_fwd_bwd_ms']:.1f} | {mark}{r['ref_fwd_ms']:.0f} | {mark}{r['ref_fwd_bwd_ms']:.0f} "
              f"| {mark}{r['ref_fwd_bwd_ms'] / r['torch_fwd_bwd_ms']:.0f}x | {r['images_per_s']:.0f} |")
    if any(r["ref_note"] == "extrap." for r in rows):
        print("\n~ reference not run: batch-1 time at the same size x batch (the reference loops over the batch).")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(
            machine=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
            torch=torch.__version__, shading=args.shading, repeats=args.repeats, ref_repeats=args.ref_repeats,
            rounds=args.rounds, rows=rows), indent=1))


if __name__ == "__main__":
    main()
