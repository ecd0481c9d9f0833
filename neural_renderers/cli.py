"""The neural renderers' commands of ``facerender`` (registered by :mod:`facerender.cli`):

    facerender train dvp --target VIDEO|TRACK_DIR -o RUN [--size 128|256] [--steps N] [--resume] ...
    facerender reenact --method dvp --model RUN --source S [--target T] -o DIR
    facerender train nvp-audio [--tracks SPEECH_TRACKS] -o AUDIO_RUN
    facerender train nvp-render --target VIDEO|TRACK_DIR -o RUN [--audio-model AUDIO_RUN]
    facerender puppet --audio SPEECH --model RUN [--target VIDEO] -o DIR

Importing this module imports neither torch nor the networks (``facerender --help`` stays fast); the handlers do.
Multi-process / multi-GPU training: ``torchrun --nproc_per_node N $(which facerender) train dvp ...``.
"""
from __future__ import annotations

import argparse
import sys

__all__ = ["add_train_parser", "run_train", "run_reenact_neural", "NEURAL_METHODS", "add_puppet_parser",
           "run_train_nvp_audio", "run_train_nvp_render", "run_puppet", "default_speech_tracks"]

#: Reenactment methods rendered by a trained network (``facerender reenact --method``).
NEURAL_METHODS = ("dvp",)


def _power_of_two(text: str) -> int:
    """argparse type: a crop side, a power of two >= 16."""
    from facerender.cli_support import int_in

    v = int_in(16)(text)
    if v & (v - 1):
        raise argparse.ArgumentTypeError(f"must be a power of two >= 16 (e.g. 128 or 256), got {text!r}")
    return v


def add_train_parser(sub) -> None:
    """Add ``train`` (with one subcommand per method) to the ``facerender`` subparsers ``sub``."""
    # argparse types of docs/errors.md (no torch)
    from facerender.cli_support import fraction_in, positive_float, positive_int

    pt = sub.add_parser("train", help="train a neural renderer (Deep Video Portraits ...) on a video",
                        description="Train a neural renderer. Multi-process / multi-GPU: torchrun --nproc_per_node N "
                                    "$(which facerender) train ...")
    tsub = pt.add_subparsers(dest="method", required=True)
    pd = tsub.add_parser("dvp", help="Deep Video Portraits: a rendering-to-video network for one target video")
    pd.add_argument("--target", default=None,
                    help="the target video, or a folder written by 'facerender track' (not needed with --resume)")
    pd.add_argument("--video", default=None, help="the video of a track folder, when it moved")
    pd.add_argument("-o", "--output", required=True, help="the run folder (checkpoints, samples, logs)")
    pd.add_argument("--resume", action="store_true", help="continue the run in the output folder")
    pd.add_argument("--size", type=_power_of_two, default=256, help="crop side in pixels: 128 or 256 (paper: 256)")
    pd.add_argument("--window", type=positive_int, default=11, help="conditioning frames per input (paper: 11)")
    pd.add_argument("--steps", type=positive_int, default=10000, help="optimisation steps (total, also on resume)")
    pd.add_argument("--max-channels", type=positive_int, default=512,
                    help="generator width cap (paper: 512; 256 halves the CPU time)")
    pd.add_argument("--disc-channels", type=positive_int, default=64, help="discriminator width (paper: 64)")
    pd.add_argument("--dropout", type=fraction_in(0.0, 1.0), default=0.5,
                    help="dropout in the three innermost decoder modules (pix2pix / DVP: 0.5)")
    pd.add_argument("--batch-size", type=positive_int, default=4,
                    help="global batch (split over torchrun processes)")
    pd.add_argument("--base-channels", type=positive_int, default=64, help="generator width (paper: 64)")
    pd.add_argument("--gan-mode", choices=["vanilla", "lsgan", "hinge", "wgan"], default="vanilla",
                    help="adversarial loss (paper: vanilla cGAN)")
    pd.add_argument("--lambda-l1", type=positive_float, default=100.0, help="weight of the L1 loss (paper: 100)")
    pd.add_argument("--lr", type=positive_float, default=2e-4, help="Adam learning rate of both networks")
    pd.add_argument("--vgg-weights", default=None,
                    help="a torchvision-format VGG-19 state dict: adds a VGG feature loss (--lambda-vgg)")
    pd.add_argument("--lambda-vgg", type=positive_float, default=None, help="weight of the VGG loss (default 10)")
    pd.add_argument("--val-fraction", type=fraction_in(0.0, 1.0), default=0.15,
                    help="held-out end of the video (default 0.15)")
    pd.add_argument("--max-frames", type=positive_int, default=None, help="track only the first frames")
    pd.add_argument("--crop-scale", type=positive_float, default=1.7, help="crop side / median face size")
    _add_common_train_args(pd, 1000, 500, 1000)
    pd.set_defaults(func=run_train)
    _add_nvp_train_parsers(tsub)  # Neural Voice Puppetry: nvp-audio, nvp-render


