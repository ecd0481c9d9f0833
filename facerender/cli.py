"""The ``facerender`` command.

    facerender model install ict-facekit [--from ARCHIVE_OR_FOLDER_OR_URL] [--force]
    facerender model info
    facerender render -o face.png [--expressions jawOpen=1,mouthSmile_L=0.5] [--single]
    facerender fit IMAGE -o DIR
    facerender track VIDEO -o DIR
    facerender reenact --source SRC --target TGT -o DIR
    facerender train dvp --target VIDEO -o RUN
    facerender reenact --method dvp --model RUN --source SRC -o DIR
    facerender train nvp-audio -o AUDIO_RUN; facerender train nvp-render --target VIDEO -o RUN --audio-model AUDIO_RUN
    facerender puppet --audio SPEECH --model RUN -o DIR

Every command takes ``--home`` (the model cache, default ``$FACERENDER_HOME`` or ``~/.cache/facerender``) and
``-v`` for more logging. Outputs are written to temporary files and renamed, so a failed run never leaves a
half-written file.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import List, Optional

log = logging.getLogger("facerender")


def _cmd_model_install(args) -> int:
    from morphable_models import ict

    if args.name != "ict-facekit":
        print(f"unknown model {args.name!r}; available: ict-facekit", file=sys.stderr)
        return 2
    src = args.source
    if src is None:
        d = ict.default_source()
        src_desc = str(d) if d is not None else ict.GITHUB_ARCHIVE_URL
    else:
        src_desc = src
    if not args.force and ict.is_installed(args.home):
        problem = ict.cache_problem(args.home)
        if problem is None:
            print(f"ICT-FaceKit is already installed in {ict.cache_dir(args.home)} (checked); --force reinstalls it")
            return 0
        print(f"the installed ICT-FaceKit is broken ({problem.split('; ')[0]}): reinstalling")
    print(f"installing ICT-FaceKit from {src_desc}")
    import time

    t = time.perf_counter()
    dest = ict.install_ict(src, home=args.home, progress=not args.quiet, force=args.force)
    print(f"installed into {dest} ({time.perf_counter() - t:.1f} s); licence: MIT, see {dest / 'LICENSE'}")
    return 0


def _cmd_model_info(args) -> int:
    from morphable_models import ict

    info = ict.model_info(args.home)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"model        {info['name']}")
    print(f"file         {info['file']} ({info['file_size_mb']} MB; {info['precision']})")
    print(f"licence      {info['license']} ({info['license_file']})")
    print(f"source       {info['source']}")
    print(f"vertices     {info['vertices']}")
    print(f"polygons     {info['polygons']} ({info['triangles']} triangles)")
    print(f"uvs          {info['uvs']} (per corner)")
    print(f"components   identity {info['identity_components']} (PCA, standard-normal), "
          f"expression {info['expression_components']} (blendshapes in [0, 1]), "
          f"extra shapes {', '.join(info['extra_expressions'])}, albedo {info['albedo_components']}")
    print(f"units/axes   {info['units']}; {info['axes']}")
    print("landmarks    " + ", ".join(f"{k} ({n})" for k, n in info["landmark_sets"].items()))
    print("regions      " + ", ".join(f"{k} ({v} v, {f} tri)" for k, (v, f) in info["regions"].items()))
    return 0


def _parse_expressions(text: Optional[str]) -> dict:
    out = {}
    if not text:
        return out
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        from .errors import UsageError

        if "=" not in item:
            raise UsageError(f"--expressions: expected NAME=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = float(v)
        except ValueError:
            raise UsageError(f"--expressions: {k}: {v!r} is not a number") from None
    return out


def _cmd_render(args) -> int:
    from .pipelines.render_model import render_expressions

    exprs = _parse_expressions(args.expressions)
    path = render_expressions(args.output, expressions=exprs or None, size=args.size, home=args.home,
                              yaw=args.yaw, grid=not args.single)
    print(f"wrote {path}")
    return 0


def _cmd_fit(args) -> int:
    from .fitting.cli import run_fit

    return run_fit(args)


def _cmd_track(args) -> int:
    from .tracking.cli import run_track

    return run_track(args)


def _cmd_reenact(args) -> int:
    if args.method != "face2face":
        from neural_renderers.cli import run_reenact_neural

        return run_reenact_neural(args)
    if args.target is None:
        print("facerender reenact: error: --method face2face needs --target VIDEO|TRACK_DIR", file=sys.stderr)
        return 2
    from .reenact.cli import run_reenact

    return run_reenact(args)


#: Suffixes ``facerender render -o`` writes (Pillow picks the format from the suffix).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def build_parser() -> argparse.ArgumentParser:
    from .cli_support import CLIParser, box_type, float_in, int_in, nonnegative_int, positive_float, positive_int

    p = CLIParser(prog="facerender", description=__doc__.split("\n\n")[0],
                  epilog="Errors: one line on stderr and an exit code per class (docs/errors.md).")
    p.add_argument("--home", default=None, help="model cache (default $FACERENDER_HOME or ~/.cache/facerender)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug messages)")
    p.add_argument("--debug", action="store_true",
                   help="print the traceback of an error (also FACERENDER_DEBUG=1; accepted anywhere on the line)")
    sub = p.add_subparsers(dest="command", required=True)

    pm = sub.add_parser("model", help="install / inspect face models")
    msub = pm.add_subparsers(dest="model_command", required=True)
    pi = msub.add_parser("install", help="convert a face model into the cache")
    pi.add_argument("name", choices=["ict-facekit"], help="the model to install (ict-facekit: MIT licence)")
    pi.add_argument("--from", dest="source", default=None,
                    help="archive (.zip/.tar.*), folder (clone) or URL; default: the shared sample archive if "
                         "present, else the official GitHub archive")
    pi.add_argument("--force", action="store_true", help="reinstall even if cached")
    pi.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    pi.set_defaults(func=_cmd_model_install, writes_home=True, home_bytes=64 << 20)  # model.npz is 51 MB
    pinfo = msub.add_parser("info", help="print counts, components, landmark sets, regions, file and licence")
    pinfo.add_argument("--json", action="store_true", help="print the facts as JSON")
    pinfo.set_defaults(func=_cmd_model_info)
    from .model_cli import MODEL_HELP, add_model_commands  # argparse only: imports no torch

    add_model_commands(msub, pinfo, _cmd_model_info)

    pr = sub.add_parser("render", help="render the default model with expressions to a PNG")
    pr.add_argument("-o", "--output", required=True, help="output PNG")
    pr.add_argument("--expressions", default=None,
                    help="comma-separated NAME=WEIGHT (default: a grid of neutral, jawOpen, smile, blink, ...)")
    pr.add_argument("--size", type=int_in(16, 8192), default=256, help="image height and width of each tile")
    pr.add_argument("--yaw", type=float_in(-180, 180), default=0.0, help="head yaw in degrees")
    pr.add_argument("--single", action="store_true", help="one image instead of a grid")
    pr.set_defaults(func=_cmd_render, output_kind="file", output_suffixes=IMAGE_SUFFIXES)

    pf = sub.add_parser("fit", help="fit the model to a photo")
    pf.add_argument("image", help="the photo (.jpg, .png, .ppm ...; gray, RGB or RGBA)")
    pf.add_argument("-o", "--output", required=True, help="output folder")
    pf.add_argument("--landmarks", default=None, help="use these landmarks (.pts / .ljson) instead of detecting")
    pf.add_argument("--face-index", type=nonnegative_int, default=None,
                    help="which detected face (default: the largest)")
    pf.add_argument("--box", type=box_type, default=None, help="face box x0,y0,x1,y1 in pixels")
    pf.add_argument("--no-photometric", action="store_true", help="landmarks only")
    pf.add_argument("--threshold", type=float_in(-3, 3), default=None,
                    help="dlib detection threshold (default -0.2; lower finds weaker faces, and more false ones)")
    pf.add_argument("--upsample", type=int_in(0, 3), default=None,
                    help="dlib detection upsampling (default 0; 1 finds faces half as large, 4x slower)")
    pf.add_argument("--size", type=int_in(32, 2048), default=256, help="resolution of the photometric fit")
    pf.add_argument("--model", "--face-model", dest="face_model", default=None, help=MODEL_HELP)
    pf.set_defaults(func=_cmd_fit)

    pt = sub.add_parser("track", help="track a video (per-frame parameters, overlay video)")
    pt.add_argument("video", help="the video file (.mp4, .mov ...)")
    pt.add_argument("-o", "--output", required=True, help="output folder")
    pt.add_argument("--max-frames", type=positive_int, default=None, help="track only the first N frames")
    pt.add_argument("--size", type=int_in(16, 1024), default=128, help="resolution of the photometric energy")
    pt.add_argument("--no-overlay", action="store_true", help="do not write the overlay video")
    pt.add_argument("--restart", action="store_true", help="ignore a previous partial run in the folder")
    pt.add_argument("--smoothing", choices=["whittaker", "savgol", "none"], default="whittaker",
                    help="landmark smoothing before the solver (savgol: the Savitzky-Golay 5 / order 2 filter of "
                         "earlier releases)")
    pt.add_argument("--smoothing-lambda", type=positive_float, default=0.5,
                    help="weight of the Whittaker smoother's second differences (larger: steadier, slower to follow)")
    pt.add_argument("--model", "--face-model", dest="face_model", default=None, help=MODEL_HELP)
    pt.set_defaults(func=_cmd_track)

    pe = sub.add_parser("reenact", help="transfer the source's expressions (and head pose, gaze: dvp) onto the "
                                        "target video: Face2Face (default) or Deep Video Portraits")
    pe.add_argument("--method", choices=["face2face", "dvp"], default="face2face",
                    help="face2face (model-based, no training) or dvp (Deep Video Portraits: needs --model RUN from "
                         "'facerender train dvp')")
    pe.add_argument("--model", default=None,
                    help="--method dvp: the run folder of 'facerender train dvp'")
    pe.add_argument("--keep-target-pose", action="store_true",
                    help="--method dvp: keep the target's head pose (transfer expression, gaze and blinks only)")
    pe.add_argument("--source", required=True, help="source video or a folder written by 'facerender track'")
    pe.add_argument("--target", default=None,
                    help="target video or a folder written by 'facerender track' (face2face: required; dvp: "
                         "default the run's own target)")
    pe.add_argument("-o", "--output", required=True, help="output folder")
    pe.add_argument("--max-frames", type=positive_int, default=None,
                    help="track only the first N frames of each video and write at most N output frames")
    pe.add_argument("--audio", choices=["auto", "target", "source", "none"], default="auto",
                    help="audio of the output (auto: the video whose length the output follows)")
    pe.add_argument("--length", choices=["source", "target", "shortest"], default="source",
                    help="follow the source's length (the target ping-pongs), the target's, or the shorter")
    pe.add_argument("--transfer-pose", action="store_true", help="also transfer relative head pose")
    pe.add_argument("--mouth", choices=["retrieval", "model"], default="retrieval",
                    help="mouth interior: retrieval (the target's own mouth frame that matches best, warped; "
                         "Face2Face) or model (the face model's mouth rendered)")
    pe.add_argument("--crop-size", type=int_in(32, 2048), default=256, help="side of the face crop rendered per frame")
    pe.add_argument("--face-model", dest="face_model", default=None, help="--method face2face: " + MODEL_HELP)
    pe.set_defaults(func=_cmd_reenact)

    from neural_renderers.cli import add_puppet_parser, add_train_parser  # argparse only: imports no torch

    add_train_parser(sub)
    add_puppet_parser(sub)

    from .metrics.cli import add_parser as add_evaluate_parser  # argparse only: imports no torch

    add_evaluate_parser(sub)

    from .threads import add_threads_option  # argparse only: imports no torch

    add_threads_option(p)  # --threads N before or after any command (docs/benchmarks/threads.md)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``facerender``; returns the exit code (docs/errors.md: one line on stderr per error, ``--debug`` or
    ``FACERENDER_DEBUG=1`` for the traceback)."""
    from .cli_support import debug_requested, run_handler, strip_debug

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    parser = build_parser()
    args = parser.parse_args(strip_debug(argv))
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    from .threads import run_with_threads

    return run_handler(run_with_threads(args.func), args, debug=debug)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
