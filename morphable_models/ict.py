"""ICT-FaceKit (ICT Face Model Light, MIT licence): installation into the cache, and loading as a model.

Installation reads ``FaceXModel/`` (found at any depth) from a ``.zip`` / ``.tar.*`` archive, a directory (a clone)
or the official GitHub archive (downloaded when online), parses its 158 OBJs once and writes one compact file:

``$FACERENDER_HOME/models/ict-facekit/model.npz`` (uncompressed NumPy archive, about 51 MB), with ``LICENSE``
(ICT's MIT notice, kept with the converted copy) and ``meta.json``.

Precision of the cache: positions and deltas as float32 (about 7 significant digits; the OBJ files carry 6, so the
converted model reproduces every OBJ to better than 1e-5 cm), indices as int32.

Facts (checked on install): 26,719 vertices, 26,384 polygons (25,836 quads + 548 triangles = 52,220 triangles),
28,911 per-corner texture coordinates, 100 identity modes (standard-normal coefficients: each identity OBJ is the
neutral plus one standard deviation), 53 expressions listed in ``vertex_indices.json`` (blendshape weights in
[0, 1]) plus ``cheekRaiser_L/R`` and ``PupilDilate_L/R`` (files not in that list, kept as extra shapes).
Units: centimetres; y up, z towards the viewer.
"""
from __future__ import annotations

import hashlib
import json
import logging
import lzma
import os
import shutil
import tarfile
import tempfile
import time
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .errors import ModelFileError, ModelNotInstalledError
from .landmarks import IBUG68_LABELS, LandmarkEmbedding
from .linear import LinearFaceModel
from .obj_io import read_obj, read_obj_vertices, triangulate
from .paths import PathLike, facerender_home, shared_data_dir
from .regions import Region

log = logging.getLogger(__name__)

MODEL_NAME = "ict-facekit"
#: What a broken cache's error message suggests.
REPAIR_HINT = "reinstall it: 'facerender model install ict-facekit' repairs a broken cache"
#: Arrays every cache must hold.
REQUIRED_ARRAYS = ("neutral", "identity_deltas", "expression_deltas", "faces", "faces_uv", "uvs", "polygon_offsets",
                   "material_ranges")
GITHUB_ARCHIVE_URL = "https://github.com/ICT-VGL/ICT-FaceKit/archive/refs/heads/master.zip"
CACHE_VERSION = 1

NUM_VERTICES = 26719
NUM_POLYGONS = 26384
NUM_TRIANGLES = 52220
NUM_UVS = 28911
NUM_IDENTITY = 100
NEUTRAL_OBJ = "generic_neutral_mesh.obj"
EXTRA_EXPRESSIONS = ("cheekRaiser_L", "cheekRaiser_R", "PupilDilate_L", "PupilDilate_R")

# --- ICT-FaceKit README tables (INCLUSIVE ranges) ---------------------------------------------------------------
# name: (first vertex, last vertex, first polygon, last polygon, README label)
ICT_REGION_TABLE: Dict[str, Tuple[int, int, int, int, str]] = {
    "all": (0, 26718, 0, 26383, "All"),
    "face": (0, 9408, 0, 9229, "Face / Full face area"),
    "narrow_face": (0, 6705, 0, 6559, "Narrow face area"),
    "head_and_neck": (9409, 11247, 9230, 11143, "Head and Neck"),
    "mouth_socket": (11248, 13293, 11144, 13225, "Mouth socket"),
    "eye_socket_left": (13294, 13677, 13226, 13629, "Eye socket left"),
    "eye_socket_right": (13678, 14061, 13630, 14033, "Eye socket right"),
    "gums_and_tongue": (14062, 17038, 14034, 17005, "Gums and tongue"),
    "teeth": (17039, 21450, 17006, 21495, "Teeth"),
    "eyeball_left": (21451, 23020, 21496, 23093, "Eyeball left"),
    "eyeball_right": (23021, 24590, 23094, 24691, "Eyeball right"),
    "lacrimal_fluid_left": (24591, 24794, 24692, 24854, "Lacrimal fluid left"),
    "lacrimal_fluid_right": (24795, 24998, 24855, 25017, "Lacrimal fluid right"),
    "eye_blend_left": (24999, 25022, 25018, 25032, "Eye blend left"),
    "eye_blend_right": (25023, 25046, 25033, 25047, "Eye blend right"),
    "eye_occlusion_left": (25047, 25198, 25048, 25175, "Eye occlusion left"),
    "eye_occlusion_right": (25199, 25350, 25176, 25303, "Eye occlusion right"),
    "eyelashes_left": (25351, 26034, 25304, 25843, "Eyelashes left"),
    "eyelashes_right": (26035, 26718, 25844, 26383, "Eyelashes right"),
    "sclera_left": (21451, 22220, 21496, 22295, "Sclera left"),
    "iris_left": (22221, 23020, 22296, 23093, "Iris left"),
    "sclera_right": (23021, 23790, 23094, 23893, "Sclera right"),
    "iris_right": (23791, 24590, 23894, 24691, "Iris right"),
}
# Composite regions used by region maps and masks.
ICT_COMPOSITE_REGIONS: Dict[str, Tuple[str, ...]] = {
    "eyes": ("eyeball_left", "eyeball_right"),
    "mouth_interior": ("mouth_socket", "gums_and_tongue"),
    "head": ("face", "head_and_neck"),
    "skin": ("face", "head_and_neck", "eye_socket_left", "eye_socket_right"),
}

