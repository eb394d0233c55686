"""Engines side by side on the same map-reduce packing job: the in-RAM floor, datasets engine, Ray.

The job: N synthetic pre-tokenized documents (lognormal lengths, median ~300 tokens, random ids),
key = ``array_hash(input_ids) % keys``, group, pack ``dense`` at ``seq_len``. The map side is keys + document index
only (no text tokenizer, so the comparison measures the engines, not tokenization). Every engine starts from the
same Parquet files and ends with the packed rows as Arrow; all outputs are asserted identical (sha256 over every
column). Each engine runs in its own subprocess; peak memory is the sampled RSS sum of that process tree (shared
pages, e.g. Ray's object store or memory-mapped files, count once per process that maps them).

    python benchmarks/bench_engines.py --quick          # 100k docs, a few minutes on 2 cores
    python benchmarks/bench_engines.py                  # 1M docs (~490M tokens; needs ~12 GB RAM free)
    python benchmarks/bench_engines.py --engines reference,datasets,datasets_cache

Engines: ``reference`` (the floor: the engines' own map and reduce functions on ``num_proc`` forked workers, with
no framework in between, the output written as Arrow IPC files like the engines write it; see :func:`run_reference`),
``datasets`` (``run_parquet``: the Parquet row groups mapped directly, what ``hfprep run`` does with plain Parquet
files), ``datasets_cache`` (``load_dataset`` -> Arrow cache -> ``run``: the path of JSON Lines/CSV/Hub sources),
``ray`` (``run_on_ray`` on a local cluster). Every engine, the floor included, uses ``--num-proc`` workers. Ray's
fixed start-up (``ray.init`` and a first tiny job that starts its worker processes) is measured separately and
printed next to the table, not in the engine's time.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hfprep.engines.mapreduce import INDEX_COLUMN, KEY_COLUMN, key_groups, plan_reduce_ranges, range_groups
from hfprep.pack.keys import batch_keys
from hfprep.pack.transform import PrepareForTrainingTransform, PrepareForTrainingTransformConfig
from hfprep.schema import flat_to_table

COLUMNS = ["input_ids", "position_ids", "loss_mask"]


class PretokenizedTransform(PrepareForTrainingTransform):
    """The benchmark's map side: documents are already tokenized; emit key + index (Arrow in, Arrow out)."""

    map_input_format = "arrow"

    def input_columns(self) -> list[str]:
        return COLUMNS  # what map_batch reads (run_parquet reads only these columns)

    def map_num_proc(self, num_proc):
        # The pack transform maps in one process for the hf backend, whose Rust threads tokenize on every core;
        # this map tokenizes nothing, so it takes the workers like any other map.
        return num_proc

    def map_batch(self, batch, indices):
        table = batch if isinstance(batch, pa.Table) else pa.table(batch)
        table = table.select(COLUMNS)
        ids = table.column("input_ids").combine_chunks()
        offsets = np.asarray(ids.offsets.to_numpy(), dtype=np.int64)
        values = ids.values.to_numpy(zero_copy_only=False)
        keys = batch_keys(values, offsets, self.config.num_reduce_chunks)
        index = np.asarray(indices, dtype=np.int64)
        return table.append_column(KEY_COLUMN, pa.array(keys)).append_column(INDEX_COLUMN, pa.array(index))


# --- data ----------------------------------------------------------------------------------------------------------


def make_data(folder: Path, docs: int, seed: int = 0, files: int = 8, vocab: int = 65536) -> tuple[list[str], int]:
    """Lognormal lengths (median 300, sigma 1 -> mean ~490), random ids; ``files`` Parquet files, 10k-row groups."""
    rng = np.random.default_rng(seed)
    lengths = np.maximum(1, np.exp(rng.normal(np.log(300), 1.0, docs))).astype(np.int64)
    paths, total = [], int(lengths.sum())
    per = -(-docs // files)
    for f in range(files):
        ln = lengths[f * per : (f + 1) * per]
        if not len(ln):
            break
        offsets = np.zeros(len(ln) + 1, np.int64)
        np.cumsum(ln, out=offsets[1:])
        ids = rng.integers(0, vocab, int(offsets[-1]), dtype=np.uint32)
        pos = (np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1], ln)).astype(np.uint32)
        table = flat_to_table(ids, pos, np.ones(len(ids), np.bool_), offsets)
        path = folder / f"part-{f:05d}.parquet"
        pq.write_table(table, str(path), row_group_size=10_000, compression="zstd")
        paths.append(str(path))
    return paths, total


