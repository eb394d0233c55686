"""Compatibility across the dependency versions the package allows.

The CI floor step runs this file in an environment with the lowest allowed versions, with ``HFPREP_OTHER_PYTHON``
set to the interpreter of the main environment (the newest versions): output written there must load here.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

import hfprep
from hfprep.tokenization.loading import train_tiny_tokenizer

REPO = Path(hfprep.__file__).resolve().parent.parent
OTHER_PYTHON = os.environ.get("HFPREP_OTHER_PYTHON")


def test_saved_tokenizer_names_a_class_every_allowed_transformers_knows(tmp_path):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    train_tiny_tokenizer(["def f(x):\n    return x + 1\n"] * 30, tmp_path, vocab_size=300)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    # transformers 5 writes "TokenizersBackend", a name transformers 4.x cannot resolve; both know this one.
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    raw = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    text = "def g(y):\n    return y * 2\n"
    assert tok.encode(text, add_special_tokens=False) == raw.encode(text, add_special_tokens=False).ids


def _quickstart_recipe(folder: Path) -> Path:
    """The quickstart recipe, writing into ``folder`` (same corpus, tokenizer training and packing)."""
    data = yaml.safe_load((REPO / "recipes" / "quickstart.yaml").read_text())
    data["source"]["max_files"] = 60  # quickstart-sized, a little smaller to keep the step short
    data["tokenizer"]["train"]["max_docs"] = 60
    data["output"]["folder"] = str(folder / "out")
    path = folder / "quickstart.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.skipif(not OTHER_PYTHON, reason="needs HFPREP_OTHER_PYTHON (the CI floor step sets it)")
def test_quickstart_output_of_the_newest_versions_loads_with_these(tmp_path):
    from datasets import load_dataset
    from transformers import AutoTokenizer

    from hfprep.output.validate import validate_folder

    recipe = _quickstart_recipe(tmp_path)
    env = {**os.environ, "HFPREP_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    subprocess.run([OTHER_PYTHON, "-m", "hfprep", "run", str(recipe), "--json"], env=env, check=True,
                   capture_output=True, timeout=900)
    out = tmp_path / "out"
    assert validate_folder(out).ok
    tok = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    rows = load_dataset(str(out), split="train")
    direct = pq.read_table(sorted((out / "data").glob("train-*.parquet"))[0])
    assert rows[0]["input_ids"] == direct.column("input_ids")[0].as_py()
    # The bundled tokenizer decodes a packed row back to stdlib source text.
    first = rows[0]["input_ids"]
    end = next((i for i in range(1, len(first)) if rows[0]["position_ids"][i] == 0), len(first))
    assert len(tok.decode(first[:end])) > 0


def test_quickstart_sized_run_here_round_trips(tmp_path, monkeypatch):
    """The pipeline with these versions: trained tokenizer, dense packing, load_dataset, validate."""
    from datasets import load_dataset

    from hfprep.output.validate import validate_folder
    from hfprep.run import run_recipe
    from hfprep.tokenization.loading import load_tokenizer

    monkeypatch.setenv("HFPREP_CACHE", str(tmp_path / "cache"))
    summary = run_recipe(_quickstart_recipe(tmp_path))
    out = tmp_path / "out"
    assert validate_folder(out).ok
    loaded = load_dataset(str(out))
    assert {s: len(d) for s, d in loaded.items()} == {s: v["rows_out"] for s, v in summary["splits"].items()}
    tok = load_tokenizer(str(out / "tokenizer"))
    row = loaded["train"][0]
    assert len(row["input_ids"]) == 512 and all(t < len(tok) for t in row["input_ids"])
    tokens = sum(len(r) for d in loaded.values() for r in d["input_ids"])
    assert tokens == summary["totals"]["tokens_out"]
