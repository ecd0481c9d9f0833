"""Track the speech clips of ``shared/data/speech`` for Neural Voice Puppetry (reproducible, resumable).

What it writes into ``--out`` (a folder OUTSIDE the repository; the tracks are data, not code):

* ``grid_s1/concat.mp4``: the chosen GRID s1 clips, one after the other (video only, 25 fps, x264 CRF 14), and
  ``grid_s1/track/``: its track (``params.npz``, ``summary.json``, ``energy_fps.png``). One track per speaker: the
  tracker's bundling (identity, albedo, camera) runs once for the speaker instead of once per 3-second clip (12 s of
  the 33 s a clip takes alone), and every clip of the speaker shares one identity, so that the expression coefficients
  of all clips live in the same space (what the per-identity linear map of Audio2ExpressionNet assumes).
* ``grid_s1/concat_speech.mp4``: the same video (its packets copied) with the clips' sound, each clip's audio cut or
  padded to its frames' duration so that sound and frames stay aligned across the cuts: a target video with speech
  for ``facerender train nvp-render`` (its track is ``grid_s1/track``; the track fits it as it fits concat.mp4).
* ``grid_multi/<clip>/track/``: each of the nine other speakers' single clip, tracked alone.
* ``manifest.json``: per speaker the track file and its clips in timeline order: clip name, source video (relative
  to the data folder), first frame in the track, frame count, and the split of every frame.

Subset and split (``--s1-clips``, default 200 of the 600 s1 clips, ``--seed`` 0):
GRID's file names carry the sentence, not the recording time, so the speaker's timeline is defined here: a seeded
random choice of ``--s1-clips`` clips in a seeded random order (every command word, colour, letter and digit lands
in both parts). The last 20 % of each speaker's timeline is held out: for s1 the last 20 % of the chosen clips (whole
clips), for each grid_multi speaker the last 20 % of the frames of its one clip. Audio is NOT stored: the dataset
(``neural_renderers.nvp.data``) reads it from the source clips, so the features can change without re-tracking.

Clip boundaries inside the s1 track: the landmark smoother restarts at a fresh detection, and GRID sentences begin and
end in silence with the mouth closed, so the cut costs at most a frame or two of smoothing across the boundary.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/prepare_speech_tracks.py --out ../nvp_tracks [--s1-clips 200] [--seed 0]
        [--data ../shared/data/speech] [--skip-multi] [--threads 1]

Run it again to resume: finished tracks are kept, an interrupted track resumes where it stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HOLDOUT_FRACTION = 0.2
MANIFEST_VERSION = 1


def _speech_dir(arg) -> Path:
    if arg:
        return Path(arg)
    from morphable_models.paths import shared_data_dir

    d = shared_data_dir()
    if d is None:
        raise SystemExit("the shared data folder is missing: pass --data or set FACERENDER_DATA")
    return d / "data" / "speech"


def choose_s1(names, n: int, seed: int):
    """The s1 timeline: ``n`` of the sorted clip names chosen and ordered by a seeded permutation."""
    names = sorted(names)
    if not 1 <= n <= len(names):
        raise SystemExit(f"--s1-clips must lie in [1, {len(names)}], got {n}")
    order = np.random.default_rng(seed).permutation(len(names))[:n]
    return [names[i] for i in order]


def concat_clips(paths, out_path: Path, crf: float = 14):
    """Write the clips' frames one after the other; return the frame count of each clip."""
    from facerender.io import VideoReader, VideoWriter

    counts = []
    fps = VideoReader(paths[0]).fps
    with VideoWriter(out_path, fps=fps, crf=crf, preset="veryfast") as w:
        for p in paths:
            r = VideoReader(p)
            if abs(r.fps - fps) > 1e-3:
                raise SystemExit(f"{p}: {r.fps} fps, the first clip has {fps}")
            n = 0
            for fr in r:
                w.write(fr.image)
                n += 1
            counts.append(n)
    return counts


