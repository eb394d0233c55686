"""Collate time and bytes per batch: hfprep's DataCollatorForPackedLM vs the usual collators, side by side.

Rows: bs=8 packed rows of length L (1024 and 8192) made by hfprep's no_incomplete packer from lognormal
documents (so rows hold many documents and some padding). Every collator gets its examples the way a ``Trainer``
hands them over: items of a ``datasets.Dataset`` read with ``with_format("numpy")`` (int64 ids, bool masks) or
``with_format(None)`` (Python lists), the same two formats for all of them, plus ``with_format("torch")`` for hfprep:

* hfprep ``DataCollatorForPackedLM`` in each mode;
* transformers ``DataCollatorWithFlattening`` (``return_flash_attn_kwargs=True``) on the documents of the batch,
  one feature per document with its labels (the equivalent use: it treats every feature as one sequence);
* TRL ``DataCollatorForLanguageModeling(padding_free=True)`` on the rows with ``labels`` and ``seq_lengths``;
* the seed's dense path: ``LMDataset.__getitem__`` (which builds the (L, L) mask) for the 8 rows + ``collate_lm``.

Timing, every row alike: one warm-up call, then up to ``reps`` timed calls within a time budget, the fastest
reported (``n`` column: timed calls made). Ratios are against hfprep's default mode on the same input format; the
last lines print hfprep's default mode against ``DataCollatorWithFlattening`` per length and format (the README's
headline figure).

Run: ``python benchmarks/bench_collate.py`` (``--quick`` for fewer repetitions). Targets: the default mode
<= 0.3 ms per batch at L=8192 and >= 10x faster than ``DataCollatorWithFlattening``.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from datasets import Dataset

from hfprep.pack.packers import pack_no_incomplete_flat
from hfprep.schema import row_features
from hfprep.train.collator import DataCollatorForPackedLM, batch_nbytes
from hfprep.train.torch_data import LMDataset, collate_lm

BS = 8
PAD = 0


def make_rows(seq_len: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """BS packed rows of ``seq_len`` from lognormal documents (median ~300 tokens), eos-terminated, loss on all."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(300), 1.0, size=BS * seq_len // 100), 2, seq_len).astype(np.int64)
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    ids = rng.integers(1, 60000, size=total).astype(np.uint32)
    ids[offsets[1:] - 1] = PAD
    pos = (np.arange(total) - np.repeat(offsets[:-1], lengths)).astype(np.uint32)
    loss = np.ones(total, np.bool_)
    packed = pack_no_incomplete_flat(ids, pos, loss, offsets, seq_len, PAD)
    assert packed.num_rows >= BS
    return packed.rows()[:BS]


def documents(rows: list[dict[str, np.ndarray]]) -> list[dict[str, list[int]]]:
    """The documents of the rows (padding dropped), as lists with labels, for DataCollatorWithFlattening."""
    docs = []
    for r in rows:
        ids, pos, loss = r["input_ids"], r["position_ids"], r["loss_mask"]
        starts = [*np.flatnonzero(pos == 0).tolist(), len(ids)]
        for a, b in itertools.pairwise(starts):
            if loss[a:b].any():
                seg = ids[a:b].astype(np.int64)
                docs.append({"input_ids": seg.tolist(), "labels": np.where(loss[a:b], seg, -100).tolist()})
    return docs


