"""run_recipe end to end on tiny local sources: round-trip through load_dataset, determinism, splits, faults."""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from datasets import load_dataset

from hfprep.describe import format_summary
from hfprep.errors import DataError, OutputExistsError
from hfprep.output.card import read_card_metadata
from hfprep.output.validate import validate_folder
from hfprep.pack.transform import PrepareForTrainingTransform, PrepareForTrainingTransformConfig
from hfprep.run import run_recipe

WORDS = ["alpha", "beta", "gamma", "delta", "import", "numpy", "def", "return", "print", "the", "quick", "brown", "fox", "lazy", "dog"]


def make_docs(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30))) for _ in range(n)]


def write_jsonl(path: Path, docs: list[str], key: str = "text") -> Path:
    path.write_text("".join(json.dumps({key: d}) + "\n" for d in docs))
    return path


def write_recipe(folder: Path, tokenizer_path: str, **over) -> Path:
    data = {
        "name": "tiny",
        "source": {"files": ["docs.jsonl"], "columns": {"text": "content"}},
        "tokenizer": {"name_or_path": tokenizer_path},
        "tokenize": {"strategy": "pretrain"},
        "packing": {"seq_len": 16, "strategy": "no_incomplete", "num_reduce_chunks": 3},
        "output": {"folder": "out"},
    }
    for k, v in over.items():
        data[k] = {**data[k], **v} if isinstance(v, dict) and isinstance(data.get(k), dict) else v
    p = folder / "recipe.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def reference_heldout(text: str, fraction: float) -> bool:
    """The documented split rule, written out: sha256 of the canonical JSON list of input values."""
    blob = json.dumps([text], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return int.from_bytes(hashlib.sha256(blob.encode()).digest()[:8], "big") / 2.0**64 < fraction


def rows_of(ds) -> list[dict]:
    return [{k: list(v) for k, v in r.items()} for r in ds]


@pytest.fixture()
def tiny(tmp_path, tokenizer_path):
    docs = make_docs(40)
    write_jsonl(tmp_path / "docs.jsonl", docs)
    return tmp_path, docs


def test_roundtrip_rows_features_and_split_rule(tiny, tokenizer, tokenizer_path):
    folder, docs = tiny
    recipe = write_recipe(folder, tokenizer_path, splits={"heldout_fraction": 0.25, "heldout_name": "test"})
    summary = run_recipe(recipe)
    out = folder / "out"
    loaded = load_dataset(str(out))
    assert set(loaded) == {"train", "test"}
    for split in loaded.values():
        assert {k: str(v) for k, v in split.features.items()} == {
            "input_ids": "List(Value('uint32'))",
            "position_ids": "List(Value('uint32'))",
            "loss_mask": "List(Value('bool'))",
        }
    cfg = PrepareForTrainingTransformConfig(
        processing_strategy="pretrain", packing_strategy="no_incomplete", tokenizer_name=tokenizer_path,
        seq_len=16, num_reduce_chunks=3,
    )
    held = [d for d in docs if reference_heldout(d, 0.25)]
    train = [d for d in docs if not reference_heldout(d, 0.25)]
    assert 0 < len(held) < len(docs)
    for name, part in (("train", train), ("test", held)):
        expected = PrepareForTrainingTransform(cfg, tokenizer=tokenizer).run([{"content": d} for d in part])
        got = rows_of(loaded[name])
        assert got == [{k: np.asarray(v).tolist() for k, v in r.items()} for r in expected]
        assert summary["splits"][name]["rows_in"] == len(part)
        assert summary["splits"][name]["rows_out"] == len(got)
    # Token conservation in the summary: every tokenized token is either written or dropped.
    t = summary["totals"]
    assert t["tokens_in"] == t["tokens_out"] + t["tokens_dropped"]
    assert "fill" in format_summary(summary) and "tokens/s" in format_summary(summary)
    assert validate_folder(out).ok


def test_card_stats_match_an_independent_count(tiny, tokenizer, tokenizer_path):
    folder, docs = tiny
    run_recipe(write_recipe(folder, tokenizer_path))
    meta = read_card_metadata(folder / "out" / "README.md")
    rows = rows_of(load_dataset(str(folder / "out"), split="train"))
    eos = tokenizer.eos_token_id
    # Hand count: padding = trailing eos tokens at position 0 after the first token of the row.
    pad = 0
    for r in rows:
        i = len(r["input_ids"]) - 1
        while i > 0 and r["input_ids"][i] == eos and r["position_ids"][i] == 0:
            pad += 1
            i -= 1
    doc_lens = [len(tokenizer.encode(d, add_special_tokens=False)) + 1 for d in docs]
    kept = sum(n for n in doc_lens if n <= 16)
    s = meta["hfprep"]["stats"]["train"]
    assert s["rows"] == len(rows)
    assert s["pad_tokens"] == pad
    assert s["tokens"] == kept == sum(len(r["input_ids"]) for r in rows) - pad
    assert s["loss_tokens"] == kept  # pretrain: loss on every real token
    assert s["segments"] == sum(1 for n in doc_lens if n <= 16)
    assert s["tokens_dropped"] == sum(n for n in doc_lens if n > 16)
    assert meta["hfprep"]["tokenizer"]["pad_token_id"] == eos
    assert meta["dataset_info"]["splits"][0]["num_examples"] == len(rows)


def test_rerun_is_byte_identical(tiny, tokenizer_path):
    folder, _ = tiny
    recipe = write_recipe(folder, tokenizer_path, splits={"heldout_fraction": 0.2})
    run_recipe(recipe)
    first = {p.relative_to(folder / "out"): p.read_bytes() for p in (folder / "out").rglob("*") if p.is_file()}
    run_recipe(recipe, overwrite=True)
    second = {p.relative_to(folder / "out"): p.read_bytes() for p in (folder / "out").rglob("*") if p.is_file()}
    assert first.keys() == second.keys()
    assert any(str(k).endswith(".parquet") for k in first) and any(str(k).endswith(".png") for k in first)
    for k in first:
        if k.name == "README.md":
            # The card may differ only in its date line (a re-run on another day).
            a = [ln for ln in first[k].decode().splitlines() if "prepared on" not in ln]
            b = [ln for ln in second[k].decode().splitlines() if "prepared on" not in ln]
            assert a == b
        else:
            assert first[k] == second[k], k


def test_num_proc_gives_identical_parquet(tiny, tokenizer_path):
    folder, _ = tiny
    run_recipe(write_recipe(folder, tokenizer_path))
    one = (folder / "out" / "data" / "train-00000-of-00001.parquet").read_bytes()
    run_recipe(write_recipe(folder, tokenizer_path), overwrite=True, num_proc=2)
    assert (folder / "out" / "data" / "train-00000-of-00001.parquet").read_bytes() == one


def test_existing_output_is_refused_and_untouched(tiny, tokenizer_path):
    folder, _ = tiny
    (folder / "out").mkdir()
    (folder / "out" / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match=r"was not written by hfprep \(it holds 'keep.txt'\)"):
        run_recipe(write_recipe(folder, tokenizer_path))
    assert (folder / "out" / "keep.txt").read_text() == "mine"
    (folder / "out" / "keep.txt").unlink()
    (folder / "out").rmdir()
    run_recipe(write_recipe(folder, tokenizer_path))
    with pytest.raises(OutputExistsError, match="already exists; pass --overwrite"):  # hfprep's own output
        run_recipe(write_recipe(folder, tokenizer_path))


def test_zero_row_source_is_a_clear_error(tmp_path, tokenizer_path):
    (tmp_path / "docs.jsonl").write_text("")
    with pytest.raises(DataError, match="has zero rows"):
        run_recipe(write_recipe(tmp_path, tokenizer_path))
    assert not (tmp_path / "out").exists()


def test_zero_row_parquet_source(tmp_path, tokenizer_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "docs.parquet")
    with pytest.raises(DataError, match="has zero rows"):
        run_recipe(write_recipe(tmp_path, tokenizer_path, source={"files": ["docs.parquet"]}))
    assert not (tmp_path / "out").exists()


def test_missing_local_file_names_it(tmp_path, tokenizer_path):
    with pytest.raises(DataError, match=r"source.files: file '.*missing.jsonl' does not exist"):
        run_recipe(write_recipe(tmp_path, tokenizer_path, source={"files": ["missing.jsonl"]}))


def test_interrupt_leaves_no_output_and_rerun_completes(tiny, tokenizer_path):
    folder, _ = tiny
    recipe = write_recipe(folder, tokenizer_path)

    def interrupt(tmp: Path) -> None:
        assert (tmp / "README.md").exists()  # everything written, not yet renamed into place
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, _before_commit=interrupt)
    assert sorted(p.name for p in folder.iterdir()) == ["docs.jsonl", "recipe.yaml"]
    run_recipe(recipe)
    assert validate_folder(folder / "out").ok


