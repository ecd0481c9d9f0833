"""Overlays: landmark drawing in the pixel convention, blending math, side-by-side panels, energy plots."""
from __future__ import annotations

import builtins
import math

import numpy as np
import pytest
import torch

from facerender.io import read_image
from facerender.render.overlay import blend_overlay, draw_landmarks, plot_energy, side_by_side
from morphable_models.errors import ShapeError


def grey(H=32, W=40, v=100):
    return np.full((H, W, 3), v, dtype=np.uint8)


# ----------------------------------------------------------------------------------------------- landmarks
def test_landmark_pixel_convention():
    img = grey()
    before = img.copy()
    out = draw_landmarks(img, np.array([[10.5, 20.5]]), color=(255, 0, 0), radius=0)
    assert np.array_equal(img, before)  # input untouched
    assert out.dtype == np.uint8 and out.shape == img.shape
    changed = np.argwhere((out != before).any(-1))
    assert changed.tolist() == [[20, 10]]  # (row 20, col 10)
    assert out[20, 10].tolist() == [255, 0, 0]
    # any point inside the pixel square paints that pixel; the edge x = 11 belongs to the next column
    assert np.argwhere((draw_landmarks(img, [[10.01, 20.99]], radius=0) != before).any(-1)).tolist() == [[20, 10]]
    assert np.argwhere((draw_landmarks(img, [[11.0, 20.5]], radius=0) != before).any(-1)).tolist() == [[20, 11]]


def test_landmark_disc_radius():
    img = grey()
    out = draw_landmarks(img, torch.tensor([[10.5, 20.5]]), color=(0, 0, 255), radius=1.0)
    painted = {tuple(p) for p in np.argwhere((out != img).any(-1))}
    # centres within distance 1 of (10.5, 20.5): the pixel and its 4 neighbours
    assert painted == {(20, 10), (19, 10), (21, 10), (20, 9), (20, 11)}
    out = draw_landmarks(img, [[10.5, 20.5]], radius=1.5)
    assert len(np.argwhere((out != img).any(-1))) == 9  # the 3x3 block (diagonal distance 1.414)
    # a point between four pixels with radius 0.75 paints the four
    out = draw_landmarks(img, [[10.0, 20.0]], radius=0.75)
    painted = {tuple(p) for p in np.argwhere((out != img).any(-1))}
    assert painted == {(19, 9), (19, 10), (20, 9), (20, 10)}


def test_landmark_colours_nan_and_clipping():
    img = grey(10, 10)
    pts = np.array([[0.5, 0.5], [np.nan, 3.0], [9.5, 9.5], [50.0, 50.0], [-0.2, 5.5]])
    cols = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [1, 2, 3]])
    out = draw_landmarks(img, pts, color=cols, radius=0)
    assert out[0, 0].tolist() == [255, 0, 0] and out[9, 9].tolist() == [0, 0, 255]
    assert ((out != img).any(-1)).sum() == 2  # NaN skipped, outside points drawn nowhere
    # a disc partly outside is clipped
    out = draw_landmarks(img, [[0.5, 0.5]], radius=1.0)
    assert ((out != img).any(-1)).sum() == 3
    # float colours in [0, 1] are scaled
    assert draw_landmarks(img, [[2.5, 2.5]], color=(1.0, 0.5, 0.0), radius=0)[2, 2].tolist() == [255, 128, 0]


def test_landmark_errors():
    img = grey()
    with pytest.raises(ShapeError, match=r"\(L, 2\).*\(3,\)"):
        draw_landmarks(img, np.zeros(3))
    with pytest.raises(ShapeError, match="color"):
        draw_landmarks(img, np.zeros((2, 2)), color=(1, 2))
    with pytest.raises(ValueError, match="radius"):
        draw_landmarks(img, np.zeros((2, 2)), radius=-1)
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        draw_landmarks(img, np.zeros((2, 2)), color=(300, 0, 0))


# ------------------------------------------------------------------------------------------------- blending
def test_blend_math():
    img = grey(4, 5, 100)
    ren = np.zeros((4, 5, 3))
    ren[..., 0] = 1.0  # red render (float in [0, 1])
    mask = np.zeros((4, 5), bool)
    mask[1, 2] = True
    img_before, ren_before, mask_before = img.copy(), ren.copy(), mask.copy()
    out = blend_overlay(img, ren, mask, alpha=0.6)
    assert np.array_equal(img, img_before) and np.array_equal(ren, ren_before) and np.array_equal(mask, mask_before)
    assert out.dtype == np.uint8
    # inside: 0.6 * 255 + 0.4 * 100 = 193, 0.4 * 100 = 40
    assert out[1, 2].tolist() == [193, 40, 40]
    outside = np.ones((4, 5), bool)
    outside[1, 2] = False
    assert np.array_equal(out[outside], img[outside])
    # alpha 1 gives the render, alpha 0 the image; float masks blend proportionally; uint8 renders accepted
    assert blend_overlay(img, ren, mask, alpha=1.0)[1, 2].tolist() == [255, 0, 0]
    assert np.array_equal(blend_overlay(img, ren, mask, alpha=0.0), img)
    soft = np.full((4, 5), 0.5)
    assert blend_overlay(img, (ren * 255).astype(np.uint8), soft, alpha=0.6)[0, 0].tolist() == [
        round(100 + 0.3 * 155), round(100 - 0.3 * 100), round(100 - 0.3 * 100)]
    # torch inputs, (H, W, 1) masks and (1, H, W, 3) renders
    t = blend_overlay(torch.from_numpy(img), torch.from_numpy(ren)[None], torch.from_numpy(mask)[..., None], 0.6)
    assert np.array_equal(t, out)


