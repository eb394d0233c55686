"""KD cache benchmark: bytes/token on disk, teacher tokens/s on CPU, reader throughput vs the seed's pattern.

    python benchmarks/bench_kd.py --quick      # a minute or two on 2 cores
    python benchmarks/bench_kd.py              # larger sizes

1. Bytes per token (all columns: input_ids, position_ids, loss_mask, attn_mask, target_mask, top-k) for
   k = 8, 32, 128 with float16 and float32 log-probs, written by hfprep's shard writer (zstd, no dictionary,
   byte-stream-split floats), vs datasets' default Parquet writer on the same rows, vs the seed project's
   float64/int64 nested lists. Log-probs are synthetic but shaped like a real LM's: Zipf prior over a 32k
   vocabulary plus noise, full-vocabulary log-softmax, top-k sorted descending.
2. Teacher throughput on CPU: a tiny random Llama over packed rows, raw forward vs the whole cache build.
3. Reader throughput on one cache: the seed's ``to_pydict`` + ``torch.tensor`` loop vs
   ``RBTopKIterableDataset`` (per row, and per row group), vs datasets ``Array2D`` + torch format.
"""

from __future__ import annotations

import argparse
import glob
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch


def synthetic_topk(n_tokens: int, k: int, vocab: int = 32768, seed: int = 0, chunk: int = 512):
    rng = np.random.default_rng(seed)
    prior = -1.1 * np.log(np.arange(1, vocab + 1, dtype=np.float32))
    ids_out = np.empty((n_tokens, k), np.uint32)
    lp_out = np.empty((n_tokens, k), np.float32)
    for a in range(0, n_tokens, chunk):
        b = min(a + chunk, n_tokens)
        z = prior + rng.normal(0, 2.5, size=(b - a, vocab)).astype(np.float32)
        t = torch.from_numpy(z)
        lp = torch.log_softmax(t, -1)
        v, i = torch.topk(lp, k, dim=-1)
        ids_out[a:b], lp_out[a:b] = i.numpy().astype(np.uint32), v.numpy()
    return ids_out, lp_out


def cache_table(n_rows: int, seq_len: int, k: int, dtype: str, seed: int = 0) -> pa.Table:
    from hfprep.kd.format import flat_list, nested_fixed_list

    n = n_rows * seq_len
    rng = np.random.default_rng(seed)
    ids = rng.zipf(1.3, n).clip(0, 32767).astype(np.uint32)
    doc_len = 300
    pos = (np.arange(n) % doc_len).astype(np.uint32)
    pos[np.arange(0, n, seq_len)] = 0
    offsets = np.arange(0, n + 1, seq_len)
    target = np.ones(n, bool)
    target[:-1] = pos[1:] > 0
    target[offsets[1:] - 1] = False
    top_ids, top_lp = synthetic_topk(n, k, seed=seed)
    top_ids[~target], top_lp[~target] = 0, -1e4
    return pa.table(
        {
            "input_ids": flat_list(ids, offsets, pa.uint32()),
            "position_ids": flat_list(pos, offsets, pa.uint32()),
            "loss_mask": flat_list(np.ones(n, bool), offsets, pa.bool_()),
            "attn_mask": flat_list(np.ones(n, np.uint8), offsets, pa.uint8()),
            "target_mask": flat_list(target, offsets, pa.bool_()),
            "topk_ids": nested_fixed_list(top_ids, offsets),
            "topk_logprobs": nested_fixed_list(
                top_lp.astype(np.float16 if dtype == "float16" else np.float32), offsets
            ),
        }
    )


