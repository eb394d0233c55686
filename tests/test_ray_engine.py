"""The Ray Data engine gives the datasets engine's rows, order and stats, on a real 2-node cluster."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import random
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from datasets import Dataset

from hfprep.errors import ConfigError, DataError
from hfprep.output.layout import write_parquet
from hfprep.pack.keys import array_hash
from hfprep.pack.packers import PACKERS
from hfprep.pack.transform import PrepareForTrainingTransform, PrepareForTrainingTransformConfig
from hfprep.tokenization.stage import tokenized_features

pytest.importorskip("ray")  # the optional extra; CI installs it
import ray
import ray.cluster_utils

from hfprep.engines import ray_engine
from hfprep.engines.mapreduce import plan_reduce_ranges
from hfprep.engines.ray_engine import (
    _from_buffer,
    _to_buffer,
    prepare_with_ray,
    recommended_num_reduce_chunks,
    resolve_source,
    run_on_ray,
)

# A generous per-test limit, as a safety net only: a stalled Ray run fails with its stack instead of holding the
# suite. (The stalls once seen here came from forking this process while it was connected to the cluster, see
# `_no_fork_while_connected`.)
pytestmark = [pytest.mark.timeout(600, method="thread")]

with contextlib.suppress(ImportError):  # bfd registers itself in PACKERS when its module is imported
    import hfprep.pack.bfd  # noqa: F401

STRATEGIES = ["dense", "no_incomplete"] + (["bfd"] if "bfd" in PACKERS else [])
CHUNKS = 8
WORDS = ["alpha", "beta", "gamma", "delta", "import", "numpy", "def", "return", "print", "hello", "world"]
WORDS += ["quick", "brown", "fox", "lazy", "dog", "café"]


NODE_START_ATTEMPTS = 3


def _start_cluster() -> ray.cluster_utils.Cluster:
    """Two 1-CPU nodes. Ray waits a fixed 30 s for a new raylet to register (not configurable); on a loaded machine
    (the full suite starts two of these clusters at once, next to other work) that wait sometimes ran out at start-up
    ("timed out during startup"): the partial cluster is stopped and started again, up to NODE_START_ATTEMPTS times."""
    for attempt in range(1, NODE_START_ATTEMPTS + 1):
        c = ray.cluster_utils.Cluster()
        try:
            c.add_node(num_cpus=1, object_store_memory=150 * 2**20, include_dashboard=False)  # the head
            c.add_node(num_cpus=1, object_store_memory=150 * 2**20)
            return c
        except Exception as e:
            c.shutdown()
            if "timed out during startup" not in str(e) or attempt == NODE_START_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def cluster():
    """A real 2-node Ray cluster (1 CPU each) on this machine, shared by the whole module."""
    c = _start_cluster()
    ray.init(address=c.address)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield c
    ray.shutdown()
    c.shutdown()


_forks_while_connected: list[int] = []


def _count_fork() -> None:
    if ray.is_initialized():
        _forks_while_connected.append(os.getpid())


os.register_at_fork(before=_count_fork)


@pytest.fixture(autouse=True)
def _no_fork_while_connected():
    """This process is a Ray driver for the whole module: it must never fork (``num_proc`` workers) while connected.
    Ray's driver runs gRPC threads that do not survive a fork; after one, a later task's worker lease could get lost
    and the run waited forever (Ray Data showed the task active, no raylet had it queued or granted). Reproduced:
    a stall within 30 Ray runs when each was preceded by a ``num_proc=2`` datasets run in the same process, none in
    140 runs without. Launching a program (``subprocess`` without ``preexec_fn``) does not count: it does not run the
    fork hooks, and the child replaces itself at once."""
    _forks_while_connected.clear()
    yield
    assert _forks_while_connected == [], "the test forked this Ray driver process (use num_proc=None here)"


def _key(tokenizer, text: str) -> int:
    """The seed's key, computed independently: sha256 over the uint32 ids of ``text + eos``."""
    ids = np.array([*tokenizer.encode(text, add_special_tokens=False), tokenizer.eos_token_id], np.uint32)
    return array_hash(ids) % CHUNKS


