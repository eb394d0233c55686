"""Shared fixtures: a tiny byte-level BPE tokenizer trained locally (no network), saved and reloaded by path."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import pytest

from hfprep.errors import warnings_scope
from hfprep.tokenization.loading import DEFAULT_SPECIAL_TOKENS, load_tokenizer, train_tiny_tokenizer

CORPUS = [
    "A sample text. Hello, World! A test string.",
    "import numpy as np\nimport pandas as pd\n",
    "def f(x):\n    return x * 2\n",
    "How can I help you? Hi! I am fine, thanks.",
    "The quick brown fox jumps over the lazy dog. " * 3,
    "for i in range(10):\n    print(i)\n",
    "Unicode: café, naïve, 東京, emoji 🙂.",
]


def file_hashes(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden ones included), relative path -> sha256 of its bytes."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(autouse=True)
def _each_test_is_a_run():
    """hfprep issues each warning once per run (outside a run, once per process): a test sees its own."""
    with warnings_scope():
        yield


_AUDIT_LINES: list[str] = []


@pytest.fixture(scope="session", autouse=True)
def _record_run_audits():
    """Every in-process ``hfprep run`` of the session reports its loss audit's violations (the lines ``hfprep
    validate`` prints for that output) into ``_AUDIT_LINES``."""
    import hfprep.run as run_module

    real = run_module.make_summary

    def make_summary(*args, **kwargs):
        warned = kwargs["warnings"] if "warnings" in kwargs else args[9]
        _AUDIT_LINES.extend(w for w in warned if w.startswith("loss audit"))
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_module, "make_summary", make_summary)
        yield


@pytest.fixture(autouse=True)
def _every_output_passes_the_loss_audit(request, _record_run_audits):
    """The outputs a test's runs write (its fixtures' included) pass the loss audit; a test that writes a violating
    one on purpose is marked ``audit_violations``."""
    _AUDIT_LINES.clear()
    yield
    found, _AUDIT_LINES[:] = list(_AUDIT_LINES), []
    if found and request.node.get_closest_marker("audit_violations") is None:
        pytest.fail(f"a run in this test wrote an output that fails the loss audit: {found[0]}")


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tokenizer")
    train_tiny_tokenizer(CORPUS * 20, path, vocab_size=400, special_tokens=DEFAULT_SPECIAL_TOKENS)
    return str(path)


@pytest.fixture(scope="session")
def tokenizer(tokenizer_path):
    return load_tokenizer(tokenizer_path)


# ----------------------------------------------------------------------------------------------- real tokenizers

_REAL: dict[str, object] = {}


def real_tokenizer(name: str):
    """A real model tokenizer fetched by ``python tests/fetch_tokenizers.py`` (loaded once per session).

    Missing files fail the test under ``CI=true`` (CI runs the script first) and skip it elsewhere.
    """
    from fetch_tokenizers import family_dir, is_fetched

    if not is_fetched(name):
        msg = f"real tokenizer {name!r} is not fetched; run: python tests/fetch_tokenizers.py"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    if name not in _REAL:
        _REAL[name] = load_tokenizer(str(family_dir(name)))
    return _REAL[name]
