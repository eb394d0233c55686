"""Reading a prepared dataset back: hfprep's Parquet encodings vs pyarrow's defaults, on the same rows.

The rows: dense 2048-token rows of real Python code (the end-to-end benchmark's corpus, Llama 3.1 tokenizer),
written twice into Hub-layout folders: with hfprep's settings (:data:`hfprep.output.shards.COLUMN_ENCODINGS`: zstd, no
dictionary, run-length masks) and with what hfprep wrote before (pyarrow's defaults,
dictionary on, zstd). Each reader runs in a fresh process, best of N, with the files in the page cache (one untimed
read first). Rows: bytes per token on disk, ``load_dataset(folder)`` (datasets converts the Parquet files into its
Arrow cache: a fresh cache folder every run), then one pass over every row with ``with_format("numpy")`` batches
(what a trainer's data loader does), and ``pyarrow.parquet.read_table`` alone.

    python benchmarks/bench_output_read.py --quick     # 40 MB of text, best of 2
    python benchmarks/bench_output_read.py             # 160 MB of text, best of 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from bench_end_to_end import corpus  # noqa: E402
from corpus import WORK_DIR  # noqa: E402
from fetch_tokenizers import family_dir, fetch  # noqa: E402

from hfprep.output.layout import hf_schema  # noqa: E402
from hfprep.output.shards import write_split  # noqa: E402
from hfprep.schema import row_features  # noqa: E402

SEQ_LEN = 2048

READ = """
import sys, time
kind, folder, cache = sys.argv[1:4]
start = time.perf_counter()
if kind == "load_dataset":
    from datasets import load_dataset
    ds = load_dataset(folder, split="train", cache_dir=cache).with_format("numpy")
    loaded = time.perf_counter()
    tokens = 0
    for batch in ds.iter(batch_size=64):
        tokens += batch["input_ids"].size
else:
    import glob, pyarrow.parquet as pq
    tokens = sum(pq.read_table(p).column("input_ids").combine_chunks().values.__len__() for p in sorted(glob.glob(folder + "/data/*.parquet")))
    loaded = time.perf_counter()
print("RESULT", loaded - start, time.perf_counter() - start, tokens)
"""


def rows_table(size_mb: int) -> pa.Table:
    """Dense ``SEQ_LEN`` rows of the corpus (documents + eos), positions restarting per document."""
    import gigatoken

    path = corpus(size_mb)
    tok = family_dir("llama3_1")
    with open(path, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    enc = gigatoken.Tokenizer(str(tok / "tokenizer.json")).encode_batch(texts, parallel=True)
    values, offsets = np.asarray(enc.layout.content.data), np.asarray(enc.layout.offsets.data, dtype=np.int64)
    lengths = np.diff(offsets) + 1
    ends = np.cumsum(lengths)
    ids = np.empty(int(ends[-1]), np.uint32)
    is_eos = np.zeros(len(ids), bool)
    is_eos[ends - 1] = True
    ids[~is_eos], ids[is_eos] = values, 128001
    pos = (np.arange(len(ids)) - np.repeat(ends - lengths, lengths)).astype(np.uint32)
    rows = len(ids) // SEQ_LEN
    ids, pos = ids[: rows * SEQ_LEN], pos[: rows * SEQ_LEN].copy()
    # The dense packer's rebase: the piece of a document that opens a row counts its positions from 0 again.
    doc = np.repeat(np.arange(len(lengths)), lengths)[: rows * SEQ_LEN]
    row_start = np.arange(len(pos)) // SEQ_LEN * SEQ_LEN
    opening = doc == doc[row_start]
    pos[opening] -= pos[row_start[opening]]
    off = pa.array(np.arange(rows + 1, dtype=np.int32) * SEQ_LEN)
    return pa.table({
        "input_ids": pa.ListArray.from_arrays(off, pa.array(ids)),
        "position_ids": pa.ListArray.from_arrays(off, pa.array(pos)),
        "loss_mask": pa.ListArray.from_arrays(off, pa.array(np.ones(len(ids), bool))),
    })


def write_folders(table: pa.Table, root: Path) -> dict[str, Path]:
    new, old = root / "hfprep", root / "pyarrow-defaults"
    write_split(table, new, "train", row_features())
    (old / "data").mkdir(parents=True)
    shards = len(list((new / "data").glob("*.parquet")))
    per = -(-table.num_rows // shards)
    for i in range(shards):  # the same shards, pyarrow's default encodings (what hfprep wrote before)
        part = table.slice(i * per, per)
        pq.write_table(part.cast(hf_schema(part, row_features())), old / "data" / f"train-{i:05d}-of-{shards:05d}.parquet",
                       row_group_size=1000, compression="zstd", write_statistics=False)
    return {"hfprep": new, "pyarrow defaults (dictionary, zstd)": old}


def read(kind: str, folder: Path) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(dir=WORK_DIR) as cache:
        out = subprocess.run([sys.executable, "-c", READ, kind, str(folder), cache], capture_output=True, text=True,
                             check=True, env={**os.environ, "HF_DATASETS_OFFLINE": "1"})
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT"))
    _, loaded, total, _ = line.split()
    return float(loaded), float(total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int)
    args = parser.parse_args()
    fetch("llama3_1")
    size, repeats = (40, args.repeats or 2) if args.quick else (160, args.repeats or 3)
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    table = rows_table(size)
    tokens = len(table.column("input_ids").combine_chunks().values)
    with tempfile.TemporaryDirectory(dir=WORK_DIR) as root:
        folders = write_folders(table, Path(root))
        print(f"\n### {table.num_rows:,} rows x {SEQ_LEN} ({tokens / 1e6:.1f}M tokens) of {size} MB of code, "
              f"best of {repeats}, files in the page cache\n")
        print("| encoding | bytes/token | load_dataset s | load + iterate s | pyarrow read_table s |")
        print("|---|---:|---:|---:|---:|")
        for name, folder in folders.items():
            size_bytes = sum(p.stat().st_size for p in (folder / "data").glob("*.parquet"))
            read("read_table", folder)  # page cache
            ld = [read("load_dataset", folder) for _ in range(repeats)]
            rt = [read("read_table", folder)[0] for _ in range(repeats)]
            print(f"| {name} | {size_bytes / tokens:.3f} | {min(x[0] for x in ld):.2f} | {min(x[1] for x in ld):.2f} "
                  f"| {min(rt):.2f} |")


if __name__ == "__main__":
    main()