@pytest.fixture(scope="module")
def skewed(tokenizer) -> Dataset:
    """~60% of the documents hash to key 3, key 5 gets none (an empty group), the rest spread out."""
    rng = random.Random(7)
    by_key: dict[int, list[str]] = {k: [] for k in range(CHUNKS)}
    while min(len(v) for k, v in by_key.items() if k != 5) < 12 or len(by_key[3]) < 120:
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40)))
        by_key[_key(tokenizer, text)].append(text)
    docs = by_key[3][:120] + [t for k in range(CHUNKS) if k not in (3, 5) for t in by_key[k][:12]]
    rng.shuffle(docs)
    return Dataset.from_dict({"content": docs})


def _cfg(tokenizer_path: str, strategy: str, **kw) -> PrepareForTrainingTransformConfig:
    base = {"processing_strategy": "pretrain", "packing_strategy": strategy, "tokenizer_name": tokenizer_path}
    return PrepareForTrainingTransformConfig(**{**base, "seq_len": 32, "num_reduce_chunks": CHUNKS, **kw})


def _parquet_bytes(ds: Dataset, path) -> bytes:
    write_parquet(ds.data.table, path, tokenized_features())
    return path.read_bytes()


def _datasets_run(cfg, tokenizer, ds):
    """The datasets engine's rows, in this process (no ``num_proc`` workers: see ``_no_fork_while_connected``)."""
    t = PrepareForTrainingTransform(cfg, tokenizer=tokenizer)
    return t.run(ds), t.stats


def test_skewed_data_really_is_skewed(tokenizer, skewed):
    keys = [_key(tokenizer, t) for t in skewed["content"]]
    counts = np.bincount(keys, minlength=CHUNKS)
    assert counts[5] == 0 and counts[3] == 120 and counts.sum() == len(skewed)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_ray_rows_and_stats_identical_to_datasets(cluster, tokenizer, tokenizer_path, skewed, strategy, tmp_path):
    cfg = _cfg(tokenizer_path, strategy)
    ref, ref_stats = _datasets_run(cfg, tokenizer, skewed)
    out, stats = prepare_with_ray(cfg, skewed, tokenizer=tokenizer, cache_dir=tmp_path / "cache")
    assert out.features == ref.features
    assert len(out) == len(ref) > 0
    assert _parquet_bytes(out, tmp_path / "ray.parquet") == _parquet_bytes(ref, tmp_path / "ds.parquet")
    assert stats == ref_stats
    # Token conservation against the tokenizer itself, not against either engine.
    total = sum(len(tokenizer.encode(t, add_special_tokens=False)) + 1 for t in skewed["content"])
    assert stats["tokens_in"] == total == stats["tokens_out"] + stats["tokens_dropped"]
    assert stats["rows_in"] == stats["docs_in"] == len(skewed)


def test_order_inside_groups_matters_and_is_restored(cluster, tokenizer, tokenizer_path, skewed, tmp_path):
    """Shuffling the documents changes the packed rows: equality above is not an accident of order."""
    cfg = _cfg(tokenizer_path, "dense")
    shuffled = skewed.shuffle(seed=1).flatten_indices()
    a, _ = prepare_with_ray(cfg, skewed, tokenizer=tokenizer, cache_dir=tmp_path / "a")
    b, _ = prepare_with_ray(cfg, shuffled, tokenizer=tokenizer, cache_dir=tmp_path / "b")
    ref_b, _ = _datasets_run(cfg, tokenizer, shuffled)
    assert a["input_ids"] != b["input_ids"]
    assert b["input_ids"] == ref_b["input_ids"]