def run_train(args) -> int:
    from neural_renderers.dvp import DVPConfig, train_dvp

    if not args.resume and args.target is None and args.video is None:
        print("facerender train dvp: error: give --target VIDEO|TRACK_DIR (or --resume)", file=sys.stderr)
        return 2
    lambda_vgg = args.lambda_vgg if args.lambda_vgg is not None else (10.0 if args.vgg_weights else 0.0)
    cfg = DVPConfig(size=args.size, window=args.window, base_channels=args.base_channels,
                    max_channels=args.max_channels, disc_channels=args.disc_channels, dropout=args.dropout,
                    gan_mode=args.gan_mode, lambda_l1=args.lambda_l1, lr=args.lr, vgg_weights=args.vgg_weights,
                    lambda_vgg=lambda_vgg, disc_norm="instance" if args.gan_mode == "wgan" else "batch")
    tc = _train_config(args)
    res = train_dvp(args.target, args.output, config=cfg, train=tc, video=args.video, resume=args.resume,
                    val_fraction=args.val_fraction, max_frames=args.max_frames, crop_scale=args.crop_scale,
                    progress=not args.no_progress)
    _report(res)
    print(f"samples in {res.run_dir / 'samples'}")
    return 0


def run_reenact_neural(args) -> int:
    """``facerender reenact --method dvp --model RUN ...``."""
    from neural_renderers.dvp import DVPReenactConfig, dvp_reenact

    if args.model is None:
        print(f"facerender reenact: error: --method {args.method} needs --model RUN (a folder written by "
              f"'facerender train {args.method}')", file=sys.stderr)
        return 2
    from facerender.cli_support import check_input_path, check_video_or_track, warn
    from facerender.errors import InputFileError
    from facerender.reenact.common import audio_warning

    run = check_input_path(args.model, "--model", kind="dir")  # the inputs before any work
    if not (run / "config.json").is_file():
        raise InputFileError(f"--model {run}: not a training run (no config.json); train one with "
                             f"'facerender train {args.method} --target VIDEO -o RUN'")
    check_video_or_track(args.source, "--source")
    if args.target is not None:
        check_video_or_track(args.target, "--target")
    note = audio_warning(args.audio, args.length, args.source, args.target)
    if note:
        warn(note)
    from facerender.tracking.orientation import warn_if_turned

    warn_if_turned(args.source, "the source", args.max_frames)
    cfg = DVPReenactConfig(length=args.length, audio=args.audio, max_frames=args.max_frames,
                           transfer_pose=not args.keep_target_pose)
    res = dvp_reenact(args.model, args.source, args.target, args.output, cfg, progress=True)
    per = res.summary["per_frame_ms"]
    total = sum(per.values())
    print("reenactment per frame: " + ", ".join(f"{k} {v:.1f} ms" for k, v in per.items())
          + f" = {total:.1f} ms ({1e3 / max(total, 1e-9):.1f} fps at a {res.summary['crop_size']}^2 crop)")
    print(f"wrote {res.result_path}")
    if res.side_by_side_path is not None:
        print(f"wrote {res.side_by_side_path}")
    print(f"summary in {res.out_dir / 'summary.json'}")
    return 0


# ------------------------------------------------------------------------------------------ Neural Voice Puppetry
def default_speech_tracks():
    """Where ``benchmarks/prepare_speech_tracks.py`` writes by default: ``$FACERENDER_SPEECH_TRACKS``, else
    ``nvp_tracks`` beside the shared data folder (``../nvp_tracks`` from the repository)."""
    import os
    from pathlib import Path

    env = os.environ.get("FACERENDER_SPEECH_TRACKS")
    if env:
        return Path(env)
    from morphable_models.paths import shared_data_dir

    d = shared_data_dir()
    return (d.parent if d is not None else Path("..")) / "nvp_tracks"


