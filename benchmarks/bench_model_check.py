"""Cost of checking data against the model before training, side by side with reading the ids at all.

Data: ``--tokens`` random token ids (vocabulary 128,256) in packed rows of 2048, written the way ``hfprep run``
writes a split (``write_split``: zstd, no dictionary). Rows compared, each the fastest of ``--reps`` runs after one
warm-up run:

* floor: pyarrow reads the ``input_ids`` column of every shard (no check at all);
* ``check_dataset_for_model(folder, model)``: the same read plus the range check, row group by row group;
* the same on a ``datasets.Dataset`` loaded from that folder (its Arrow cache, memory-mapped);
* ``DataCollatorForPackedLM(vocab_size=...)`` vs without, per batch of 8 rows (the per-batch check's cost).

Run: ``python benchmarks/bench_model_check.py`` (``--tokens 20_000_000`` for a quick look).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from hfprep.output.layout import write_split
from hfprep.schema import flat_to_table
from hfprep.train.collator import DataCollatorForPackedLM
from hfprep.train.model_check import check_dataset_for_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import best_of

VOCAB = 128_256
SEQ_LEN = 2048


def write_folder(root: Path, tokens: int) -> Path:
    rows = tokens // SEQ_LEN
    rng = np.random.default_rng(0)
    ids = rng.integers(0, VOCAB, size=rows * SEQ_LEN, dtype=np.uint32)
    pos = np.tile(np.arange(SEQ_LEN, dtype=np.uint32), rows)
    loss = np.ones(rows * SEQ_LEN, np.bool_)
    table = flat_to_table(ids, pos, loss, np.arange(rows + 1, dtype=np.int64) * SEQ_LEN)
    folder = root / "prepared"
    write_split(table, folder, "train")
    return folder


def read_ids(folder: Path) -> None:
    for shard in sorted((folder / "data").glob("*.parquet")):
        pq.read_table(shard, columns=["input_ids"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=100_000_000)
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args()
    from datasets import load_dataset

    with tempfile.TemporaryDirectory() as tmp:
        folder = write_folder(Path(tmp), a.tokens)
        n = sum(pq.ParquetFile(f).metadata.num_rows for f in (folder / "data").glob("*.parquet")) * SEQ_LEN
        ds = load_dataset(str(folder), split="train", cache_dir=str(Path(tmp) / "cache"))
        results = [
            ("pyarrow reads input_ids (floor)", best_of(lambda: read_ids(folder), a.reps)),
            ("check_dataset_for_model(folder)", best_of(lambda: check_dataset_for_model(folder, VOCAB), a.reps)),
            ("check_dataset_for_model(Dataset)", best_of(lambda: check_dataset_for_model(ds, VOCAB), a.reps)),
        ]
        print(f"{n:,} tokens in rows of {SEQ_LEN}, vocabulary {VOCAB:,}")
        print(f"{'what':<36} {'seconds':>8} {'M tokens/s':>11}")
        for name, t in results:
            print(f"{name:<36} {t:8.3f} {n / t / 1e6:11.1f}")
        rows = ds.with_format("numpy")[:8]
        feats = [{k: rows[k][i] for k in ("input_ids", "position_ids", "loss_mask")} for i in range(8)]
        plain, checked = DataCollatorForPackedLM(), DataCollatorForPackedLM(vocab_size=VOCAB)
        t_plain = best_of(lambda: [plain(feats) for _ in range(100)], a.reps) / 100
        t_checked = best_of(lambda: [checked(feats) for _ in range(100)], a.reps) / 100
        print(f"collator, 8 x {SEQ_LEN}: {t_plain * 1e3:.3f} ms without vocab_size, {t_checked * 1e3:.3f} ms with")


if __name__ == "__main__":
    main()
