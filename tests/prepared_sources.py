"""Prepared datasets with a documents config, for the repack / export / documents tests (plain functions, so
each test module builds what it needs in its own module-scoped fixtures).

The sources are random word texts with lengths spread from a few tokens to several times the rows' length, so
that dense cuts documents, no_incomplete drops some and bfd splits some; the documents config is written in small
shards and row groups so that groups of one key span batches and shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

WORDS = ["alpha", "beta", "gamma", "delta", "import", "numpy", "def", "return", "print", "the", "quick", "brown",
         "fox", "lazy", "dog", "(x)", "=", "+", "\n", "    ", "café", "naïve", "東京", "🙂"]


def write_texts(path: Path, n: int, seed: int, lo: int = 1, hi: int = 400) -> list[str]:
    """``n`` random texts of ``lo..hi`` words as JSON Lines (column ``text``); returns them."""
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(int(rng.triangular(lo, hi, lo)))) for _ in range(n)]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return texts


def real_tokenizer_dir(name: str) -> str:
    """The folder of a real model tokenizer (skips the test when it is not fetched; fails under CI)."""
    from fetch_tokenizers import family_dir, is_fetched

    if not is_fetched(name):
        msg = f"real tokenizer {name!r} is not fetched; run: python tests/fetch_tokenizers.py"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return str(family_dir(name))


def write_recipe(root: Path, tokenizer: str, *, out: str = "out", source: dict | None = None,
                 packing: dict | None = None, output: dict | None = None, **sections: Any) -> Path:
    """A recipe file in ``root`` (documents on, small shards and row groups) reading ``root/docs.jsonl``."""
    recipe = {
        "name": "documents-test",
        "source": source or {"files": ["docs.jsonl"]},
        "tokenizer": {"name_or_path": tokenizer},
        "tokenize": {"text_column": "text"},  # a ``tokenize=`` keyword replaces it
        "packing": {"seq_len": 128, "strategy": "dense", "num_reduce_chunks": 4, **(packing or {})},
        "output": {"folder": out, "documents": True, "max_rows_per_shard": 40, "row_group_rows": 16,
                   **(output or {})},
        "engine": {"num_proc": 2},
        **sections,
    }
    path = root / f"{out}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def file_bytes(folder: Path, sub: str) -> dict[str, bytes]:
    """``{relative path: bytes}`` of every file under ``folder/sub``."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted((folder / sub).rglob("*")) if p.is_file()}


def reference_key(ids: list[int], num_keys: int) -> int:
    """The key of a document, written out from the definition (sha256 of ``"(n,)-uint32"`` and the little-endian
    uint32 bytes, as a big-endian integer, modulo the key count), independent of ``hfprep.pack.keys``."""
    arr = np.asarray(ids, dtype="<u4")
    digest = hashlib.sha256(f"({len(ids)},)-uint32".encode() + arr.tobytes()).digest()
    return int.from_bytes(digest, "big") % num_keys


KILL_AFTER = textwrap.dedent(
    """
    import json, os, signal, sys
    from hfprep.commands import prepared
    from hfprep.commands.{module} import {function}

    cfg = json.loads(sys.argv[1])
    fetch, calls = prepared.PreparedDataset.fetch, [0]

    def fetch_then_die(self, rel, into):
        calls[0] += 1
        if calls[0] > cfg["kill_after"]:
            os.kill(os.getpid(), signal.SIGKILL)  # a real kill -9: no cleanup of any kind runs
        return fetch(self, rel, into)

    prepared.PreparedDataset.fetch = fetch_then_die
    {function}(cfg["src"], cfg["out"], token=cfg["token"], **cfg["kwargs"])
    """
)


def run_killed(module: str, function: str, src: str, out: Path, kwargs: dict, kill_after: int, env: dict,
               token: str | None = None) -> None:
    """Run ``hfprep.commands.<module>.<function>`` in a process that SIGKILLs itself at its fetch number
    ``kill_after + 1`` (after ``kill_after`` shards were read and recorded)."""
    code = KILL_AFTER.format(module=module, function=function)
    cfg = {"src": src, "out": str(out), "kwargs": kwargs, "kill_after": kill_after, "token": token}
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(cfg)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