# Multi-PIE / iBUG 68 landmark vertex ids (0-based), from ICT's README.
ICT_IBUG68 = (
    1225, 1888, 1052, 367, 1719, 1722, 2199, 1447, 966, 3661, 4390, 3927, 3924, 2608, 3272, 4088, 3443, 268, 493,
    1914, 2044, 1401, 3615, 4240, 4114, 2734, 2509, 978, 4527, 4942, 4857, 1140, 2075, 1147, 4269, 3360, 1507, 1542,
    1537, 1528, 1518, 1511, 3742, 3751, 3756, 3721, 3725, 3732, 5708, 5695, 2081, 0, 4275, 6200, 6213, 6346, 6461,
    5518, 5957, 5841, 5702, 5711, 5533, 6216, 6207, 6470, 5517, 5966,
)
# "Right jawline (substitutes 0-7 in Multi PIE)" and "Left jawline (substitutes 9-16 in Multi PIE)".
ICT_JAWLINE_RIGHT = (1278, 1272, 12, 1834, 243, 781, 2199, 1447)
ICT_JAWLINE_LEFT = (3661, 4390, 3022, 2484, 4036, 2253, 3490, 3496)
# Extended jawlines (supersets of the jawlines above, ordered from the ear towards the chin / from the chin out).
ICT_JAWLINE_RIGHT_EXTENDED = (1280, 1278, 1275, 1272, 1248, 12, 820, 1834, 1902, 243, 844, 781, 1673, 2199, 801,
                              1447, 800)
ICT_JAWLINE_LEFT_EXTENDED = (3041, 3661, 3042, 4390, 3880, 3022, 3085, 2484, 4102, 4036, 3061, 2253, 3466, 3490,
                             3493, 3496, 3498)

