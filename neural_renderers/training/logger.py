"""Run logging of the shared trainer (rank 0 only): ``metrics.jsonl``, sample grids, the loss plot, TensorBoard.

Files in the run folder:

* ``metrics.jsonl``: one JSON object per record, ``{"step": s, "<phase>/<loss>": value, ...}`` and
  ``{"step": s, "val/<figure>": value}``; on resume, records after the checkpoint's step are dropped so the file
  tells the history of the weights that exist;
* ``samples/step_<s>.png``: a grid, one row per sample (up to 4), one column per entry of the method's
  :meth:`~neural_renderers.training.method.Method.visuals` (conditioning | output | real);
* ``losses.png``: every logged loss against the step (matplotlib, when installed);
* ``tensorboard/``: the same scalars and grids when the ``tensorboard`` package is installed (an optional extra:
  ``pip install "facerender[train]"``).
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from facerender.io.atomic import atomic_write

log = logging.getLogger(__name__)

__all__ = ["RunLogger", "make_grid"]


def make_grid(columns: Dict[str, torch.Tensor], max_rows: int = 4, label: bool = True) -> np.ndarray:
    """``{title: (B, H, W, 3|1)}`` in ``[0, 1]`` -> one uint8 image ``(rows * H + header, cols * W, 3)``."""
    if not columns:
        raise ValueError("no columns to draw")
    items = list(columns.items())
    B = min(int(v.shape[0]) for _, v in items)
    rows = min(B, max_rows)
    H = max(int(v.shape[1]) for _, v in items)
    W = max(int(v.shape[2]) for _, v in items)
    header = 14 if label else 0
    out = np.zeros((header + rows * H, len(items) * W, 3), np.uint8)
    for c, (_, v) in enumerate(items):
        img = v[:rows].detach().float().clamp(0, 1).cpu()
        if img.shape[-1] == 1:
            img = img.expand(*img.shape[:-1], 3)
        arr = (img[..., :3].numpy() * 255 + 0.5).astype(np.uint8)
        for r in range(rows):
            h, w = arr.shape[1:3]
            out[header + r * H: header + r * H + h, c * W: c * W + w] = arr[r]
    if label:
        from PIL import Image, ImageDraw

        im = Image.fromarray(out)
        d = ImageDraw.Draw(im)
        for c, (title, _) in enumerate(items):
            d.text((c * W + 3, 1), title[: max(1, W // 6)], fill=(255, 255, 255))
        out = np.asarray(im)
    return out


class RunLogger:
    """Writes the run's records (see the module docstring). Disabled (every call a no-op) when ``enabled`` is
    False, e.g. on ranks other than 0."""

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self._tb = None
        if enabled:
            (self.run_dir / "samples").mkdir(parents=True, exist_ok=True)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError:  # the optional extra is not installed
                    log.info("tensorboard is not installed: no TensorBoard events (pip install 'facerender[train]')")
                else:
                    self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))

    # ------------------------------------------------------------------------------------------------ records
    def truncate(self, step: int) -> None:
        """Drop records after ``step`` (called when resuming from a checkpoint at ``step``)."""
        if not self.enabled or not self.metrics_path.is_file():
            return
        keep = [line for line in self.metrics_path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        with atomic_write(self.metrics_path) as tmp:
            tmp.write_text("".join(line + "\n" for line in keep))

    def scalars(self, step: int, values: Dict[str, float]) -> None:
        if not self.enabled or not values:
            return
        rec = {"step": int(step), **{k: float(v) for k, v in values.items()}}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, float(v), step)

    def records(self) -> List[dict]:
        if not self.metrics_path.is_file():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    # ------------------------------------------------------------------------------------------------ pictures
    def grid(self, step: int, columns: Dict[str, torch.Tensor]) -> Optional[Path]:
        if not self.enabled or not columns:
            return None
        from facerender.io.image import write_image

        img = make_grid(columns)
        path = write_image(self.run_dir / "samples" / f"step_{step:08d}.png", img)
        if self._tb is not None:
            self._tb.add_image("samples", img, step, dataformats="HWC")
        return Path(path)

    def plot(self) -> Optional[Path]:
        """``losses.png``: each logged series against the step (log scale when all values are positive)."""
        if not self.enabled:
            return None
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        recs = self.records()
        series: Dict[str, List[tuple]] = {}
        for r in recs:
            for k, v in r.items():
                if k != "step" and v is not None and math.isfinite(v):
                    series.setdefault(k, []).append((r["step"], v))
        if not series:
            return None
        groups: Dict[str, List[str]] = {}
        for k in sorted(series):
            groups.setdefault(k.split("/")[0], []).append(k)
        fig, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 3.2), squeeze=False)
        for ax, (g, keys) in zip(axes[0], groups.items()):
            for k in keys:
                s = np.asarray(series[k])
                ax.plot(s[:, 0], s[:, 1], label=k.split("/", 1)[-1], lw=1)
            if all(min(np.asarray(series[k])[:, 1]) > 0 for k in keys):
                ax.set_yscale("log")
            ax.set_title(g)
            ax.set_xlabel("step")
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = self.run_dir / "losses.png"
        with atomic_write(path) as tmp:
            fig.savefig(tmp, dpi=90, format="png")
        plt.close(fig)
        return path

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