def test_tasks_land_on_both_nodes(cluster, tokenizer, tokenizer_path, skewed, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()

    class NodeRecording(PrepareForTrainingTransform):  # defined here so Ray ships it by value
        def map_batch(self, batch, indices):
            node = ray.get_runtime_context().get_node_id()
            (marks / f"map-{node}-{os.getpid()}").touch()
            # Hold this node's only CPU until a map task has started on the other node too: Ray must place the
            # next task there. Without it, a loaded machine sometimes let one warm worker run every map task.
            deadline = time.monotonic() + 120
            while len({m.name.split("-")[1] for m in marks.glob("map-*")}) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            return super().map_batch(batch, indices)

        def reduce_group(self, key, table):
            node = ray.get_runtime_context().get_node_id()
            (marks / f"reduce-{node}-{os.getpid()}").touch()
            return super().reduce_group(key, table)

    cfg = _cfg(tokenizer_path, "dense")
    t = NodeRecording(cfg, tokenizer=tokenizer)
    out = run_on_ray(t, skewed, cache_dir=tmp_path / "cache", batch_rows=16)
    ref, _ = _datasets_run(cfg, tokenizer, skewed)
    assert out["input_ids"] == ref["input_ids"]
    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    map_nodes = {p.name.split("-")[1] for p in marks.glob("map-*")}
    reduce_nodes = {p.name.split("-")[1] for p in marks.glob("reduce-*")}
    assert len(nodes) == 2
    assert map_nodes | reduce_nodes == nodes
    assert map_nodes == nodes


def test_jsonl_files_fim_in_file_order(cluster, tokenizer, tokenizer_path, tmp_path):
    """Two JSONL files, FIM strategy: the Ray reader numbers documents in the same order as load_dataset."""
    from datasets import load_dataset

    rng = random.Random(3)
    paths = []
    for f in range(2):
        p = tmp_path / f"part-{f}.jsonl"
        rows = [
            {"prefix": " ".join(rng.choices(WORDS, k=rng.randint(1, 8))), "middle": rng.choice(WORDS),
             "suffix": " ".join(rng.choices(WORDS, k=rng.randint(0, 8)))}
            for _ in range(40)
        ]
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(str(p))
    cfg = _cfg(tokenizer_path, "no_incomplete", processing_strategy="fim", fim_kwargs={"only_middle_not_masked": True})
    source = load_dataset("json", data_files=paths, split="train")
    ref, ref_stats = _datasets_run(cfg, tokenizer, source)
    out, stats = prepare_with_ray(cfg, paths, tokenizer=tokenizer, cache_dir=tmp_path / "cache")
    assert out.data.table.equals(ref.data.table)
    assert stats == ref_stats and stats["rows_in"] == 80


@pytest.mark.parametrize("source_kind", ["dataset", "parquet", "jsonl"])
def test_the_backend_guard_checks_the_same_input_sample_on_both_engines(
    cluster, tokenizer, tokenizer_path, tmp_path, source_kind, monkeypatch
):
    """300 documents in two files (row groups of 50): both engines guard the fast backend with the 256 evenly spaced
    documents of the whole input, and record the same report."""
    import pyarrow.parquet as pq

    texts = [f"doc {i} " + " ".join(WORDS[(i + j) % len(WORDS)] for j in range(i % 7 + 1)) for i in range(300)]
    expected = [texts[round(i * 299 / 255)] for i in range(256)]  # evenly spaced, first and last included
    source: object = Dataset.from_dict({"content": texts})
    if source_kind != "dataset":
        source = []
        for f, part in enumerate((texts[:150], texts[150:])):
            path = tmp_path / f"part-{f}.{source_kind}"
            if source_kind == "parquet":
                pq.write_table(pa.table({"content": part}), path, row_group_size=50)
            else:
                path.write_text("".join(json.dumps({"content": t}) + "\n" for t in part))
            source.append(str(path))
    guarded: list[list[str]] = []
    guard = PrepareForTrainingTransform.guard_backend

    def recording_guard(self, sample):  # patched on the class: only the driver calls the guard
        guarded.append(list(sample))
        return guard(self, sample)

    monkeypatch.setattr(PrepareForTrainingTransform, "guard_backend", recording_guard)
    cfg = _cfg(tokenizer_path, "dense", backend="auto")
    ref = PrepareForTrainingTransform(cfg, tokenizer=tokenizer)
    ref.run(Dataset.from_dict({"content": texts}))
    ray_t = PrepareForTrainingTransform(cfg, tokenizer=tokenizer)
    prepare_with_ray(cfg, source, tokenizer=tokenizer, transform=ray_t, cache_dir=tmp_path / "cache")
    if source_kind == "parquet":
        # Files are sampled without reading them whole: the first ceil(256 / 6) = 43 rows of each of the 6 row
        # groups of 50 (all of them: at most 8 are read), then 256 evenly spaced rows of those 258.
        heads = [t for g in range(6) for t in texts[50 * g : 50 * g + 43]]
        assert guarded == [expected, [heads[round(i * 257 / 255)] for i in range(256)]]
    else:
        # A Dataset is sampled as the datasets engine samples it; JSON Lines files (the first MiB of up to 8 files)
        # are read whole here, so their sample is the whole input's.
        assert guarded == [expected, expected]
    assert ray_t.backend_report == ref.backend_report


def test_no_output_rows(cluster, tokenizer, tokenizer_path, skewed, tmp_path):
    """Every group shorter than one row: zero packed rows, all tokens dropped, stats still merged."""
    cfg = _cfg(tokenizer_path, "dense", seq_len=2**16)
    ref, ref_stats = _datasets_run(cfg, tokenizer, skewed)
    out, stats = prepare_with_ray(cfg, skewed, tokenizer=tokenizer, cache_dir=tmp_path / "cache")
    assert (len(out), len(ref)) == (0, 0)
    assert out.features == ref.features
    assert stats == ref_stats and stats["tokens_dropped"] == stats["tokens_in"] > 0


def test_group_over_memory_budget_is_a_config_error_on_both_engines(
    cluster, tokenizer, tokenizer_path, skewed, tmp_path
):
    # Key 3 holds ~60% of the tokens: a budget between the largest other group and key 3 trips only key 3.
    tokens = {}
    for t in skewed["content"]:
        k = _key(tokenizer, t)
        tokens[k] = tokens.get(k, 0) + len(tokenizer.encode(t, add_special_tokens=False)) + 1
    budget = 9 * (tokens[3] - 1)
    assert 9 * max(v for k, v in tokens.items() if k != 3) < budget
    cfg = _cfg(tokenizer_path, "dense", reduce_memory_budget=budget)
    with pytest.raises(ConfigError, match=r"reduce group 3 .*reduce_memory_budget.*num_reduce_chunks") as e_ds:
        _datasets_run(cfg, tokenizer, skewed)
    with pytest.raises(ConfigError, match=r"reduce group 3 .*reduce_memory_budget.*num_reduce_chunks") as e_ray:
        prepare_with_ray(cfg, skewed, tokenizer=tokenizer, cache_dir=tmp_path / "cache")
    assert "\n" not in str(e_ray.value)
    assert str(e_ray.value).split(";")[0] == str(e_ds.value).split(";")[0]


def test_missing_column_is_a_data_error_before_any_work(tokenizer, tokenizer_path, tmp_path):
    path = tmp_path / "x.parquet"
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a", "b"]}), path)
    with pytest.raises(DataError, match=r"needs column\(s\) \['content'\].*text_column"):
        prepare_with_ray(_cfg(tokenizer_path, "dense"), [str(path)], tokenizer=tokenizer)


def test_transform_pickles_and_maps_the_same(tokenizer, tokenizer_path):
    t = PrepareForTrainingTransform(_cfg(tokenizer_path, "dense"), tokenizer=tokenizer)
    batch = {"content": ["hello world", "quick brown fox"]}
    clone = pickle.loads(pickle.dumps(t))
    assert clone.map_batch(batch, [0, 1]).equals(t.map_batch(batch, [0, 1]))


def test_task_results_carry_only_their_rows(tmp_path):
    """A map batch is a slice of its row group: the buffer a task returns holds the slice's rows only (pickling
    the table itself would copy the whole parent buffers), and reads back equal, zero-copy."""
    parent = pa.table({
        "input_ids": pa.array([list(range(i, i + 50)) for i in range(2000)], pa.list_(pa.uint32())),
        "loss_mask": pa.array([[i % 3 == 0] * 50 for i in range(2000)], pa.list_(pa.bool_())),
    })
    part = parent.slice(1003, 10)
    buf = _to_buffer(part)
    assert _from_buffer(buf).equals(part)
    assert buf.size < parent.nbytes / 50
    assert len(pickle.dumps(part, protocol=5)) > parent.nbytes / 2  # what the buffer avoids


@pytest.mark.parametrize("nodes", ["two nodes: split tasks", "one node: whole map outputs"])
def test_many_reduce_ranges_give_the_datasets_rows(cluster, tokenizer, tokenizer_path, skewed, tmp_path, nodes,
                                                   monkeypatch):
    """A budget that fits only one or two groups per range: many reduce tasks, their rows still in key order and
    the dense tails of all of them packed together at the end, as on the datasets engine. Both ways of feeding
    the reduce tasks (the one-node way forced on this two-node cluster by hiding a node from the driver)."""
    if nodes.startswith("one"):
        monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}])
    tokens = {}
    for t in skewed["content"]:
        k = _key(tokenizer, t)
        tokens[k] = tokens.get(k, 0) + len(tokenizer.encode(t, add_special_tokens=False)) + 1
    budget = 9 * (tokens[3] + 1)  # key 3 (60% of the tokens) alone; the small groups two or three together
    cfg = _cfg(tokenizer_path, "dense", reduce_memory_budget=budget)
    ref, ref_stats = _datasets_run(cfg, tokenizer, skewed)
    out, stats = prepare_with_ray(cfg, skewed, tokenizer=tokenizer, cache_dir=tmp_path / "cache")
    assert _parquet_bytes(out, tmp_path / "ray.parquet") == _parquet_bytes(ref, tmp_path / "ds.parquet")
    assert stats == ref_stats
    # the premise: the run really had more reduce ranges than workers (2 CPUs on the test cluster)
    sizes = np.array([9.0 * tokens[k] for k in sorted(tokens)])
    assert len(plan_reduce_ranges(sizes, budget, ray_engine.RANGES_PER_WORKER * 2)) > 2


