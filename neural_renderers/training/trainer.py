"""The one trainer of every neural renderer (pix2pixHD / imaginaire style: the method brings networks, phases and
losses; the trainer owns the loop, optimizers, schedulers, AMP, DDP, checkpoints and logging).

``Trainer(method, train_data, run_dir, config, val_data=None).fit() -> TrainResult``

Run folder::

    RUN/config.json            method, method config, train config, data description (written once)
    RUN/checkpoints/last.pt    the newest checkpoint (+ step_<s>.pt when keep_checkpoints > 0)
    RUN/metrics.jsonl          losses, gradient norms, learning rates, validation figures
    RUN/samples/step_<s>.png   conditioning | output | real grids;  RUN/losses.png  the loss plot
    RUN/tensorboard/           when tensorboard is installed
    RUN/train_summary.json     steps, time, it/s, peak memory, last losses and validation figures

Guarantees:

* **Exact resume.** Checkpoints hold the networks, optimizers, schedulers, the AMP scaler, every RNG state and the
  data position (epoch, batch); the data order is a function of (seed, epoch) only
  (:class:`~neural_renderers.training.sampler.ResumableBatchSampler`). On CPU, k steps + stop + resume + k steps
  give bit-identical weights to 2k steps (tested).
* **Ctrl-C** (SIGINT) finishes the current step, writes a checkpoint and raises ``KeyboardInterrupt``.
* **Divergence.** A NaN / inf loss or gradient norm (or a loss above ``max_loss``) stops the run with
  :class:`~neural_renderers.errors.TrainingDivergedError` before the optimizer applies it; the last checkpoint on disk
  stays the last good one.
* **Atomic checkpoints.** A failed write (disk full) leaves the previous checkpoint valid; the run stops with the
  error.
* **DDP.** Under ``torchrun`` each process takes its share of every global batch; networks are wrapped in
  DistributedDataParallel (SyncBatchNorm on CUDA); rank 0 logs and checkpoints.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Union

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from facerender.io.atomic import atomic_write

from ..errors import CheckpointError, TrainingDivergedError, TrainingError
from .checkpoint import check_compatible, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import TrainConfig, config_to_dict
from .distributed import DistInfo, barrier, broadcast_flag, init_distributed
from .logger import RunLogger
from .method import Method, Nets, Phase
from .sampler import ResumableBatchSampler

log = logging.getLogger(__name__)

__all__ = ["Trainer", "TrainResult", "seed_everything", "peak_memory_mb"]


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), NumPy's global generator and Python's ``random``."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA's max allocated on a GPU, the resident-set high-water mark on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` did: the run folder, the step reached, the newest checkpoint, the wall time of the
    training steps, steps per second, the last logged losses and validation figures, and whether it was resumed."""

    run_dir: Path
    step: int
    checkpoint: Optional[Path]
    elapsed_s: float
    steps_per_s: float
    losses: Dict[str, float] = field(default_factory=dict)
    validation: Dict[str, float] = field(default_factory=dict)
    resumed_from: int = 0
    peak_memory_mb: float = float("nan")


class _Interrupt:
    """SIGINT -> a flag checked at step boundaries (main thread only; elsewhere Ctrl-C behaves as usual)."""

    def __init__(self):
        self.flag = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.getsignal(signal.SIGINT)

            def handler(signum, frame):
                if self.flag:  # a second Ctrl-C: stop now
                    raise KeyboardInterrupt
                self.flag = True
                log.warning("interrupt: finishing the step and writing a checkpoint (Ctrl-C again to abort)")

            signal.signal(signal.SIGINT, handler)
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