def _add_common_train_args(p, checkpoint_every: int, sample_every: int, val_every: int) -> None:
    from facerender.cli_support import nonnegative_int, positive_float, positive_int

    p.add_argument("--max-minutes", type=positive_float, default=None,
                   help="stop earlier, with a checkpoint, after this many minutes of training (--resume continues)")
    p.add_argument("--checkpoint-every", type=positive_int, default=checkpoint_every, help="steps between checkpoints")
    p.add_argument("--sample-every", type=positive_int, default=sample_every, help="steps between sample grids")
    p.add_argument("--val-every", type=nonnegative_int, default=val_every,
                   help="steps between validation passes (0: end)")
    p.add_argument("--workers", type=nonnegative_int, default=0, help="DataLoader workers per process")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--amp", choices=["auto", "none", "bf16", "fp16"], default="auto",
                   help="mixed precision (auto: bf16 on CUDA, off on CPU)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of weights, data order and sampling")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_nvp_train_parsers(tsub) -> None:
    from facerender.cli_support import float_in, fraction_in, positive_float, positive_int

    pa = tsub.add_parser("nvp-audio", help="Neural Voice Puppetry: Audio2ExpressionNet on the speech tracks of "
                                          "several speakers",
                         description="Train Audio2ExpressionNet (audio -> a shared expression code -> each "
                                     "speaker's blendshapes) on the tracks written by "
                                     "benchmarks/prepare_speech_tracks.py; the last 20 % of each speaker validates.")
    pa.add_argument("--tracks", default=None,
                    help="the speech tracks folder (manifest.json; default $FACERENDER_SPEECH_TRACKS or nvp_tracks "
                         "beside the shared data folder)")
    pa.add_argument("--data", default=None, help="the speech data folder, when it moved (default: the manifest's)")
    pa.add_argument("-o", "--output", required=True, help="the run folder")
    pa.add_argument("--resume", action="store_true", help="continue the run in the output folder")
    pa.add_argument("--features", choices=["log_mel", "phones"], default="log_mel",
                    help="log-mel (default) or pocketsphinx phones (extra 'speech')")
    pa.add_argument("--speakers", default=None, help="comma-separated subset of the manifest's speakers")
    pa.add_argument("--steps", type=positive_int, default=5000, help="optimisation steps (total, also on resume)")
    pa.add_argument("--batch-size", type=positive_int, default=64, help="global batch")
    pa.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate")
    pa.add_argument("--lr-decay-start", type=fraction_in(0.0, 1.0), default=0.3,
                    help="fraction of the steps after which the learning rate decays linearly to 0")
    _add_common_train_args(pa, 500, 10 ** 9, 500)
    pa.set_defaults(func=run_train_nvp_audio)

    pr = tsub.add_parser("nvp-render", help="Neural Voice Puppetry: the neural texture and deferred neural "
                                           "renderer of one target video",
                         description="Train the neural texture (16 channels, a Laplacian pyramid per UV tile) and the "
                                     "U-Net renderer of one target video; with --audio-model the target's identity "
                                     "map is fitted on its own track and stored with the run.")
    pr.add_argument("--target", default=None,
                    help="the target video (with speech, for its identity map), or a folder written by "
                         "'facerender track' (not needed with --resume)")
    pr.add_argument("--video", default=None, help="the video of a track folder, when it moved")
    pr.add_argument("-o", "--output", required=True, help="the run folder (checkpoints, samples, logs)")
    pr.add_argument("--resume", action="store_true", help="continue the run in the output folder")
    pr.add_argument("--audio-model", default=None,
                    help="a 'facerender train nvp-audio' run: fit the target's identity map and store it here")
    pr.add_argument("--size", type=_power_of_two, default=256, help="crop side in pixels: 128 or 256 (paper: 256)")
    pr.add_argument("--texture-size", type=_power_of_two, default=256, help="finest texture level per UV tile")
    pr.add_argument("--texture-channels", type=positive_int, default=16, help="neural texture channels (paper: 16)")
    pr.add_argument("--steps", type=positive_int, default=10000, help="optimisation steps (total, also on resume)")
    pr.add_argument("--batch-size", type=positive_int, default=4, help="global batch (split over torchrun processes)")
    pr.add_argument("--base-channels", type=positive_int, default=64, help="U-Net width (pix2pix: 64)")
    pr.add_argument("--max-channels", type=positive_int, default=512, help="U-Net width cap (256 halves CPU time)")
    pr.add_argument("--lr", type=positive_float, default=5e-4, help="Adam learning rate (texture: x --texture-scale)")
    pr.add_argument("--texture-scale", type=positive_float, default=20.0, help="texel learning-rate factor")
    pr.add_argument("--vgg-weights", default=None,
                    help="a torchvision-format VGG-19 state dict: adds a VGG feature loss (--lambda-vgg)")
    pr.add_argument("--lambda-vgg", type=positive_float, default=None, help="weight of the VGG loss (default 10)")
    pr.add_argument("--val-fraction", type=fraction_in(0.0, 1.0), default=0.2,
                    help="held-out end of the video (default 0.2)")
    pr.add_argument("--max-frames", type=positive_int, default=None, help="track only the first frames")
    pr.add_argument("--crop-scale", type=float_in(1.0, 4.0), default=1.7, help="crop side / median face size")
    pr.add_argument("--min-train-frames", type=positive_int, default=50,
                    help="fewest tracked training frames accepted (a neural texture needs views; default 50)")
    _add_common_train_args(pr, 1000, 500, 1000)
    pr.set_defaults(func=run_train_nvp_render)


