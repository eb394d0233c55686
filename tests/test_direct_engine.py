"""The direct engine (local files read in batches, no datasets cache): the same bytes as the datasets path, bounded
memory with spilling, nothing left anywhere, errors that name the file and line."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import file_hashes

from hfprep.engines.direct import DocumentStore, prepare_direct
from hfprep.errors import DataError
from hfprep.pack.transform import PrepareForTrainingTransform, PrepareForTrainingTransformConfig
from hfprep.run import run_recipe
from hfprep.source.loading import SourceSpec, load_source, resolve_source
from hfprep.source.readers import read_batches

WORDS = ["alpha", "beta", "gamma", "import", "def", "return", "fox", "café", "東京", "\n", "    ", "(x)"]


def docs(n: int, seed: int = 0, longest: int = 120) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, longest))) for _ in range(n)]


def project(folder: Path, tokenizer_path: str, source: dict, **recipe) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    texts = docs(150)
    (folder / "docs.jsonl").write_text("".join(json.dumps({"content": t, "id": i}) + "\n" for i, t in enumerate(texts)))
    (folder / "blank.jsonl").write_text("".join(json.dumps({"content": t}) + "\n\n" for t in texts[:40]))
    pq.write_table(pa.table({"content": texts, "n": list(range(len(texts)))}), folder / "docs.parquet",
                   row_group_size=32)
    fim = docs(60, seed=3)
    (folder / "fim.jsonl").write_text(
        "".join(json.dumps({"prefix": t[:10], "middle": t[10:20], "suffix": t[20:]}) + "\n" for t in fim)
    )
    tree = folder / "texts"
    for i, t in enumerate(texts[:50]):
        (tree / f"d{i // 10}").mkdir(parents=True, exist_ok=True)
        (tree / f"d{i // 10}" / f"f{i}.txt").write_text(t)
    data = {
        "source": source,
        "tokenizer": {"name_or_path": tokenizer_path},
        "packing": {"seq_len": 64, "strategy": "dense", "num_reduce_chunks": 4},
        "output": {"folder": "out", "plots": False, "row_group_rows": 8, "max_rows_per_shard": 20},
        **recipe,
    }
    path = folder / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def data_bytes(folder: Path) -> dict[str, str]:
    return {k: v for k, v in file_hashes(folder).items() if k.startswith("data/")}


CASES = {
    "jsonl dense heldout": ({"files": ["docs.jsonl"]}, {"splits": {"heldout_fraction": 0.2}}),
    "jsonl no_incomplete": ({"files": ["docs.jsonl"]}, {"packing": {"seq_len": 64, "strategy": "no_incomplete"}}),
    "jsonl bfd split": ({"files": ["docs.jsonl"]}, {"packing": {"seq_len": 48, "strategy": "bfd", "num_reduce_chunks": 3}}),
    "jsonl bfd unpadded": (
        {"files": ["docs.jsonl"]},
        {"packing": {"seq_len": 48, "strategy": "bfd", "packing_kwargs": {"pad": False}}},
    ),
    "jsonl blank lines, max_rows": ({"files": ["blank.jsonl"], "max_rows": 25}, {}),
    "parquet renamed": ({"files": ["docs.parquet"], "columns": {"content": "text"}}, {"tokenize": {"text_column": "text"}}),
    "text_dir heldout": (
        {"text_dir": "texts", "glob": "**/*.txt", "columns": {"text": "content"}},
        {"splits": {"heldout_fraction": 0.3, "heldout_name": "valid"}},
    ),
    "fim spm": ({"files": ["fim.jsonl"]}, {"tokenize": {"strategy": "fim", "fim_format": "spm"}}),
    "raw-document fim": ({"files": ["docs.jsonl"]}, {"tokenize": {"fim_rate": 0.5}}),
    "gigatoken, no eos change": ({"files": ["docs.jsonl"]}, {"tokenizer": {"backend": "gigatoken"}}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_direct_engine_writes_the_bytes_of_the_datasets_path(tmp_path, tokenizer_path, case):
    """``hfprep run`` on local files (the direct engine) == the same recipe through datasets' cache and ``run``
    (``engine.reuse_tokenized``): every data shard byte-identical, the same split stats in the card."""
    source, extra = CASES[case]
    outs = {}
    for mode in ("direct", "cache"):
        recipe_extra = json.loads(json.dumps(extra))
        tok = recipe_extra.pop("tokenizer", {})
        packing = {"seq_len": 64, "strategy": "dense", "num_reduce_chunks": 4, **recipe_extra.pop("packing", {})}
        path = project(tmp_path / mode, "", source, packing=packing,
                       engine={"reuse_tokenized": mode == "cache"}, **recipe_extra)
        data = yaml.safe_load(path.read_text())
        data["tokenizer"] = {"name_or_path": tokenizer_path, **tok}
        path.write_text(yaml.safe_dump(data))
        summary = run_recipe(str(path), num_proc=2)
        outs[mode] = (data_bytes(tmp_path / mode / "out"), summary)
    (direct, s_direct), (cache, s_cache) = outs["direct"], outs["cache"]
    assert direct and direct == cache
    assert s_direct["splits"] == s_cache["splits"]
    assert s_direct["totals"] == s_cache["totals"]


def test_spilling_keeps_memory_under_the_budget_and_the_bytes(tmp_path, tokenizer_path, monkeypatch):
    """A memory budget far below the tokenized data: documents are spilled to the run's scratch, the in-memory part
    never holds more than the budget plus one batch, and the shards are the bytes of an unbounded run."""
    import hfprep.engines.direct as direct

    peaks: list[tuple[int, int, int]] = []
    real_add = DocumentStore.add

    def add(self, chunk):
        real_add(self, chunk)
        peaks.append((self.peak_nbytes, self.budget, chunk.nbytes))

    monkeypatch.setattr(DocumentStore, "add", add)
    monkeypatch.setattr(direct.read_batches, "__defaults__", (2048,))  # small batches: many chunks to spill
    outs, spills = {}, {}
    for budget in (None, 4096):
        folder = tmp_path / str(budget)
        engine = {} if budget is None else {"memory_budget": budget}
        path = project(folder, tokenizer_path, {"files": ["docs.jsonl"]}, engine=engine,
                       splits={"heldout_fraction": 0.2}, packing={"seq_len": 64, "strategy": "bfd",
                                                                  "num_reduce_chunks": 80})
        events: list[dict] = []
        run_recipe(str(path), log=events.append)
        outs[budget] = data_bytes(folder / "out")
        spills[budget] = [e for e in events if e["event"] == "spilled"]
    assert outs[4096] == outs[None]
    assert spills[None] == [] and {e["split"] for e in spills[4096]} == {"train", "test"}
    bounded = [(peak, chunk) for peak, budget, chunk in peaks if budget == 4096 // 2]  # two splits share it
    assert bounded and all(peak <= 4096 // 2 + chunk for peak, chunk in bounded)


def test_a_direct_run_leaves_nothing_in_the_datasets_cache_or_the_temp_folder(tmp_path, tokenizer_path, monkeypatch):
    import tempfile

    import datasets.config

    cache, tmp = tmp_path / "hf_cache", tmp_path / "tmp"
    cache.mkdir()
    tmp.mkdir()
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    path = project(tmp_path / "p", tokenizer_path, {"files": ["docs.jsonl"]}, engine={"memory_budget": 2048},
                   splits={"heldout_fraction": 0.2})
    run_recipe(str(path), num_proc=2)
    assert list(cache.rglob("*")) == []
    assert list(tmp.rglob("*")) == []
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == sorted(
        ["blank.jsonl", "docs.jsonl", "docs.parquet", "fim.jsonl", "out", "r.yaml", "texts"]
    )


@pytest.mark.parametrize(
    ("content", "where"),
    [
        ('{"content": "a"}\n{"content": "b"\n{"content": "c"}\n', "line 2: not valid JSON"),
        ('{"content": "a"}\n\n{"content": 7}\n', "line 3: column 'content' holds a int, not a string"),
        ('{"content": "a"}\n[1, 2]\n', "line 2: not a JSON object (an array; one object per line)"),
        ('{"content": "a"}\n{"content": "b \xff"}\n'.encode("latin-1"), "line 2, column 16"),
    ],
)
@pytest.mark.parametrize("arrow_json", ["newest", "pyarrow<20"], indirect=True)
def test_a_bad_line_is_one_error_naming_the_file_and_line(tmp_path, tokenizer_path, content, where, arrow_json):
    path = tmp_path / "bad.jsonl"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    spec = SourceSpec(kind="files", paths=[str(path)], format="jsonl")
    with pytest.raises(DataError) as e:
        for _ in read_batches(spec, ["content"]):
            pass
    assert str(e.value).startswith(f"{path}: {where}"), str(e.value)
    assert "\n" not in str(e.value)


@pytest.fixture
def arrow_json(request, monkeypatch):
    """``pyarrow.json`` as it is ("newest") or as before pyarrow 20, without ``open_json`` ("pyarrow<20")."""
    import types

    import pyarrow.json as pajson

    import hfprep.source.readers as readers

    if request.param == "pyarrow<20":
        old = types.SimpleNamespace(ReadOptions=pajson.ReadOptions, ParseOptions=pajson.ParseOptions,
                                    read_json=pajson.read_json)
        monkeypatch.setattr(readers, "pajson", old)
    return request.param


@pytest.mark.parametrize("arrow_json", ["newest", "pyarrow<20"], indirect=True)
@pytest.mark.parametrize("block", [7, 64, 4 * 2**20])
def test_jsonl_rows_are_the_lines_whatever_the_block_size(tmp_path, monkeypatch, arrow_json, block):
    """Blocks cut mid-line, a line longer than a block, no newline at the end: each row is its line, in order."""
    import hfprep.source.readers as readers

    monkeypatch.setattr(readers, "JSON_BLOCK_BYTES", block)
    texts = [f"doc {i} " + "x" * (i * 13 % 90) + " é\u2028" for i in range(60)]
    body = "\n".join(json.dumps({"text": t, "other": i}) for i, t in enumerate(texts))
    path = tmp_path / "docs.jsonl"
    path.write_text(body)  # no final newline
    got = [t for b in read_batches(SourceSpec(kind="files", paths=[str(path)], format="jsonl"), ["text"], 256)
           for t in b.table.column("text").to_pylist()]
    assert got == [json.loads(line)["text"] for line in path.read_text().splitlines()]


def test_row_errors_name_the_source_line(tmp_path, tokenizer_path):
    """A row the strategy refuses (an empty text) is named by its file and line, through the held-out split."""
    lines = [json.dumps({"content": t}) for t in docs(30)]
    lines[17] = json.dumps({"content": ""})
    (tmp_path / "docs.jsonl").write_text("\n".join(lines) + "\n")
    cfg = PrepareForTrainingTransformConfig(processing_strategy="pretrain", packing_strategy="dense",
                                            tokenizer_name=tokenizer_path, seq_len=16, num_reduce_chunks=2)
    spec = SourceSpec(kind="files", paths=[str(tmp_path / "docs.jsonl")], format="jsonl", heldout_fraction=0.5,
                      split_columns=["content"])
    with pytest.raises(DataError, match=r"docs\.jsonl line 18 \(source row 17\): column 'content' is an empty"):
        prepare_direct(PrepareForTrainingTransform(cfg), spec, [("train", "train"), ("test", "heldout")],
                       {"train": lambda t: None, "test": lambda t: None})


def test_read_batches_gives_the_rows_load_source_gives(tmp_path, tokenizer_path):
    """The reader against datasets' own loaders (max_rows, renames, blank lines, several files, text folders)."""
    path = project(tmp_path, tokenizer_path, {"files": ["docs.jsonl"]})
    del path
    specs = [
        SourceSpec(kind="files", paths=[str(tmp_path / "docs.jsonl"), str(tmp_path / "blank.jsonl")], format="jsonl",
                   columns={"content": "text"}, max_rows=170),
        SourceSpec(kind="files", paths=[str(tmp_path / "docs.parquet")] * 2, format="parquet", max_rows=200),
    ]
    section = type("S", (), {"kind": "text_dir", "text_dir": str(tmp_path / "texts"), "glob": "**/*.txt",
                             "max_files": None, "streaming": False, "max_rows": None, "columns": {},
                             "encoding": "utf-8", "decode_errors": "strict"})
    specs.append(resolve_source(section))
    for spec in specs:
        columns = ["text"] if spec.kind == "text_dir" or spec.columns else ["content"]
        expected = load_source(spec).select_columns(columns).to_dict()
        got: dict[str, list] = {c: [] for c in columns}
        starts = []
        for b in read_batches(spec, columns, batch_bytes=100):
            starts.append(b.start)
            for c in columns:
                got[c] += b.table.column(c).to_pylist()
        assert got == expected
        assert starts == sorted(starts) and starts[0] == 0


