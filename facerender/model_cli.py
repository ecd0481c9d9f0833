"""``facerender model info [MODEL]``, ``model convert``, ``model build-multilinear``, and ``--model`` for the
pipelines.

    facerender model info                          # the installed ICT-FaceKit (as before)
    facerender model info FILE_OR_NAME [--json]    # any format: BFM 2009/2017, Deep3DFaceRecon, FLAME, eos, cached
    facerender model convert FILE --name NAME [--expression F] [--landmarks F] [--contours F] [--blendshapes F]
                                              [--masks F] [--n-identity K] [--n-expression K] [--force]
    facerender model build-multilinear [--name ict-multilinear] [--ranks R_ID R_EXP] [--vertex-rank R_V]
    facerender fit|track|reenact ... --model FILE_OR_NAME

This module imports nothing heavy at import time (the parser is built for ``facerender --help``).
"""
from __future__ import annotations

import argparse
import json
import logging
import time

from .cli_support import nonnegative_int, positive_int  # argparse types; no torch

log = logging.getLogger(__name__)

MODEL_HELP = ("face model: 'ict-facekit' (default), a name converted with 'facerender model convert', or a model "
              "file (BFM 2009/2017 .mat/.h5, Deep3DFaceRecon BFM_model_front.mat, FLAME .pkl, eos/Surrey .bin)")
ICT_EYE_SHAPES = ("eyeBlink_L", "eyeBlink_R", "eyeLookUp_L", "eyeLookUp_R", "eyeLookDown_L", "eyeLookDown_R",
                  "eyeLookIn_L", "eyeLookIn_R", "eyeLookOut_L", "eyeLookOut_R")


def _load_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--expression", default=None,
                   help="BFM 2009 expression add-on (Exp_Pca.bin with std_exp.txt and BFM_exp_idx.mat beside it, or "
                        "a .npz)")
    p.add_argument("--landmarks", dest="landmark_file", default=None,
                   help="landmark embedding: eos ibug_to_*.txt, FLAME landmark_embedding.npy or "
                        "flame_static_embedding.pkl (else derived from ICT-FaceKit)")
    p.add_argument("--contours", default=None, help="eos model_contours.json (jaw contours)")
    p.add_argument("--blendshapes", default=None, help="eos expression blendshape file (.bin)")
    p.add_argument("--masks", default=None, help="FLAME_masks.pkl (regions)")
    p.add_argument("--n-identity", type=positive_int, default=None, help="identity / shape components kept")
    p.add_argument("--n-expression", type=positive_int, default=None, help="expression components kept")


def load_options(args) -> dict:
    """Loader keyword arguments from parsed ``_load_options`` arguments (only those given)."""
    out = {}
    for a, k in (("expression", "expression"), ("landmark_file", "landmarks"), ("contours", "contours"),
                 ("blendshapes", "blendshapes"), ("masks", "masks")):
        v = getattr(args, a, None)
        if v is not None:
            out[k] = v
    for a, k_bfm, k_flame in (("n_identity", "n_identity", "n_shape"), ("n_expression", "n_expression",
                                                                          "n_expression")):
        v = getattr(args, a, None)
        if v is not None:
            out["__" + a] = (k_bfm, k_flame, v)
    return out


def _apply_counts(spec, opts: dict, home) -> dict:
    """Map --n-identity / --n-expression to the loader's keyword (FLAME calls the identity 'shape')."""
    from morphable_models.store import _resolve

    out = {k: v for k, v in opts.items() if not k.startswith("__")}
    counts = {k: v for k, v in opts.items() if k.startswith("__")}
    if counts:
        fmt, _ = _resolve(spec, home)
        for _, (k_lin, k_flame, v) in counts.items():
            out[k_flame if fmt == "flame" else k_lin] = v
    return out


# ------------------------------------------------------------------------------------------------------------------
# pipelines


def load_pipeline_model(spec, home=None, purpose: str = "fit", **options):
    """Load ``spec`` for ``facerender fit|track|reenact`` and check what the pipeline needs.

    Returns ``(model, linear, notes)``: the loaded model, the :class:`LinearFaceModel` the pipeline consumes (the
    model itself, or a FLAME / multilinear model's linearisation at its neutral point) and notes for the user about
    what degrades (no ICT eye blendshapes: no gaze/blink; no mouth interior; no UVs).
    Raises :class:`~morphable_models.errors.ModelFileError` when a required landmark set or region is missing.
    """
    from morphable_models.errors import ModelFileError
    from morphable_models.store import as_linear, load_model

    model = load_model(spec, home=home, **options)
    linear = as_linear(model)
    where = spec or "ict-facekit"
    lm = linear.landmarks.get("ibug68")
    if lm is None or not lm.is_vertex_set:
        raise ModelFileError(f"{where}: the fitter needs the 'ibug68' landmark set as mesh vertices; the model has "
                             f"{sorted(linear.landmarks)}")
    missing = [n for n in ("jawline_right_extended", "jawline_left_extended") if n not in linear.landmarks]
    if missing:
        raise ModelFileError(f"{where}: the sliding jaw contour needs the landmark sets {missing}; pass the model's "
                             f"contour file (--contours) or install ICT-FaceKit so they can be derived")
    if "face" not in linear.regions:
        raise ModelFileError(f"{where}: the model has no 'face' region (regions: {sorted(linear.regions)})")
    notes = []
    if linear is not model:
        kind = type(model).__name__
        if purpose == "fit":
            notes.append(f"{kind}: fitted by re-linearisation (Gauss-Newton on the exact model; "
                         f"see docs/models.md)")
        else:
            notes.append(f"{kind}: {purpose} uses its linearisation at the neutral point (jaw/eye rotations and the "
                         f"identity x expression interaction to first order; docs/models.md measures the error)")
    if purpose in ("track", "reenact"):
        absent = [n for n in ICT_EYE_SHAPES if n not in linear.expression_names]
        if absent:
            notes.append(f"the model has no ICT eye blendshapes ({', '.join(absent[:4])}, ...): the eye tracker's "
                         f"gaze and blink estimates are not applied; the expression coefficients follow the eyelid "
                         f"landmarks only")
    if purpose == "reenact" and not any(r in linear.regions for r in ("mouth_socket", "mouth_interior",
                                                                        "gums_and_tongue", "teeth")):
        notes.append("the model has no mouth-interior region: nothing is rendered inside the mouth; with "
                     "--mouth retrieval (default) the target's own mouth fills the opening")
    if purpose == "fit" and linear.uvs is None:
        notes.append("the model has no texture coordinates: mesh.obj gets per-vertex colours from the photo instead "
                     "of a texture")
    return model, linear, notes


