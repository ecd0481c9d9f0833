"""Import time of ``facerender`` and the time of ``facerender --help``: this tree against an older commit, in the
same run (the older commit is checked out into a temporary ``git worktree``; nothing in this tree changes).

    python benchmarks/bench_import.py [--old REV] [--repeats 7] [--json out.json]

REV defaults to the commit before the lazy imports (the parent of the commit that added morphable_models/_lazy.py).
Each figure is the median (and the minimum) of ``--repeats`` fresh interpreters, run alternately old / new so that a
change of load on a shared machine hits both; ``python -c pass`` is the interpreter's own start-up.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASES = {
    "python -c pass": "pass",
    "import facerender": "import facerender",
    "import morphable_models": "import morphable_models",
    "facerender --help": ("import sys, contextlib, io\nfrom facerender.cli import main\n"
                          "with contextlib.redirect_stdout(io.StringIO()):\n"
                          "    try:\n        main(['--help'])\n    except SystemExit:\n        pass"),
    "facerender fit --help": ("import sys, contextlib, io\nfrom facerender.cli import main\n"
                              "with contextlib.redirect_stdout(io.StringIO()):\n"
                              "    try:\n        main(['fit', '--help'])\n    except SystemExit:\n        pass"),
}
PROBE = "\nimport sys; print('TORCH' if 'torch' in sys.modules else 'NO_TORCH')"


def default_old_rev() -> str:
    out = subprocess.run(["git", "log", "--diff-filter=A", "--format=%H", "--", "morphable_models/_lazy.py"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    if not out:
        raise SystemExit("cannot find the commit that added morphable_models/_lazy.py; pass --old REV")
    return out[-1] + "^"


def time_case(code: str, tree: Path):
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="0")
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code + PROBE], cwd=tree, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"{code!r} failed in {tree}: {r.stderr[-2000:]}")
    return dt, r.stdout.strip().splitlines()[-1] == "TORCH"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", default=None, help="the older commit (default: before the lazy imports)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rev = args.old or default_old_rev()
    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_import_") as tmp:
        wt = Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "--detach", str(wt), rev], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            trees = {"old": wt, "new": ROOT}
            for tree in trees.values():  # warm the byte-code caches once
                for code in CASES.values():
                    time_case(code, tree)
            res = {(k, c): [] for k in trees for c in CASES}
            torch_loaded = {}
            for _ in range(args.repeats):
                for c, code in CASES.items():
                    for k, tree in trees.items():
                        dt, tl = time_case(code, tree)
                        res[(k, c)].append(dt)
                        torch_loaded[(k, c)] = tl
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(wt)], cwd=ROOT, capture_output=True)
    load2 = os.getloadavg()
    print(f"old = {rev} ({sha}), new = this tree; {args.repeats} fresh interpreters each, alternating; "
          f"{os.cpu_count()} cores, load average {load[0]:.1f} -> {load2[0]:.1f} (other jobs on the machine)")
    print("| what | old median s (min) | new median s (min) | old / new | torch imported old / new |")
    print("|---|---|---|---|---|")
    rows = []
    for c in CASES:
        o, n = res[("old", c)], res[("new", c)]
        mo, mn = statistics.median(o), statistics.median(n)
        rows.append(dict(case=c, old_median=mo, old_min=min(o), new_median=mn, new_min=min(n),
                         torch_old=torch_loaded[("old", c)], torch_new=torch_loaded[("new", c)]))
        yn = lambda b: "yes" if b else "no"  # noqa: E731
        print(f"| {c} | {mo:.3f} ({min(o):.3f}) | {mn:.3f} ({min(n):.3f}) | {mo / mn:.1f}x | "
              f"{yn(torch_loaded[('old', c)])} / {yn(torch_loaded[('new', c)])} |")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(old=rev, old_sha=sha, load=[load, load2], rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
