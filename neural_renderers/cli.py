"""The neural renderers' commands of ``facerender`` (registered by :mod:`facerender.cli`):

    facerender train dvp --target VIDEO|TRACK_DIR -o RUN [--size 128|256] [--steps N] [--resume] ...
    facerender reenact --method dvp --model RUN --source S [--target T] -o DIR

Importing this module imports neither torch nor the networks (``facerender --help`` stays fast); the handlers do.
Multi-process / multi-GPU training: ``torchrun --nproc_per_node N $(which facerender) train dvp ...``.
"""
from __future__ import annotations

import argparse
import sys

__all__ = ["add_train_parser", "run_train", "run_reenact_neural", "NEURAL_METHODS"]

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
    from facerender.cli_support import fraction_in, nonnegative_int, positive_float, positive_int

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
    pd.add_argument("--max-minutes", type=positive_float, default=None,
                    help="stop earlier, with a checkpoint, after this many minutes of training (--resume continues)")
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
    pd.add_argument("--checkpoint-every", type=positive_int, default=1000, help="steps between checkpoints")
    pd.add_argument("--sample-every", type=positive_int, default=500, help="steps between sample grids")
    pd.add_argument("--val-every", type=nonnegative_int, default=1000, help="steps between validation passes (0: end)")
    pd.add_argument("--workers", type=nonnegative_int, default=0, help="DataLoader workers per process")
    pd.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    pd.add_argument("--amp", choices=["auto", "none", "bf16", "fp16"], default="auto",
                    help="mixed precision (auto: bf16 on CUDA, off on CPU)")
    pd.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    pd.add_argument("--seed", type=nonnegative_int, default=0, help="seed of weights, data order and sampling")
    pd.add_argument("--no-progress", action="store_true", help="no progress bar")
    pd.set_defaults(func=run_train)


def run_train(args) -> int:
    from neural_renderers.dvp import DVPConfig, train_dvp
    from neural_renderers.training import TrainConfig

    if not args.resume and args.target is None and args.video is None:
        print("facerender train dvp: error: give --target VIDEO|TRACK_DIR (or --resume)", file=sys.stderr)
        return 2
    lambda_vgg = args.lambda_vgg if args.lambda_vgg is not None else (10.0 if args.vgg_weights else 0.0)
    cfg = DVPConfig(size=args.size, window=args.window, base_channels=args.base_channels,
                    max_channels=args.max_channels, disc_channels=args.disc_channels, dropout=args.dropout,
                    gan_mode=args.gan_mode, lambda_l1=args.lambda_l1, lr=args.lr, vgg_weights=args.vgg_weights,
                    lambda_vgg=lambda_vgg, disc_norm="instance" if args.gan_mode == "wgan" else "batch")
    tc = TrainConfig(steps=args.steps, max_minutes=args.max_minutes, batch_size=args.batch_size,
                     num_workers=args.workers, seed=args.seed, checkpoint_every=args.checkpoint_every,
                     sample_every=args.sample_every, val_every=args.val_every, amp=args.amp, device=args.device, threads=args.threads,
                     progress=not args.no_progress)
    res = train_dvp(args.target, args.output, config=cfg, train=tc, video=args.video, resume=args.resume,
                    val_fraction=args.val_fraction, max_frames=args.max_frames, crop_scale=args.crop_scale,
                    progress=not args.no_progress)
    val = ", ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in res.validation.items())
    print(f"trained {res.step} steps ({res.steps_per_s:.2f} it/s, peak memory {res.peak_memory_mb:.0f} MB); "
          f"validation: {val or 'none'}")
    print(f"checkpoint {res.checkpoint}; samples in {res.run_dir / 'samples'}; losses in {res.run_dir / 'losses.png'}")
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
