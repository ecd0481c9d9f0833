"""``facerender evaluate``: the figures of any reenactment method's output video (see docs/evaluation.md).

    facerender evaluate --source S --target T --result R [--reference REAL] [--json OUT] [--max-frames N]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ORDERS = ("auto", "time", "clamp", "loop", "pingpong")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``evaluate`` subcommand (no heavy imports here)."""
    from ..cli_support import positive_int  # argparse types (docs/errors.md)

    p = subparsers.add_parser(
        "evaluate", help="identity / expression / pose / image / seam figures of a reenactment output video",
        description="Evaluate an output video against its source (driver) and target (identity) videos, and a "
                    "real reference when there is one. Videos of different lengths or frame rates are matched "
                    "by time (stated in the output); frames without a face are counted, not fatal.")
    p.add_argument("--source", required=True, help="the driving video")
    p.add_argument("--target", required=True, help="the target (identity) video")
    p.add_argument("--result", required=True, help="the method's output video")
    p.add_argument("--reference", default=None, help="the real video the output should equal (PSNR, SSIM, P_T)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.add_argument("--max-frames", type=positive_int, default=None, help="evaluate the first N output frames")
    p.add_argument("--identity-stride", type=positive_int, default=10, help="descriptors on every N-th output frame")
    p.add_argument("--target-identity-stride", type=positive_int, default=15,
                   help="descriptors on every N-th frame of the target video")
    p.add_argument("--source-order", choices=ORDERS, default="auto",
                   help="how a shorter source continues (auto: loop)")
    p.add_argument("--target-order", choices=ORDERS, default="auto",
                   help="how a shorter target continues (auto: the order whose frames match the output best)")
    p.add_argument("--no-expression", action="store_true", help="skip the 3DMM expression figures")
    p.add_argument("--no-seam", action="store_true", help="skip the seam flicker (two passes fewer)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from .video import EvaluateConfig, evaluate

    cfg = EvaluateConfig(max_frames=args.max_frames, identity_stride=args.identity_stride,
                         target_identity_stride=args.target_identity_stride, source_order=args.source_order,
                         target_order=args.target_order, expression=not args.no_expression, seam=not args.no_seam,
                         home=args.home, progress=not args.quiet)
    ev = evaluate(args.source, args.target, args.result, args.reference, cfg)
    print(ev.table())
    print(f"\n({ev.seconds:.1f} s)")
    if args.json:
        from ..io.atomic import atomic_write

        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(out) as tmp:
            Path(tmp).write_text(json.dumps(ev.to_dict(), indent=1))
        print(f"wrote {out}")
    return 0


__all__ = ["add_parser", "run"]