def digest(table: pa.Table) -> str:
    """sha256 over the values and row lengths of every column, chunk by chunk (independent of the chunking)."""
    out = hashlib.sha256()
    for name in COLUMNS:
        values, lengths = hashlib.sha256(), hashlib.sha256()
        for chunk in table.column(name).chunks:
            for a in range(0, len(chunk), 20_000):
                part = chunk.slice(a, 20_000)
                values.update(part.flatten().to_numpy(zero_copy_only=False).tobytes())
                lengths.update(np.diff(part.offsets.to_numpy()).astype(np.int64).tobytes())
        out.update(values.digest() + lengths.digest())
    return out.hexdigest()


# --- engines (each runs in a subprocess) ----------------------------------------------------------------------------


_FLOOR: dict = {}  # what the floor's forked workers inherit (set before each pool starts)


def _floor_map(task: tuple[int, str, int, int]) -> np.ndarray:
    """One Parquet row group: read, keyed by the engines' own map function, its rows written to an Arrow IPC file in
    the floor's folder (the page cache: the reduce memory-maps it); returns the keys."""
    i, path, group, start = task
    rows = pq.ParquetFile(path).read_row_group(group, columns=COLUMNS)
    mapped = _FLOOR["transform"].map_batch(rows, list(range(start, start + rows.num_rows)))
    path = str(Path(_FLOOR["out_dir"]) / f"map-{i:05d}.arrow")
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, rows.schema) as writer:
        writer.write_table(rows)
    return mapped.column(KEY_COLUMN).to_numpy()


def _floor_reduce(task: tuple[int, int, int]) -> str:
    """Groups ``lo..hi``: the engines' own gather (``range_groups``) and reduce, written to an Arrow IPC stream file
    like the datasets engine's range files (the groups' tails to a ``.tail`` file beside it)."""
    i, lo, hi = task
    f = _FLOOR
    path = Path(f["out_dir"]) / f"range-{i:05d}.arrow"
    tails = []
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, f["schema"]) as writer:
        for key, part in range_groups(f["table"], f["order"], f["bounds"], f["keys"], lo, hi):
            out, _, tail = f["transform"].reduce_group_with_tail(key, part)
            if out.num_rows:
                writer.write_table(out.select(f["schema"].names).cast(f["schema"]), max_chunksize=1000)
            if tail is not None and tail.num_rows:
                tails.append(tail.select(f["schema"].names).cast(f["schema"]))
    if tails:
        with pa.OSFile(str(path.with_suffix(".tail")), "wb") as sink, pa.ipc.new_stream(sink, f["schema"]) as w:
            for t in tails:
                w.write_table(t)
    return str(path)


def _read_stream(path: str | Path) -> pa.Table:
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_stream(source).read_all()


