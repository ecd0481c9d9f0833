"""Deep Video Portraits with facerender's library calls only: train the network on a target video, then drive the
target with a source actor's head pose, expression, gaze and blinks.

    python examples/deep_video_portraits/reenact.py [--minutes 60] [--size 128] [--out out/dvp_example]

Paths default to the sample data in ../shared (FACERENDER_DATA). See README.md beside this file.
"""
import argparse
from pathlib import Path

from morphable_models.paths import shared_data_dir
from neural_renderers.dvp import DVPConfig, DVPReenactConfig, dvp_reenact, train_dvp
from neural_renderers.training import TrainConfig

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--target", type=Path, default=None, help="target video (default: talking_d10.mp4)")
ap.add_argument("--source", type=Path, default=None, help="source video (default: expressions_d6.mp4)")
ap.add_argument("--out", type=Path, default=Path("out/dvp_example"))
ap.add_argument("--size", type=int, default=128, help="crop side: 128 (CPU) or 256 (the paper's, GPU)")
ap.add_argument("--steps", type=int, default=3000)
ap.add_argument("--minutes", type=float, default=None, help="training time budget (resume to continue)")
ap.add_argument("--max-frames", type=int, default=None, help="reenact only the first frames of the source")
args = ap.parse_args()

data = shared_data_dir()
target = args.target or data / "data" / "video" / "talking_d10.mp4"
source = args.source or data / "data" / "video" / "expressions_d6.mp4"
run = args.out / "run"

# 1. train: the target is tracked, its conditioning cached, the first 85 % of frames train the network
cpu = args.size <= 128
config = DVPConfig(size=args.size, base_channels=32 if cpu else 64, max_channels=256 if cpu else 512,
                   disc_channels=32 if cpu else 64)
train = TrainConfig(steps=args.steps, max_minutes=args.minutes, batch_size=4, sample_every=250, val_every=250,
                    checkpoint_every=250)
result = train_dvp(target, run, config=config, train=train, resume=(run / "checkpoints" / "last.pt").is_file())
print(f"trained {result.step} steps; validation {result.validation}; samples in {run / 'samples'}")

# 2. reenact: the source's head pose, expression, gaze and blinks on the target
out = dvp_reenact(run, source, None, args.out / "reenact", DVPReenactConfig(max_frames=args.max_frames))
print(f"wrote {out.result_path} and {out.side_by_side_path} ({out.fps:.1f} frames/s)")
