"""facerender.identity: dlib's DNN format reader, the face-recognition ResNet in torch, face chips and losses.

Values are checked against dlib itself (dlib-bin, the 'landmarks' extra) on the shared photos and video frames.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import IN_CI
from facerender.errors import ModelFileError, NoFaceError, ShapeError
from facerender.identity import (
    CHIP_SIZE,
    DlibFaceNet,
    DlibFormatError,
    DlibNetworkMismatchError,
    FaceTooSmallError,
    IdentityFeatureLoss,
    IdentityLoss,
    cosine_similarity,
    default_model_path,
    face_chip_details,
    face_chips,
    face_descriptors,
    parse_dlib_dnn,
    read_dlib_dnn,
)
from facerender.identity.network import add_zero_padded

HAVE_DLIB = importlib.util.find_spec("dlib") is not None and importlib.util.find_spec("face_recognition_models")


@pytest.fixture(scope="module")
def dlib_ready():
    if not HAVE_DLIB:
        msg = 'dlib-bin and face-recognition-models are not installed (pip install "facerender[landmarks]")'
        if IN_CI:
            pytest.fail(msg + "; CI installs the 'all' extras, so this is an error")
        pytest.skip(msg)


@pytest.fixture(scope="module")
def net(dlib_ready):
    torch.manual_seed(0)
    return DlibFaceNet.from_dlib()


@pytest.fixture(scope="module")
def faces(dlib_ready, faces_dir, video_dir):
    """(image uint8, dlib integer landmark points (68, 2)) for the four photos and a frame of three videos."""
    from facerender.io import read_image
    from facerender.io.video import VideoReader
    from facerender.landmarks import detect_landmarks

    imgs = [read_image(faces_dir / n) for n in ("lenna.png", "takeo.ppm", "einstein.jpg", "breakingbad.jpg")]
    for v in ("talking_d3.mp4", "expressions_d6.mp4", "lp_s18.mp4"):
        imgs.append(next(iter(VideoReader(video_dir / v))).image)
    out = []
    for img in imgs:
        pts = np.floor(detect_landmarks(img).points).astype(np.int64)  # dlib's integer part coordinates
        out.append((np.ascontiguousarray(img), pts))
    return out


def _shape(pts):
    import dlib

    return dlib.full_object_detection(dlib.rectangle(0, 0, 10, 10), [dlib.point(int(x), int(y)) for x, y in pts])


# ---------------------------------------------------------------------------------------------------------------
# a writer of dlib's format, written here from dlib's serialize.h / core.h / layers.h, independent of the reader


def w_int(v: int) -> bytes:
    neg = v < 0
    v = abs(int(v))
    body = b""
    while True:
        body += bytes([v & 0xFF])
        v >>= 8
        if v == 0:
            break
    return bytes([len(body) | (0x80 if neg else 0)]) + body


def w_float(x: float) -> bytes:
    m, e = np.frexp(np.float64(x))  # x = m * 2**e, 0.5 <= |m| < 1
    mant = int(round(float(m) * 2 ** 53))
    exp = int(e) - 53
    while mant and mant % 2 == 0:
        mant //= 2
        exp += 1
    return w_int(mant) + w_int(exp if mant else 0)


def w_str(s: str) -> bytes:
    return w_int(len(s)) + s.encode()


def w_bool(b: bool) -> bytes:
    return b"1" if b else b"0"


def w_tensor(a) -> bytes:
    a = np.asarray(a, dtype="<f4")
    shape = a.shape + (1,) * (4 - a.ndim)
    return w_int(2) + b"".join(w_int(s) for s in shape) + a.tobytes()


def w_alias(*shape) -> bytes:
    return w_int(1) + b"".join(w_int(s) for s in shape)


EMPTY = w_tensor(np.zeros((0, 0, 0, 0)))


def tail(kind: str) -> bytes:
    """add_layer bookkeeping after the layer details: 3 bools, x_grad, cached_output, then params_grad (v2) or
    grad_final + sample expansion factor (the v3 input case)."""
    out = w_bool(True) + w_bool(True) + w_bool(False) + EMPTY + EMPTY
    return out + (EMPTY if kind == "L" else EMPTY + w_int(1))


def con_details(rng, nf, k, size, stride, pad):
    filt = rng.normal(size=(nf, k, size, size)).astype(np.float32)
    bias = rng.normal(size=nf).astype(np.float32)
    params = np.concatenate([filt.ravel(), bias])
    b = w_str("con_4") + w_tensor(params) + b"".join(w_int(v) for v in (nf, size, size, stride, stride, pad, pad))
    b += w_alias(nf, k, size, size) + w_alias(1, nf, 1, 1) + w_float(1) + w_float(1) + w_float(1) + w_float(0)
    return b, {"filters": filt, "biases": bias}


def net_file(layers_outer_first, wrappers=None, input_size=150) -> bytes:
    """A dlib network file: loss_metric_2, then the given (details bytes) layers (outermost first), the last one
    over input_rgb_image_sized. ``wrappers`` may add "T" (tag) entries: a list like ["L", "T", "L", "I"]."""
    n = len(layers_outer_first)
    wrappers = wrappers or (["L"] * (n - 1) + ["I"])
    b = w_int(1) + w_str("loss_metric_2") + w_float(0.04) + w_float(0.6)
    for w in wrappers:
        b += w_int({"L": 2, "T": 1, "I": 3}[w])
    b += w_str("input_rgb_image_sized") + w_float(122.782) + w_float(117.001) + w_float(104.298)
    b += w_int(input_size) + w_int(input_size)
    kinds = [w for w in wrappers if w != "T"]
    for details, kind in zip(reversed(layers_outer_first), reversed(kinds)):
        b += details + tail(kind)
    return b


# ---------------------------------------------------------------------------------------------------------------
# the reader


def test_primitives_round_trip():
    rng = np.random.default_rng(0)
    for v in [0, 1, -1, 255, 256, -70000, 2 ** 40, -(2 ** 62)]:
        net = parse_dlib_dnn(net_file([w_str("relu_"), con_details(rng, 1, 3, 1, 1, 0)[0]]), "t")
        assert net.structure == "LI"
    for x in [0.0, 0.04, 0.6, -3.25, 1e-7, 123456.789]:
        b = w_int(1) + w_str("loss_metric_2") + w_float(x) + w_float(-x)
        b += w_int(3) + w_str("input_rgb_image_sized") + w_float(1) + w_float(2) + w_float(3) + w_int(150) + w_int(150)
        b += con_details(rng, 1, 3, 1, 1, 0)[0] + tail("I")
        net = parse_dlib_dnn(b, "t")
        assert net.loss[1]["margin"] == pytest.approx(x, rel=1e-15, abs=0)
        assert net.loss[1]["dist_thresh"] == pytest.approx(-x, rel=1e-15, abs=0)
        assert net.input[1]["avg_green"] == 2.0 and net.input[1]["nr"] == 150


def test_reader_round_trip_every_layer_type():
    """One file holding each layer type the reader knows (and a tag wrapper); every value comes back."""
    rng = np.random.default_rng(1)
    c_in, t_in = con_details(rng, 4, 3, 3, 2, 0)  # over the input
    c_mid, t_mid = con_details(rng, 5, 4, 3, 1, 1)
    gamma, beta = rng.normal(size=5).astype(np.float32), rng.normal(size=5).astype(np.float32)
    affine = w_str("affine_") + w_tensor(np.concatenate([gamma, beta])) + w_alias(1, 5, 1, 1) + w_alias(1, 5, 1, 1)
    affine += w_int(0)
    # bn_con2: converted to affine as dlib does
    bg, bb = rng.normal(size=5).astype(np.float32), rng.normal(size=5).astype(np.float32)
    rm, rv = rng.normal(size=5).astype(np.float32), rng.uniform(0.5, 2, size=5).astype(np.float32)
    bn = w_str("bn_con2") + w_tensor(np.concatenate([bg, bb])) + w_alias(1, 5, 1, 1) + w_alias(1, 5, 1, 1)
    bn += EMPTY + EMPTY + w_tensor(rm) + w_tensor(rv) + w_int(100) + w_int(100)
    bn += w_float(1) + w_float(0) + w_float(1) + w_float(1) + w_float(1e-4)
    relu = w_str("relu_")
    maxp = w_str("max_pool_2") + b"".join(w_int(v) for v in (3, 3, 2, 2, 0, 0))
    avgp = w_str("avg_pool_2") + b"".join(w_int(v) for v in (0, 0, 1, 1, 0, 0))
    addp = w_str("add_prev_")
    W = rng.normal(size=(5, 7)).astype(np.float32)
    fb = rng.normal(size=7).astype(np.float32)
    fc_bias = w_str("fc_2") + w_int(7) + w_int(5) + w_tensor(np.concatenate([W.ravel(), fb]))
    fc_bias += w_alias(5, 7, 1, 1) + w_alias(1, 7, 1, 1) + w_int(0) + w_float(1) + w_float(1) + w_float(1) + w_float(0)
    W2 = rng.normal(size=(7, 3)).astype(np.float32)
    fc_nb = w_str("fc_2") + w_int(3) + w_int(7) + w_tensor(W2) + w_alias(7, 3, 1, 1) + w_alias(0, 0, 0, 0)
    fc_nb += w_int(1) + w_float(1) + w_float(1) + w_float(1) + w_float(0)
    outer_first = [fc_nb, fc_bias, avgp, addp, relu, bn, affine, c_mid, maxp, c_in]
    wrappers = ["L", "L", "L", "L", "L", "T", "L", "L", "L", "L", "I"]
    dnn = parse_dlib_dnn(net_file(outer_first, wrappers), "t")
    assert dnn.structure == "".join(wrappers)
    names = [layer.name for layer in dnn.layers]
    assert names == ["con_4", "max_pool_2", "con_4", "affine_", "bn_con2", "relu_", "add_prev_", "avg_pool_2",
                     "fc_2", "fc_2"]
    L = dnn.layers
    np.testing.assert_array_equal(L[0].tensors["filters"], t_in["filters"])
    np.testing.assert_array_equal(L[0].tensors["biases"], t_in["biases"])
    assert (L[0].attrs["num_filters"], L[0].attrs["in_channels"], L[0].attrs["stride_y"], L[0].attrs["padding_y"]) \
        == (4, 3, 2, 0)
    assert L[1].attrs == {"nr": 3, "nc": 3, "stride_y": 2, "stride_x": 2, "padding_y": 0, "padding_x": 0}
    np.testing.assert_array_equal(L[2].tensors["filters"], t_mid["filters"])
    assert L[2].attrs["padding_x"] == 1
    np.testing.assert_array_equal(L[3].tensors["gamma"], gamma)
    np.testing.assert_array_equal(L[3].tensors["beta"], beta)
    assert L[4].kind == "affine"
    g = bg.astype(np.float64) / np.sqrt(rv.astype(np.float64) + 1e-4)
    np.testing.assert_allclose(L[4].tensors["gamma"], g, rtol=1e-6)
    np.testing.assert_allclose(L[4].tensors["beta"], bb - g * rm, rtol=1e-5, atol=1e-6)
    assert L[7].kind == "avg_pool" and L[7].attrs["nr"] == 0
    np.testing.assert_array_equal(L[8].tensors["weights"], W)
    np.testing.assert_array_equal(L[8].tensors["biases"], fb)
    assert L[8].attrs["bias"] and not L[9].attrs["bias"]
    np.testing.assert_array_equal(L[9].tensors["weights"], W2)
    assert "biases" not in L[9].tensors


def test_reader_refuses_bad_files(tmp_path):
    rng = np.random.default_rng(2)
    good = net_file([w_str("relu_"), con_details(rng, 2, 3, 3, 1, 1)[0]])
    parse_dlib_dnn(good, "t")
    with pytest.raises(DlibFormatError, match="file ends"):
        parse_dlib_dnn(good[:-7], "t")  # truncated
    with pytest.raises(DlibFormatError, match="bytes left"):
        parse_dlib_dnn(good + b"\x00", "t")
    with pytest.raises(DlibFormatError):
        parse_dlib_dnn(b"\x01\x01\xff\xff\xff\xff", "t")
    unknown = net_file([w_str("mish_"), con_details(rng, 2, 3, 3, 1, 1)[0]])
    with pytest.raises(DlibNetworkMismatchError, match="'mish_'"):
        parse_dlib_dnn(unknown, "t")
    other_loss = w_int(1) + w_str("loss_mmod_") + b"\x00" * 20
    with pytest.raises(DlibNetworkMismatchError, match="loss_mmod_"):
        parse_dlib_dnn(other_loss, "t")
    empty = tmp_path / "empty.dat"
    empty.write_bytes(b"")
    with pytest.raises(DlibFormatError, match="empty"):
        read_dlib_dnn(empty)
    with pytest.raises(FileNotFoundError):
        read_dlib_dnn(tmp_path / "missing.dat")
    assert issubclass(DlibFormatError, ModelFileError)


def test_reads_the_installed_model(dlib_ready):
    dnn = read_dlib_dnn(default_model_path())
    assert dnn.loss == ("loss_metric_2", pytest.approx({"margin": 0.04, "dist_thresh": 0.6}))
    assert dnn.input[0] == "input_rgb_image_sized" and dnn.input[1]["nr"] == 150
    assert dnn.input[1]["avg_red"] == pytest.approx(122.782, abs=1e-4)
    assert sum(layer.kind == "con" for layer in dnn.layers) == 29
    assert dnn.layers[-1].tensors["weights"].shape == (256, 128)


def test_other_dlib_networks_are_refused_naming_what_was_found(dlib_ready, tmp_path):
    models = default_model_path().parent
    # dlib's CNN face detector: a DNN with another loss
    with pytest.raises(DlibNetworkMismatchError, match="loss_mmod"):
        DlibFaceNet.from_dlib(models / "mmod_human_face_detector.dat")
    # a shape predictor is not a DNN at all
    with pytest.raises(DlibFormatError, match="shape_predictor_5_face_landmarks"):
        DlibFaceNet.from_dlib(models / "shape_predictor_5_face_landmarks.dat")
    # a valid small metric network that is not the ResNet
    rng = np.random.default_rng(3)
    small = tmp_path / "small.dat"
    small.write_bytes(net_file([w_str("relu_"), con_details(rng, 2, 3, 3, 1, 1)[0]]))
    with pytest.raises(DlibNetworkMismatchError, match=r"con_4 x1.*expected dlib's face recognition ResNet"):
        DlibFaceNet.from_dlib(small)
    # corrupt copy of the real file: names the package to reinstall
    bad = tmp_path / "corrupt.dat"
    data = bytearray(default_model_path().read_bytes()[:5_000_000])
    bad.write_bytes(bytes(data))
    with pytest.raises(DlibFormatError, match="face-recognition-models"):
        DlibFaceNet.from_dlib(bad)
    with pytest.raises(FileNotFoundError, match="face-recognition-models"):
        DlibFaceNet.from_dlib(tmp_path / "nothing.dat")


def test_missing_package_names_it(monkeypatch):
    import facerender.landmarks.detect as det
    from facerender.errors import BackendUnavailableError

    monkeypatch.setattr(det.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BackendUnavailableError, match="face-recognition-models"):
        default_model_path()


def test_import_does_not_import_dlib():
    code = "import sys, facerender.identity, facerender.metrics; print('dlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------------------------
# the network against dlib


def test_descriptors_match_dlib_on_real_faces(net, faces):
    """On dlib's own chips the torch network gives dlib's descriptors (L2 < 1e-3); the whole pipeline (our chips
    with dlib's rounding + the network) gives dlib's compute_face_descriptor(image, shape)."""
    import dlib

    rec = dlib.face_recognition_model_v1(str(default_model_path()))
    chips, ref_chip, ref_full, xs, lms = [], [], [], [], []
    for img, pts in faces:
        shape = _shape(pts)
        chip = dlib.get_face_chip(img, shape, CHIP_SIZE, 0.25)
        chips.append(torch.from_numpy(chip).permute(2, 0, 1).float() / 255)
        ref_chip.append(np.array(rec.compute_face_descriptor(chip)))
        ref_full.append(np.array(rec.compute_face_descriptor(img, shape, 0, 0.25)))
        xs.append(torch.from_numpy(img).float() / 255)
        lms.append(torch.from_numpy(pts + 0.5))
    with torch.no_grad():
        d = net(torch.stack(chips)).double().numpy()
    err = np.linalg.norm(d - np.stack(ref_chip), axis=1)
    assert err.max() < 1e-3, err
    full = np.stack([face_descriptors(x[None], lm[None], net, quantize=True)[0].detach().double().numpy()
                     for x, lm in zip(xs, lms)])
    err_full = np.linalg.norm(full - np.stack(ref_full), axis=1)
    assert err_full.max() < 5e-3, err_full
    # same / different decisions at 0.6 agree
    D_t = np.linalg.norm(d[:, None] - d[None], axis=-1)
    ref = np.stack(ref_chip)
    D_d = np.linalg.norm(ref[:, None] - ref[None], axis=-1)
    assert ((D_t < 0.6) == (D_d < 0.6)).all()


def test_batched_equals_one_at_a_time_and_bf16(net, faces):
    img, pts = faces[0]
    x = torch.from_numpy(img).float()[None] / 255
    chip = face_chips(x, torch.from_numpy(pts + 0.5)[None])
    batch = torch.cat([chip, chip.flip(-1), chip * 0.9])
    with torch.no_grad():
        d = net(batch)
        one = torch.cat([net(batch[i:i + 1]) for i in range(3)])
        torch.testing.assert_close(d, one, rtol=1e-4, atol=1e-5)
        net_bf = DlibFaceNet.from_dlib(dtype=torch.bfloat16)
        bf = net_bf(batch)
        assert float(IdentityLoss(net_bf)(batch, d)) < 0.01  # float32 images, a bf16 network, float32 targets
    assert bf.dtype == torch.bfloat16
    assert cosine_similarity(bf.float(), d).min() > 0.99
    # the network's dtype casts the input; a wrong device or shape is refused
    with pytest.raises(ShapeError, match=r"\(B, 3, 150, 150\)"):
        net(batch[:, :, :100])
    with pytest.raises(ShapeError, match="floating"):
        net((batch * 255).to(torch.uint8))


def test_zero_padded_add_and_features(net, faces):
    a = torch.ones(1, 2, 3, 3)
    b = torch.full((1, 4, 4, 4), 2.0)
    s = add_zero_padded(a, b)
    assert s.shape == (1, 4, 4, 4)
    assert s[0, 0, 0, 0] == 3 and s[0, 0, 3, 3] == 2 and s[0, 3, 0, 0] == 2
    img, pts = faces[1]
    chip = face_chips(torch.from_numpy(img).float()[None] / 255, torch.from_numpy(pts + 0.5)[None])
    with torch.no_grad():
        f = net.features(chip, ["stem", "level4", "level3", "level2", "level1", "level0", "descriptor"])
        shapes = {k: tuple(v.shape[1:]) for k, v in f.items()}
        assert shapes == {"stem": (32, 35, 35), "level4": (32, 35, 35), "level3": (64, 17, 17),
                          "level2": (128, 8, 8), "level1": (256, 4, 4), "level0": (256, 2, 2), "descriptor": (128,)}
        torch.testing.assert_close(f["descriptor"], net(chip))
        torch.testing.assert_close(net.features(chip, ["level3"])["level3"], f["level3"])
    with pytest.raises(ValueError, match="feature names"):
        net.features(chip, ["fc7"])


# ---------------------------------------------------------------------------------------------------------------
# chips


def test_chips_match_dlib_get_face_chip(dlib_ready, faces):
    """Float chips equal dlib.get_face_chip on float64 images (per channel) to 1e-8, with and without the image
    pyramid; quantize=True gives dlib's uint8 chips up to +-1 on a few pixels."""
    import dlib

    levels = set()
    for img, pts in faces[:6]:
        shape = _shape(pts)
        lm = torch.from_numpy(pts + 0.5)[None]
        x = torch.from_numpy(img).double()[None] / 255
        ours = face_chips(x, lm)[0].numpy() * 255
        for c in range(3):
            ref = dlib.get_face_chip(np.ascontiguousarray(img[..., c], dtype=np.float64), shape, CHIP_SIZE, 0.25)
            np.testing.assert_allclose(ours[c], ref, atol=1e-8)
        q = face_chips(x, lm, quantize=True)[0].permute(1, 2, 0).numpy() * 255
        ref = dlib.get_face_chip(img, shape, CHIP_SIZE, 0.25).astype(np.float64)
        diff = np.abs(np.round(q) - ref)
        assert diff.max() <= 1 and (diff > 0).mean() < 0.02
        det = face_chip_details(lm, CHIP_SIZE, 0.25, image_size=img.shape[:2])
        ref_det = dlib.get_face_chip_details(shape, CHIP_SIZE, 0.25)
        assert float(det.angle[0]) == pytest.approx(ref_det.angle, abs=1e-12)
        assert float(det.scale[0]) * CHIP_SIZE == pytest.approx(ref_det.rect.width(), rel=1e-12)
        levels.add(det.level[0])
    assert levels >= {-1, 0}  # both the direct and the pyramid path were compared


def test_chips_five_points_and_other_sizes(dlib_ready, faces):
    import dlib

    img, _ = faces[0]
    sp = dlib.shape_predictor(str(default_model_path().parent / "shape_predictor_5_face_landmarks.dat"))
    rect = dlib.get_frontal_face_detector()(img, 0)[0]
    shape = sp(img, rect)
    pts = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
    x = torch.from_numpy(img).double()[None] / 255
    for size, pad in ((150, 0.25), (96, float(np.float32(0.4)))):  # dlib's Python binding takes a float32 padding
        ours = face_chips(x, torch.from_numpy(pts + 0.5)[None], size, pad)[0].numpy() * 255
        ref = dlib.get_face_chip(np.ascontiguousarray(img[..., 1], dtype=np.float64), shape, size, pad)
        np.testing.assert_allclose(ours[1], ref, atol=1e-8)


def test_chip_matrix_maps_chip_pixels_to_the_image(faces):
    img, pts = faces[0]
    lm = torch.from_numpy(pts + 0.5)[None].double()
    det = face_chip_details(lm)
    # a synthetic image whose red channel encodes x and green encodes y: the chip shows where each pixel came from
    H, W = 300, 400
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64),
                            indexing="ij")
    coded = torch.stack([xx / W, yy / H, torch.zeros_like(xx)], -1)[None]
    small = torch.tensor([[[120.5, 100.5]]], dtype=torch.float64) + (lm - lm.mean(1, keepdim=True)) * 0.3
    d2 = face_chip_details(small, image_size=(H, W))
    assert d2.level == [-1]
    chip = face_chips(coded, small, min_eye_distance=1.0)[0]
    c = torch.tensor([40.5, 70.5, 1.0], dtype=torch.float64)  # a chip pixel centre
    xy = d2.matrix[0] @ c
    r, col = 70, 40
    # image coordinate of the sample = value * size + 0.5 (pixel centres at +0.5)
    got = torch.stack([chip[0, r, col] * W, chip[1, r, col] * H]) + 0.5
    torch.testing.assert_close(got, xy, atol=1e-6, rtol=0)
    assert det.matrix.shape == (1, 2, 3)