def run_reference(transform, paths: list[str], workdir: Path, num_proc: int) -> pa.Table:
    """The floor: the engines' work with nothing in between, on the same cores and with the same write.

    ``num_proc`` forked workers (the engines' worker count) read the Parquet row groups, key them with the engines'
    map function and write their rows to Arrow IPC files; the driver memory-maps those, sorts the keys (stable:
    input order inside a key) and cuts the datasets engine's key ranges (``plan_reduce_ranges``); ``num_proc``
    forked workers gather and reduce the ranges with the engines' own code (``range_groups``,
    ``reduce_group_with_tail``), each writing an Arrow IPC stream file as the engines do, and the driver packs the
    groups' tails (``reduce_tails``) into one more file. No ``datasets`` machinery, no cluster, no re-encoding.
    (Reading every file into the driver's memory instead measured slower: one process decodes and first-touches the
    whole input, where map workers stream it through the page cache.)
    """
    import multiprocessing

    tasks, start = [], 0
    for path in paths:
        meta = pq.ParquetFile(path).metadata
        for g in range(meta.num_row_groups):
            tasks.append((len(tasks), path, g, start))
            start += meta.row_group(g).num_rows
    feats = transform.output_features()
    _FLOOR.update(transform=transform, out_dir=str(workdir), schema=feats.arrow_schema)
    fork = multiprocessing.get_context("fork")
    with fork.Pool(num_proc) as pool:
        keys = np.concatenate(pool.map(_floor_map, tasks, chunksize=1))
    maps = [pa.ipc.open_file(pa.memory_map(str(Path(workdir) / f"map-{i:05d}.arrow"))) for i in range(len(tasks))]
    table = pa.concat_tables([m.read_all() for m in maps])  # zero-copy views of the mapped files
    order = np.argsort(keys, kind="stable")
    bounds, group_keys = key_groups(pa.array(keys), order)
    ranges = plan_reduce_ranges(transform.group_bytes(table, bounds, order), transform.reduce_memory_budget,
                                min_ranges=num_proc)
    _FLOOR.update(table=table, order=order, bounds=bounds, keys=group_keys)
    with fork.Pool(num_proc) as pool:
        files = pool.map(_floor_reduce, [(i, lo, hi) for i, (lo, hi) in enumerate(ranges)], chunksize=1)
    tails = [_read_stream(t) for t in (Path(p).with_suffix(".tail") for p in files) if t.exists()]
    if tails:
        out, _ = transform.reduce_tails(pa.concat_tables(tails))
        files.append(str(Path(workdir) / "tails.arrow"))
        with pa.OSFile(files[-1], "wb") as sink, pa.ipc.new_stream(sink, feats.arrow_schema) as writer:
            writer.write_table(out.select(feats.arrow_schema.names).cast(feats.arrow_schema), max_chunksize=1000)
    _FLOOR.clear()
    return pa.concat_tables([_read_stream(p) for p in files])


def run_datasets(transform, paths: list[str], workdir: Path, num_proc: int) -> pa.Table:
    """What ``hfprep run`` does with plain Parquet files on the datasets engine: map the row groups directly."""
    return transform.run_parquet(paths, num_proc=num_proc).data.table


def run_datasets_cache(transform, paths: list[str], workdir: Path, num_proc: int) -> pa.Table:
    """The datasets engine on a loaded dataset: ``load_dataset`` converts the Parquet files to an Arrow cache first
    (what a JSON Lines/CSV source or a Hub dataset goes through)."""
    from datasets import load_dataset

    ds = load_dataset("parquet", data_files=paths, split="train", cache_dir=str(workdir / "hf-cache"))
    out = transform.run(ds, num_proc=num_proc)
    return out.data.table


def run_ray(transform, paths: list[str], workdir: Path) -> pa.Table:
    from hfprep.engines.ray_engine import run_on_ray

    return run_on_ray(transform, paths, cache_dir=workdir / "ray-cache").data.table


def child(args) -> None:
    cfg = PrepareForTrainingTransformConfig(**json.loads(args.cfg))
    paths = json.loads(args.paths)
    workdir = Path(args.workdir) / f"{args.child}-{os.getpid()}"  # a fresh folder per run: no cache reused
    workdir.mkdir(parents=True)
    # Fixed start-up costs stay off the clock for every engine: imports, the transform, the local Ray cluster
    # (its worker processes still start on the clock, as they would on a fresh cluster).
    transform = PretokenizedTransform(cfg)
    startup = None
    if args.child == "ray":
        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=args.num_proc, include_dashboard=False, log_to_driver=False)
        # A first tiny job starts the worker processes: a fixed cost per cluster, stated apart from the run.
        ray.get([ray.remote(lambda i: i).remote(i) for i in range(4 * args.num_proc)])
        startup = time.perf_counter() - t0
    t0 = time.perf_counter()
    if args.child == "reference":
        out = run_reference(transform, paths, workdir, args.num_proc)
    elif args.child == "datasets":
        out = run_datasets(transform, paths, workdir, args.num_proc)
    elif args.child == "datasets_cache":
        out = run_datasets_cache(transform, paths, workdir, args.num_proc)
    else:
        out = run_ray(transform, paths, workdir)
    wall = time.perf_counter() - t0
    tokens = int(sum(len(c.flatten()) for c in out.column("input_ids").chunks))
    res = {"wall": wall, "rows": out.num_rows, "tokens_out": tokens, "digest": digest(out), "startup": startup}
    print(json.dumps(res))