def test_a_small_input_keeps_hf_without_building_the_fast_backend(tmp_path, tokenizer_path):
    import hfprep.tokenization.backends as backends

    backends._BUILT.clear()
    path = project(tmp_path, tokenizer_path, {"files": ["docs.jsonl"]})
    summary = run_recipe(str(path))
    report = summary["backend"]
    assert report["backend"] == "hf" and "4 MiB" in report["reason"], report
    assert backends._BUILT == {}


def test_document_store_buckets_give_every_document_once_in_input_order(tmp_path):
    """Spilled and in-memory documents come back per key-range bucket, each key's documents in input order."""
    from hfprep.engines.direct import Chunk

    rng = np.random.default_rng(0)
    store = DocumentStore(10, budget=200, on_spill=lambda: tmp_path)
    added = []
    for _ in range(30):
        lengths = rng.integers(1, 6, 7)
        ids = rng.integers(0, 1000, int(lengths.sum())).astype(np.uint32)
        keys = rng.integers(0, 10, 7)
        mask = rng.random(len(ids)) < 0.5 if rng.random() < 0.5 else None
        store.add(Chunk(ids, lengths, keys, mask))
        off = np.concatenate([[0], np.cumsum(lengths)])
        for d in range(7):
            m = mask[off[d] : off[d + 1]] if mask is not None else np.ones(lengths[d], bool)
            added.append((int(keys[d]), ids[off[d] : off[d + 1]].tolist(), m.tolist()))
    assert store.spilled_bytes > 0
    got, bucket_keys = [], []
    for chunks in store.buckets():
        keys = set()
        for c in chunks:
            off = np.concatenate([[0], np.cumsum(c.lengths)])
            for d in range(len(c.lengths)):
                m = c.mask[off[d] : off[d + 1]] if c.mask is not None else np.ones(c.lengths[d], bool)
                got.append((int(c.keys[d]), c.ids[off[d] : off[d + 1]].tolist(), m.tolist()))
                keys.add(int(c.keys[d]))
        bucket_keys.append(keys)
    # Buckets are ascending key ranges; inside them every key's documents come in input order, each once.
    nonempty = [k for k in bucket_keys if k]
    assert all(max(a) < min(b) for a, b in itertools.pairwise(nonempty))
    for key in range(10):
        assert [r for r in got if r[0] == key] == [r for r in added if r[0] == key]
    assert len(got) == len(added)


@pytest.mark.parametrize("strategy", ["dense", "no_incomplete"])
def test_too_many_keys_warn_only_where_they_cost_fill(tmp_path, tokenizer_path, strategy):
    """64 keys for a few rows' worth of tokens: padded packers end every group in a partly filled row (a warning with
    the key count to use); dense packs the groups' tails together at the end, so it has nothing to warn about."""
    path = project(tmp_path, tokenizer_path, {"files": ["docs.jsonl"]},
                   packing={"seq_len": 256, "strategy": strategy, "num_reduce_chunks": 64})
    summary = run_recipe(str(path))
    advice = [w for w in summary["warnings"] if "num_reduce_chunks" in w]
    if strategy == "dense":
        assert advice == [] and summary["totals"]["tokens_dropped"] < 256
    else:
        wanted = max(1, summary["splits"]["train"]["tokens_in"] // (32 * 256))  # 32 rows of 256 per key
        assert len(advice) == 1 and f"use num_reduce_chunks: {wanted} (" in advice[0], advice