def test_chip_inputs_are_checked(faces):
    img, pts = faces[0]
    x = torch.from_numpy(img).float()[None] / 255
    lm = torch.from_numpy(pts + 0.5)[None]
    assert face_chips(x.permute(0, 3, 1, 2), lm).shape == (1, 3, 150, 150)  # (B, 3, H, W) works too
    torch.testing.assert_close(face_chips(x.permute(0, 3, 1, 2), lm), face_chips(x, lm))
    with pytest.raises(ShapeError, match="floating point"):
        face_chips(torch.from_numpy(img)[None], lm)
    with pytest.raises(ShapeError, match=r"\[0, 1\]"):
        face_chips(x * 255, lm)
    with pytest.raises(ShapeError, match=r"\(B, 68, 2\)"):
        face_chips(x, lm[:, :30])
    with pytest.raises(ShapeError, match="2 faces but the images 1"):
        face_chips(x, torch.cat([lm, lm]))
    with pytest.raises(ShapeError, match="NaN"):
        face_chips(x, lm * float("nan"))
    with pytest.raises(ShapeError, match="RGB"):
        face_chips(x[..., :2], lm)
    tiny = (lm - lm.mean(1, keepdim=True)) * 0.02 + 100
    with pytest.raises(FaceTooSmallError, match="too small to align"):
        face_chips(x, tiny)
    assert issubclass(FaceTooSmallError, NoFaceError)
    far = lm + 10_000
    with pytest.raises(NoFaceError, match="outside"):
        face_chips(x, far)