def test_blend_errors():
    img = grey(4, 5)
    with pytest.raises(ShapeError, match=r"render.*\(4, 5, 3\).*\(4, 6, 3\)"):
        blend_overlay(img, np.zeros((4, 6, 3)), np.zeros((4, 5)))
    with pytest.raises(ShapeError, match=r"mask.*\(4, 5\).*\(5, 4\)"):
        blend_overlay(img, img, np.zeros((5, 4)))
    with pytest.raises(ValueError, match="alpha"):
        blend_overlay(img, img, np.zeros((4, 5)), alpha=1.5)
    with pytest.raises(ValueError, match=r"mask values"):
        blend_overlay(img, img, np.full((4, 5), 2.0))


# ---------------------------------------------------------------------------------------------- side by side
def test_side_by_side_layout():
    a = np.full((10, 6, 3), 50, np.uint8)
    b = np.full((7, 4, 3), 200, np.uint8)
    a0 = a.copy()
    out = side_by_side([a, b], gap=2, background=(1, 2, 3))
    assert np.array_equal(a, a0)
    assert out.shape == (10, 12, 3) and out.dtype == np.uint8
    assert np.array_equal(out[:, :6], a)
    assert (out[:, 6:8] == [1, 2, 3]).all()  # gap
    assert np.array_equal(out[:7, 8:], b)
    assert (out[7:, 8:] == [1, 2, 3]).all()  # padding below the shorter image
    # float images are converted; one image gives itself
    assert np.array_equal(side_by_side([a / 255.0]), a)


def test_side_by_side_labels():
    a = np.full((20, 30, 3), 50, np.uint8)
    out = side_by_side([a, a], labels=["fit", None], label_height=16, gap=0)
    assert out.shape == (36, 60, 3)
    assert np.array_equal(out[16:, :30], a) and np.array_equal(out[16:, 30:], a)
    assert (out[:16, :30] > 200).sum() >= 10  # white (antialiased) text drawn in the first strip
    assert (out[:16, 30:] == 0).all()  # no label on the second
    with pytest.raises(ValueError, match="2 labels for 1 images"):
        side_by_side([a], labels=["a", "b"])
    with pytest.raises(ValueError, match="at least one"):
        side_by_side([])
    with pytest.raises(ShapeError, match="sequence of images"):
        side_by_side(a)


# -------------------------------------------------------------------------------------------------- plotting
def test_plot_energy_writes_atomically(tmp_path):
    hist = {"total": [10.0, 5.0, 2.0, 1.5], "landmarks": [8.0, 3.0, 1.0, 0.9]}
    p = plot_energy(hist, tmp_path / "energy.png", title="fit")
    assert p == tmp_path / "energy.png"
    img = read_image(p)
    assert img.shape == (400, 640, 3)
    assert (img < 250).any() and (img == 255).any()  # something drawn on a white background
    assert [f.name for f in tmp_path.iterdir()] == ["energy.png"]  # no temporary file left
    # other history forms
    plot_energy([3.0, 2.0, 1.0], tmp_path / "b.png")
    plot_energy([{"total": 3.0, "prior": 1.0}, {"total": 2.0}], tmp_path / "c.png", log_scale=False)
    plot_energy(torch.tensor([1.0, -1.0, math.nan]), tmp_path / "d.png")  # non-positive: linear axis
    assert {f.name for f in tmp_path.iterdir()} == {"energy.png", "b.png", "c.png", "d.png"}


def test_plot_energy_errors(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        plot_energy({}, tmp_path / "a.png")
    with pytest.raises(ValueError, match="no finite"):
        plot_energy([math.nan], tmp_path / "a.png")
    with pytest.raises(ValueError, match="log_scale"):
        plot_energy([1.0, -1.0], tmp_path / "a.png", log_scale=True)
    with pytest.raises(ValueError, match="suffix"):
        plot_energy([1.0, 2.0], tmp_path / "a.unknownext")
    with pytest.raises(FileNotFoundError):
        plot_energy([1.0, 2.0], tmp_path / "missing" / "a.png")
    assert list(tmp_path.iterdir()) == []


def test_plot_energy_without_matplotlib(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("no matplotlib (test)")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    p = plot_energy({"a": [4.0, 2.0, 1.0], "b": [3.0, 3.0, 0.5]}, tmp_path / "pil.png", title="t", size=(320, 200))
    img = read_image(p)
    assert img.shape == (200, 320, 3)
    # the first series' colour is drawn
    assert (np.abs(img.astype(int) - [31, 119, 180]).sum(-1) < 30).sum() > 50