def test_text_dir_source_trained_tokenizer_and_empty_files(tmp_path):
    texts = make_docs(30, seed=3)
    src = tmp_path / "corpus"
    (src / "sub").mkdir(parents=True)
    for i, t in enumerate(texts):
        (src / ("sub" if i % 2 else "") / f"f{i:02d}.txt").write_text(t)
    (src / "empty.txt").write_text("")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "source": {"text_dir": "corpus", "glob": "**/*.txt", "columns": {"text": "content"}},
        "tokenizer": {"train": {"vocab_size": 320, "cache_dir": "tokcache"}},
        "tokenize": {"strategy": "pretrain", "on_empty": "drop"},
        "packing": {"seq_len": 32, "strategy": "dense", "num_reduce_chunks": 2},
        "output": {"folder": "out"},
    }))
    summary = run_recipe(recipe)
    assert summary["splits"]["train"]["rows_in"] == 31
    assert summary["splits"]["train"]["docs_dropped_by_tokenizer"] == 1
    out = tmp_path / "out"
    from hfprep.tokenization.loading import load_tokenizer

    tok = load_tokenizer(str(out / "tokenizer"))
    # Token conservation against an independent count with the bundled tokenizer (empty file skipped).
    tokens_in = sum(len(tok.encode(t, add_special_tokens=False)) + 1 for t in texts if t)
    assert summary["totals"]["tokens_in"] == tokens_in
    rows = rows_of(load_dataset(str(out), split="train"))
    assert all(len(r["input_ids"]) == 32 for r in rows)
    # Dense row 0 starts at the start of a document: its first segment is a prefix of one of the texts.
    first = rows[0]
    end = next((i for i in range(1, 32) if first["position_ids"][i] == 0), 32)
    head = tok.decode(first["input_ids"][:end]).removesuffix("<|endoftext|>")
    assert any(t.startswith(head) for t in texts)
    assert sum(len(r["input_ids"]) for r in rows) == summary["totals"]["tokens_out"]
    assert validate_folder(out).ok


