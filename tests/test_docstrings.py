"""Docstrings and the docs say what the code does: documented defaults are the defaults, and every plain name a
docstring puts in double backticks exists (a stat, a config field, an attribute, a column or a public function)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset

import hfprep
from hfprep.pack import packers
from hfprep.pack.transform import PrepareForTrainingTransform, PrepareForTrainingTransformConfig
from hfprep.recipe import TokenizerSection
from hfprep.schema import ROW_COLUMNS
from hfprep.tokenization.stage import TokenizeConfig

TOKENIZERS_DOC = Path(__file__).resolve().parents[1] / "docs" / "tokenizers.md"
NAME = re.compile(r"``([a-z_][a-z0-9_]*)``")


def _documented_default_backend() -> str:
    text = TOKENIZERS_DOC.read_text()
    section = text[text.index("## Backends") :]
    section = section[: section.index("\n## ", 1)]
    found = re.findall(r"^\* `(\w+)` \(the default\)", section, re.M)
    assert len(found) == 1, found
    return found[0]


def test_backend_default_is_the_documented_one():
    documented = _documented_default_backend()
    assert TokenizerSection.model_fields["backend"].default == documented  # a recipe's tokenizer.backend
    assert PrepareForTrainingTransformConfig.model_fields["backend"].default == documented
    assert f"``{documented}`` (default)" in PrepareForTrainingTransformConfig.__doc__
    # The row-level config documents its own default (hf, and why) instead.
    assert TokenizeConfig.model_fields["backend"].default == "hf" and "``hf`` (the default here)" in TokenizeConfig.__doc__


@pytest.fixture(scope="module")
def dense_run(tokenizer_path):
    cfg = PrepareForTrainingTransformConfig(
        processing_strategy="pretrain", packing_strategy="dense", tokenizer_name=tokenizer_path, seq_len=16,
        num_reduce_chunks=4, on_empty="drop",
    )
    transform = PrepareForTrainingTransform(cfg)
    texts = [f"document {i}: " + "the quick brown fox " * (i % 5 + 1) for i in range(40)] + [""] * 3
    packed = transform.run(Dataset.from_dict({"content": texts}))
    return cfg, transform, packed


def test_transform_docstring_names_exist(dense_run):
    cfg, transform, _ = dense_run
    known = (
        set(transform.stats)
        | set(type(cfg).model_fields)
        | {n for n in dir(transform) if not n.startswith("_")}
        | set(ROW_COLUMNS)
        | set(inspect.signature(transform.run).parameters)
        | set(hfprep.__all__)
        | {n for n in dir(packers) if not n.startswith("_")}
    )
    doc = inspect.getdoc(PrepareForTrainingTransform)
    named = set(NAME.findall(doc)) - {n for n in NAME.findall(doc) if hasattr(np, n) or hasattr(__builtins__, n)}
    assert sorted(named - known) == []


def test_transform_documents_its_stats_and_dense_tails(dense_run):
    _, transform, packed = dense_run
    stats = transform.stats
    # The docstring's stats, worked out here: 3 empty texts made no document; the tails pass ran over 4 groups.
    assert stats["rows_in"] == 43 and stats["docs_dropped_by_tokenizer"] == 3
    assert stats["tail_rows"] >= 1 and stats["tail_tokens"] >= stats["tail_rows"] * 16
    # Dense tails: the whole run loses less than one row, however many groups it had.
    assert stats["tokens_in"] - stats["tokens_out"] < 16 and len(packed) * 16 == stats["tokens_out"]
    doc = inspect.getdoc(PrepareForTrainingTransform)
    assert "docs_dropped_by_tokenizer" in doc and "tail_tokens" in doc and "dense tails" in doc.lower()


def test_seed_api_docstrings_describe_bos_and_dense_tails():
    from hfprep.tokenization.stage import fim_processing, pretrain_processing

    for fn in (pretrain_processing, fim_processing):
        assert 'add_bos="auto"' in inspect.getdoc(fn), fn.__name__
    for fn in (packers.pack_dense, packers.pack_sequences):
        assert "dense tails" in inspect.getdoc(fn), fn.__name__
    assert "dense tails" in packers.__doc__