@pytest.mark.parametrize("ranges", [[[0], [1, 2]], [[0, 1, 2]]])
def test_split_tasks_cut_each_map_output_by_reduce_range(cluster, ranges):
    """On several nodes each reduce range gets, from every map output, exactly its keys' rows in input order."""
    table = pa.table({
        "__key__": pa.array([2, 0, 1, 2, 0], pa.int64()),
        "input_ids": pa.array([[1], [2, 2], [3], [4], [5]], pa.list_(pa.uint32())),
    })
    ref = ray.put(_to_buffer(table))
    inputs = ray_engine._reduce_inputs(ray, [ref, ref], ranges)
    assert len(inputs) == len(ranges)
    for keys, parts in zip(ranges, inputs):
        want = [r for r in table.to_pylist() if r["__key__"] in keys]
        assert [_from_buffer(ray.get(part)).to_pylist() for part in parts] == [want, want]


def test_resolve_source_formats_and_errors(tmp_path):
    assert resolve_source(["a.parquet", "b.PARQUET"]) == (["a.parquet", "b.PARQUET"], "parquet")
    assert resolve_source("hf://datasets/u/d/x.jsonl") == (["hf://datasets/u/d/x.jsonl"], "json")
    assert resolve_source(["a.txt"], fmt="jsonl") == (["a.txt"], "json")

    class Spec:  # the shape of the recipe's source spec
        def __init__(self) -> None:
            self.paths = ["a.data"]
            self.format = "parquet"

    assert resolve_source(Spec()) == (["a.data"], "parquet")
    (tmp_path / "d").mkdir()
    for name in ("b.parquet", "a.parquet", "notes.txt"):
        (tmp_path / "d" / name).write_bytes(b"")
    assert resolve_source(str(tmp_path / "d"))[0] == [str(tmp_path / "d" / n) for n in ("a.parquet", "b.parquet")]
    with pytest.raises(ConfigError, match=r"cannot tell the format of 'a.txt'"):
        resolve_source(["a.txt"])
    with pytest.raises(ConfigError, match="mixes Parquet and JSON"):
        resolve_source(["a.parquet", "b.jsonl"])
    with pytest.raises(ConfigError, match="empty list"):
        resolve_source([])
    with pytest.raises(ConfigError, match="format 'csv' is not supported"):
        resolve_source(["a.csv"], fmt="csv")


