"""The README's code runs as written: set-up command 1 (its hfprep part) and then every block marked
``<!-- runnable -->``, in order, offline, in a fresh folder holding only what a clone has (the recipes and the
README), with this checkout's ``hfprep`` and no cache from earlier runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKER = "<!-- runnable -->"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```\s*$", re.S | re.M)


def runnable_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, code)`` of every fenced block whose fence follows the marker line."""
    out = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").splitlines()
        if before and before[-1].strip() == MARKER:
            out.append((m.group(1), m.group(2)))
    return out


def setup_command_1(text: str) -> str:
    """The hfprep part of set-up command 1 (its venv and pip steps need the network and are CI's job)."""
    block = text[text.index("## Set-up: two commands") :]
    line = next(ln for ln in block.splitlines() if ln.startswith("python3 -m venv"))
    steps = [s.strip() for s in line.split("&&")]
    kept = [s for s in steps if s.startswith("hfprep ")]
    assert kept and all(s.startswith(("python3 -m venv", ". .venv", "pip install", "hfprep ")) for s in steps), steps
    return " && ".join(kept)


def test_marker_finds_the_blocks():
    text = "a\n<!-- runnable -->\n```bash\necho 1\n```\n\n```python\nx = 1\n```\n<!-- runnable -->\n```python\ny\n```\n"
    assert runnable_blocks(text) == [("bash", "echo 1\n"), ("python", "y\n")]


@pytest.fixture()
def fresh_clone(tmp_path):
    work = tmp_path / "clone"
    work.mkdir()
    shutil.copytree(ROOT / "recipes", work / "recipes")
    shutil.copy(README, work / "README.md")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, cmd in (("hfprep", f'exec "{sys.executable}" -m hfprep "$@"'), ("python", f'exec "{sys.executable}" "$@"')):
        (bin_dir / name).write_text(f"#!/bin/sh\n{cmd}\n")
        (bin_dir / name).chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "HFPREP_CACHE": str(tmp_path / "hfprep-cache"),
        "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache"),
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "WANDB_DISABLED": "true",
    }
    return work, env


def _run(args: list[str], work: Path, env: dict[str, str], what: str) -> str:
    proc = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{what} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def test_readme_blocks_run_as_written(fresh_clone):
    work, env = fresh_clone
    text = README.read_text(encoding="utf-8")
    blocks = runnable_blocks(text)
    langs = [lang for lang, _ in blocks]
    assert langs.count("bash") >= 1 and langs.count("python") >= 4, langs  # quickstart, load, API, Trainer, TRL
    _run(["bash", "-e", "-c", setup_command_1(text)], work, env, "set-up command 1")
    for i, (lang, code) in enumerate(blocks):
        what = f"README block {i + 1} ({lang}):\n{code}"
        if lang == "bash":
            _run(["bash", "-e", "-o", "pipefail", "-c", code], work, env, what)
        elif lang == "python":
            _run([sys.executable, "-c", code], work, env, what)
        else:
            pytest.fail(f"block {i + 1} is marked runnable but its language {lang!r} has no runner")
    # The snippets write where they say and nowhere else: checkpoints apart from the prepared data.
    assert (work / "out" / "quickstart" / "README.md").is_file()
    assert sorted(p.name for p in (work / "out").iterdir()) == ["quickstart"]