def tree_rss(pid: int) -> int:
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for q in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += q.memory_info().rss
    return total


def measure(engine: str, args, cfg_json: str, paths: list[str]) -> dict:
    # Each run's output and caches go when it ends: at 1M documents a run leaves 4-9 GB, and three rounds of four
    # engines filled the disk (Ray's spilling then failed).
    with tempfile.TemporaryDirectory(prefix=f"{engine}-", dir=args.workdir) as workdir:
        return _measure(engine, args, cfg_json, paths, workdir)


def _measure(engine: str, args, cfg_json: str, paths: list[str], workdir: str) -> dict:
    cmd = [sys.executable, __file__, "--child", engine, "--cfg", cfg_json, "--paths", json.dumps(paths)]
    cmd += ["--workdir", workdir, "--num-proc", str(args.num_proc)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=None if os.environ.get("BENCH_DEBUG") else subprocess.DEVNULL, text=True)
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss(proc.pid))
            time.sleep(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, _ = proc.communicate()
    th.join()
    if proc.returncode:
        raise SystemExit(f"{engine} failed with exit code {proc.returncode}")
    res = json.loads(out.strip().splitlines()[-1])
    res["peak_rss"] = peak[0]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="100k documents")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--keys", type=int, default=64)
    ap.add_argument("--num-proc", type=int, default=2)
    ap.add_argument("--engines", default="reference,datasets,datasets_cache,ray")
    ap.add_argument("--repeats", type=int, default=1, help="runs per engine (best kept); docs/benchmarks.md uses 3")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cfg", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--paths", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    docs = 100_000 if args.quick else args.docs
    with tempfile.TemporaryDirectory(prefix="bench-engines-", dir=args.workdir) as tmp:
        args.workdir = tmp
        from hfprep.tokenization.loading import DEFAULT_SPECIAL_TOKENS, train_tiny_tokenizer

        tok = Path(tmp) / "tokenizer"
        train_tiny_tokenizer(["hello world"] * 10, tok, vocab_size=300, special_tokens=DEFAULT_SPECIAL_TOKENS)
        cfg = {
            "processing_strategy": "pretrain",
            "packing_strategy": "dense",
            "tokenizer_name": str(tok),
            "seq_len": args.seq_len,
            "num_reduce_chunks": args.keys,
            "reduce_memory_budget": 2**31,
            "text_column": "input_ids",  # only satisfies the column check; the map side reads no text
        }
        data = Path(tmp) / "data"
        data.mkdir()
        t0 = time.perf_counter()
        paths, total = make_data(data, docs)
        print(f"data: {docs:,} docs, {total:,} tokens, {len(paths)} Parquet files ({time.perf_counter() - t0:.0f} s)")
        results = {}
        # Round-robin repeats (every engine once per round, in a fresh process), best wall time kept per engine;
        # the data was just written, so every engine reads it from the page cache alike.
        for _ in range(args.repeats):
            for engine in args.engines.split(","):
                r = measure(engine, args, json.dumps(cfg), paths)
                print(f"  {engine}: {r['wall']:.1f} s", flush=True)
                if engine not in results or r["wall"] < results[engine]["wall"]:
                    results[engine] = r
    base = results.get("reference") or next(iter(results.values()))
    print(f"\n{docs:,} docs, {total:,} tokens, seq_len {args.seq_len}, {args.keys} keys, num_proc {args.num_proc}, "
          f"best of {args.repeats}")
    print(f"{'engine':<16}{'wall s':>9}{'x ref':>8}{'Mtok/s':>9}{'peak RSS GiB':>14}{'rows':>10}  output")
    for name, r in results.items():
        same = "identical" if r["digest"] == base["digest"] else "DIFFERENT"
        print(
            f"{name:<16}{r['wall']:>9.1f}{r['wall'] / base['wall']:>8.2f}{total / r['wall'] / 1e6:>9.1f}"
            f"{r['peak_rss'] / 2**30:>14.2f}{r['rows']:>10,}  {same}"
        )
    if results.get("ray", {}).get("startup") is not None:
        print(f"ray start-up (ray.init + first job starting its workers), not in the time above: "
              f"{results['ray']['startup']:.1f} s")
    if any(r["digest"] != base["digest"] for r in results.values()):
        raise SystemExit("outputs differ between engines")


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    main()
