"""PrepareForTrainingTransform: the seed's map-reduce packing test against an independent slow reference."""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest
from datasets import Dataset

from hfprep import (
    ConfigError,
    DataError,
    PrepareForTrainingTransform,
    PrepareForTrainingTransformConfig,
)

SEED_ROWS = [
    {"content": "Hello, World!"},
    {"content": "A test string"},
    {"content": "import numpy as np"},
    {"content": "import pandas as pd"},
]


def ref_key(ids: list[int], n: int) -> int:
    arr = np.array(ids, dtype=np.uint32)
    digest = hashlib.sha256(f"({len(ids)},)-uint32".encode() + arr.tobytes()).digest()
    return int.from_bytes(digest, "big") % n


def ref_prepare_dense(texts, tokenizer, seq_len, n_chunks):
    """Plain Python: encode + eos, key by sha256, group (ascending keys, input order); each group's whole rows in key
    order, then the groups' leftovers laid end to end in key order and cut once more (only the last partial row
    of the run is lost). A segment starts at a document start, a row start or a leftover's first token."""
    groups: dict[int, list[list[int]]] = {}
    for t in texts:
        ids = [*tokenizer.encode(t, add_special_tokens=False), tokenizer.eos_token_id]
        groups.setdefault(ref_key(ids, n_chunks), []).append(ids)
    rows, leftover = [], []
    for key in sorted(groups):
        toks = [(tok, j == 0) for doc in groups[key] for j, tok in enumerate(doc)]
        n = len(toks) // seq_len
        rows += [toks[r * seq_len : (r + 1) * seq_len] for r in range(n)]
        rest = toks[n * seq_len :]
        if rest:
            rest[0] = (rest[0][0], True)
        leftover += rest
    rows += [leftover[r * seq_len : (r + 1) * seq_len] for r in range(len(leftover) // seq_len)]
    out = []
    for row in rows:
        pos, p = [], 0
        for i, (_, starts) in enumerate(row):
            p = 0 if starts or i == 0 else p + 1
            pos.append(p)
        out.append(([tok for tok, _ in row], pos))
    return out


def config(tokenizer_path, **kw):
    base = dict(
        processing_strategy="pretrain",
        packing_strategy="dense",
        tokenizer_name=tokenizer_path,
        seq_len=8,
        num_reduce_chunks=2,
    )
    base.update(kw)
    return PrepareForTrainingTransformConfig(**base)


def test_seed_prepare_for_training(tokenizer_path, tokenizer):
    result = PrepareForTrainingTransform(config(tokenizer_path)).run(SEED_ROWS)
    ref = ref_prepare_dense([r["content"] for r in SEED_ROWS], tokenizer, 8, 2)
    assert [(r["input_ids"], r["position_ids"]) for r in result] == ref
    assert all(len(r["input_ids"]) == 8 for r in result)


def corpus(n=400):
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "import", "numpy", "as", "np", "def", "return", "\n", "🙂"]
    return [" ".join(rng.choice(words, size=int(rng.integers(1, 60)))) for _ in range(n)]


def test_real_ish_corpus_matches_reference_and_num_proc(tokenizer_path, tokenizer):
    texts = corpus()
    ds = Dataset.from_dict({"content": texts})
    cfg = config(tokenizer_path, seq_len=33, num_reduce_chunks=4)
    t = PrepareForTrainingTransform(cfg)
    one = t.run(ds, num_proc=1)
    stats = t.stats
    two = PrepareForTrainingTransform(cfg).run(ds, num_proc=2)
    assert one.to_list() == two.to_list()
    ref = ref_prepare_dense(texts, tokenizer, 33, 4)
    assert [(r["input_ids"], r["position_ids"]) for r in one] == ref
    assert str(one.features["input_ids"].feature.dtype) == "uint32"
    assert str(one.features["loss_mask"].feature.dtype) == "bool"
    total = sum(len(tokenizer.encode(t, add_special_tokens=False)) + 1 for t in texts)
    assert stats["tokens_in"] == total
    assert stats["tokens_out"] == len(one) * 33
    assert stats["tokens_in"] == stats["tokens_out"] + stats["tokens_dropped"]
    assert stats["tokens_dropped"] == total - len(ref) * 33 < 33  # at most one partial row in the whole run
    assert stats["rows_in"] == len(texts)


def test_dense_keeps_group_tails_with_many_keys(tokenizer_path, tokenizer):
    """64 keys on 200 documents: the groups' leftovers are packed together, only one partial row is lost; the
    documents lost or cut are counted (reference: plain-Python layout of the kept tokens)."""
    texts = corpus(200)
    seq_len = 48
    t = PrepareForTrainingTransform(config(tokenizer_path, seq_len=seq_len, num_reduce_chunks=64))
    out = t.run(Dataset.from_dict({"content": texts}), num_proc=2)
    ref = ref_prepare_dense(texts, tokenizer, seq_len, 64)
    assert [(r["input_ids"], r["position_ids"]) for r in out] == ref
    docs = [[*tokenizer.encode(x, add_special_tokens=False), tokenizer.eos_token_id] for x in texts]
    total = sum(map(len, docs))
    st = t.stats
    assert st["tokens_in"] == total and st["tokens_out"] == len(ref) * seq_len
    assert st["tokens_dropped"] == total % seq_len
    assert st["docs_in"] == len(docs) and st["tail_rows"] >= 1
    # Which documents lost tokens: the lost tokens are the last (total % seq_len) of the leftovers' stream.
    groups: dict[int, list[int]] = {}
    for i, d in enumerate(docs):
        groups.setdefault(ref_key(d, 64), []).append(i)
    stream = []  # (doc, kept-before-leftover) for every leftover token, key order
    for key in sorted(groups):
        toks = [i for i in groups[key] for _ in docs[i]]
        stream += toks[len(toks) // seq_len * seq_len :]
    lost = stream[len(stream) - st["tokens_dropped"] :] if st["tokens_dropped"] else []
    lost_per_doc = {i: lost.count(i) for i in set(lost)}
    assert st["docs_dropped"] == sum(n == len(docs[i]) for i, n in lost_per_doc.items())
    assert st["docs_truncated"] == sum(n < len(docs[i]) for i, n in lost_per_doc.items())
    assert st["tokens_truncated"] == sum(n for i, n in lost_per_doc.items() if n < len(docs[i]))


def test_no_incomplete_keeps_documents_whole(tokenizer_path, tokenizer):
    texts = corpus(200)
    seq_len = 40
    t = PrepareForTrainingTransform(config(tokenizer_path, packing_strategy="no_incomplete", seq_len=seq_len))
    out = t.run(Dataset.from_dict({"content": texts}), num_proc=2)
    docs = [[*tokenizer.encode(x, add_special_tokens=False), tokenizer.eos_token_id] for x in texts]
    kept = [d for d in docs if len(d) <= seq_len]
    # Every row: segments (split at position 0, ignoring padding) are exactly kept documents.
    seen = []
    for r in out:
        ids, pos, mask = (np.array(r[k]) for k in ("input_ids", "position_ids", "loss_mask"))
        assert len(ids) == seq_len
        real = int(np.flatnonzero(mask)[-1]) + 1  # pretrain: every real token has loss, padding none
        assert (ids[real:] == tokenizer.eos_token_id).all() and (pos[real:] == 0).all()
        starts = [*np.flatnonzero(pos[:real] == 0).tolist(), real]
        seen += [ids[a:b].tolist() for a, b in itertools.pairwise(starts)]
    assert sorted(map(tuple, seen)) == sorted(map(tuple, kept))
    assert t.stats["docs_dropped"] == len(docs) - len(kept)
    assert t.stats["tokens_dropped"] == sum(len(d) for d in docs if len(d) > seq_len)


def test_pad_token_defaults_to_eos_and_can_be_set(tokenizer_path, tokenizer):
    t = PrepareForTrainingTransform(config(tokenizer_path, packing_strategy="no_incomplete", seq_len=64))
    assert t.pad_token_id == tokenizer.eos_token_id
    t2 = PrepareForTrainingTransform(config(tokenizer_path, packing_strategy="no_incomplete", seq_len=64, pad_token_id=3))
    out = t2.run([{"content": "hi"}])
    assert out[0]["input_ids"][-1] == 3


@pytest.mark.parametrize("strategy", ["fim", "sft"])
def test_other_strategies_through_prepare(tokenizer_path, tokenizer, strategy):
    if strategy == "fim":
        rows = [{"prefix": f"a{i}", "middle": "b", "suffix": "c"} for i in range(20)]
        kw = {"fim_kwargs": {"only_middle_not_masked": True, "fim_format": "psm"}}
    else:
        rows = [{"content": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]} for i in range(20)]
        kw = {}
    t = PrepareForTrainingTransform(config(tokenizer_path, processing_strategy=strategy, packing_strategy="no_incomplete", seq_len=64, **kw))
    out = t.run(rows)
    assert sum(np.count_nonzero(np.array(r["position_ids"]) == 0) for r in out) >= 20
    assert t.stats["docs_in"] == 20 and t.stats["docs_dropped"] == 0


# ---------------------------------------------------------------------------------------------- bad input


def test_bad_config_values(tokenizer_path):
    with pytest.raises(ValueError, match="seq_len"):
        config(tokenizer_path, seq_len=1)
    with pytest.raises(ValueError, match="num_reduce_chunks"):
        config(tokenizer_path, num_reduce_chunks=0)
    with pytest.raises(ValueError, match="processing_strategy"):
        config(tokenizer_path, processing_strategy="dpo")
    with pytest.raises(ConfigError, match="packing strategy 'zigzag'"):
        PrepareForTrainingTransform(config(tokenizer_path, packing_strategy="zigzag"))
    with pytest.raises(ValueError, match="Extra inputs"):
        config(tokenizer_path, bogus=1)
    with pytest.raises(ConfigError, match="unknown fim_kwargs"):
        PrepareForTrainingTransform(config(tokenizer_path, processing_strategy="fim", fim_kwargs={"rate": 1}))


def test_bad_data(tokenizer_path):
    t = PrepareForTrainingTransform(config(tokenizer_path))
    with pytest.raises(DataError, match="needs column\\(s\\) \\['content'\\]"):
        t.run([{"text": "x"}])
    with pytest.raises(DataError, match="row 1: column 'content' must be a string"):
        t.run(Dataset.from_dict({"content": ["ok", None]}))
    assert t.run([]) == []
    empty = t.run(Dataset.from_dict({"content": []}))
    assert len(empty) == 0 and "input_ids" in empty.features


def test_group_over_memory_budget_is_a_clear_error(tokenizer_path):
    t = PrepareForTrainingTransform(config(tokenizer_path, num_reduce_chunks=1, reduce_memory_budget=100))
    with pytest.raises(ConfigError, match="raise num_reduce_chunks"):
        t.run([{"content": "some words " * 20}])


def seed_api_rows(t, rows):
    """The seed API by hand: map every row, group by key (ascending, input order kept), reduce each group."""
    groups: dict[int, list] = {}
    for row in rows:
        for key, out in t._map_fn(row):
            groups.setdefault(key, []).append(out)
    return [r for key in sorted(groups) for r in t._reduce_fn(key, groups[key])]


@pytest.mark.parametrize(
    ("strategy", "kwargs"),
    [("bfd", {"overflow": "truncate"}), ("bfd", {"overflow": "drop", "pad": False}), ("dense", {}),
     ("no_incomplete", {})],
)
def test_seed_api_and_run_are_one_code_path(tokenizer_path, strategy, kwargs):
    texts = [{"content": t} for t in corpus(60)]
    t = PrepareForTrainingTransform(
        config(tokenizer_path, packing_strategy=strategy, packing_kwargs=kwargs, seq_len=12, num_reduce_chunks=3)
    )
    by_run = t.run(texts)
    by_seed = seed_api_rows(t, texts)
    if strategy == "dense":
        # The seed's per-group reduce drops each group's incomplete tail; run() packs those tails together after
        # the groups' rows (the final pass), so its rows are the seed's rows followed by the tail rows.
        assert t.stats["tail_rows"] == len(by_run) - len(by_seed) > 0
        by_run = by_run[: len(by_seed)]
    assert len(by_run) == len(by_seed)
    for a, b in zip(by_run, by_seed, strict=True):
        assert list(a["input_ids"]) == b["input_ids"].tolist()
        assert list(a["position_ids"]) == b["position_ids"].tolist()
        assert list(a["loss_mask"]) == b["loss_mask"].tolist()
    if kwargs.get("overflow") == "truncate":
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tokenizer_path)
        lengths = [len(tok.encode(x, add_special_tokens=False)) + 1 for x in corpus(60)]  # + eos
        assert t.stats["docs_truncated"] == sum(n > 12 for n in lengths) > 0