MIT_NOTICE_FALLBACK = """MIT License

Copyright (c) 2020 USC Institute for Creative Technologies

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and associated
documentation files (the "Software"), to deal in the Software without restriction, including without limitation the
rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the Software, and to permit
persons to whom the Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or substantial portions of the
Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE
WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR
COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR
OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""


# ------------------------------------------------------------------------------------------------------------------
# locating the model files


def cache_dir(home: Optional[PathLike] = None) -> Path:
    """``$FACERENDER_HOME/models/ict-facekit``."""
    return facerender_home(home) / "models" / MODEL_NAME


def is_installed(home: Optional[PathLike] = None) -> bool:
    d = cache_dir(home)
    return (d / "model.npz").is_file() and (d / "meta.json").is_file()


def default_source() -> Optional[Path]:
    """The shared sample archive (``$FACERENDER_DATA/models/ict-facekit/ICT-FaceKit.tar.xz``) if present."""
    data = shared_data_dir()
    if data is not None:
        p = data / "models" / "ict-facekit" / "ICT-FaceKit.tar.xz"
        if p.is_file():
            return p
    return None


def _facex_key(name: str) -> Optional[Tuple[str, str]]:
    """Split an archive member name into (prefix before ``FaceXModel/``, file name) for files directly in it."""
    parts = name.replace("\\", "/").split("/")
    if len(parts) >= 2 and parts[-2] == "FaceXModel":
        prefix = "/".join(parts[:-2])
        return (prefix + "/" if prefix else ""), parts[-1]
    return None


#: Largest coordinate accepted in an ICT-FaceKit OBJ (cm; the head is about 25 cm wide).
MAX_OBJ_COORDINATE = 1e4


def _check_obj_values(vertices: np.ndarray, where: str) -> None:
    """Refuse an OBJ whose vertices hold NaN / inf or coordinates beyond :data:`MAX_OBJ_COORDINATE` (naming it)."""
    ok = np.isfinite(vertices)
    if not ok.all():
        i = int(np.argmax(~ok.all(1)))
        raise ModelFileError(f"{where}: vertex {i} (line 'v' #{i + 1}) is {vertices[i].tolist()}: NaN or inf; "
                             f"the file is corrupt")
    big = np.abs(vertices).max(1)
    if big.max() > MAX_OBJ_COORDINATE:
        i = int(np.argmax(big))
        raise ModelFileError(f"{where}: vertex {i} (line 'v' #{i + 1}) is {vertices[i].tolist()}: beyond "
                             f"{MAX_OBJ_COORDINATE:g} cm; the file is corrupt")


class _Collected:
    """Files gathered from a source: OBJ vertex arrays (or the parsed neutral), JSON, licence, README."""

    def __init__(self, origin: str, progress: Optional[Callable[[str], None]] = None):
        self.origin = origin
        self.prefix: Optional[str] = None
        self.vertices: Dict[str, np.ndarray] = {}
        self.neutral = None
        self.vertex_indices: Optional[dict] = None
        self.texts: Dict[Tuple[str, str], str] = {}
        self.progress = progress

    def add(self, member: str, read: Callable[[], bytes]) -> None:
        key = _facex_key(member)
        if key is not None:
            prefix, fname = key
            if self.prefix is None:
                self.prefix = prefix
            if prefix != self.prefix:
                return
            where = f"{self.origin}:{member}"
            if fname == NEUTRAL_OBJ:
                self.neutral = read_obj(read())
                if self.neutral.vertices.shape[0] != NUM_VERTICES:
                    raise ModelFileError(f"{where}: has {self.neutral.vertices.shape[0]} vertices, "
                                         f"expected {NUM_VERTICES}")
                _check_obj_values(self.neutral.vertices, where)
            elif fname.endswith(".obj"):
                try:
                    self.vertices[fname[:-4]] = read_obj_vertices(read(), NUM_VERTICES)
                except ModelFileError as e:
                    raise ModelFileError(f"{where}: {str(e).replace('<bytes>: ', '')}") from None
                _check_obj_values(self.vertices[fname[:-4]], where)
            elif fname == "vertex_indices.json":
                try:
                    self.vertex_indices = json.loads(read().decode("utf-8"))
                except (ValueError, UnicodeDecodeError) as e:
                    raise ModelFileError(f"{where}: not valid JSON ({e})") from None
            else:
                return
            if self.progress:
                self.progress(fname)
            return
        name = member.replace("\\", "/")
        folder, _, base = name.rpartition("/")
        if base in ("LICENSE", "README.md"):
            self.texts[(folder + "/" if folder else "", base)] = read().decode("utf-8", errors="replace")

    def text(self, base: str) -> Optional[str]:
        """The LICENSE / README.md beside the FaceXModel folder."""
        return self.texts.get((self.prefix or "", base))


def _collect_tar(path: Path, col: _Collected) -> None:
    try:
        with tarfile.open(path, mode="r:*") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                f = tf.extractfile(m)
                if f is None:
                    continue
                col.add(m.name, f.read)
    except (tarfile.TarError, EOFError, lzma.LZMAError, zlib.error, OSError) as e:
        raise ModelFileError(f"{path}: corrupt or truncated archive ({type(e).__name__}: {e})") from None


def _collect_zip(path: Path, col: _Collected) -> None:
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                col.add(info.filename, lambda info=info: zf.read(info))
    except (zipfile.BadZipFile, EOFError, zlib.error, OSError) as e:
        raise ModelFileError(f"{path}: corrupt or truncated archive ({type(e).__name__}: {e})") from None


def _collect_dir(path: Path, col: _Collected) -> None:
    hits = sorted(path.rglob(f"FaceXModel/{NEUTRAL_OBJ}"), key=lambda p: len(p.parts))
    if not hits:
        raise ModelFileError(f"{path}: no FaceXModel/{NEUTRAL_OBJ} found in this folder (searched at any depth)")
    facex = hits[0].parent
    root = facex.parent
    for f in sorted(facex.iterdir()):
        if f.is_file():
            col.add(str(f.relative_to(path)).replace(os.sep, "/"), f.read_bytes)
    for extra in ("LICENSE", "README.md"):
        p = root / extra
        if p.is_file():
            col.add(str(p.relative_to(path)).replace(os.sep, "/"), p.read_bytes)


def _download(url: str, dest: Path) -> None:
    log.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(dest, "wb") as f:
            shutil.copyfileobj(r, f)
    except OSError as e:
        raise ModelFileError(
            f"could not download {url} ({e}). Without network access, pass a local copy: "
            f"'facerender model install ict-facekit --from PATH' with the ICT-FaceKit archive or a clone"
        ) from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------------------------
# install


def install_ict(
    source: Optional[PathLike] = None,
    home: Optional[PathLike] = None,
    *,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Convert ICT-FaceKit into the cache and return the cache folder.

    Args:
        source: a ``.zip`` or ``.tar.*`` archive, a folder (a clone), an ``http(s)`` URL, or None: the shared
            sample archive if present (``$FACERENDER_DATA``), else the official GitHub archive.
        home: cache root (default ``$FACERENDER_HOME`` or ``~/.cache/facerender``).
        progress: show a progress bar while parsing.
        force: reinstall even if a cache exists.
    Raises:
        ModelFileError: unreadable / corrupt / truncated source, a missing OBJ, an OBJ with the wrong vertex
            count (the message names the file). A failed install leaves no partial cache.
    """
    dest = cache_dir(home)
    if is_installed(home) and not force:
        problem = cache_problem(home)
        if problem is None:
            log.info("ICT-FaceKit already installed in %s", dest)
            return dest
        log.warning("the cached ICT-FaceKit is broken (%s): reinstalling", problem)
    t0 = time.perf_counter()
    tmp_download = None
    if source is None:
        source = default_source()
        if source is None:
            source = GITHUB_ARCHIVE_URL
    src_str = str(source)
    try:
        if src_str.startswith(("http://", "https://")):
            fd, name = tempfile.mkstemp(suffix=".zip")
            os.close(fd)
            tmp_download = Path(name)
            _download(src_str, tmp_download)
            path = tmp_download
        else:
            path = Path(source).expanduser()
            if not path.exists():
                raise ModelFileError(f"{path}: no such file or folder")

        bar = None
        if progress:
            try:
                from ._progress import progress_bar

                bar = progress_bar(total=1 + NUM_IDENTITY + 53 + len(EXTRA_EXPRESSIONS) + 1, unit="file",
                                   desc="ICT-FaceKit", leave=False)
            except ImportError:  # pragma: no cover
                bar = None
        col = _Collected(str(path), (lambda _n: bar.update(1)) if bar is not None else None)
        try:
            if path.is_dir():
                _collect_dir(path, col)
            elif zipfile.is_zipfile(path):
                _collect_zip(path, col)
            else:
                try:
                    is_tar = tarfile.is_tarfile(path)
                except (OSError, EOFError, lzma.LZMAError) as e:
                    raise ModelFileError(f"{path}: corrupt or truncated archive ({e})") from None
                if not is_tar:
                    raise ModelFileError(f"{path}: not a zip or tar archive, nor a folder")
                _collect_tar(path, col)
        finally:
            if bar is not None:
                bar.close()
        arrays, meta = _convert(col, path)
        meta["source"] = src_str
        meta["source_sha256"] = _sha256(path) if path.is_file() else None
        meta["install_seconds"] = round(time.perf_counter() - t0, 2)
        _write_cache(dest, arrays, meta, col.text("LICENSE") or MIT_NOTICE_FALLBACK)
    finally:
        if tmp_download is not None and tmp_download.exists():
            tmp_download.unlink()
    log.info("installed ICT-FaceKit into %s in %.1f s", dest, time.perf_counter() - t0)
    return dest