# ---------------------------------------------------------------------------------------------------------------
# losses and gradients


def test_identity_loss_values(net, faces):
    imgs = [torch.from_numpy(img).float()[None] / 255 for img, _ in faces[:2]]
    lms = [torch.from_numpy(p + 0.5)[None] for _, p in faces[:2]]
    loss = IdentityLoss(net, reduction="none")
    same = loss(imgs[0], imgs[0], lms[0])
    assert same.shape == (1,) and float(same) == pytest.approx(0.0, abs=1e-5)
    diff = loss(imgs[0], imgs[1], lms[0], lms[1])
    assert 0.05 < float(diff) < 2
    # against precomputed descriptors; the chips path equals the image path
    d1 = loss.descriptors(imgs[1], lms[1])
    torch.testing.assert_close(loss(imgs[0], d1, lms[0]), diff)
    chip0 = face_chips(imgs[0], lms[0])
    torch.testing.assert_close(loss(chip0, d1), diff)
    fl = IdentityFeatureLoss(net)
    assert float(fl(imgs[0], imgs[0], lms[0])) == pytest.approx(0.0, abs=1e-6)
    assert float(fl(imgs[0], imgs[1], lms[0], lms[1])) > 0.01
    with pytest.raises(ValueError, match="reduction"):
        IdentityLoss(net, reduction="max")
    with pytest.raises(ShapeError, match="aligned chips"):
        loss(imgs[0], imgs[1])  # no landmarks: must be chips


