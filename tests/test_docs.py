"""The documentation runs: every ```python block of README.md and docs/**/*.md is executed (the blocks of a page in
order, in one fresh interpreter, in a scratch folder beside a link to the sample data, so ``../shared/...`` paths
work as written), the cheap shell blocks too; a block that cannot run in the test suite is marked with
``<!-- not-run: REASON -->`` on the line before it, with a reason a user would accept. The API reference builds
from the docstrings without a warning (docs/build_api.py, pdoc), and the README's map of the docs is complete."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
FENCE = re.compile(r"^```([A-Za-z0-9_+-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
MARK = re.compile(r"<!--\s*not-run:\s*(.*?)\s*-->")
PYTHON = {"python", "py"}
SHELL = {"bash", "sh", "shell", "console"}
#: shell lines cheap enough for the test suite (help texts, facts)
CHEAP = [re.compile(p) for p in (r"^facerender( [^;&|]*)? (-h|--help)$", r"^facerender( --[a-z-]+( \S+)?)* model info$",
                                 r"^python -m pdoc --help$")]


def blocks(page: Path):
    """``(index, language, code, not-run reason or None, line)`` of each fenced block of ``page``."""
    text = page.read_text()
    out = []
    for i, m in enumerate(FENCE.finditer(text)):
        before = text[:m.start()].rstrip().splitlines()
        prev = before[-1] if before else ""
        mark = MARK.search(prev)
        out.append((i, m.group(1).lower(), m.group(2), mark.group(1) if mark else None,
                    text.count("\n", 0, m.start()) + 1))
    return out


def _rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _shell_lines(code: str):
    lines, cur = [], ""
    for raw in code.splitlines():
        line = raw.split("  #")[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        cur += line
        if cur.strip():
            lines.append(" ".join(cur.split()))
        cur = ""
    return lines


def _is_cheap(code: str) -> bool:
    lines = _shell_lines(code)
    return bool(lines) and all(any(p.match(line) for p in CHEAP) for line in lines)


def test_every_block_runs_or_says_why_not():
    counts = {"python run": 0, "python marked": 0, "shell run": 0, "shell marked": 0}
    for page in PAGES:
        for i, lang, code, reason, line in blocks(page):
            where = f"{_rel(page)}:{line}"
            if reason is not None:
                assert len(reason) >= 10, f"{where}: a not-run mark needs a reason a user would accept"
            if lang in PYTHON:
                counts["python marked" if reason else "python run"] += 1
            elif lang in SHELL:
                if reason is None:
                    assert _is_cheap(code), (f"{where}: this shell block is not cheap enough for the test suite: "
                                             f"mark it <!-- not-run: REASON --> or make it a --help")
                counts["shell marked" if reason else "shell run"] += 1
            else:
                assert reason is None, f"{where}: a not-run mark on a {lang or 'plain'} block (output is not run)"
    print(counts)
    assert counts["python run"] >= 15


def _pages_with_python():
    return [p for p in PAGES if any(lang in PYTHON and reason is None for _, lang, _, reason, _ in blocks(p))]


RUNNER = textwrap.dedent('''
    import sys, traceback, json
    blocks = json.load(open(sys.argv[1]))
    ns = {"__name__": "__main__"}
    for b in blocks:
        try:
            exec(compile(b["code"], f"{b['page']}:{b['line']}", "exec"), ns)
        except BaseException:
            traceback.print_exc()
            print(f"FAILED: the block at {b['page']}:{b['line']}", file=sys.stderr)
            sys.exit(1)
        print(f"ok {b['page']}:{b['line']}", flush=True)
''')


@pytest.fixture(scope="module")
def scratch(tmp_path_factory, shared_dir, ict_home):
    """A folder whose ``../shared`` is the sample data (as beside the repository) and the environment to run in."""
    root = tmp_path_factory.mktemp("docs")
    (root / "shared").symlink_to(shared_dir.resolve(), target_is_directory=True)
    work = root / "work"
    work.mkdir()
    env = dict(os.environ, FACERENDER_HOME=str(ict_home), FACERENDER_DATA=str(root / "shared"), MPLBACKEND="Agg",
               OMP_NUM_THREADS="1", FACERENDER_THREADS="1", PYTHONPATH=str(ROOT))
    return work, env


@pytest.mark.parametrize("page", _pages_with_python(), ids=_rel)
def test_python_blocks_run(page, scratch, tmp_path):
    import json

    work, env = scratch
    todo = [dict(page=_rel(page), line=line, code=code) for _, lang, code, reason, line in blocks(page)
            if lang in PYTHON and reason is None]
    head = "import torch; torch.set_num_threads(1)\n"  # the suite's machine is shared (team rules)
    todo.insert(0, dict(page="(setup)", line=0, code=head))
    spec = tmp_path / "blocks.json"
    spec.write_text(json.dumps(todo))
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    r = subprocess.run([sys.executable, str(runner), str(spec)], cwd=work, env=env, capture_output=True, text=True,
                       timeout=1200)
    assert r.returncode == 0, f"{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    assert r.stdout.count("\nok ") + r.stdout.startswith("ok ") == len(todo)


def test_cheap_shell_blocks_run(scratch):
    work, env = scratch
    ran = 0
    for page in PAGES:
        for _, lang, code, reason, line in blocks(page):
            if lang not in SHELL or reason is not None or not _is_cheap(code):
                continue  # an unmarked block that is not cheap fails test_every_block_runs_or_says_why_not
            for cmd in _shell_lines(code):
                r = subprocess.run(["bash", "-c", cmd], cwd=work, env=env, capture_output=True, text=True,
                                   timeout=300)
                assert r.returncode == 0, f"{_rel(page)}:{line}: {cmd}\n{r.stderr[-2000:]}"
                ran += 1
    assert ran >= 3


def test_api_reference_builds(tmp_path):
    """docs/build_api.py: pdoc over every module; any warning (an annotation that cannot be evaluated, a broken
    import) fails."""
    r = subprocess.run([sys.executable, str(ROOT / "docs" / "build_api.py"), "-o", str(tmp_path / "api")],
                       cwd=ROOT, capture_output=True, text=True, timeout=1800,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-4000:]
    for name in ("index.html", "facerender.html", "facerender/fitting.html", "morphable_models.html",
                 "neural_renderers.html"):
        assert (tmp_path / "api" / name).is_file(), name
    assert "fit_image" in (tmp_path / "api" / "facerender" / "fitting.html").read_text()


def test_readme_maps_every_page():
    readme = (ROOT / "README.md").read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{page.name}" in readme, f"README.md does not link docs/{page.name}"
    bench = ROOT / "docs" / "benchmarks"
    index = (bench / "README.md").read_text()
    for page in sorted(bench.glob("*.md")):
        if page.name != "README.md":
            assert f"({page.name})" in index, f"docs/benchmarks/README.md does not link {page.name}"
    assert "docs/benchmarks/README.md" in readme


def test_readme_quick_start_is_short():
    """The README's Python quick start: load, fit a photo, render, save in about 10 lines."""
    readme = (ROOT / "README.md").read_text()
    py = [code for _, lang, code, reason, _ in blocks(ROOT / "README.md") if lang in PYTHON and reason is None]
    assert len(py) == 1
    lines = [x for x in py[0].splitlines() if x.strip() and not x.strip().startswith("#")]
    assert len(lines) <= 10, lines
    for call in ("load_model(", "fit_image(", "render(", "write_image("):
        assert call in py[0]
    assert "## Quick start" in readme
