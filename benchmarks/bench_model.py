"""Benchmark the morphable-model core: install from the archive, cached load, forward pass.

Usage:  python benchmarks/bench_model.py [--archive PATH] [--repeats 20] [--json out.json] [--skip-install]

Prints a Markdown table. Torch runs with 2 threads (the reference machine has 2 cores).
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from morphable_models import ict, load_ict


from _timing import median_ms  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--archive", default=None, help="ICT-FaceKit archive (default: the shared sample archive)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json", default=None)
    ap.add_argument("--skip-install", action="store_true", help="use the existing cache instead of installing")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as home:
        if args.skip_install:
            home = None
        else:
            src = args.archive or ict.default_source()
            t = time.perf_counter()
            ict.install_ict(src, home=home, progress=False)
            rows.append(("install from archive (parse 158 OBJs, write cache)", "-", (time.perf_counter() - t) * 1e3))
            # a clone (FaceXModel/ two folders down), as tests/test_ict.py installs it; its old limit was 20 s
            import tarfile

            clone = Path(home) / "clone" / "deep" / "nest"
            clone.mkdir(parents=True)
            with tarfile.open(src) as tf:
                tf.extractall(clone, filter="data")
            t = time.perf_counter()
            ict.install_ict(Path(home) / "clone", home=Path(home) / "h2", progress=False)
            rows.append(("install from a folder (FaceXModel/ at depth 3)", "-", (time.perf_counter() - t) * 1e3))
        load_ict(home)
        rows.append(("load cache", "-", median_ms(lambda: load_ict(home), max(3, args.repeats // 4), warmup=1)))
        model = load_ict(home)
        face = model.submodel("face")
        for name, m in (("full head (26,719 v)", model), ("face area (9,409 v)", face)):
            for B in (1, 64):
                idc = torch.randn(B, m.num_identity)
                exc = torch.rand(B, m.num_expression)
                with torch.no_grad():
                    rows.append((f"forward {name}", B, median_ms(lambda: m(idc, exc), args.repeats)))
                idg = idc.clone().requires_grad_(True)
                exg = exc.clone().requires_grad_(True)

                def fb():
                    m(idg, exg).vertices.square().sum().backward()

                rows.append((f"forward+backward {name}", B, median_ms(fb, max(5, args.repeats // 2))))
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print("Wall-clock limits are printed here, not asserted in tests (issue 19): the tests used to require load cache "
          "< 500 ms and install from a folder < 20000 ms, which fail on a busy machine.")
    print("| operation | batch | median ms |")
    print("|---|---|---|")
    for op, b, ms in rows:
        print(f"| {op} | {b} | {ms:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps([dict(op=o, batch=b, ms=ms) for o, b, ms in rows], indent=1))


if __name__ == "__main__":
    main()