def test_seed_reduce_rebases_rows_that_hold_several_segments(tokenizer_path):
    t = PrepareForTrainingTransform(config(tokenizer_path, seq_len=2))
    row = {"input_ids": np.arange(6, dtype=np.uint32), "position_ids": np.array([0, 1, 2, 0, 1, 2], np.uint32),
           "loss_mask": np.ones(6, bool)}
    out = list(t._reduce_fn(0, [row]))
    assert [r["position_ids"].tolist() for r in out] == [[0, 1], [0, 0], [0, 1]]


def test_group_over_the_arrow_list_limit_names_the_num_reduce_chunks_to_use(tokenizer_path, monkeypatch):
    import hfprep.schema

    monkeypatch.setattr(hfprep.schema, "MAX_LIST_VALUES", 40)
    t = PrepareForTrainingTransform(config(tokenizer_path, num_reduce_chunks=1))
    with pytest.raises(ConfigError, match=r"over the 40 values one Arrow list column can hold; raise num_reduce_chunks"):
        t.run([{"content": f"some words {i}"} for i in range(30)])


def _record_map_workers(monkeypatch) -> list[tuple[str, int | None]]:
    """Spy on ``Dataset.map``: (name of the mapped function, num_proc) per call."""
    calls: list[tuple[str, int | None]] = []
    real_map = Dataset.map

    def spy(self, function=None, *args, **kwargs):
        calls.append((getattr(function, "__name__", type(function).__name__), kwargs.get("num_proc")))
        return real_map(self, function, *args, **kwargs)

    monkeypatch.setattr(Dataset, "map", spy)
    return calls


