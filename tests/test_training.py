"""The shared training engine of the neural renderers: blocks, networks, losses, sampler, checkpoints, trainer
(exact resume, Ctrl-C, divergence, full disk, DDP equivalence). Synthetic data; tiny networks."""
from __future__ import annotations

import json
import math
import os
import signal

import pytest
import torch
from torch.utils.data import Dataset

from neural_renderers.blocks import DownBlock, from_network, to_network
from neural_renderers.dvp import DeepVideoPortraits, DVPConfig
from neural_renderers.errors import CheckpointError, TrainingDivergedError, TrainingError
from neural_renderers.losses import (GANLoss, FeatureLoss, SSIMLoss, feature_matching_loss, gradient_penalty,
                                     l1_loss)
from neural_renderers.networks import MultiScaleDiscriminator, PatchDiscriminator, UNetGenerator, VGG19Features
from neural_renderers.training import (ResumableBatchSampler, TrainConfig, Trainer, get_method, load_checkpoint,
                                       save_checkpoint, seed_everything)


class Synthetic(Dataset):
    """Conditioning windows whose target is a fixed function of the current frame's maps."""

    def __init__(self, n=16, size=32, window=2, seed=0, nan_at=None, interrupt_at=None):
        g = torch.Generator().manual_seed(seed)
        self.c = torch.rand(n, size, size, 9 * window, generator=g)
        self.img = (self.c[..., -9:-6] * 0.6 + 0.2 * self.c[..., -3:]).clamp(0, 1)
        self.nan_at, self.interrupt_at, self.calls = nan_at, interrupt_at, 0

    def __len__(self):
        return len(self.c)

    def __getitem__(self, k):
        self.calls += 1
        if self.interrupt_at is not None and self.calls == self.interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)
        img = self.img[k].clone()
        if self.nan_at is not None and self.calls >= self.nan_at:
            img[0, 0, 0] = float("nan")
        return {"condition": self.c[k], "image": img}


def tiny(**kw) -> DVPConfig:
    base = dict(size=32, window=2, base_channels=8, max_channels=32, disc_channels=8, dropout=0.0)
    base.update(kw)
    return DVPConfig(**base)