def test_recommended_num_reduce_chunks_rule():
    # 2 * 9 bytes/token * tokens / budget, rounded up (hand-worked).
    assert recommended_num_reduce_chunks(10**9, 512 * 2**20) == -(-18 * 10**9 // (512 * 2**20)) == 34
    assert recommended_num_reduce_chunks(1, 512 * 2**20) == 1
    assert recommended_num_reduce_chunks(100, 900) == 2


def test_missing_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError, match=r"pip install 'hfprep\[ray\]'"):
        ray_engine.import_ray()


def test_outputs_deterministic_across_runs(cluster, tokenizer, tokenizer_path, skewed, tmp_path):
    cfg = _cfg(tokenizer_path, "no_incomplete")
    a, _ = prepare_with_ray(cfg, skewed, tokenizer=tokenizer, cache_dir=tmp_path / "a")
    b, _ = prepare_with_ray(cfg, skewed, tokenizer=tokenizer, cache_dir=tmp_path / "b")
    ha = hashlib.sha256(_parquet_bytes(a, tmp_path / "a.parquet")).hexdigest()
    hb = hashlib.sha256(_parquet_bytes(b, tmp_path / "b.parquet")).hexdigest()
    assert ha == hb


@pytest.mark.parametrize("strategy", sorted({STRATEGIES[-1], "dense"}))
def test_mixture_recipe_on_ray_gives_the_datasets_rows(cluster, tokenizer_path, tmp_path, strategy):
    """A 2-source mixture (per-token source column, one source repeated): Ray groups and packs the mixed documents
    into the datasets engine's rows and per-source counts (dense: the groups' tails packed together at the end)."""
    import pyarrow.parquet as pq
    import yaml

    from hfprep.output.card import read_card_metadata
    from hfprep.run import run_recipe

    rng = random.Random(3)
    for name, n in (("web", 80), ("math", 6)):
        docs = [f"{name} {i} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 30))) for i in range(n)]
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"content": d}) + "\n" for d in docs))
    recipe = {
        "sources": [
            {"name": "web", "files": ["web.jsonl"], "weight": 0.8},
            {"name": "math", "files": ["math.jsonl"], "weight": 0.2, "tokenize": {"fim_rate": 0.5}},
        ],
        "tokens": 3000,
        "max_epochs": 5,
        "source_column": True,
        "tokenizer": {"name_or_path": tokenizer_path},
        "packing": {"seq_len": 32, "strategy": strategy, "num_reduce_chunks": 4},
        "output": {"folder": "out"},
    }
    tables, metas = {}, {}
    for engine in ("datasets", "ray"):
        path = tmp_path / f"{engine}.yaml"
        path.write_text(yaml.safe_dump({**recipe, "output": {"folder": f"out-{engine}"}}))
        run_recipe(path, engine=engine)
        folder = tmp_path / f"out-{engine}"
        tables[engine] = pq.read_table(sorted((folder / "data").glob("*.parquet")))
        metas[engine] = read_card_metadata(folder / "README.md")["hfprep"]["mixture"]
    assert "source" in tables["ray"].column_names
    assert tables["ray"].equals(tables["datasets"])
    assert metas["ray"] == metas["datasets"] and metas["ray"]["sources"][1]["epochs"] > 1
    if strategy == "dense":  # one partial row lost in the whole run, not one per group
        assert 0 <= sum(r["tokens_lost"] for r in metas["ray"]["sources"]) < 32


