"""``facerender reenact --source SRC --target TGT -o DIR`` (Face2Face)."""
from __future__ import annotations

from pathlib import Path


def run_reenact(args) -> int:
    from ..model_cli import load_pipeline_model
    from .face2face import Face2FaceConfig, face2face

    from ..cli_support import check_video_or_track
    from .common import audio_warning

    check_video_or_track(args.source, "--source")  # before the model loads
    check_video_or_track(args.target, "--target")
    cfg = Face2FaceConfig(crop_size=args.crop_size, transfer_pose=args.transfer_pose, length=args.length,
                          audio=args.audio, mouth=args.mouth, max_frames=args.max_frames)
    note = audio_warning(args.audio, args.length, args.source, args.target)
    if note:
        from ..cli_support import warn

        warn(note)
    from ..tracking.orientation import warn_if_turned

    warn_if_turned(args.source, "the source", args.max_frames)
    warn_if_turned(args.target, "the target", args.max_frames)
    _, model, notes = load_pipeline_model(getattr(args, "face_model", None), args.home, "reenact")
    for n in notes:
        print(f"note: {n}")
    res = face2face(args.source, args.target, args.output, model, cfg, progress=True)
    t = res.timings
    n = max(res.frames, 1)
    tfps = res.summary.get("tracking_fps", {}) or {}

    def tracked(name: str) -> str:
        f = tfps.get(name)
        return (f"{name} {t['track_' + name]:.1f} s ({f:.1f} frames/s)" if f
                else f"{name}: reused its track folder")

    print(f"tracking (keyframes, bundling, per-frame solve): {tracked('source')}, {tracked('target')}")
    per = {k: t[k] / n * 1e3 for k in ("decode", "transfer", "render", "composite", "encode")}
    total = sum(per.values())
    print("reenactment per frame: " + ", ".join(f"{k} {v:.1f} ms" for k, v in per.items())
          + f" = {total:.1f} ms ({1e3 / total:.1f} fps at a {cfg.crop_size}^2 face crop; loop {res.fps:.1f} fps)")
    print(f"wrote {res.result_path}")
    if res.side_by_side_path is not None:
        print(f"wrote {res.side_by_side_path}")
    for p in res.stills:
        print(f"wrote {p}")
    print(f"wrote {res.out_dir / 'summary.json'}")
    for name, folder in (("source", res.source_track), ("target", res.target_track)):
        if Path(folder).resolve().parent == Path(res.out_dir).resolve():  # tracked here (not a reused folder)
            files = sorted(f.name for f in Path(folder).iterdir() if f.is_file())
            print(f"wrote {folder}/ (the {name} track: {', '.join(files)})")
    return 0