def test_backend_defaults_to_auto_and_the_card_says_which_ran(tiny, tokenizer_path, monkeypatch):
    """No ``backend`` key: ``auto``; with gigatoken importable the card records it (the guard passed)."""
    import hfprep.tokenization.backends as backends

    monkeypatch.setattr(backends, "FAST_BACKEND_MIN_BYTES", 0)  # this input is tiny: auto would keep hf for it
    folder, _ = tiny
    recipe = write_recipe(folder, tokenizer_path, output={"folder": "fast"})
    assert "backend" not in yaml.safe_load(recipe.read_text())["tokenizer"]
    pytest.importorskip("gigatoken")
    run_recipe(recipe)
    fast = read_card_metadata(folder / "fast" / "README.md")["hfprep"]["tokenizer"]["backend"]
    assert fast == "gigatoken"


def test_backend_auto_without_gigatoken_falls_back_in_one_line_with_the_same_rows(tiny, tokenizer_path, monkeypatch):
    """With gigatoken hidden (a platform without a wheel) the run falls back to hf with one line saying why; its rows
    are those of a run with ``backend: hf``."""
    import sys

    import hfprep.tokenization.backends as backends

    monkeypatch.setattr(backends, "FAST_BACKEND_MIN_BYTES", 0)  # this input is tiny: auto would keep hf for it
    folder, _ = tiny
    reference = write_recipe(folder, tokenizer_path, output={"folder": "hf"}, tokenizer={"backend": "hf"})
    run_recipe(reference)
    monkeypatch.setitem(sys.modules, "gigatoken", None)  # makes `import gigatoken` raise ImportError
    recipe = write_recipe(folder, tokenizer_path, output={"folder": "slow"})
    with pytest.warns(UserWarning, match=r"falls back to 'hf'.*not installed") as caught:
        summary = run_recipe(recipe)
    fallbacks = [w for w in caught if "falls back" in str(w.message)]
    assert all("\n" not in str(w.message) for w in fallbacks)
    assert summary["backend"]["backend"] == "hf" and "not installed" in summary["backend"]["reason"]
    meta = read_card_metadata(folder / "slow" / "README.md")
    assert meta["hfprep"]["tokenizer"]["backend"] == "hf"
    assert "not installed" in (folder / "slow" / "README.md").read_text()
    slow = rows_of(load_dataset(str(folder / "slow"), split="train"))
    assert slow == rows_of(load_dataset(str(folder / "hf"), split="train"))


