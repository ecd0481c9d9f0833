"""``facerender track VIDEO -o DIR``: track a video with the installed model and print the stage timings."""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)

_STAGES = (
    ("keyframes", "keyframe pass (decode + detect candidates)"),
    ("bundle", "bundling (identity, albedo)"),
    ("decode", "decode"),
    ("landmarks", "landmarks"),
    ("eyes", "gaze + blink"),
    ("solve", "solve"),
    ("write", "chunk store"),
    ("track_wall", "tracking pass (wall)"),
    ("overlay_render", "overlay render"),
    ("overlay_encode", "overlay encode"),
    ("overlay", "overlay pass (wall)"),
)


def run_track(args) -> int:
    """Run ``facerender track`` from parsed arguments (``video``, ``output``, ``max_frames``, ``size``,
    ``no_overlay``, ``restart``, ``smoothing``, ``smoothing_lambda``, ``home``, ``face_model``). Returns the exit
    status."""
    from ..cli_support import check_input_path
    from ..model_cli import load_pipeline_model
    from .video import SAVGOL_SMOOTHING, TrackConfig, track_video

    check_input_path(args.video, "VIDEO")  # before the model loads
    _, model, notes = load_pipeline_model(getattr(args, "face_model", None), args.home, "track")
    for n in notes:
        print(f"note: {n}")
    tracker_cfg = None
    size = getattr(args, "size", None)
    if size is not None:
        from .tracker import TrackerConfig

        if int(size) < 16:
            raise ValueError(f"--size must be at least 16 pixels, got {size}")
        tracker_cfg = TrackerConfig(size=int(size))
    method = getattr(args, "smoothing", "whittaker")
    smoothing = {"none": dict(smoothing_window=1),
                 "savgol": SAVGOL_SMOOTHING,
                 "whittaker": dict(smoothing="whittaker",
                                   smoothing_lambda=float(getattr(args, "smoothing_lambda", 0.5)))}[method]
    cfg = TrackConfig(tracker=tracker_cfg, **smoothing)  # ValueError on a bad lambda
    from ..cli_support import warn
    from .orientation import orientation_warning, record_orientation, warn_if_turned

    orientation = warn_if_turned(args.video, "the video", args.max_frames)
    res = track_video(args.video, args.output, model, cfg, max_frames=args.max_frames,
                      overlay=not args.no_overlay, resume=not args.restart, progress=True)
    if res.summary_path is not None and orientation is not None:
        res.summary["orientation"] = record_orientation(res.summary_path, orientation, res.frames)
    s = res.summary
    print(f"tracked {res.frames} frames ({res.frames_with_face} with a face) of {args.video} at "
          f"{res.fps:.2f} frames/s" + (f", resumed at frame {res.resumed_from}" if res.resumed_from else ""))
    print("stage timings (s):")
    t = res.timings
    for key, name in _STAGES:
        if key in t:
            print(f"  {name:<44s} {t[key]:9.2f}")
    pf = s.get("per_frame_ms", {})
    print("per frame (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in pf.items()))
    j = s.get("jitter", {})
    if j.get("triples"):
        print(f"landmark jitter (RMS 2nd difference): model {j['model_px']:.2f} px, detector {j['detector_px']:.2f} px "
              f"(ratio {j['ratio']:.2f})")
    ps = s.get("psnr", {})
    if ps.get("other") is not None:
        kf = f"{ps['keyframes']:.2f} dB on the {ps['keyframes_n']} keyframes, " if ps.get("keyframes") else ""
        print(f"photometric PSNR in the face mask: {kf}{ps['other']:.2f} dB on the {ps['other_n']} other frames")
        if ps.get("p10") is not None:
            print(f"  10th percentile over the solved frames: {ps['p10']:.2f} dB")
    a = s.get("audit", {})
    if a.get("within") is not None:
        print(f"on the face: {100 * a['within']:.1f} % of the {a['detected']} audited frames (every "
              f"{a['interval']}th with a fresh detection) within 10 % of the eye distance; worst {100 * a['max']:.1f} %"
              f" (frame {a['worst_frames'][0]})")
    ev = s.get("events", {})
    if ev:
        print(f"lost {ev['lost_frames']} frames ({ev['interpolated']} interpolated), {ev['drops']} tracks dropped, "
              f"{ev['reseeded']} re-seeded, {ev['reinitialised']} solver re-initialisations, "
              f"{ev['photometric_outliers']} photometric outliers")
    flags = s.get("flag_counts", {})
    if flags:
        print("flags: " + ", ".join(f"{k} {v}" for k, v in sorted(flags.items())))
    if orientation is not None and orientation.turned:  # again below the long output
        warn(orientation_warning(orientation, args.video) + " (recorded in summary.json: orientation)")
    print(f"wrote {res.params_path}" + (f", {res.overlay_path}" if res.overlay_path else "")
          + (f", {res.plot_path}" if res.plot_path else "") + f", {res.summary_path}")
    return 0