def test_connect_starts_its_own_cluster_unless_told_where(monkeypatch):
    """A bare ``ray.init()`` attaches to any Ray instance running on the machine (another run's or test's, maybe
    shutting down): without an address the engine asks for a new local one; RAY_ADDRESS / address still join."""
    from hfprep.engines.ray_engine import _connect

    calls = []

    class FakeRay:
        @staticmethod
        def is_initialized():
            return False

        @staticmethod
        def init(**kw):
            calls.append(kw)

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert _connect(FakeRay, None, 2, None)
    assert calls[-1]["address"] == "local" and calls[-1]["num_cpus"] == 2
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    _connect(FakeRay, None, 2, None)
    assert calls[-1]["address"] == "10.0.0.1:6379" and "num_cpus" not in calls[-1]
    _connect(FakeRay, "ray://head:10001", None, None)
    assert calls[-1]["address"] == "ray://head:10001"


_QUIET_SCRIPT = """
import sys
from datasets import Dataset
from hfprep.engines.ray_engine import prepare_with_ray
from hfprep.pack.transform import PrepareForTrainingTransform, PrepareForTrainingTransformConfig

cfg = PrepareForTrainingTransformConfig(processing_strategy="pretrain", packing_strategy="dense",
                                        tokenizer_name=sys.argv[1], seq_len=16, num_reduce_chunks=2)
ds = Dataset.from_dict({"content": [f"hello world {i}" for i in range(60)]})
for mode in ("quiet", "verbose"):
    print("@@MODE " + mode, file=sys.stderr, flush=True)
    transform = PrepareForTrainingTransform(cfg)
    out, _ = prepare_with_ray(cfg, ds, num_cpus=1, transform=transform, verbose=mode == "verbose")
    print("ROWS", len(out), "LOG", transform.ray_log_path, file=sys.stderr, flush=True)
"""