def bench_bytes(n_rows: int, seq_len: int, work: Path) -> None:
    from datasets import Dataset

    from hfprep.kd.builder import write_shard
    from hfprep.kd.config import config_from_dict
    from hfprep.kd.format import cache_features

    print(f"\n## 1. Bytes per token on disk ({n_rows} rows x {seq_len} tokens, all columns)\n")
    print(
        "| k | log-probs | hfprep (zstd+BSS, no dict) | datasets default writer | seed-style float64/int64 lists | hfprep vs seed |"
    )
    print("|---|---|---|---|---|---|")
    n_tok = n_rows * seq_len
    for k in (8, 32, 128):
        for dtype in ("float16", "float32"):
            t = cache_table(n_rows, seq_len, k, dtype)
            cfg = config_from_dict(
                {
                    "input": {"folder": "x"},
                    "teacher": {"name_or_path": "t"},
                    "tokenizer": {"name_or_path": "t"},
                    "output": {"folder": str(work / "o"), "row_group_rows": 64},
                    "k": k,
                    "logprob_dtype": dtype,
                }
            )
            p1 = work / f"hf_{k}_{dtype}.parquet"
            write_shard(t, p1, cache_features(k, dtype), {"k": k}, cfg)
            p2 = work / f"ds_{k}_{dtype}.parquet"
            Dataset(t).to_parquet(str(p2))
            p3 = work / f"seed_{k}_{dtype}.parquet"
            seed = t.cast(
                pa.schema(
                    [
                        ("input_ids", pa.list_(pa.int64())),
                        ("position_ids", pa.list_(pa.int64())),
                        ("loss_mask", pa.list_(pa.int64())),
                        ("attn_mask", pa.list_(pa.int64())),
                        ("target_mask", pa.list_(pa.int64())),
                        ("topk_ids", pa.list_(pa.list_(pa.int64()))),
                        ("topk_logprobs", pa.list_(pa.list_(pa.float64()))),
                    ]
                )
            )
            pq.write_table(seed, p3)  # pyarrow defaults (snappy, dictionary): what a to_pylist round trip writes
            b1, b2, b3 = (os.path.getsize(p) / n_tok for p in (p1, p2, p3))
            print(f"| {k} | {dtype} | {b1:.1f} | {b2:.1f} | {b3:.1f} | {b3 / b1:.2f}x smaller |")


