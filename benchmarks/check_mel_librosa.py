"""Check facerender's log-mel against Wav2Lip's ``audio.melspectrogram`` computed with librosa (not a dependency).

Run in an environment that has librosa (e.g. ``python -m venv --system-site-packages /tmp/lr &&
/tmp/lr/bin/pip install librosa``)::

    /tmp/lr/bin/python benchmarks/check_mel_librosa.py [AUDIO_OR_VIDEO]

Wav2Lip: ``lfilter([1, -0.97])`` pre-emphasis, ``librosa.stft`` (centre=True), ``librosa.filters.mel`` (Slaney,
fmin 55, fmax 7600), ``20 log10(max(1e-5, .)) - 20``, ``clip(8 (S + 100) / 100 - 4, -4, 4)``. librosa centres step
``s`` on sample ``s * hop``, facerender on ``(s + 0.5) * hop``: librosa is run on the signal advanced by half a hop,
and the interior steps are compared (the first and last steps differ by the edge padding only).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facerender.audio import MelConfig, load_audio, log_mel, mel_filterbank  # noqa: E402


def main(argv=None) -> int:
    try:
        import librosa
        import scipy.signal
    except ImportError as e:
        print(f"librosa is needed for this check ({e}); see the docstring")
        return 2
    args = sys.argv[1:] if argv is None else argv
    if args:
        path = Path(args[0])
    else:
        from morphable_models.paths import shared_data_dir

        path = shared_data_dir() / "data" / "speech" / "grid_s1" / "video" / "bbaf2n.mp4"
    x, _ = load_audio(path)
    print(f"{path.name}: {len(x) / 16000:.2f} s, librosa {librosa.__version__}")
    for name, cfg in [("Wav2Lip 50 ms / 12.5 ms", MelConfig.wav2lip()), ("25 ms / 10 ms (default)", MelConfig())]:
        basis = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin,
                                    fmax=cfg.fmax)
        y = scipy.signal.lfilter([1, -cfg.preemphasis], [1], x)[cfg.hop_length // 2:]
        D = librosa.stft(y=y, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length)
        S = 20 * np.log10(np.maximum(1e-5, basis @ np.abs(D))) - cfg.ref_level_db
        ref = np.clip(8 * (S + 100) / 100 - 4, -4, 4).T
        ours = log_mel(torch.from_numpy(x).double(), cfg).numpy()
        n = min(len(ours), len(ref)) - 3
        fb = np.abs(basis - mel_filterbank(cfg, torch.float64).numpy()).max()
        print(f"  {name}: filterbank max |diff| {fb:.1e}; steps 3..{n}: max |ours - Wav2Lip| "
              f"{np.abs(ours[3:n] - ref[3:n]).max():.1e} (features span [-4, 4])")
    return 0


if __name__ == "__main__":
    sys.exit(main())
