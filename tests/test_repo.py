"""Repository hygiene: the README's commands, .ci/run, no side effects on import."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(pip install torch==2\.13\.0 [^\n]+)\n```", text)


def test_readme_has_exactly_two_setup_commands():
    cmds = readme_commands()
    assert len(cmds) == 2, cmds
    assert all(c.startswith("pip install torch==2.13.0 && pip install -e \".[all]\"") for c in cmds)
    assert "pytest" in cmds[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert readme_commands()[1] in ci


def test_no_side_effects_on_import():
    code = ("import sys, io, contextlib, torch; n = torch.get_num_threads(); buf = io.StringIO();\n"
            "with contextlib.redirect_stdout(buf):\n"
            "    import morphable_models, facerender, facerender.render, facerender.fitting, facerender.cli\n"
            "assert buf.getvalue() == '', buf.getvalue(); assert torch.get_num_threads() == n\n"
            "assert 'dlib' not in sys.modules and 'av' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