class Trainer:
    """Trains a :class:`~neural_renderers.training.method.Method` (see the module docstring).

    Args:
        method: the method (networks built; the trainer moves it to the device).
        train_data: a map-style dataset of dict samples (collated by ``collate_fn``, default torch's).
        run_dir: the run folder.
        config: :class:`~neural_renderers.training.config.TrainConfig`.
        val_data: validation dataset (never trained on), or None.
        data_description: JSON-able description of the data, saved in ``config.json``.
        resume: continue the run in ``run_dir`` from ``checkpoints/last.pt``. Without it, a folder that already
            holds a checkpoint is refused (nothing is overwritten).
        collate_fn: DataLoader collate function.
    """

    def __init__(self, method: Method, train_data: Dataset, run_dir: Union[str, Path], config: TrainConfig, *,
                 val_data: Optional[Dataset] = None, data_description: Optional[Dict[str, Any]] = None,
                 resume: bool = False, collate_fn: Optional[Callable] = None, dist_info: Optional[DistInfo] = None):
        self.method = method
        self.train_data = train_data
        self.val_data = val_data
        self.run_dir = Path(run_dir)
        self.cfg = config
        self.data_description = data_description or {}
        self.resume = resume
        self.collate_fn = collate_fn
        self.dist = dist_info or init_distributed(config.device)
        self.device = self.dist.device
        self.main = self.dist.rank == 0
        self.ckpt_dir = self.run_dir / "checkpoints"
        last = self.ckpt_dir / "last.pt"
        if resume and not last.is_file():
            raise TrainingError(f"nothing to resume in {str(self.run_dir)!r}: no checkpoints/last.pt")
        if not resume and last.is_file():
            raise TrainingError(f"{str(self.run_dir)!r} already holds a run (checkpoints/last.pt); pass --resume "
                                f"to continue it or choose another output folder")
        # AMP
        amp = config.amp
        if amp == "auto":
            amp = "bf16" if self.device.type == "cuda" else "none"
        if amp == "fp16" and self.device.type != "cuda":
            raise TrainingError("amp 'fp16' needs a CUDA device; use 'bf16' or 'none' on CPU")
        self.amp = amp
        self.scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
        # networks
        self.method.to(self.device)
        self.method.channels_last = bool(config.channels_last and self.device.type == "cuda")
        self.raw: Dict[str, nn.Module] = dict(method.networks())
        if self.method.channels_last:
            for m in self.raw.values():
                m.to(memory_format=torch.channels_last)
        self.phases: List[Phase] = list(method.phases())
        names = [n for ph in self.phases for n in ph.networks]
        missing = sorted(set(names) - set(self.raw))
        if missing:
            raise TrainingError(f"method {method.name!r} has phases for unknown networks {missing}")
        self.wrapped: Dict[str, nn.Module] = dict(self.raw)
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            for n, m in self.raw.items():
                if not any(p.requires_grad for p in m.parameters()):
                    continue
                if self.device.type == "cuda":
                    m = nn.SyncBatchNorm.convert_sync_batchnorm(m)
                    self.raw[n] = m
                self.wrapped[n] = DDP(m, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.optimizers = {ph.name: torch.optim.Adam(self._params(ph), lr=ph.lr, betas=ph.betas,
                                                     weight_decay=ph.weight_decay) for ph in self.phases}
        self.schedulers = {ph.name: torch.optim.lr_scheduler.LambdaLR(self.optimizers[ph.name], self._lr_factor)
                           for ph in self.phases}
        # data
        self.sampler = ResumableBatchSampler(len(train_data), config.batch_size, config.seed, self.dist.rank,
                                             self.dist.world_size)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.elapsed = 0.0
        self.logger = RunLogger(self.run_dir, enabled=self.main, tensorboard=config.tensorboard)
        self.last_losses: Dict[str, float] = {}
        self.last_val: Dict[str, float] = {}
        self.resumed_from = 0

    # ---------------------------------------------------------------------------------------------- helpers
    def _params(self, ph: Phase) -> List[nn.Parameter]:
        return [p for n in ph.networks for p in self.raw[n].parameters() if p.requires_grad]

    def _lr_factor(self, step: int) -> float:
        s = self.cfg.lr_decay_start
        if s is None:
            return 1.0
        start = int(s * self.cfg.steps)
        if step < start:
            return 1.0
        return max(0.0, 1.0 - (step - start) / max(1, self.cfg.steps - start))

    def _autocast(self):
        if self.amp == "none":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.amp == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _nets_for(self, ph: Optional[Phase]) -> Nets:
        """All networks wrapped (shared forward) or, for a phase, the phase's wrapped and the others raw."""
        if ph is None:
            return Nets(self.wrapped)
        return Nets({n: (self.wrapped[n] if n in ph.networks else self.raw[n]) for n in self.raw})

    def _to_device(self, batch):
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device, non_blocking=True)
        if isinstance(batch, dict):
            return {k: self._to_device(v) for k, v in batch.items()}
        if isinstance(batch, (list, tuple)):
            return type(batch)(self._to_device(v) for v in batch)
        return batch

    def _loader(self, dataset, batch_sampler, generator) -> DataLoader:
        return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=self.cfg.num_workers,
                          collate_fn=self.collate_fn, pin_memory=self.device.type == "cuda", generator=generator)

    def _batches(self) -> Iterator[Any]:
        while True:
            self.sampler.set_epoch(self.epoch, self.batch_in_epoch)
            g = torch.Generator()
            g.manual_seed(self.cfg.seed * 65_537 + self.epoch * 257 + self.batch_in_epoch)
            for batch in self._loader(self.train_data, self.sampler, g):
                yield batch
            self.epoch += 1
            self.batch_in_epoch = 0

    # ---------------------------------------------------------------------------------------------- checkpoints
    def _payload(self) -> Dict[str, Any]:
        return {
            "method": self.method.name,
            "signature": self.method.signature(),
            "config": {"method": config_to_dict(self.method.config), "train": config_to_dict(self.cfg)},
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "networks": {n: m.state_dict() for n, m in self.raw.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng_state(),
            "elapsed_s": self.elapsed,
            "world_size": self.dist.world_size,
        }

    def save(self) -> Optional[Path]:
        """Write ``checkpoints/last.pt`` (rank 0; every rank waits for it)."""
        path = None
        ranks_rng = self._gather_rng()
        if self.main:
            payload = self._payload()
            payload["rng_ranks"] = ranks_rng
            path = save_checkpoint(self.ckpt_dir / "last.pt", payload)
            if self.cfg.keep_checkpoints > 0:
                save_checkpoint(self.ckpt_dir / f"step_{self.step:08d}.pt", payload)
                old = sorted(self.ckpt_dir.glob("step_*.pt"))[: -self.cfg.keep_checkpoints]
                for p in old:
                    p.unlink(missing_ok=True)
        barrier(self.dist)
        return path

    def _gather_rng(self) -> List[Dict[str, Any]]:
        """Every rank's RNG state (a collective under DDP), so each rank resumes its own random stream."""
        state = rng_state()
        if not self.dist.distributed:
            return [state]
        import torch.distributed as dist

        out: List[Any] = [None] * self.dist.world_size
        dist.all_gather_object(out, state)
        return out

    def _load(self) -> None:
        data = load_checkpoint(self.ckpt_dir / "last.pt", map_location=self.device)
        check_compatible(data, self.method.name, self.method.signature())
        try:
            for n, m in self.raw.items():
                m.load_state_dict(data["networks"][n])
            for k, o in self.optimizers.items():
                o.load_state_dict(data["optimizers"][k])
            for k, s in self.schedulers.items():
                s.load_state_dict(data["schedulers"][k])
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"{data['path']} does not fit this method's networks/optimizers: "
                                  f"{str(e).splitlines()[0]}") from e
        if self.scaler is not None and data.get("scaler"):
            self.scaler.load_state_dict(data["scaler"])
        ranks = data.get("rng_ranks") or [data["rng"]]
        if len(ranks) == self.dist.world_size:
            set_rng_state(ranks[self.dist.rank])
        else:  # another number of processes: rank 0 continues the saved stream, the others start new ones
            set_rng_state(data["rng"])
            if self.dist.rank:
                torch.manual_seed(self.cfg.seed * 1009 + self.dist.rank + int(data["step"]))
        self.step, self.epoch, self.batch_in_epoch = int(data["step"]), int(data["epoch"]), int(data["batch_in_epoch"])
        self.elapsed = float(data.get("elapsed_s", 0.0))
        self.resumed_from = self.step

    def _write_config(self) -> None:
        if not self.main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        cfg = {"method": self.method.name, "method_config": config_to_dict(self.method.config),
               "train": config_to_dict(self.cfg), "data": self.data_description,
               "world_size": self.dist.world_size, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
               "torch": torch.__version__}
        path = self.run_dir / "config.json"
        if self.resume and path.is_file():
            old = json.loads(path.read_text())
            cfg["created"] = old.get("created", cfg["created"])
            cfg["resumed"] = old.get("resumed", []) + [time.strftime("%Y-%m-%d %H:%M:%S")]
        with atomic_write(path) as tmp:
            tmp.write_text(json.dumps(cfg, indent=1, default=str))

    # ---------------------------------------------------------------------------------------------- the step
    def _check(self, name: str, value: torch.Tensor, what: str) -> None:
        v = float(value)
        bad = not math.isfinite(v) or (what == "loss" and self.cfg.max_loss is not None and v > self.cfg.max_loss)
        if broadcast_flag(bad, self.dist):
            last = self.ckpt_dir / "last.pt"
            kept = (f"the last good checkpoint {str(last)!r} is kept" if last.is_file()
                    else "no checkpoint was written yet")
            limit = f" (limit max_loss={self.cfg.max_loss})" if what == "loss" and math.isfinite(v) else ""
            raise TrainingDivergedError(f"training diverged at step {self.step + 1}: {what} {name} = {v}{limit}; "
                                        f"{kept}; lower the learning rate or set grad_clip, then resume")

    def train_step(self, batch) -> Dict[str, Any]:
        """One optimisation step on ``batch`` (already on the device). Returns the shared forward's outputs."""
        with self._autocast():
            outputs = self.method.forward_train(self._nets_for(None), batch)
        logs: Dict[str, float] = {}
        for i, ph in enumerate(self.phases):
            own = set(ph.networks)
            for n, m in self.raw.items():
                m.requires_grad_(n in own)
            opt = self.optimizers[ph.name]
            opt.zero_grad(set_to_none=True)
            with self._autocast():
                losses = self.method.phase_loss(ph.name, self._nets_for(ph), batch, outputs)
            if "total" not in losses:
                raise TrainingError(f"method {self.method.name!r}: phase {ph.name!r} returned no 'total' loss")
            total = losses["total"].float()
            self._check(f"{ph.name}/total", total.detach(), "loss")
            retain = i < len(self.phases) - 1
            if self.scaler is not None:
                self.scaler.scale(total).backward(retain_graph=retain)
                self.scaler.unscale_(opt)
            else:
                total.backward(retain_graph=retain)
            params = self._params_with_grad(ph)
            norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip or float("inf")) if params else \
                torch.zeros(())
            if self.scaler is None:
                self._check(f"{ph.name}/grad_norm", norm, "gradient norm")
                opt.step()
            else:  # the scaler skips steps with inf gradients by design (and lowers its scale)
                self.scaler.step(opt)
                self.scaler.update()
            for k, v in losses.items():
                logs[f"{ph.name}/{k}"] = float(v.detach())
            logs[f"{ph.name}/grad_norm"] = float(norm)
        for m in self.raw.values():
            m.requires_grad_(True)
        for s in self.schedulers.values():
            s.step()
        self.last_losses = logs
        return outputs

    def _params_with_grad(self, ph: Phase) -> List[torch.Tensor]:
        return [p for n in ph.networks for p in self.raw[n].parameters() if p.grad is not None]

    # ---------------------------------------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> Dict[str, float]:
        """Average of the method's validation figures over the first ``val_batches`` batches of the validation
        set (rank 0, networks in eval mode)."""
        if self.val_data is None or not self.main or len(self.val_data) == 0:
            return {}
        nets = Nets(self.raw)
        for m in self.raw.values():
            m.eval()
        sums: Dict[str, float] = {}
        n = 0
        bs = max(1, self.cfg.batch_size // self.dist.world_size)
        loader = DataLoader(self.val_data, batch_size=bs, shuffle=False, num_workers=0, collate_fn=self.collate_fn)
        try:
            for k, batch in enumerate(loader):
                if k >= self.cfg.val_batches:
                    break
                with self._autocast():
                    figs = self.method.validate(nets, self._to_device(batch))
                for key, v in figs.items():
                    sums[key] = sums.get(key, 0.0) + float(v)
                n += 1
        finally:
            for m in self.raw.values():
                m.train()
        self.last_val = {f"val/{k}": v / max(n, 1) for k, v in sums.items()}
        self.logger.scalars(self.step, self.last_val)
        return self.last_val

    # ---------------------------------------------------------------------------------------------- the loop
    def fit(self) -> TrainResult:
        """Train until ``config.steps`` (see the module docstring for checkpoints, Ctrl-C and divergence).
        ``config.threads`` applies for the call only (torch's thread count is restored afterwards)."""
        threads = torch.get_num_threads()
        if self.cfg.threads is not None:
            torch.set_num_threads(self.cfg.threads)
        try:
            return self._fit()
        finally:
            torch.set_num_threads(threads)

    def _fit(self) -> TrainResult:
        cfg = self.cfg
        if self.resume:
            self._load()
            self.logger.truncate(self.step)
        else:
            # each rank draws its own dropout masks; the weights come from rank 0 (DDP broadcasts them)
            torch.manual_seed(cfg.seed * 1009 + self.dist.rank)
        self._write_config()
        for m in self.raw.values():
            m.train()
        bar = None
        if self.main and cfg.progress:
            from facerender.progress import progress_bar as tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, unit="it", desc=f"train {self.method.name}",
                       dynamic_ncols=True)
        path: Optional[Path] = None
        t_run = time.perf_counter()
        steps_timed, time_timed = 0, 0.0
        batches = self._batches()
        try:
            with _Interrupt() as intr:
                while self.step < cfg.steps:
                    t0 = time.perf_counter()
                    batch = self._to_device(next(batches))
                    outputs = self.train_step(batch)
                    self.step += 1
                    self.batch_in_epoch += 1
                    dt = time.perf_counter() - t0
                    self.elapsed += dt
                    steps_timed += 1
                    time_timed += dt
                    if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                        lrs = {f"{k}/lr": s.get_last_lr()[0] for k, s in self.schedulers.items()}
                        self.logger.scalars(self.step, {**self.last_losses, **lrs})
                    if self.main and (self.step % cfg.sample_every == 0 or self.step == cfg.steps):
                        with torch.no_grad():
                            self.logger.grid(self.step, self.method.visuals(batch, outputs))
                        self.logger.plot()
                    if cfg.val_every and self.step % cfg.val_every == 0 and self.step != cfg.steps:
                        self.validate()
                    stop = broadcast_flag(intr.flag, self.dist)
                    out_of_time = broadcast_flag(cfg.max_minutes is not None
                                                 and time.perf_counter() - t_run > 60 * cfg.max_minutes, self.dist)
                    if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps or stop or out_of_time:
                        path = self.save()
                    if bar is not None:
                        bar.update(1)
                        shown = {k.split("/")[0][0] + ":" + k.split("/")[1]: v for k, v in self.last_losses.items()
                                 if k.endswith("/total") or k.endswith("/l1")}
                        bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items()})
                    if stop:
                        raise KeyboardInterrupt
                    if out_of_time:
                        log.info("time budget of %s minutes reached at step %d", cfg.max_minutes, self.step)
                        break
                del outputs, batch
        finally:
            if bar is not None:
                bar.close()
        self.validate()
        if self.main:
            self.logger.plot()
        peak = peak_memory_mb(self.device)
        rate = steps_timed / time_timed if time_timed > 0 else float("nan")
        if self.main:
            summary = {"method": self.method.name, "steps": self.step, "resumed_from": self.resumed_from,
                       "batch_size": cfg.batch_size, "world_size": self.dist.world_size, "device": str(self.device),
                       "amp": self.amp, "steps_per_s": rate, "train_seconds_total": self.elapsed,
                       "wall_seconds_this_call": time.perf_counter() - t_run, "peak_memory_mb": peak,
                       "last_losses": self.last_losses, "validation": self.last_val}
            with atomic_write(self.run_dir / "train_summary.json") as tmp:
                tmp.write_text(json.dumps(summary, indent=1))
        self.logger.close()
        return TrainResult(self.run_dir, self.step, path or (self.ckpt_dir / "last.pt"), self.elapsed, rate,
                           dict(self.last_losses), dict(self.last_val), self.resumed_from, peak)