# ------------------------------------------------------------------------------------------------------------------
# commands


def cmd_info(args, fallback) -> int:
    """``facerender model info [MODEL]``; without MODEL the ICT-FaceKit summary (``fallback``)."""
    spec = getattr(args, "model", None)
    if spec is None or spec == "ict-facekit":
        return fallback(args)
    from morphable_models.store import model_info

    info = model_info(spec, home=args.home, **_apply_counts(spec, load_options(args), args.home))
    if args.json:
        print(json.dumps(info, indent=1, default=str))
        return 0
    for k, v in info.items():
        if isinstance(v, dict) and k in ("regions", "landmark_sets"):
            v = ", ".join(f"{a} ({b[0]} v, {b[1]} tri)" if isinstance(b, list) else f"{a} ({b})" for a, b in v.items())
        elif isinstance(v, dict):
            v = json.dumps(v, default=str)
        print(f"{k:<22s} {v}")
    return 0


def cmd_convert(args) -> int:
    from morphable_models.store import check_name, convert_model, models_dir

    from .errors import UsageError

    try:
        check_name(args.name)  # before the (long) conversion
    except ValueError as e:
        raise UsageError(f"--name: {e}") from None
    from .errors import OutputError

    dest = models_dir(args.home) / args.name
    if dest.exists() and not args.force:
        raise OutputError(f"{dest} exists; pass --force to replace it")
    t = time.perf_counter()
    out = convert_model(args.source, args.name, args.home, **_apply_counts(args.source, load_options(args),
                                                                          args.home))
    print(f"converted {args.source} into {out} ({time.perf_counter() - t:.1f} s); use it with --model {args.name}")
    print(f"licence notice kept in {out / 'LICENSE'}")
    return 0


def cmd_build_multilinear(args) -> int:
    from morphable_models import load_ict
    from morphable_models.multilinear import build_from_ict, ict_tensor_data, reconstruction_error
    from morphable_models.store import save_model

    t = time.perf_counter()
    ict = load_ict(args.home)
    data = ict_tensor_data(ict)
    ranks = (args.vertex_rank, args.ranks[0], args.ranks[1])
    model = build_from_ict(ict, ranks, hooi_iterations=args.hooi, data=data, name=args.name)
    err = reconstruction_error(data, ranks, args.hooi)
    model.extra["reconstruction_rms_cm"] = err["rms_cm"]
    dest = save_model(model, args.name, args.home, source="ICT-FaceKit (higher-order SVD)")
    S = data.coords.shape[0]
    print(f"built a Tucker model of ICT-FaceKit's {data.coords.shape[1]} identities x {data.coords.shape[2]} "
          f"expressions: ranks (vertex, identity, expression) = ({args.vertex_rank or S}, {args.ranks[0]}, "
          f"{args.ranks[1]}); RMS reconstruction error {err['rms_cm'] * 10:.4f} mm over all meshes "
          f"({time.perf_counter() - t:.1f} s)")
    print(f"wrote {dest}; use it with --model {args.name}")
    return 0


def add_model_commands(msub, info_parser, info_fallback) -> None:
    """Register ``convert`` and ``build-multilinear`` under ``facerender model`` and give ``info`` a MODEL
    argument (``info_fallback(args)`` keeps the ICT-FaceKit summary when none is given)."""
    info_parser.add_argument("model", nargs="?", default=None, help=MODEL_HELP)
    _load_options(info_parser)
    info_parser.set_defaults(func=lambda args: cmd_info(args, info_fallback))

    pc = msub.add_parser("convert", help="convert a model file (any format) into the cache under a name")
    pc.add_argument("source", help="model file: BFM 2009/2017, Deep3DFaceRecon, FLAME, eos/Surrey")
    pc.add_argument("--name", required=True, help="name to use with --model")
    pc.add_argument("--force", action="store_true", help="replace an existing model of that name")
    _load_options(pc)
    pc.set_defaults(func=cmd_convert, writes_home=True)

    pb = msub.add_parser("build-multilinear",
                         help="build a multilinear (Tucker) identity x expression model from ICT-FaceKit (HOSVD)")
    pb.add_argument("--name", default="ict-multilinear", help="name to use with --model")
    pb.add_argument("--ranks", type=positive_int, nargs=2, default=(60, 30), metavar=("R_ID", "R_EXP"),
                    help="identity and expression modes kept (ICT has 101 and 54)")
    pb.add_argument("--vertex-rank", type=positive_int, default=None, help="vertex modes kept (default all: 154)")
    pb.add_argument("--hooi", type=nonnegative_int, default=0, help="HOOI refinement iterations after the HOSVD")
    pb.set_defaults(func=cmd_build_multilinear, writes_home=True)