def _convert(col: _Collected, path: Path) -> Tuple[Dict[str, np.ndarray], dict]:
    if col.prefix is None and col.neutral is None:
        raise ModelFileError(f"{path}: no FaceXModel/ folder found (searched at any depth)")
    where = f"{path}:{col.prefix or ''}FaceXModel/"
    if col.neutral is None:
        raise ModelFileError(f"{where}{NEUTRAL_OBJ} is missing")
    if col.vertex_indices is None:
        raise ModelFileError(f"{where}vertex_indices.json is missing")
    neutral = col.neutral
    if len(neutral.polygons) != NUM_POLYGONS:
        raise ModelFileError(f"{where}{NEUTRAL_OBJ}: {len(neutral.polygons)} polygons, expected {NUM_POLYGONS}")
    if neutral.uvs.shape[0] != NUM_UVS:
        raise ModelFileError(f"{where}{NEUTRAL_OBJ}: {neutral.uvs.shape[0]} texture coordinates, expected {NUM_UVS}")
    tris, offsets = triangulate(neutral.polygons)
    tris_uv, _ = triangulate(neutral.polygons_uv)
    if tris.shape[0] != NUM_TRIANGLES:
        raise ModelFileError(f"{where}{NEUTRAL_OBJ}: {tris.shape[0]} triangles, expected {NUM_TRIANGLES}")
    expressions = list(col.vertex_indices.get("expressions", []))
    if len(expressions) != 53:
        raise ModelFileError(f"{where}vertex_indices.json lists {len(expressions)} expressions, expected 53")
    identity_names = [f"identity{k:03d}" for k in range(NUM_IDENTITY)]
    missing = [n + ".obj" for n in identity_names + expressions if n not in col.vertices]
    if missing:
        raise ModelFileError(f"{where}: missing OBJ file(s): {', '.join(missing[:8])}"
                             + (f" and {len(missing) - 8} more" if len(missing) > 8 else ""))
    extras = [n for n in EXTRA_EXPRESSIONS if n in col.vertices]
    for n in EXTRA_EXPRESSIONS:
        if n not in col.vertices:
            log.warning("%s%s.obj not found; continuing without it", where, n)
    v0 = neutral.vertices
    id_deltas = np.stack([col.vertices[n] - v0 for n in identity_names]).astype(np.float32)
    ex_names = expressions + extras
    ex_deltas = np.stack([col.vertices[n] - v0 for n in ex_names]).astype(np.float32)
    vi = col.vertex_indices
    lm = [int(i) for i in vi.get("idx_to_landmark_verts", [])]
    if lm and tuple(lm) != ICT_IBUG68:
        log.warning("vertex_indices.json landmark list differs from ICT's README; using the README's")
    groups = list(neutral.material_groups.items())
    arrays = {
        "neutral": v0.astype(np.float32),
        "identity_deltas": id_deltas,
        "expression_deltas": ex_deltas,
        "faces": tris.astype(np.int32),
        "faces_uv": tris_uv.astype(np.int32),
        "uvs": neutral.uvs.astype(np.float32),
        "polygon_offsets": offsets.astype(np.int32),
        "material_ranges": np.asarray([r for _, r in groups], dtype=np.int32).reshape(-1, 2),
    }
    meta = {
        "model": MODEL_NAME,
        "cache_version": CACHE_VERSION,
        "precision": "float32 positions and deltas (OBJ files carry 6 significant digits); int32 indices",
        "num_vertices": int(v0.shape[0]),
        "num_polygons": len(neutral.polygons),
        "num_triangles": int(tris.shape[0]),
        "num_uvs": int(neutral.uvs.shape[0]),
        "identity_names": identity_names,
        "expression_names": ex_names,
        "fitting_expressions": list(vi.get("fitting_expressions", expressions)),
        "extra_expressions": extras,
        "material_names": [g for g, _ in groups],
        "vertex_indices": {k: v for k, v in vi.items() if k.startswith("idx_to_")},
        "units": "cm",
        "axes": "x subject's left, y up, z towards the viewer",
        "license": "MIT, (c) 2020 USC Institute for Creative Technologies",
    }
    return arrays, meta