def _train_config(args, **extra):
    from neural_renderers.training import TrainConfig

    return TrainConfig(steps=args.steps, max_minutes=args.max_minutes, batch_size=args.batch_size,
                       num_workers=args.workers, seed=args.seed, checkpoint_every=args.checkpoint_every,
                       sample_every=args.sample_every, val_every=args.val_every, amp=args.amp, device=args.device,
                       threads=args.threads, progress=not args.no_progress, **extra)


def _report(res) -> None:
    val = ", ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in res.validation.items())
    print(f"trained {res.step} steps ({res.steps_per_s:.2f} it/s, peak memory {res.peak_memory_mb:.0f} MB); "
          f"validation: {val or 'none'}")
    print(f"checkpoint {res.checkpoint}; losses in {res.run_dir / 'losses.png'}")


def run_train_nvp_audio(args) -> int:
    """``facerender train nvp-audio ...``."""
    from facerender.cli_support import check_input_path
    from facerender.errors import InputFileError

    tracks = None
    if not args.resume:
        tracks = check_input_path(args.tracks if args.tracks is not None else default_speech_tracks(), "--tracks",
                                  kind="dir")
        if not (tracks / "manifest.json").is_file():
            raise InputFileError(f"--tracks {tracks}: no manifest.json; write the speech tracks with "
                                 f"'python benchmarks/prepare_speech_tracks.py --out {tracks}'")
    from neural_renderers.nvp import NVPAudioConfig, train_nvp_audio

    speakers = [s.strip() for s in args.speakers.split(",") if s.strip()] if args.speakers else None
    res = train_nvp_audio(tracks, args.output, config=NVPAudioConfig(lr=args.lr),
                          train=_train_config(args, lr_decay_start=args.lr_decay_start), resume=args.resume,
                          speakers=speakers, features=args.features, data_dir=args.data)
    _report(res)
    print(f"next: facerender train nvp-render --target VIDEO -o RUN --audio-model {res.run_dir}")
    return 0


def run_train_nvp_render(args) -> int:
    """``facerender train nvp-render ...``."""
    from facerender.cli_support import check_input_path, check_video_or_track
    from facerender.errors import InputFileError, UsageError

    if not args.resume and args.target is None and args.video is None:
        raise UsageError("facerender train nvp-render: give --target VIDEO|TRACK_DIR (or --resume)")
    if args.target is not None and not args.resume:
        check_video_or_track(args.target, "--target")
    if args.audio_model is not None:
        am = check_input_path(args.audio_model, "--audio-model", kind="any")
        if am.is_dir() and not (am / "checkpoints" / "last.pt").is_file():
            raise InputFileError(f"--audio-model {am}: not a trained audio model (no checkpoints/last.pt); train one "
                                 f"with 'facerender train nvp-audio -o AUDIO_RUN'")
    from neural_renderers.nvp import NVPRenderConfig, train_nvp_render

    lambda_vgg = args.lambda_vgg if args.lambda_vgg is not None else (10.0 if args.vgg_weights else 0.0)
    cfg = NVPRenderConfig(size=args.size, texture_size=args.texture_size, texture_channels=args.texture_channels,
                          base_channels=args.base_channels, max_channels=args.max_channels, lr=args.lr,
                          texture_scale=args.texture_scale, vgg_weights=args.vgg_weights, lambda_vgg=lambda_vgg)
    res = train_nvp_render(args.target, args.output, config=cfg, train=_train_config(args),
                           audio_model=args.audio_model, video=args.video, resume=args.resume,
                           val_fraction=args.val_fraction, max_frames=args.max_frames, crop_scale=args.crop_scale,
                           min_train_frames=args.min_train_frames, progress=not args.no_progress)
    _report(res)
    print(f"samples in {res.run_dir / 'samples'}; next: facerender puppet --audio SPEECH --model {res.run_dir} "
          f"-o OUT")
    return 0