def test_hf_backend_tokenizes_in_process_and_packs_with_workers(tokenizer_path, tokenizer, monkeypatch):
    """hf backend, run(num_proc=2): the map side runs in this process (HF's own threads; datasets would force HF
    onto one thread per worker), the reduce side with 2 workers; rows equal num_proc=None's and the reference."""
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    texts = corpus(120)
    ds = Dataset.from_dict({"content": texts})
    cfg = config(tokenizer_path, seq_len=33, num_reduce_chunks=4, backend="hf")
    calls = _record_map_workers(monkeypatch)
    two = PrepareForTrainingTransform(cfg).run(ds, num_proc=2)
    assert ("map_batch", None) in calls
    assert any(name != "map_batch" and n == 2 for name, n in calls), calls
    ref = ref_prepare_dense(texts, tokenizer, 33, 4)
    assert [(r["input_ids"], r["position_ids"]) for r in two] == ref
    assert two.to_list() == PrepareForTrainingTransform(cfg).run(ds).to_list()


def test_reduce_workers_get_the_transform_without_its_tokenizer(tokenizer_path, tokenizer, monkeypatch):
    """Packing needs only the config: the reduce workers are sent no tokenizer (unpickling one in every worker cost
    more than the second worker saved); the rows still equal the reference and the transform keeps its tokenizer."""
    import pickle

    from hfprep.engines import mapreduce

    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    sent = []
    real_init = mapreduce._RangeReducer.__init__

    def spy(self, transform, *args, **kwargs):
        sent.append(pickle.dumps(transform))
        real_init(self, transform, *args, **kwargs)

    monkeypatch.setattr(mapreduce._RangeReducer, "__init__", spy)
    texts = corpus(120)
    cfg = config(tokenizer_path, seq_len=33, num_reduce_chunks=4, backend="hf")
    t = PrepareForTrainingTransform(cfg)
    two = t.run(Dataset.from_dict({"content": texts}), num_proc=2)
    assert len(sent) == 1
    assert b"merges" not in sent[0]  # no tokenizer JSON (vocabulary, merges) inside
    assert b"merges" in pickle.dumps(t)  # ... which the full transform does carry
    ref = ref_prepare_dense(texts, tokenizer, 33, 4)
    assert [(r["input_ids"], r["position_ids"]) for r in two] == ref
    assert [(r["input_ids"], r["position_ids"]) for r in t.run(Dataset.from_dict({"content": texts}))] == ref