def _fill_and_warnings(folder: Path, tokenizer_path: str, keys: int, strategy: str) -> tuple[float, list[str]]:
    recipe = write_recipe(folder, tokenizer_path, packing={"seq_len": 64, "strategy": strategy,
                                                           "num_reduce_chunks": keys},
                          output={"folder": f"out-{keys}"}, splits={"heldout_fraction": 0.0})
    summary = run_recipe(recipe)
    s = summary["splits"]["train"]
    lost = (s["tokens_dropped"] or 0) / s["tokens_in"]
    return (s["fill_ratio"] if strategy != "dense" else 1 - lost), summary["warnings"]


def test_many_reduce_keys_with_no_loss_do_not_warn(tmp_path, tokenizer_path):
    """dense packs the groups' leftover tails together, so 64 keys lose (almost) nothing: no warning then."""
    write_jsonl(tmp_path / "docs.jsonl", make_docs(200))
    kept, warns = _fill_and_warnings(tmp_path, tokenizer_path, 64, "dense")
    assert kept >= 0.99 and not [w for w in warns if "num_reduce_chunks" in w]


@pytest.mark.parametrize("strategy", ["bfd", "no_incomplete"])
def test_too_many_reduce_keys_warns_with_the_number_to_use(tmp_path, tokenizer_path, strategy):
    """64 keys on 200 short documents: every group holds a row or two, so fill (or dense's tails) suffers; the
    warning names a key count, and that count really packs better."""
    write_jsonl(tmp_path / "docs.jsonl", make_docs(200))
    fill, warns = _fill_and_warnings(tmp_path, tokenizer_path, 64, strategy)
    assert fill < 0.9  # the problem is real: 64 groups of a row or two
    advice = [w for w in warns if "num_reduce_chunks" in w]
    assert len(advice) == 1, warns
    suggested = int(re.search(r"use num_reduce_chunks: (\d+)", advice[0]).group(1))
    assert 1 <= suggested < 64
    better, warns2 = _fill_and_warnings(tmp_path, tokenizer_path, suggested, strategy)
    assert better > fill + 0.04
    assert not [w for w in warns2 if "num_reduce_chunks" in w]


@pytest.mark.parametrize("num_proc", [None, 2])
def test_parquet_source_is_read_without_an_arrow_cache_and_gives_the_same_output(
    tmp_path, tokenizer_path, monkeypatch, num_proc
):
    """Plain Parquet files on the datasets engine are mapped row group by row group (never through load_source);
    the packed shard is byte-identical to the one made from the same rows as JSON Lines."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import hfprep.run_splits as run_splits

    docs = make_docs(90)
    pq.write_table(pa.table({"content": docs[:50]}), tmp_path / "a.parquet", row_group_size=16)
    pq.write_table(pa.table({"content": docs[50:]}), tmp_path / "b.parquet", row_group_size=16)
    write_jsonl(tmp_path / "docs.jsonl", docs, key="content")
    run_recipe(write_recipe(tmp_path, tokenizer_path, source={"files": ["docs.jsonl"], "columns": {}}), num_proc=num_proc)
    expected = (tmp_path / "out" / "data" / "train-00000-of-00001.parquet").read_bytes()

    def no_conversion(spec):
        raise AssertionError("the Parquet source went through load_source")

    monkeypatch.setattr(run_splits, "load_source", no_conversion)
    recipe = write_recipe(tmp_path, tokenizer_path, source={"files": ["a.parquet", "b.parquet"], "columns": {}})
    run_recipe(recipe, overwrite=True, num_proc=num_proc)
    assert (tmp_path / "out" / "data" / "train-00000-of-00001.parquet").read_bytes() == expected


def test_unreadable_parquet_source_is_one_clear_line(tmp_path, tokenizer_path):
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"source file .*bad.parquet cannot be read as Parquet: .*; fix or remove it"):
        run_recipe(write_recipe(tmp_path, tokenizer_path, source={"files": ["bad.parquet"], "columns": {}}))
    assert not (tmp_path / "out").exists()