def trl_examples(rows: list[dict[str, np.ndarray]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        pos = r["position_ids"]
        starts = [*np.flatnonzero(pos == 0).tolist(), len(pos)]
        ids = r["input_ids"].astype(np.int64)
        out.append(
            {
                "input_ids": ids.tolist(),
                "labels": np.where(r["loss_mask"], ids, -100).tolist(),
                "seq_lengths": np.diff(starts).tolist(),
            }
        )
    return out


def items(ds: Dataset, fmt: str | None) -> list[dict[str, Any]]:
    """The dataset's examples as a ``Trainer``'s data loader passes them to a collator, in format ``fmt``."""
    view = ds.with_format(fmt)
    return [view[i] for i in range(len(view))]


def timeit(fn: Callable[[], Any], reps: int, budget_s: float) -> tuple[float, int, Any]:
    """Best of up to ``reps`` timed calls after one warm-up (stops early past ``budget_s``): ``(ms, n, output)``."""
    out = fn()  # warm-up, and the batch whose bytes are reported
    times = []
    start = time.perf_counter()
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return min(times) * 1e3, len(times), out


def cases_for(seq_len: int) -> list[tuple[str, str, Callable[[], Any]]]:
    """(collator, input kind, zero-argument call) for one row length; the first case is the baseline."""
    from transformers import DataCollatorWithFlattening
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    packed = make_rows(seq_len)
    rows_ds = Dataset.from_dict({k: [r[k] for r in packed] for k in packed[0]}, features=row_features())
    rows, as_torch, as_lists = (items(rows_ds, fmt) for fmt in ("numpy", "torch", None))
    docs_ds, trl_ds = Dataset.from_list(documents(packed)), Dataset.from_list(trl_examples(packed))
    docs_np, docs = items(docs_ds, "numpy"), items(docs_ds, None)
    trl_np, trl_rows = items(trl_ds, "numpy"), items(trl_ds, None)
    seed_ds = LMDataset(rows)
    default = DataCollatorForPackedLM()
    no_check = DataCollatorForPackedLM(validate=False)
    varlen = DataCollatorForPackedLM(attention="flash_varlen")
    four_d = DataCollatorForPackedLM(attention="4d")
    flattening = DataCollatorWithFlattening(return_flash_attn_kwargs=True)
    trl = DataCollatorForLanguageModeling(pad_token_id=PAD, padding_free=True)
    return [
        ("hfprep position_ids (default)", "numpy", lambda: default(rows)),
        ("hfprep position_ids (default)", "torch", lambda: default(as_torch)),
        ("hfprep position_ids (default)", "lists", lambda: default(as_lists)),
        ("hfprep position_ids, validate=False", "numpy", lambda: no_check(rows)),
        ("hfprep flash_varlen", "numpy", lambda: varlen(rows)),
        ("hfprep 4d (float32 mask)", "numpy", lambda: four_d(rows)),
        ("transformers DataCollatorWithFlattening", "numpy", lambda: flattening(docs_np)),
        ("transformers DataCollatorWithFlattening", "lists", lambda: flattening(docs)),
        ("TRL DataCollatorForLM(padding_free=True)", "numpy", lambda: trl(trl_np)),
        ("TRL DataCollatorForLM(padding_free=True)", "lists", lambda: trl(trl_rows)),
        ("seed LMDataset + collate_lm (dense mask)", "numpy", lambda: collate_lm([seed_ds[i] for i in range(BS)])),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (about a minute)")
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 8192])
    args = ap.parse_args()
    reps, budget = (30, 3.0) if args.quick else (200, 15.0)

    print(f"bs={BS}; best ms per batch after a warm-up; ratio = time / hfprep default mode on the same input format\n")
    header = f"{'L':>6} {'collator':<44} {'input':<6} {'ms/batch':>10} {'n':>5} {'MiB/batch':>10} {'ratio':>9}"
    print(header)
    print("-" * len(header))
    headline = []
    for seq_len in args.lengths:
        base: dict[str, float] = {}
        for name, inp, fn in cases_for(seq_len):
            ms, n, out = timeit(fn, reps, budget)
            if name.startswith("hfprep position_ids (default)"):
                base[inp] = ms
            if name.startswith("transformers DataCollatorWithFlattening"):
                headline.append(f"L={seq_len} {inp} {ms / base[inp]:.1f}x")
            mib = batch_nbytes(out) / 2**20
            ratio = f"{ms / base[inp]:>9.1f}" if inp in base else f"{'':>9}"
            print(f"{seq_len:>6} {name:<44} {inp:<6} {ms:>10.3f} {n:>5} {mib:>10.2f} {ratio}")
        print()
    print(f"hfprep default mode vs DataCollatorWithFlattening, same input format: {', '.join(headline)}")


if __name__ == "__main__":
    main()