@pytest.mark.parametrize("case", ["sft", "fast backend", "parallelism off"])
def test_map_keeps_its_workers_where_one_process_would_not_use_every_core(tokenizer_path, monkeypatch, case):
    """Per-row Python (sft), a backend that encodes on the calling thread, or HF threads switched off by the user:
    the map side keeps the num_proc workers."""
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    kw = {"backend": "hf"}
    if case == "sft":
        kw["processing_strategy"] = "sft"
    elif case == "fast backend":
        kw["backend"] = "gigatoken"
    else:
        monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    t = PrepareForTrainingTransform(config(tokenizer_path, **kw))
    assert t.map_num_proc(2) == 2
    assert t.map_num_proc(None) is None


@pytest.mark.parametrize("num_proc", [None, 2])
def test_run_parquet_equals_run_on_the_loaded_dataset(tokenizer_path, tokenizer, tmp_path, num_proc):
    """Reading the Parquet row groups directly (no Arrow cache of the input) gives the rows, stats and backend
    report of ``run(load_dataset("parquet", ...))`` and of a plain-Python reference, and leaves no map file."""
    import os
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import load_dataset
    from datasets.fingerprint import get_temporary_cache_files_directory

    texts = corpus(300)
    paths = []
    for i, (a, b) in enumerate([(0, 130), (130, 131), (131, 300)]):  # a one-row file between two others
        p = tmp_path / f"part-{i}.parquet"
        pq.write_table(pa.table({"content": pa.array(texts[a:b], pa.string()), "other": list(range(a, b))}), p,
                       row_group_size=37)
        paths.append(str(p))
    cfg = config(tokenizer_path, seq_len=33, num_reduce_chunks=4, backend="auto")
    before = set(Path(get_temporary_cache_files_directory()).glob("*"))
    t1 = PrepareForTrainingTransform(cfg)
    direct = t1.run_parquet(paths, num_proc=num_proc)
    loaded = load_dataset("parquet", data_files=paths, split="train", cache_dir=str(tmp_path / "cache"))
    t2 = PrepareForTrainingTransform(cfg)
    via_cache = t2.run(loaded, num_proc=num_proc)
    assert direct.to_list() == via_cache.to_list()
    assert [(r["input_ids"], r["position_ids"]) for r in direct] == ref_prepare_dense(texts, tokenizer, 33, 4)
    assert t1.stats == t2.stats and t1.rows_in == 300

    def without_sample_size(report):  # the Parquet sample is drawn from the files' row groups, not the loaded rows
        guard = report.get("guard") or {}
        return {**report, "guard": {k: v for k, v in guard.items() if k != "samples_checked"}}

    assert without_sample_size(t1.backend_report) == without_sample_size(t2.backend_report)
    if t1.backend_report.get("guard"):
        assert t1.backend_report["guard"]["samples_checked"] > 0
    new = set(Path(get_temporary_cache_files_directory()).glob("*")) - before
    assert not [p for p in new if "-map" in p.name], new  # only the reduce output stays (as cache files)
    assert all(os.path.exists(f["filename"]) for f in direct.cache_files)


def test_run_parquet_checks_columns_and_handles_empty_files(tokenizer_path, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "part.parquet"
    pq.write_table(pa.table({"text": ["a b"]}), p)
    with pytest.raises(DataError, match=r"needs column\(s\) \['content'\].*part.parquet"):
        PrepareForTrainingTransform(config(tokenizer_path, backend="hf")).run_parquet([str(p)])
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"content": ["a b"]}), good)
    with pytest.raises(DataError, match=r"needs column\(s\) \['content'\].*part.parquet"):  # the 2nd file too
        PrepareForTrainingTransform(config(tokenizer_path, backend="hf")).run_parquet([str(good), str(p)])
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"content": pa.array([], pa.string())}), empty)
    t = PrepareForTrainingTransform(config(tokenizer_path, backend="hf"))
    out = t.run_parquet([str(empty)])
    assert (len(out), t.rows_in, t.stats["tokens_in"]) == (0, 0, 0)
