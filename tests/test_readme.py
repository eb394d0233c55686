"""The README's code runs as written: set-up command 1 (its hfprep part) and then every block marked
``<!-- runnable -->``, in order, offline, in a fresh folder holding only what a clone has (the recipes and the
README), with this checkout's ``hfprep`` and no cache from earlier runs.

The README stays a user's guide: at most 30 kB, no history of the project's own work items, every relative link (in
it and in ``docs/``) pointing at a file of the repository or a heading of the page, the snippets importing public
names only, and one short performance table whose rows name an existing benchmark script."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

import hfprep

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKER = "<!-- runnable -->"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```\s*$", re.S | re.M)
MAX_README_BYTES = 30_000
# The project's own work items and rounds of work belong in commits, not in the user's guide.
HISTORY = re.compile(r"\bissues?\s+#?\d+|\bthis round\b|\bwhat changed\b|\bprevious version of this\b", re.I)


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


def _markdown():
    return MarkdownIt("commonmark").enable("table")


def heading_slugs(text: str) -> set[str]:
    """GitHub's anchors of a page's headings: the heading's text, lower case, punctuation dropped, spaces -> '-'."""
    tokens = _markdown().parse(text)
    slugs: set[str] = set()
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open":
            words = "".join(c.content for c in tokens[i + 1].children if c.type in ("text", "code_inline"))
            base = re.sub(r"[^\w\- ]", "", words.strip().lower()).replace(" ", "-")
            slug, n = base, 0
            while slug in slugs:  # GitHub numbers repeated headings
                n += 1
                slug = f"{base}-{n}"
            slugs.add(slug)
    return slugs


def relative_links(text: str) -> list[str]:
    """Targets of the page's Markdown links and images that are neither absolute URLs nor mail addresses."""
    out = []
    for tok in _markdown().parse(text):
        for child in tok.children or []:
            target = child.attrs.get("href") or child.attrs.get("src")
            if target and not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
                out.append(str(target))
    return out


def broken_links(page: Path) -> list[str]:
    """The relative links of ``page`` whose file is missing from the repository, or whose anchor is no heading."""
    text = page.read_text(encoding="utf-8")
    broken = []
    for target in relative_links(text):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        missing = not dest.is_file() or ROOT not in dest.parents
        if missing or (anchor and dest.suffix == ".md" and anchor not in heading_slugs(dest.read_text("utf-8"))):
            broken.append(target)
    return broken


def section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def test_readme_is_a_short_guide():
    data = README.read_bytes()
    assert len(data) <= MAX_README_BYTES, f"README.md is {len(data):,} bytes; move details to docs/ (limit 30 kB)"
    found = sorted({m.group(0) for m in HISTORY.finditer(data.decode("utf-8"))})
    assert found == [], f"README.md speaks of the project's work items: {found}"


@pytest.mark.parametrize("page", sorted((ROOT / "docs").glob("*.md")), ids=lambda p: p.name)
def test_docs_have_no_work_item_history(page):
    found = sorted({m.group(0) for m in HISTORY.finditer(page.read_text(encoding="utf-8"))})
    assert found == [], f"{page.name} speaks of the project's work items: {found}"


def test_history_pattern_catches_work_items():
    for phrase in ("as issue 12 asked", "Tokenize stage (issues 2 and 8)", "What changed this round:", "issue #7"):
        assert HISTORY.search(phrase), phrase
    for phrase in ("a known issue with Ray", "the 2 issues below", "round-robin runs", "nothing changed"):
        assert not HISTORY.search(phrase), phrase


def test_readme_markdown_is_well_formed():
    text = README.read_text(encoding="utf-8")
    fences = [ln for ln in text.splitlines() if ln.startswith("```")]
    assert len(fences) % 2 == 0, "an unclosed ``` fence swallows the rest of the README"
    assert text.count(MARKER) == len(runnable_blocks(text)), "a runnable marker is not right above a fenced block"


@pytest.mark.parametrize("page", [README, *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_relative_links_resolve(page):
    assert broken_links(page) == []


def test_link_checker_finds_broken_links(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n## Some `code` here\n")
    page = tmp_path / "README.md"
    page.write_text(
        "# T\n\n## Part two\n\n[ok](docs/a.md) [ok](docs/a.md#some-code-here) [ok](#part-two) [web](https://x.org/y)\n"
        "[gone](docs/b.md) [bad anchor](docs/a.md#nope) [bad](#part-three) ![img](images/x.png) [out](../x.md)\n"
    )
    assert broken_links(page) == ["docs/b.md", "docs/a.md#nope", "#part-three", "images/x.png", "../x.md"]


def test_snippets_import_public_names_only():
    imported = []
    for _, code in runnable_blocks(README.read_text(encoding="utf-8")):
        for m in re.finditer(r"^from (hfprep[\w.]*) import (.+)$", code, re.M):
            assert m.group(1) == "hfprep", f"a README snippet imports from the internal module {m.group(1)}"
            imported += [n.strip() for n in m.group(2).split(",")]
    assert imported and sorted(set(imported) - set(hfprep.__all__)) == []
    trl = section(README.read_text(encoding="utf-8"), "Training with TRL")
    assert "pip install 'hfprep[trl]'" in trl and "from hfprep import DataCollatorForPackedLM, load_tokenizer" in trl


def _tables(text: str) -> list[list[str]]:
    """The Markdown tables of ``text``: each a list of its rows after the header and its rule."""
    tables, current = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current[2:])
            current = []
    return tables


def test_performance_table_rows_name_their_scripts():
    """The section leads with the whole-run table (rows named as bench_end_to_end.py names them); every row of the
    comparison table after it names the script that prints it, and docs/benchmarks.md describes that script."""
    perf = section(README.read_text(encoding="utf-8"), "Performance")
    assert "<!-- rows from benchmarks/" in perf
    whole, *others = _tables(perf)
    e2e = ROOT / "benchmarks" / "bench_end_to_end.py"
    names = ast.literal_eval(re.search(r"^ROWS = (\(.*?\))$", e2e.read_text(encoding="utf-8"), re.M).group(1))
    assert re.search(r"`[^`]*bench_end_to_end\.py[^`]*`", perf.split(whole[0])[0])  # says which command printed it
    assert {row.split("|")[1].strip() for row in whole} == set(names), whole
    assert len(others) == 1
    rows = others[0]
    assert 4 <= len(rows) <= 6, rows
    for row in rows:
        scripts = re.findall(r"`(bench_\w+\.py)", row)
        assert scripts and all((ROOT / "benchmarks" / s).is_file() for s in scripts), row
        assert (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8").count(f"`{scripts[0]}`") >= 1, row


def test_readme_describes_what_ci_runs():
    text = README.read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    command = re.search(r"\*\*`(python -m pytest[^`]*)`\*\*", text).group(1)
    assert command in ci.splitlines(), "the README's test command is not the one .ci/run runs"
    setup = section(text, "Set-up: two commands")
    assert "tests/fetch_tokenizers.py" in ci and "`npm`" in setup  # the tokenizers come from the npm registry
    assert "-c .ci/constraints.txt" in setup and "pins=.ci/constraints.txt" in ci
    # The CPU index: the README says .ci/run passes none exactly when it passes none.
    assert ("passes no index URL" in setup) == ("download.pytorch.org/whl/cpu" not in ci)