def add_puppet_parser(sub) -> None:
    """Add ``puppet`` (Neural Voice Puppetry: speech drives a target video) to the ``facerender`` subparsers."""
    from facerender.cli_support import nonnegative_int, positive_int

    pp = sub.add_parser("puppet", help="Neural Voice Puppetry: make a target video speak new audio",
                        description="Audio -> Audio2ExpressionNet -> the target's mouth and jaw, rendered by the "
                                    "neural texture of 'facerender train nvp-render' and composited into the target "
                                    "video; the output lasts as long as the audio (the target loops ping-pong), "
                                    "with the audio muxed in sync.")
    pp.add_argument("--audio", required=True, help="the driving speech: wav, mp3, m4a, or a video with sound")
    pp.add_argument("--model", required=True, help="the run folder of 'facerender train nvp-render'")
    pp.add_argument("--target", default=None,
                    help="the target video or its track folder (default: the run's own; another video is refused)")
    pp.add_argument("--audio-model", default=None,
                    help="a 'facerender train nvp-audio' run to use instead of the one stored in --model (the "
                         "target's map is fitted on its track)")
    pp.add_argument("-o", "--output", required=True, help="output folder")
    pp.add_argument("--max-frames", type=positive_int, default=None, help="write only the first frames")
    pp.add_argument("--target-start", type=nonnegative_int, default=0,
                    help="the target frame the output begins with (default 0)")
    pp.add_argument("--drive", choices=["mouth", "all"], default="mouth",
                    help="blendshapes taken from the audio: mouth and jaw (default; eyes and brows stay the "
                         "target's) or all")
    pp.add_argument("--require-speech", action="store_true",
                    help="refuse audio that does not look like speech (default: flag it and go on)")
    pp.add_argument("--batch", type=positive_int, default=4, help="frames rendered together")
    pp.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda")
    pp.add_argument("--no-side-by-side", action="store_true", help="do not write side_by_side.mp4")
    pp.add_argument("--no-progress", action="store_true", help="no progress bar")
    pp.set_defaults(func=run_puppet)


def run_puppet(args) -> int:
    """``facerender puppet --audio SPEECH --model RUN -o DIR``."""
    from facerender.cli_support import check_input_path, check_video_or_track, warn
    from facerender.errors import InputFileError

    audio = check_input_path(args.audio, "--audio", kind="file")  # the inputs before any work
    run = check_input_path(args.model, "--model", kind="dir")
    if not (run / "config.json").is_file():
        raise InputFileError(f"--model {run}: not a training run (no config.json); train one with "
                             f"'facerender train nvp-render --target VIDEO -o RUN'")
    if args.target is not None:
        check_video_or_track(args.target, "--target")
    if args.audio_model is not None:
        check_input_path(args.audio_model, "--audio-model", kind="any")
    from facerender.audio import probe_audio

    probe_audio(audio)  # a file without an audio stream: AudioError (exit 3) before anything is loaded
    from neural_renderers.nvp.puppet import PuppetConfig, puppet

    cfg = PuppetConfig(max_frames=args.max_frames, target_start=args.target_start, drive=args.drive,
                       require_speech=args.require_speech,
                       batch=args.batch, device=args.device, side_by_side=not args.no_side_by_side)
    res = puppet(audio, run, args.output, cfg, target=args.target, audio_model=args.audio_model,
                 progress=not args.no_progress)
    flags = res.summary["flags"]
    if flags.get("warning"):
        warn(str(flags["warning"]))
    if flags.get("identity_map"):
        warn(f"identity map: {flags['identity_map']}")
    if flags.get("target_no_face"):
        warn(f"{flags['target_no_face']} output frames show target frames without a tracked face: passed through "
             f"unchanged")
    per = res.summary["per_frame_ms"]
    total = sum(per.values())
    print(f"{res.frames} frames ({res.summary['duration_s']:.2f} s at {res.summary['fps_output']:g} fps"
          f"{', the target loops ping-pong' if res.summary['target_loops'] else ''}); per frame: "
          + ", ".join(f"{k} {v:.1f} ms" for k, v in per.items()) + f" = {total:.1f} ms")
    print(f"wrote {res.result_path} (with the audio)")
    if res.side_by_side_path is not None:
        print(f"wrote {res.side_by_side_path}")
    print(f"summary in {res.out_dir / 'summary.json'}")
    return 0
