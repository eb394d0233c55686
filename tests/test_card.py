"""Dataset card: YAML keys, prose sections, embedded recipe, figures; deterministic PNGs; template errors."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from hfprep.card import parse_card_metadata, render_card, size_category
from hfprep.errors import ConfigError
from hfprep.pipeline import run_recipe
from hfprep.plots import fill_bin_counts, fill_histogram_png, length_bin_counts, length_histogram_png

SECRET = "hf_SECRETtokenXYZ123"


@pytest.fixture(scope="module")
def card_run(tmp_path_factory, tokenizer_path):
    import os

    root = tmp_path_factory.mktemp("card")
    docs = [f"document {i} " + "word " * (i % 9) for i in range(30)]
    (root / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    recipe_text = yaml.safe_dump({
        "name": "Tiny card test",
        "source": {"files": ["docs.jsonl"]},
        "tokenizer": {"name_or_path": tokenizer_path},
        "tokenize": {"strategy": "pretrain", "text_column": "text"},
        "packing": {"seq_len": 64, "strategy": "no_incomplete", "num_reduce_chunks": 2},
        "splits": {"heldout_fraction": 0.3},
        "output": {"folder": "out"},
        "hub": {"repo_id": "me/tiny", "push": False, "license": "mit", "tags": ["unit-test"]},
    }, sort_keys=False) + "# a comment kept verbatim\n"
    (root / "r.yaml").write_text(recipe_text)
    old = os.environ.get("HF_TOKEN")
    os.environ["HF_TOKEN"] = SECRET
    try:
        summary = run_recipe(root / "r.yaml")
    finally:
        if old is None:
            os.environ.pop("HF_TOKEN", None)
        else:
            os.environ["HF_TOKEN"] = old
    return root / "out", recipe_text, summary


def test_card_yaml_metadata(card_run, tokenizer):
    out, _, summary = card_run
    meta = parse_card_metadata((out / "README.md").read_text())
    assert meta["license"] == "mit"
    assert meta["task_categories"] == ["text-generation"]
    assert meta["size_categories"] == ["n<1K"]
    assert meta["source_datasets"] == ["original"]
    assert "unit-test" in meta["tags"] and "hfprep" in meta["tags"]
    splits = {d["split"]: d["path"] for d in meta["configs"][0]["data_files"]}
    assert splits == {"train": "data/train-*", "test": "data/test-*"}
    info = {s["name"]: s["num_examples"] for s in meta["dataset_info"]["splits"]}
    assert info == {k: v["rows_out"] for k, v in summary["splits"].items()}
    assert [f["name"] for f in meta["dataset_info"]["features"]] == ["input_ids", "position_ids", "loss_mask"]
    hf = meta["hfprep"]
    expected_fp = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()
    assert hf["tokenizer"]["fingerprint"] == expected_fp
    assert hf["tokenizer"]["vocab_size"] == len(tokenizer)
    assert hf["tokenizer"]["eos_token_id"] == hf["tokenizer"]["pad_token_id"] == tokenizer.eos_token_id
    assert (hf["strategy"], hf["seq_len"], hf["packing"], hf["num_reduce_chunks"]) == ("pretrain", 64, "no_incomplete", 2)
    assert set(hf["stats"]) == {"train", "test"}


def test_card_prose_recipe_images_and_no_token(card_run):
    out, recipe_text, summary = card_run
    text = (out / "README.md").read_text()
    assert "from hfprep import DataCollatorForPackedLM" in text
    assert 'load_dataset("me/tiny")' in text
    assert "```yaml\n" + recipe_text.rstrip("\n") + "\n```" in text  # the exact recipe, comments included
    for img in re.findall(r"\]\((images/[^)]+)\)", text):
        assert (out / img).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(re.findall(r"\]\((images/[^)]+)\)", text)) == 2
    t = summary["totals"]
    assert f"{t['tokens_dropped']:,} tokens" in text
    assert "| train |" in text and "| test |" in text
    assert "hfprep version" in text and "source revision" in text and "prepared on" in text
    assert "${" not in text
    for p in out.rglob("*"):
        if p.is_file():
            assert SECRET.encode() not in p.read_bytes(), p


def test_size_categories():
    assert [size_category(n) for n in (0, 999, 1000, 9999, 10_000, 2_000_000)] == [
        "n<1K", "n<1K", "1K<n<10K", "1K<n<10K", "10K<n<100K", "1M<n<10M",
    ]


def test_render_card_template_errors(tmp_path):
    t = tmp_path / "t.md"
    t.write_text("---\n${metadata}\n---\n# ${title}\n${unknown_thing}\n")
    with pytest.raises(ConfigError, match=r"uses \$\{unknown_thing\}"):
        render_card({"metadata": "a: 1", "title": "x"}, t)
    with pytest.raises(ConfigError, match="template .* not found"):
        render_card({}, tmp_path / "nope.md")
    t.write_text("---\n${metadata}\n---\n# ${title}\n")
    assert parse_card_metadata(render_card({"metadata": "a: 1", "title": "x"}, t)) == {"a": 1}


def test_histogram_bins_and_deterministic_png(tmp_path):
    assert length_bin_counts(np.array([1, 2, 3, 4, 4])) == {0: 1, 4: 1, 6: 1, 8: 2}  # floor(4*log2(n))
    assert fill_bin_counts(np.array([0.0, 0.5, 0.99, 1.0])) == [1] + [0] * 9 + [1] + [0] * 8 + [2]
    for name in ("a.png", "b.png"):
        length_histogram_png({"train": {0: 3, 9: 1}, "test": {4: 2}}, tmp_path / name)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    for name in ("c.png", "d.png"):
        fill_histogram_png({"train": [1] * 20}, tmp_path / name, 16)
    assert (tmp_path / "c.png").read_bytes() == (tmp_path / "d.png").read_bytes()
    assert Path(tmp_path / "c.png").stat().st_size > 1000