def _write_cache(dest: Path, arrays: Dict[str, np.ndarray], meta: dict, license_text: str) -> None:
    """Write into a temporary sibling folder, then rename: a failure leaves no partial cache."""
    from .store import check_arrays, write_manifest

    check_arrays(arrays, f"{dest} (about to be written)")  # never write a model that would fail far away
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        with open(tmp / "model.npz", "wb") as f:
            np.savez(f, **arrays)
        write_manifest(tmp, arrays)  # sizes, shapes, checksums: checked on every load
        (tmp / "LICENSE").write_text(license_text)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        old = None
        if dest.exists():
            old = dest.parent / f".{dest.name}.old-{os.getpid()}"
            os.replace(dest, old)
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ------------------------------------------------------------------------------------------------------------------
# load


def _read_cache(home: Optional[PathLike]) -> Tuple[Dict[str, np.ndarray], dict, Path]:
    d = cache_dir(home)
    if not is_installed(home):
        raise ModelNotInstalledError(
            f"ICT-FaceKit is not installed in {d}. Install it with 'facerender model install ict-facekit "
            f"[--from ARCHIVE_OR_FOLDER]' or morphable_models.ict.install_ict(...)"
        )
    from .store import add_missing_manifest, verify_manifest

    fix = REPAIR_HINT
    verify_manifest(d, fix=fix)  # size and per-array checksums from the zip directory (a few KB read)
    try:
        meta = json.loads((d / "meta.json").read_text())
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{d}: meta.json is unreadable ({type(e).__name__}: {e}); {fix}") from None
    try:
        with np.load(d / "model.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}  # numpy verifies each array's CRC-32 while reading
    except (OSError, ValueError, zipfile.BadZipFile, KeyError, EOFError) as e:
        raise ModelFileError(f"{d}: model.npz is unreadable ({type(e).__name__}: {e}); {fix}") from None
    if not isinstance(meta, dict) or meta.get("cache_version") != CACHE_VERSION:
        got = meta.get("cache_version") if isinstance(meta, dict) else type(meta).__name__
        raise ModelFileError(f"{d}: cache version {got} != {CACHE_VERSION}; {fix}")
    missing = [k for k in REQUIRED_ARRAYS if k not in arrays]
    if missing:
        raise ModelFileError(f"{d}: model.npz lacks {', '.join(missing)}; {fix}")
    if not verify_manifest(d, arrays, fix=fix):
        add_missing_manifest(d, arrays, str(d / "model.npz"))  # installed before manifests existed
    for k in ("expression_names", "fitting_expressions", "identity_names"):
        if k not in meta:
            raise ModelFileError(f"{d}: meta.json lacks {k!r}; {fix}")
    return arrays, meta, d


def cache_problem(home: Optional[PathLike] = None) -> Optional[str]:
    """What is wrong with the installed cache (None: it loads and passes every check). Reads the whole cache (about
    0.2 s); :func:`install_ict` uses it to repair a broken cache without ``force``."""
    try:
        _read_cache(home)
    except (ModelFileError, ModelNotInstalledError) as e:
        return str(e)
    return None


def ict_landmarks() -> Dict[str, LandmarkEmbedding]:
    """The landmark sets of ICT-FaceKit (vertex ids from its README)."""
    alt = list(ICT_IBUG68)
    alt[0:8] = ICT_JAWLINE_RIGHT
    alt[9:17] = ICT_JAWLINE_LEFT
    return {
        "ibug68": LandmarkEmbedding.from_vertices("ibug68", ICT_IBUG68, IBUG68_LABELS),
        "ibug68_alt_jawline": LandmarkEmbedding.from_vertices("ibug68_alt_jawline", alt, IBUG68_LABELS),
        "jawline_right": LandmarkEmbedding.from_vertices("jawline_right", ICT_JAWLINE_RIGHT),
        "jawline_left": LandmarkEmbedding.from_vertices("jawline_left", ICT_JAWLINE_LEFT),
        "jawline_right_extended": LandmarkEmbedding.from_vertices("jawline_right_extended",
                                                                  ICT_JAWLINE_RIGHT_EXTENDED),
        "jawline_left_extended": LandmarkEmbedding.from_vertices("jawline_left_extended", ICT_JAWLINE_LEFT_EXTENDED),
    }


def ict_regions(polygon_offsets: np.ndarray, faces: np.ndarray, vertex_indices: Optional[dict] = None
                ) -> Dict[str, Region]:
    """Named regions from ICT's README tables (inclusive ranges) and ``vertex_indices.json``."""
    regions = {
        name: Region.from_ranges(name, (v0, v1), (p0, p1), polygon_offsets, f"ICT README: {label}")
        for name, (v0, v1, p0, p1, label) in ICT_REGION_TABLE.items()
    }
    for name, parts in ICT_COMPOSITE_REGIONS.items():
        r = regions[parts[0]]
        for p in parts[1:]:
            r = r.union(regions[p])
        regions[name] = Region(name, r.vertex_ids, r.face_ids, "union of " + ", ".join(parts))
    vi = vertex_indices or {}
    for key, name in (("idx_to_fitting_verts", "fitting"), ("idx_to_rigid_verts", "rigid")):
        if key in vi:
            regions[name] = Region.from_vertices(name, np.asarray(vi[key], dtype=np.int64), faces,
                                                 f"vertex_indices.json: {key}")
    return regions


def load_ict(
    home: Optional[PathLike] = None,
    *,
    expressions: Union[str, Sequence[str]] = "fitting",
    dtype: torch.dtype = torch.float32,
    device: Optional[Union[str, torch.device]] = None,
    region: Optional[str] = None,
    install: bool = False,
) -> LinearFaceModel:
    """Load ICT-FaceKit from the cache (about 0.1 s).

    Args:
        home: cache root.
        expressions: ``"fitting"`` (the 53 shapes of ``vertex_indices.json``, default), ``"all"`` (+ cheekRaiser_L/R,
            PupilDilate_L/R) or a list of names.
        dtype, device: of the model's buffers.
        region: optional region name: return ``model.submodel(region)`` (e.g. ``"face"``).
        install: install from :func:`default_source` first if the cache is missing.
    """
    if install and not is_installed(home):
        install_ict(None, home)
    arrays, meta, d = _read_cache(home)
    all_names: List[str] = list(meta["expression_names"])
    if expressions == "fitting":
        names = [n for n in meta["fitting_expressions"] if n in all_names]
    elif expressions == "all":
        names = all_names
    else:
        names = list(expressions)
        unknown = [n for n in names if n not in all_names]
        if unknown:
            raise KeyError(f"unknown ICT expressions {unknown}; available: {', '.join(all_names)}")
    idx = [all_names.index(n) for n in names]
    ex = arrays["expression_deltas"][idx]
    faces = arrays["faces"].astype(np.int64)
    model = LinearFaceModel(
        torch.from_numpy(arrays["neutral"]),
        torch.from_numpy(faces),
        torch.from_numpy(arrays["identity_deltas"]),
        torch.from_numpy(np.ascontiguousarray(ex)),
        identity_names=meta["identity_names"],
        expression_names=names,
        expression_kind="blendshape",
        uvs=torch.from_numpy(arrays["uvs"]),
        faces_uv=torch.from_numpy(arrays["faces_uv"].astype(np.int64)),
        landmarks=ict_landmarks(),
        regions=ict_regions(arrays["polygon_offsets"].astype(np.int64), faces, meta.get("vertex_indices")),
        name=MODEL_NAME,
        license="MIT, (c) 2020 USC Institute for Creative Technologies (see LICENSE in the cache folder)",
        units="cm",
        dtype=dtype,
        extra={"cache_dir": str(d), "polygon_offsets": arrays["polygon_offsets"].astype(np.int64),
               "material_names": meta.get("material_names", []),
               "material_ranges": arrays["material_ranges"].astype(np.int64),
               "vertex_indices": meta.get("vertex_indices", {})},
    )
    if device is not None:
        model = model.to(device)
    if region is not None:
        model = model.submodel(region)
    return model


def model_info(home: Optional[PathLike] = None) -> dict:
    """A summary of the installed model (for ``facerender model info``)."""
    model = load_ict(home, expressions="all")
    d = cache_dir(home)
    meta = json.loads((d / "meta.json").read_text())
    size = (d / "model.npz").stat().st_size
    return {
        "name": MODEL_NAME,
        "file": str(d / "model.npz"),
        "file_size_mb": round(size / 2**20, 1),
        "precision": meta["precision"],
        "license": meta["license"],
        "license_file": str(d / "LICENSE"),
        "source": meta.get("source"),
        "vertices": model.num_vertices,
        "polygons": meta["num_polygons"],
        "triangles": model.num_faces,
        "uvs": int(model.uvs.shape[0]),
        "identity_components": model.num_identity,
        "expression_components": len(meta["fitting_expressions"]),
        "extra_expressions": meta.get("extra_expressions", []),
        "albedo_components": 0,
        "landmark_sets": {k: len(v) for k, v in model.landmarks.items()},
        "regions": {k: (r.num_vertices, r.num_faces) for k, r in model.regions.items()},
        "units": meta["units"],
        "axes": meta["axes"],
    }
