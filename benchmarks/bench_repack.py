"""Repack vs a fresh run at the new ``seq_len``, and export throughput (issue 25).

A prepared dataset with the documents config (``output.documents: true``) can be packed again at another length by
``hfprep repack`` without tokenizer or source. The anchor is what a user does without it: ``hfprep run`` of the
same recipe at the new length (read the source, tokenize, key, group, pack, write). Both write the same folder (the
data shards are asserted byte-identical after timing). The floor is the least any repack must do on these cores:
decode the documents config and write the packed rows with the same Parquet settings (rows made beforehand,
untimed; no keys, no packing, no card). Export rows are ``hfprep export`` of the train split to Megatron's indexed
dataset and to a flat token file, in tokens per second.

Every row is the user's command line (``hfprep run|repack|export``, start-up and figures included) in a fresh
process, timed from outside (wall) with its CPU seconds; one untimed warm-up of each row, then the best of
``--repeats``. The target of the issue is repack >= 5x faster than the fresh run; the floor row says how far that
is from what these cores allow.

Corpus: the standard library's ``.py`` files as JSON Lines, repeated up to the size asked (640 MB; ``--quick``
40 MB), a 65,536-entry byte-level BPE trained locally, dense packing at 2,048 then 4,096, 64 keys. Outputs are
removed at the end.

Usage:
    python benchmarks/bench_repack.py --quick          # 40 MB, a few minutes on 2 cores
    python benchmarks/bench_repack.py                  # 640 MB
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import MB, WORK_DIR, bench_tokenizer, stdlib_documents

TARGET = 5.0
HFPREP = [sys.executable, "-m", "hfprep"]


def floor(documents: str, packed: str, out: str) -> None:
    """The floor row's work, in this (fresh) process: decode the documents shards (on a thread, Arrow's readers use
    their own threads too) while the packed rows (read into memory before the clock starts) are written with
    hfprep's shard writer. Prints its own wall and CPU seconds (no start-up: a floor below what a command can
    reach)."""
    import threading

    import pyarrow as pa
    import pyarrow.parquet as pq

    from hfprep.output.shards import ShardWriter

    rows = pq.read_table(sorted(Path(packed).glob("*.parquet")))
    t0, c0 = time.perf_counter(), time.process_time()
    decoded = []
    reader = threading.Thread(target=lambda: decoded.extend(
        pq.read_table(p).num_rows for p in sorted(Path(documents).glob("train-*.parquet"))))
    reader.start()
    with ShardWriter(out, "train", threads=2) as writer:
        for batch in rows.to_batches(max_chunksize=1000):
            writer.write(pa.Table.from_batches([batch]))
    reader.join()
    print("FLOOR " + json.dumps({"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0}))


def timed(argv: list[str], repeats: int, parse=None, warm_up: bool = True) -> dict:
    """One untimed warm-up, then the best of ``repeats`` fresh processes (wall from outside, CPU of the child;
    ``parse`` may replace them with what the process printed)."""
    best = None
    for i in range(repeats + 1 if warm_up else repeats):
        c0 = _children_cpu()
        t0 = time.perf_counter()
        out = subprocess.run(argv, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
        if out.returncode:
            sys.exit(f"{' '.join(argv)} failed:\n{out.stderr[-3000:]}")
        got = {"wall": wall, "cpu": _children_cpu() - c0}
        if parse is not None:
            got.update(parse(out.stdout))
        if (i or not warm_up) and (best is None or got["wall"] < best["wall"]):
            best = got
    return best


def _children_cpu() -> float:
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return c.ru_utime + c.ru_stime


def write_recipe(work: Path, tokenizer: Path, seq_len: int, out: str) -> Path:
    recipe = {
        "name": "bench-repack",
        "source": {"files": ["docs.jsonl"]},
        "tokenizer": {"name_or_path": str(tokenizer)},
        "tokenize": {"text_column": "text"},
        "packing": {"seq_len": seq_len, "strategy": "dense", "num_reduce_chunks": 64},
        "output": {"folder": out, "documents": True},
        "engine": {"num_proc": 2},
    }
    path = work / f"{out}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def same_data(a: Path, b: Path) -> bool:
    files = sorted(p.name for p in (a / "data").iterdir())
    return files == sorted(p.name for p in (b / "data").iterdir()) and all(
        (a / "data" / f).read_bytes() == (b / "data" / f).read_bytes() for f in files
    )


def _summary(stdout: str) -> dict:
    events = [json.loads(x) for x in stdout.splitlines() if x.startswith("{")]
    return next(e for e in events if e.get("event") == "summary")


def _floor(stdout: str) -> dict:
    return json.loads(next(x for x in stdout.splitlines() if x.startswith("FLOOR "))[6:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="40 MB of input (a few minutes)")
    ap.add_argument("--mb", type=int, default=None, help="input size in MB (default 640, --quick 40)")
    ap.add_argument("--seq-len", type=int, default=2048, help="the prepared dataset's length")
    ap.add_argument("--new-seq-len", type=int, default=4096, help="the length to repack to")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per row, after one warm-up (best is kept)")
    args = ap.parse_args()
    mb = args.mb or (40 if args.quick else 640)
    work = WORK_DIR / f"repack-{mb}MB"
    work.mkdir(parents=True, exist_ok=True)
    _, tok_dir = bench_tokenizer(65_536)
    docs = work / "docs.jsonl"
    if not docs.exists():
        tmp = docs.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for text in stdlib_documents(mb * MB):
                f.write(json.dumps({"text": text}) + "\n")
        tmp.rename(docs)
    size = docs.stat().st_size / MB
    n = args.repeats
    floor_code = ("import sys; sys.path.insert(0, sys.argv[1]); import bench_repack as b; "
                  "b.floor(sys.argv[2], sys.argv[3], sys.argv[4])")
    try:
        source_recipe = write_recipe(work, tok_dir, args.seq_len, "source")
        source = timed([*HFPREP, "run", str(source_recipe), "--overwrite", "--json"], 1, _summary, warm_up=False)
        tokens = source["totals"]["tokens_in"]
        fresh = timed([*HFPREP, "run", str(write_recipe(work, tok_dir, args.new_seq_len, "fresh")), "--overwrite",
                       "--json"], n)
        repacked = timed([*HFPREP, "repack", str(work / "source"), "--seq-len", str(args.new_seq_len), "--output",
                          str(work / "repacked"), "--overwrite", "--json"], n)
        least = timed([sys.executable, "-c", floor_code, str(Path(__file__).parent), str(work / "source" / "documents"),
                       str(work / "fresh" / "data"), str(work / "floor")], n, _floor)
        megatron = timed([*HFPREP, "export", str(work / "source"), "--format", "megatron", "--output",
                          str(work / "megatron" / "train"), "--overwrite", "--json"], n)
        flat = timed([*HFPREP, "export", str(work / "source"), "--format", "flat", "--output",
                      str(work / "flat" / "train"), "--overwrite", "--json"], n)
        identical = same_data(work / "repacked", work / "fresh")
    finally:
        for name in ("source", "fresh", "repacked", "floor", "megatron", "flat", ".cache"):
            shutil.rmtree(work / name, ignore_errors=True)
    rows = [
        (f"hfprep run, seq_len {args.new_seq_len} (fresh run: the anchor)", fresh),
        (f"hfprep repack -> seq_len {args.new_seq_len}", repacked),
        ("floor: decode documents + write packed rows (no start-up)", least),
        ("hfprep export --format megatron (train)", megatron),
        ("hfprep export --format flat (train)", flat),
    ]
    print(f"{size:,.1f} MB of JSON Lines, {tokens:,} tokens, dense, 64 keys; the source (seq_len {args.seq_len}, "
          f"with documents) took {source['wall']:.2f} s; each row: the command in a fresh process, one warm-up, "
          f"best of {n}")
    print(f"{'step':<58}{'wall s':>9}{'CPU s':>9}{'Mtok/s':>9}{'vs fresh':>10}")
    for name, r in rows:
        ratio = fresh["wall"] / r["wall"]
        print(f"{name:<58}{r['wall']:>9.2f}{r['cpu']:>9.2f}{tokens / r['wall'] / 1e6:>9.2f}{ratio:>9.1f}x")
    speedup = fresh["wall"] / repacked["wall"]
    verdict = "met" if speedup >= TARGET and identical else "missed"
    print(f"repack vs fresh run: {speedup:.1f}x in wall time, {fresh['cpu'] / repacked['cpu']:.1f}x in CPU time "
          f"(target >= {TARGET:g}x): {verdict}; the floor allows at most {fresh['wall'] / least['wall']:.1f}x; "
          f"data shards {'identical' if identical else 'DIFFERENT'}")
    print(f"export throughput: megatron {tokens / megatron['wall'] / 1e6:.1f} Mtok/s, "
          f"flat {tokens / flat['wall'] / 1e6:.1f} Mtok/s")


if __name__ == "__main__":
    main()
