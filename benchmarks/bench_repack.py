"""Repack vs a fresh run at the new ``seq_len``, and export throughput (issue 25).

A prepared dataset with the documents config (``output.documents: true``) can be packed again at another length by
``hfprep repack`` without tokenizer or source. The anchor is what a user does without it: ``hfprep run`` of the
same recipe at the new length (read the source, tokenize, key, group, pack, write). Both write the same folder (the
data shards are asserted byte-identical after timing); the target is repack >= 5x faster. Export rows are
``hfprep export`` of the train split to Megatron's indexed dataset and to a flat token file, in tokens per second.

Corpus: the standard library's ``.py`` files as JSON Lines, repeated up to the size asked (640 MB; ``--quick``
40 MB), a 65,536-entry byte-level BPE trained locally, dense packing at 2,048 then 4,096, 64 keys. Every timed
step runs in a fresh process (wall and CPU seconds of that process); outputs are removed at the end.

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


def child(step: str, args: dict) -> dict:
    """One timed step, in this (fresh) process."""
    t0, c0 = time.perf_counter(), _cpu()
    if step == "run":
        from hfprep.run import run_recipe

        summary = run_recipe(args["recipe"], overwrite=True)
        tokens = summary["totals"]["tokens_in"]
    elif step == "repack":
        from hfprep.commands.repack import repack

        summary = repack(args["src"], args["out"], seq_len=args["seq_len"], overwrite=True)
        tokens = sum(s["tokens_in"] for s in summary["splits"].values())
    else:
        from hfprep.commands.export import export

        summary = export(args["src"], args["out"], format=args["format"], overwrite=True)
        tokens = summary["tokens"]
    return {"wall": time.perf_counter() - t0, "cpu": _cpu() - c0, "tokens": tokens}


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


def timed(step: str, **args) -> dict:
    code = "import json, sys; sys.path.insert(0, sys.argv[1]); import bench_repack as b; " \
           "print('RESULT ' + json.dumps(b.child(sys.argv[2], json.loads(sys.argv[3]))))"
    out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), step, json.dumps(args)],
                         capture_output=True, text=True, check=False)
    if out.returncode:
        sys.exit(f"{step} failed:\n{out.stderr[-3000:]}")
    return json.loads(next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))[7:])


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="40 MB of input (a few minutes)")
    ap.add_argument("--mb", type=int, default=None, help="input size in MB (default 640, --quick 40)")
    ap.add_argument("--seq-len", type=int, default=2048, help="the prepared dataset's length")
    ap.add_argument("--new-seq-len", type=int, default=4096, help="the length to repack to")
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
    try:
        source = timed("run", recipe=str(write_recipe(work, tok_dir, args.seq_len, "source")))
        fresh = timed("run", recipe=str(write_recipe(work, tok_dir, args.new_seq_len, "fresh")))
        repacked = timed("repack", src=str(work / "source"), out=str(work / "repacked"), seq_len=args.new_seq_len)
        megatron = timed("export", src=str(work / "source"), out=str(work / "megatron" / "train"), format="megatron")
        flat = timed("export", src=str(work / "source"), out=str(work / "flat" / "train"), format="flat")
        identical = same_data(work / "repacked", work / "fresh")
    finally:
        for name in ("source", "fresh", "repacked", "megatron", "flat", ".cache"):
            shutil.rmtree(work / name, ignore_errors=True)
    rows = [
        (f"hfprep run, seq_len {args.seq_len} (the source, with documents)", source),
        (f"hfprep run, seq_len {args.new_seq_len} (fresh run: the anchor)", fresh),
        (f"hfprep repack -> seq_len {args.new_seq_len}", repacked),
        ("hfprep export --format megatron (train)", megatron),
        ("hfprep export --format flat (train)", flat),
    ]
    print(f"{size:,.1f} MB of JSON Lines, {source['tokens']:,} tokens, dense, 64 keys; one run per row, fresh process")
    print(f"{'step':<58}{'wall s':>9}{'CPU s':>9}{'Mtok/s':>9}{'vs fresh':>10}")
    for name, r in rows:
        ratio = fresh["wall"] / r["wall"]
        print(f"{name:<58}{r['wall']:>9.2f}{r['cpu']:>9.2f}{r['tokens'] / r['wall'] / 1e6:>9.2f}{ratio:>9.1f}x")
    speedup = fresh["wall"] / repacked["wall"]
    verdict = "met" if speedup >= TARGET and identical else "missed"
    print(f"repack vs fresh run: {speedup:.1f}x in wall time, {fresh['cpu'] / repacked['cpu']:.1f}x in CPU time "
          f"(target >= {TARGET:g}x): {verdict}; data shards {'identical' if identical else 'DIFFERENT'}")
    print(f"export throughput: megatron {megatron['tokens'] / megatron['wall'] / 1e6:.1f} Mtok/s, "
          f"flat {flat['tokens'] / flat['wall'] / 1e6:.1f} Mtok/s")


if __name__ == "__main__":
    main()