def test_identity_loss_gradient_flows_to_pixels(net, faces):
    img, pts = faces[0]
    x = (torch.from_numpy(img).float()[None] / 255).requires_grad_(True)
    lm = torch.from_numpy(pts + 0.5)[None]
    target = torch.from_numpy(faces[1][0]).float()[None] / 255
    loss = IdentityLoss(net)(x, target, lm, torch.from_numpy(faces[1][1] + 0.5)[None])
    loss.backward()
    g = x.grad[0].abs().sum(-1)
    ys, xs = torch.nonzero(g > 0, as_tuple=True)
    # only pixels inside the chip's footprint get gradient, and they do
    assert g.sum() > 0 and len(ys) > 1000
    box = pts.min(0), pts.max(0)
    assert box[0][1] - 80 < float(ys.float().median()) < box[1][1] + 80


def test_gradcheck_identity_loss_float64_small_crop(dlib_ready):
    """float64 gradcheck of 1 - cos w.r.t. the input image, on a 24x24 crop of a face (landmarks scaled into it)."""
    net64 = DlibFaceNet.from_dlib(dtype=torch.float64)
    rng = np.random.default_rng(4)
    from facerender.identity.chips import _MEAN_X, _MEAN_Y

    pts = np.zeros((68, 2))
    pts[17:, 0], pts[17:, 1] = np.array(_MEAN_X) * 14 + 5, np.array(_MEAN_Y) * 14 + 5
    pts[:17] = pts[17:34]  # unused by the alignment
    lm = torch.from_numpy(pts + rng.normal(0, 0.2, pts.shape))[None]
    img = torch.from_numpy(rng.uniform(0.2, 0.8, size=(1, 24, 24, 3))).requires_grad_(True)
    target = net64(face_chips(torch.from_numpy(rng.uniform(0.2, 0.8, size=(1, 24, 24, 3))), lm,
                              min_eye_distance=1.0)).detach()
    loss = IdentityLoss(net64, min_eye_distance=1.0)
    # the whole crop (fast mode: random directions), then every pixel of a 3x3 patch inside the face (full)
    assert torch.autograd.gradcheck(lambda im: loss(im, target, lm), (img,), eps=1e-6, atol=1e-5,
                                    fast_mode=True)
    base = img.detach()
    mask = torch.zeros(1, 24, 24, 1, dtype=torch.float64)
    mask[:, 10:13, 11:14] = 1

    def with_patch(patch):
        return loss(base * (1 - mask) + torch.nn.functional.pad(patch, (0, 0, 11, 10, 10, 11)), target, lm)

    patch = base[:, 10:13, 11:14].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(with_patch, (patch,), eps=1e-6, atol=1e-7)  # gradients here ~1e-3