def test_ray_is_quiet_unless_verbose(tokenizer_path, tmp_path):
    """A fresh local Ray prints its INFO lines and token warning only with verbose; quiet puts them in a file."""
    import subprocess

    # "local": a fresh Ray instance, never a cluster another process started on this machine.
    env = {**os.environ, "RAY_ADDRESS": "local"}
    proc = subprocess.run(
        [sys.executable, "-c", _QUIET_SCRIPT, tokenizer_path],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, quiet, verbose = proc.stderr.split("@@MODE ")
    for part, mode in ((quiet, "quiet"), (verbose, "verbose")):
        lines = [ln for ln in part.splitlines()[1:] if ln.strip()]
        ray_lines = [ln for ln in lines if " INFO " in ln or " WARNING " in ln or "Ray instance" in ln]
        rows, log_path = lines[-1].split()[1], lines[-1].split()[3]
        assert int(rows) > 0
        if mode == "quiet":
            assert ray_lines == [] and len(lines) == 1, lines[:5]
            text = Path(log_path).read_text(encoding="utf-8")
            assert "Started a local Ray instance" in text  # the lines are kept, in the session's log folder
        else:
            assert log_path == "None"
            assert any("Started a local Ray instance" in ln for ln in ray_lines)


def test_no_scratch_left_in_the_temp_folder(cluster, tokenizer, tokenizer_path, skewed, tmp_path, monkeypatch):
    """Every Ray run used to leave an ``hfprep-ray-*`` folder with its packed.arrow in the temp folder; now the
    output is a datasets cache file (outside a run) or lives until the run ends (inside one), on error too."""
    import tempfile

    from datasets.fingerprint import get_temporary_cache_files_directory

    from hfprep.scratch import run_scope

    get_temporary_cache_files_directory()  # datasets' own, for the whole process: made in the real temp folder
    tmp = tmp_path / "TMPDIR"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    cfg = _cfg(tokenizer_path, "no_incomplete")
    ref, _ = prepare_with_ray(cfg, skewed, tokenizer=tokenizer)
    with run_scope():
        inside, _ = prepare_with_ray(cfg, skewed, tokenizer=tokenizer)
        assert inside.to_list() == ref.to_list()
    with pytest.raises(DataError), run_scope():
        prepare_with_ray(cfg, skewed.rename_column("content", "text"), tokenizer=tokenizer)
    left = [p for p in tmp.rglob("*") if any(part.startswith("hfprep-") for part in p.relative_to(tmp).parts)]
    assert left == []
    assert len(ref.to_list()) == ref.num_rows  # the dataset outside a run is still readable