def bench_teacher(n_rows: int, seq_len: int, work: Path) -> None:
    from hfprep.kd.builder import build_kd_cache
    from hfprep.kd.config import config_from_dict
    from hfprep.kd.example import EXAMPLE_TEXTS, save_tiny_teacher, tiny_llama, write_prepared
    from hfprep.tokenization.loading import train_tiny_tokenizer

    tok = train_tiny_tokenizer(EXAMPLE_TEXTS * 20, work / "tok", vocab_size=300)
    reps = max(1, n_rows * seq_len // 400)
    write_prepared(tok, work / "prep", EXAMPLE_TEXTS * reps, seq_len=seq_len, packing="dense")
    n_prepared = pq.read_metadata(next((work / "prep" / "data").glob("*.parquet"))).num_rows
    print(
        f"\n## 2. Teacher throughput on CPU ({n_prepared} packed rows x {seq_len} tokens, {torch.get_num_threads()} threads)\n"
    )
    print("| teacher | raw forward tok/s | cache build tok/s (k=32, incl. top-k + Parquet) | build / forward |")
    print("|---|---|---|---|")
    for hidden, layers in ((64, 2), (256, 4)):
        save_tiny_teacher(work / f"teacher{hidden}", len(tok), hidden=hidden, layers=layers, heads=4)
        model = tiny_llama(len(tok), hidden=hidden, layers=layers, heads=4)
        x = torch.randint(0, len(tok), (8, seq_len))
        pos = torch.arange(seq_len).repeat(8, 1)
        with torch.inference_mode():
            model(input_ids=x, position_ids=pos, use_cache=False)
            t0 = time.perf_counter()
            reps_fw = 5
            for _ in range(reps_fw):
                model(input_ids=x, position_ids=pos, use_cache=False)
            fw = reps_fw * x.numel() / (time.perf_counter() - t0)
        cfg = config_from_dict(
            {
                "input": {"folder": str(work / "prep")},
                "teacher": {"name_or_path": str(work / f"teacher{hidden}")},
                "tokenizer": {"name_or_path": str(work / "tok")},
                "output": {"folder": str(work / f"kd{hidden}"), "rows_per_shard": 64},
                "k": 32,
            }
        )
        s = build_kd_cache(cfg, overwrite=True, progress=False)
        bt = s["tokens"] / s["seconds"]
        n_params = sum(p.numel() for p in model.parameters())
        print(f"| Llama {n_params / 1e6:.2f}M (h={hidden}, {layers} layers) | {fw:,.0f} | {bt:,.0f} | {bt / fw:.2f} |")
    print("\nGPU (~1B bf16 teacher): not measured here (no GPU machine was available for this run).")


def seed_iter(path_glob: str):
    """The seed's reader, verbatim in behaviour: to_pydict per row group, torch.tensor per row."""
    files = sorted(glob.glob(path_glob))
    assert files, f"No Parquet files found for {path_glob}"
    cols = ["input_ids", "attn_mask", "topk_ids", "topk_logprobs"]
    for f in files:
        pf = pq.ParquetFile(f)
        for rg in range(pf.num_row_groups):
            batch = pf.read_row_group(rg, columns=cols).to_pydict()
            n = len(next(iter(batch.values()))) if batch else 0
            for i in range(n):
                row = {k: batch[k][i] for k in batch}
                yield {k: torch.tensor(row[k]) for k in row}


def bench_readers(n_rows: int, seq_len: int, work: Path) -> None:
    from hfprep.kd.builder import write_shard
    from hfprep.kd.card import card_yaml
    from hfprep.kd.config import config_from_dict
    from hfprep.kd.format import cache_features
    from hfprep.kd.readers import RBTopKIterableDataset

    k = 32
    folder = work / "reader_cache"
    (folder / "data").mkdir(parents=True, exist_ok=True)
    cfg = config_from_dict(
        {
            "input": {"folder": "x"},
            "teacher": {"name_or_path": "t"},
            "tokenizer": {"name_or_path": "t"},
            "output": {"folder": str(folder), "row_group_rows": 64},
            "k": k,
        }
    )
    feats = cache_features(k, "float16")
    n_shards = 2
    for i in range(n_shards):
        write_shard(
            cache_table(n_rows // n_shards, seq_len, k, "float16", seed=i),
            folder / "data" / f"train-{i:05d}-of-{n_shards:05d}.parquet",
            feats,
            {},
            cfg,
        )
    yaml_text = card_yaml({}, feats, {"train": n_rows}, {"train": 0})
    (folder / "README.md").write_text(f"---\n{yaml_text}\n---\n")
    path_glob = str(folder / "data" / "train-*.parquet")
    n_tok = n_rows * seq_len

    def timed(fn) -> float:
        t0 = time.perf_counter()
        count = fn()
        dt = time.perf_counter() - t0
        assert count == n_tok, (count, n_tok)
        return n_tok / dt

    def run_seed() -> int:
        return sum(len(r["input_ids"]) for r in seed_iter(path_glob))

    def run_rows() -> int:
        return sum(len(r["input_ids"]) for r in RBTopKIterableDataset(path_glob))

    def run_groups() -> int:
        return sum(int(o[-1]) for _, o in RBTopKIterableDataset(path_glob).iter_row_groups())

    def run_datasets() -> int:
        from datasets import load_dataset

        ds = load_dataset(str(folder), split="train", cache_dir=str(work / "hf_cache")).with_format("torch")
        ds = ds.select_columns(["input_ids", "attn_mask", "topk_ids", "topk_logprobs"])
        total = 0
        for a in range(0, len(ds), 16):
            total += int(ds[a : a + 16]["topk_ids"].shape[0] * ds[a : a + 16]["topk_ids"].shape[1])
        return total

    print(f"\n## 3. Reader throughput (k={k} fp16, {n_rows} rows x {seq_len} tokens, 1 process)\n")
    print("| reader | tokens/s | vs seed to_pydict |")
    print("|---|---|---|")
    seed = timed(run_seed)
    print(f"| seed: to_pydict + torch.tensor per row | {seed:,.0f} | 1.0x |")
    for name, fn in (
        ("RBTopKIterableDataset, per row (views of row-group tensors)", run_rows),
        ("RBTopKIterableDataset.iter_row_groups (flat tensors)", run_groups),
        ("datasets load_dataset + Array2D + torch format (batches of 16)", run_datasets),
    ):
        v = timed(fn)
        print(f"| {name} | {v:,.0f} | {v / seed:.1f}x |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    rows, seq = (64, 512) if a.quick else (256, 2048)
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        bench_bytes(rows // 2, seq, work)
        bench_teacher(rows // 4, min(seq, 512), work)
        bench_readers(rows, seq, work)


if __name__ == "__main__":
    main()