def test_gradcheck_face_chips_float64(faces):
    """The warp (with a pyramid level) is linear in the image (fast-mode gradcheck) and smooth in the landmarks
    (full gradcheck)."""
    rng = np.random.default_rng(5)
    from facerender.identity.chips import _MEAN_X, _MEAN_Y

    pts = np.zeros((68, 2))
    pts[17:, 0], pts[17:, 1] = np.array(_MEAN_X) * 60 + 10, np.array(_MEAN_Y) * 60 + 10
    lm = torch.from_numpy(pts)[None].requires_grad_(True)
    img = torch.from_numpy(rng.uniform(0, 1, size=(1, 90, 90, 3))).requires_grad_(True)
    assert face_chip_details(lm.detach(), 12, 0.25).level[0] >= 0  # the pyramid is on this path
    assert torch.autograd.gradcheck(lambda im: face_chips(im, lm.detach(), 12, 0.25, min_eye_distance=1.0),
                                    (img,), eps=1e-6, atol=1e-6, fast_mode=True)
    small = img[:, :30, :30].detach().clone()
    # jittered: sample positions exactly on pixel centres would sit on the kinks of bilinear interpolation
    lm2 = (lm.detach() * 0.3 + torch.from_numpy(rng.normal(0, 0.3, (1, 68, 2)))).requires_grad_(True)
    assert face_chip_details(lm2.detach(), 8, 0.25, image_size=(30, 30)).level[0] == 0
    assert torch.autograd.gradcheck(lambda p: face_chips(small.detach(), p, 8, 0.25, min_eye_distance=1.0),
                                    (lm2,), eps=1e-6, atol=1e-5)  # full check w.r.t. the landmarks


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(net, faces):
    img, pts = faces[0]
    x = torch.from_numpy(img).float()[None] / 255
    lm = torch.from_numpy(pts + 0.5)[None]
    with torch.no_grad():
        cpu = net(face_chips(x, lm))
        gpu_net = DlibFaceNet.from_dlib(device="cuda")
        gpu = gpu_net(face_chips(x.cuda(), lm.cuda()))
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-3)