def speech_video(paths, counts, concat: Path, out_path: Path, fps: float = 25.0, rate: int = 44100) -> None:
    """``concat`` with the clips' sound: each clip's audio (mono, ``rate``) cut or zero-padded to ``count / fps``
    seconds, written to a WAV beside it and muxed under the copied video packets."""
    import wave

    from facerender.audio import load_audio
    from facerender.audio.mux import mux_audio

    wav = out_path.with_name(out_path.stem + "_audio.wav")
    tmp = wav.with_suffix(".wav.partial")
    with wave.open(str(tmp), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        for p, n in zip(paths, counts):
            x, _ = load_audio(p, rate)
            want = int(round(n / fps * rate))
            x = np.concatenate([x[:want], np.zeros(max(0, want - x.shape[0]), np.float32)])
            f.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    os.replace(tmp, wav)
    mux_audio(concat, wav, out_path)


def _track(video: Path, out_dir: Path):
    from facerender.tracking import track_video

    if (out_dir / "params.npz").is_file() and (out_dir / "summary.json").is_file():
        print(f"  {out_dir}: done already")
        return
    t = time.perf_counter()
    res = track_video(video, out_dir, overlay=False, progress=True)
    print(f"  {out_dir}: {res.frames} frames ({res.frames_with_face} with a face) in {time.perf_counter() - t:.0f} s, "
          f"{res.fps:.1f} fps")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder (outside the repository)")
    ap.add_argument("--data", default=None, help="the speech folder (default: FACERENDER_DATA/data/speech)")
    ap.add_argument("--s1-clips", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-multi", action="store_true", help="do not track grid_multi")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    data = _speech_dir(args.data)
    out = Path(args.out).resolve()
    repo = Path(__file__).resolve().parent.parent
    if out == repo or repo in out.parents:
        raise SystemExit(f"--out {out} lies inside the repository {repo}: tracks are data, put them elsewhere")
    out.mkdir(parents=True, exist_ok=True)
    settings = {"s1_clips": args.s1_clips, "seed": args.seed, "holdout_fraction": HOLDOUT_FRACTION}
    mpath = out / "manifest.json"
    old = json.loads(mpath.read_text()) if mpath.is_file() else None
    if old is not None and old.get("settings") != settings:
        raise SystemExit(f"{out} holds tracks made with other settings {old.get('settings')}; use another --out")

    speakers = {}
    # ---- GRID s1: a subset, concatenated, one track
    s1_dir = data / "grid_s1" / "video"
    names = choose_s1([p.stem for p in s1_dir.glob("*.mp4")], args.s1_clips, args.seed)
    sdir = out / "grid_s1"
    sdir.mkdir(exist_ok=True)
    concat = sdir / "concat.mp4"
    counts_path = sdir / "clip_frames.json"
    if concat.is_file() and counts_path.is_file():
        counts = json.loads(counts_path.read_text())
    else:
        print(f"grid_s1: concatenating {len(names)} clips")
        counts = concat_clips([s1_dir / f"{n}.mp4" for n in names], concat)
        counts_path.write_text(json.dumps(counts))
    with_sound = sdir / "concat_speech.mp4"
    if not with_sound.is_file():
        print("grid_s1: the concatenated video with its sound")
        speech_video([s1_dir / f"{n}.mp4" for n in names], counts, concat, with_sound)
    print(f"grid_s1: tracking {sum(counts)} frames")
    _track(concat, sdir / "track")
    n_train = int(round(len(names) * (1 - HOLDOUT_FRACTION)))
    clips, start = [], 0
    for i, (n, c) in enumerate(zip(names, counts)):
        clips.append({"name": n, "video": f"grid_s1/video/{n}.mp4", "start": start, "frames": c,
                      "heldout_from": 0 if i >= n_train else c})
        start += c
    speakers["s1"] = {"track": "grid_s1/track/params.npz", "clips": clips,
                      "video_with_sound": "grid_s1/concat_speech.mp4"}

    # ---- grid_multi: nine speakers, one clip each
    if not args.skip_multi:
        for p in sorted((data / "grid_multi").glob("*.mp4")):
            print(f"grid_multi/{p.stem}: tracking")
            tdir = out / "grid_multi" / p.stem / "track"
            _track(p, tdir)
            from facerender.tracking import load_track

            n = len(load_track(tdir / "params.npz"))
            speakers[f"multi_{p.stem}"] = {
                "track": f"grid_multi/{p.stem}/track/params.npz",
                "clips": [{"name": p.stem, "video": f"grid_multi/{p.stem}.mp4", "start": 0, "frames": n,
                           "heldout_from": int(round(n * (1 - HOLDOUT_FRACTION)))}]}

    manifest = {"version": MANIFEST_VERSION, "settings": settings, "data": str(data), "fps": 25.0,
                "split": "the last 20 % of each speaker's timeline is held out: frames f >= heldout_from of a clip",
                "speakers": speakers}
    tmp = mpath.with_suffix(".json.partial")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, mpath)
    n_tr = sum(min(c["frames"], c["heldout_from"]) for s in speakers.values() for c in s["clips"])
    n_all = sum(c["frames"] for s in speakers.values() for c in s["clips"])
    print(f"wrote {mpath}: {len(speakers)} speakers, {n_all} frames ({n_tr} train, {n_all - n_tr} held out)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
