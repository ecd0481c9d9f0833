"""Neural Voice Puppetry with facerender's library calls only: Audio2ExpressionNet on the speech tracks, the target's
neural texture and deferred renderer, then new speech drives the target's mouth.

    python examples/neural_voice_puppetry/puppet.py [--audio SPEECH.wav] [--minutes 60] [--out out/nvp_example]

The speech tracks come from ``python benchmarks/prepare_speech_tracks.py --out ../nvp_tracks`` (tracking about 30
minutes of GRID speech once). See README.md beside this file.
"""
import argparse
from pathlib import Path

from morphable_models.paths import shared_data_dir
from neural_renderers.nvp import NVPRenderConfig, train_nvp_audio, train_nvp_render
from neural_renderers.nvp.puppet import PuppetConfig, puppet
from neural_renderers.training import TrainConfig

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--tracks", type=Path, default=None, help="the speech tracks (default ../nvp_tracks)")
ap.add_argument("--audio", type=Path, default=None,
                help="the driving speech (default: a GRID sentence of another speaker)")
ap.add_argument("--out", type=Path, default=Path("out/nvp_example"))
ap.add_argument("--size", type=int, default=128, help="crop side: 128 (CPU) or 256 (the paper's, GPU)")
ap.add_argument("--steps", type=int, default=8000)
ap.add_argument("--minutes", type=float, default=None, help="renderer training budget (rerun to continue)")
args = ap.parse_args()

data = shared_data_dir()
tracks = args.tracks or data.parent / "nvp_tracks"
speech = args.audio or data / "data" / "speech" / "grid_multi" / "lbax4n.mp4"
audio_run, render_run = args.out / "audio", args.out / "render"

# 1. the audio half: one network for every speaker, a map per speaker (the last 20 % of each validates)
if not (audio_run / "checkpoints" / "last.pt").is_file():
    train_nvp_audio(tracks, audio_run, train=TrainConfig(steps=5000, batch_size=64, lr_decay_start=0.3,
                                                         val_every=500, checkpoint_every=500, sample_every=10 ** 9))

# 2. the target: GRID s1's concatenated sentences with their sound, tracked by prepare_speech_tracks.py
cpu = args.size <= 128
config = NVPRenderConfig(size=args.size, texture_size=128 if cpu else 256, base_channels=16 if cpu else 64,
                         max_channels=128 if cpu else 512)
train = TrainConfig(steps=args.steps, max_minutes=args.minutes, batch_size=4, sample_every=250, val_every=500,
                    checkpoint_every=250)
resume = (render_run / "checkpoints" / "last.pt").is_file()
result = train_nvp_render(tracks / "grid_s1" / "track", render_run, config=config, train=train,
                          audio_model=None if resume else audio_run, resume=resume,
                          video=tracks / "grid_s1" / "concat_speech.mp4")
print(f"renderer: {result.step} steps; validation {result.validation}; samples in {render_run / 'samples'}")

# 3. the puppet: the speech drives the target's mouth; result.mp4 carries the speech, in sync
out = puppet(speech, render_run, args.out / "puppet", PuppetConfig())
print(f"wrote {out.result_path} and {out.side_by_side_path} ({out.frames} frames, {out.fps:.1f} frames/s)")