def train_cfg(**kw) -> TrainConfig:
    base = dict(steps=6, batch_size=4, checkpoint_every=3, sample_every=100, log_every=1, val_every=0,
                progress=False, tensorboard=False, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def weights(method):
    return {k: v.detach().clone() for k, v in method.state_dict().items()}


# ------------------------------------------------------------------------------------------------ blocks, networks
def test_layout_helpers_round_trip_and_range():
    x = torch.rand(2, 5, 7, 3)
    y = to_network(x)
    assert y.shape == (2, 3, 5, 7) and y.min() >= -1 and y.max() <= 1
    assert torch.equal(from_network(y), (y.permute(0, 2, 3, 1) + 1) * 0.5)
    assert torch.allclose(from_network(y), x, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(B, H, W, C\)"):
        to_network(torch.rand(5, 7, 3))


@pytest.mark.parametrize("size,levels", [(256, 8), (128, 7), (32, 5)])
def test_unet_depth_follows_resolution(size, levels):
    g = UNetGenerator(99, 3, size, base_channels=4, max_channels=8)
    assert g.levels == levels and len(g.down) == levels and len(g.up) == levels
    assert sum(isinstance(m, DownBlock) for m in g.modules()) == levels
    if size == 32:
        out = g(torch.randn(2, 99, 32, 32))
        assert out.shape == (2, 3, 32, 32) and out.abs().max() <= 1
    with pytest.raises(ValueError, match="expected input"):
        g(torch.randn(1, 98, size, size))
    with pytest.raises(ValueError, match="power of two"):
        UNetGenerator(9, 3, 100)


def test_gradients_reach_every_parameter():
    m = DeepVideoPortraits(tiny(dropout=0.5, refine=2))
    cond = torch.rand(2, 32, 32, 18)
    img = torch.rand(2, 32, 32, 3)
    from neural_renderers.training.method import Nets

    nets = Nets(m.networks())
    out = m.forward_train(nets, {"condition": cond, "image": img})
    m.phase_loss("generator", nets, None, out)["total"].backward(retain_graph=True)
    m.phase_loss("discriminator", nets, None, out)["total"].backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_discriminator_sees_the_conditioning():
    m = DeepVideoPortraits(tiny())
    assert m.discriminator.in_channels == 18 + 3
    img = torch.rand(1, 3, 32, 32)
    c1, c2 = torch.rand(1, 18, 32, 32), torch.rand(1, 18, 32, 32)
    d1 = m.discriminator(torch.cat([c1, img], 1))[0][-1]
    d2 = m.discriminator(torch.cat([c2, img], 1))[0][-1]
    assert not torch.allclose(d1, d2)
    cur = DeepVideoPortraits(tiny(disc_condition="current"))
    assert cur.discriminator.in_channels == 9 + 3


def test_multiscale_discriminator_returns_scales_with_features():
    d = MultiScaleDiscriminator(6, num_scales=2, base_channels=4, n_layers=2)
    out = d(torch.rand(2, 6, 32, 32))
    assert len(out) == 2 and all(len(s) == 4 for s in out)
    assert out[1][-1].shape[-1] < out[0][-1].shape[-1]


# ------------------------------------------------------------------------------------------------ losses
def test_gan_losses_known_values():
    z = torch.zeros(2, 1, 4, 4)
    one = torch.ones(2, 1, 4, 4)
    assert math.isclose(float(GANLoss("vanilla").generator(z)), math.log(2), rel_tol=1e-6)
    assert math.isclose(float(GANLoss("vanilla").discriminator(z, z)), math.log(2), rel_tol=1e-6)
    assert float(GANLoss("lsgan").generator(one)) == 0.0
    assert math.isclose(float(GANLoss("lsgan").discriminator(one, z)), 0.0)
    assert math.isclose(float(GANLoss("hinge").discriminator(one, -one)), 0.0)
    assert math.isclose(float(GANLoss("hinge").discriminator(z, z)), 1.0)
    assert math.isclose(float(GANLoss("wgan").discriminator(2 * one, one)), -1.0)
    assert math.isclose(float(GANLoss("wgan").generator(3 * one)), -3.0)
    # a list of scales of feature lists: the mean over scales of the logits' losses
    two = [[torch.rand(1), one], [torch.rand(1), z]]
    assert math.isclose(float(GANLoss("lsgan").generator(two)), 0.5)
    with pytest.raises(ValueError, match="unknown GAN mode"):
        GANLoss("bce")


def test_gradient_penalty_of_a_linear_critic_is_exact():
    w = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    D = lambda x: (x[:, -3:] * w).sum((1, 2, 3)).view(-1, 1)  # noqa: E731
    real, fake = torch.randn(5, 3, 4, 4, dtype=torch.float64), torch.randn(5, 3, 4, 4, dtype=torch.float64)
    cond = torch.randn(5, 2, 4, 4, dtype=torch.float64)
    gp = gradient_penalty(D, real, fake, cond)
    assert math.isclose(float(gp), (float(w.norm()) - 1) ** 2, rel_tol=1e-12)
    # differentiable w.r.t. the critic's parameters (create_graph)
    wp = w.clone().requires_grad_(True)
    gp2 = gradient_penalty(lambda x: (x * wp).sum((1, 2, 3)).view(-1, 1), real, fake)
    (g,) = torch.autograd.grad(gp2, wp)
    assert torch.allclose(g, 2 * (wp.norm() - 1) * wp / wp.norm())


def test_l1_feature_matching_ssim():
    a, b = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    assert torch.isclose(l1_loss(a, b), (a - b).abs().mean())
    mask = torch.zeros(2, 1, 16, 16)
    mask[..., :8] = 1
    assert torch.isclose(l1_loss(a, b, mask), (a - b)[..., :8].abs().mean())
    feats = [[torch.rand(1, 4, 8, 8), torch.rand(1, 1, 4, 4)]]
    assert float(feature_matching_loss(feats, feats)) == 0.0
    other = [[feats[0][0] + 0.5, feats[0][1]]]
    assert math.isclose(float(feature_matching_loss(feats, other)), 0.5, rel_tol=1e-6)
    s = SSIMLoss()
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert float(s(x, x)) < 1e-6 and float(s(x, -x)) > 0.3
    with pytest.raises(ValueError, match="differ"):
        l1_loss(a, b[:1])


def test_vgg19_loads_torchvision_state_dicts(tmp_path):
    net = VGG19Features(("relu1_1", "relu2_1"))
    sd = {"features." + k: torch.randn_like(v) for k, v in VGG19Features(("relu5_1",)).features.state_dict().items()}
    sd["classifier.0.weight"] = torch.zeros(2, 2)
    torch.save(sd, tmp_path / "vgg19.pth")
    loaded = VGG19Features.from_file(tmp_path / "vgg19.pth", ("relu1_1", "relu2_1"))
    assert torch.equal(loaded.features[0].weight, sd["features.0.weight"])
    out = loaded(torch.rand(1, 3, 32, 32))
    assert set(out) == {"relu1_1", "relu2_1"} and out["relu2_1"].shape == (1, 128, 16, 16)
    loss = FeatureLoss(net)
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    val = loss(x, torch.rand(1, 3, 32, 32))
    val.backward()
    assert val > 0 and x.grad is not None and not any(p.requires_grad for p in net.parameters())
    torch.save({"features.0.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"features.0.weight has shape \(3,\), VGG-19 needs \(64, 3, 3, 3\)"):
        VGG19Features.from_file(tmp_path / "bad.pth")
    torch.save({"fc.weight": torch.zeros(3)}, tmp_path / "resnet.pth")
    with pytest.raises(ValueError, match="not a torchvision VGG-19 state dict: missing 'features.0.weight'"):
        VGG19Features.from_file(tmp_path / "resnet.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable"):
        VGG19Features.from_file(tmp_path / "junk.pth")


# ------------------------------------------------------------------------------------------------ sampler
def test_sampler_shards_union_is_the_single_process_batch_and_resumes():
    single = ResumableBatchSampler(23, 4, seed=3)
    single.set_epoch(2)
    full = list(single)
    assert len(full) == 5 and all(len(b) == 4 for b in full)
    r0, r1 = ResumableBatchSampler(23, 4, 3, 0, 2), ResumableBatchSampler(23, 4, 3, 1, 2)
    r0.set_epoch(2)
    r1.set_epoch(2)
    assert [a + b for a, b in zip(r0, r1)] == full
    single.set_epoch(2, start_batch=3)
    assert list(single) == full[3:]
    single.set_epoch(3)
    assert list(single) != full  # a new permutation per epoch
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        ResumableBatchSampler(10, 3, world_size=2)
    with pytest.raises(ValueError, match="fewer than one batch"):
        ResumableBatchSampler(3, 4)


# ------------------------------------------------------------------------------------------------ trainer
def run(tmp, steps, resume=False, data=None, **kw):
    seed_everything(0)
    m = DeepVideoPortraits(tiny(**kw.pop("method", {})))
    tr = Trainer(m, data or Synthetic(), tmp, train_cfg(steps=steps, **kw), val_data=Synthetic(8, seed=1),
                 resume=resume)
    return m, tr.fit()


def test_resume_is_exact(tmp_path):
    """k steps + stop + resume for k steps == 2k steps (dropout and batch norm on, 16 samples = 4 batches per
    epoch, so the resumed run crosses an epoch boundary)."""
    bn = {"method": {"dropout": 0.5}}
    m_full, r_full = run(tmp_path / "full", 6, **bn)
    _, r_half = run(tmp_path / "half", 3, **bn)
    assert r_half.step == 3
    m_res, r_res = run(tmp_path / "half", 6, resume=True, **bn)
    assert r_res.resumed_from == 3 and r_res.step == 6
    a, b = weights(m_full), weights(m_res)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the metrics history was continued, not duplicated
    recs = [json.loads(line) for line in (tmp_path / "half" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in recs if "generator/total" in r]
    assert steps == [1, 2, 3, 4, 5, 6]
    cfg = json.loads((tmp_path / "half" / "config.json").read_text())
    assert cfg["method"] == "dvp" and cfg["method_config"]["size"] == 32 and len(cfg["resumed"]) == 1
    assert list((tmp_path / "full" / "samples").glob("step_*.png")) and (tmp_path / "full" / "losses.png").is_file()


def test_tensorboard_events_when_installed(tmp_path):
    pytest.importorskip("tensorboard", reason="the optional extra 'train' (tensorboard) is not installed")
    run(tmp_path, 2, tensorboard=True, sample_every=2)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_run_folder_is_never_overwritten_and_resume_needs_a_run(tmp_path):
    run(tmp_path, 2)
    with pytest.raises(TrainingError, match="already holds a run"):
        run(tmp_path, 2)
    with pytest.raises(TrainingError, match="nothing to resume"):
        run(tmp_path / "empty", 2, resume=True)


def test_ctrl_c_writes_a_checkpoint_and_resumes(tmp_path):
    data = Synthetic(interrupt_at=9)  # the 9th sample fetch is in step 3 (batch 4): stop after step 3
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, 10, data=data)
    ck = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ck["step"] == 3
    _, r = run(tmp_path, 5, resume=True)
    assert r.resumed_from == 3 and r.step == 5


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(TrainingDivergedError, match=r"step 5: loss .* = nan.*last good checkpoint"):
        run(tmp_path, 8, data=Synthetic(nan_at=17))  # sample 17 is in step 5
    ck = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ck["step"] == 3  # written at step 3 (checkpoint_every=3); step 4 finished but was not saved
    assert all(torch.isfinite(v).all() for v in ck["networks"]["generator"].values() if v.is_floating_point())
    with pytest.raises(TrainingDivergedError, match="max_loss"):
        run(tmp_path / "b", 3, max_loss=1e-3)


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    run(tmp_path, 3)
    before = (tmp_path / "checkpoints" / "last.pt").read_bytes()
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"\0" * 100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="(?i)no space left"):
        run(tmp_path, 6, resume=True)
    monkeypatch.setattr(torch, "save", real_save)
    assert (tmp_path / "checkpoints" / "last.pt").read_bytes() == before
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 3
    assert not list((tmp_path / "checkpoints").glob("*.partial*"))


def test_bad_checkpoints_are_refused_with_a_reason(tmp_path):
    run(tmp_path, 2)
    path = tmp_path / "checkpoints" / "last.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nowhere.pt")
    save_checkpoint(path, {"method": "nvp-render", "signature": {}, "step": 1, "networks": {}})
    with pytest.raises(CheckpointError, match="'nvp-render' checkpoint, not 'dvp'"):
        run(tmp_path, 3, resume=True)
    save_checkpoint(path, {"method": "dvp", "signature": {**DeepVideoPortraits(tiny()).signature(), "size": 64},
                           "step": 1, "networks": {}})
    with pytest.raises(CheckpointError, match="size: checkpoint 64 vs requested 32"):
        run(tmp_path, 3, resume=True)
    torch.save({"format": "something else"}, path)
    with pytest.raises(CheckpointError, match="not a facerender training checkpoint"):
        load_checkpoint(path)


def test_method_registry_suggests_names():
    assert get_method("dvp") is DeepVideoPortraits
    with pytest.raises(ValueError, match="did you mean 'dvp'"):
        get_method("dpv")


def _ddp_worker(rank, world, port, out, steps):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from neural_renderers.training.distributed import cleanup, init_distributed

    info = init_distributed("cpu")
    seed_everything(rank * 17)  # different initial weights per rank: DDP must broadcast rank 0's
    if rank == 0:
        seed_everything(0)
    m = DeepVideoPortraits(tiny(norm="instance", disc_norm="instance"))
    tr = Trainer(m, Synthetic(), out, train_cfg(steps=steps, checkpoint_every=100), dist_info=info)
    tr.fit()
    cleanup()


def test_ddp_two_processes_match_one_process(tmp_path):
    """2 gloo processes with half the global batch each == 1 process with the whole batch (instance norm, no
    dropout: per-sample operations only). Tolerance: 2e-5 absolute on every weight after 4 Adam steps (the
    all-reduce sums in another order)."""
    import socket

    import torch.multiprocessing as mp

    steps = 4
    seed_everything(0)
    single = DeepVideoPortraits(tiny(norm="instance", disc_norm="instance"))
    Trainer(single, Synthetic(), tmp_path / "one", train_cfg(steps=steps, checkpoint_every=100)).fit()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path / "two"), steps), nprocs=2, join=True)
    ck = load_checkpoint(tmp_path / "two" / "checkpoints" / "last.pt")
    assert ck["step"] == steps and ck["world_size"] == 2 and len(ck["rng_ranks"]) == 2
    for name, net in single.networks().items():
        for k, v in net.state_dict().items():
            w = ck["networks"][name][k]
            assert torch.allclose(v, w, atol=2e-5, rtol=0), (name, k, float((v - w).abs().max()))
