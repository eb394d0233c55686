"""Publishing a prepared folder: hfprep ``push_folder`` vs ``DatasetDict.push_to_hub``, side by side.

Both push the same packed rows (``input_ids``/``position_ids`` uint32, ``loss_mask`` bool) to the in-memory
Hub-protocol server of the test suite on 127.0.0.1 (no network), in one client process started with
``HF_ENDPOINT``/``HF_HUB_DISABLE_XET``/``HF_TOKEN`` set, then load both back with ``load_dataset`` and check the
rows agree. Measured per method: wall time, commits, HTTP requests, bytes stored; plus a re-push of the unchanged
folder (hfprep: no commit, nothing uploaded) and a re-push with fewer shards (stale shards must disappear).

The anchor is ``push_to_hub`` (what users run today); a localhost server measures client-side cost only
(hashing, Parquet encoding, request count), not network bandwidth.

Run: ``python benchmarks/bench_push.py`` (``--quick`` for ~2M tokens instead of ~16M).
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from hub_server import HubServer  # the test suite's server: the benchmark and the tests share one protocol

from hfprep.output.layout import write_split
from hfprep.tokenization.stage import tokenized_features

TOKEN = "hf_bench_token"

CLIENT = r"""
import json, sys, time
import datasets
from hfprep.output.hub import push_folder

cfg = json.loads(sys.argv[1])
out = {}
t = time.perf_counter(); push_folder(cfg["folder"], "bench/hfprep"); out["hfprep"] = time.perf_counter() - t
t = time.perf_counter(); push_folder(cfg["folder"], "bench/hfprep"); out["hfprep_repush"] = time.perf_counter() - t
ds = datasets.load_dataset("parquet", data_files={"train": cfg["folder"] + "/data/train-*"}, split="train")
ds = ds.cast(datasets.Features.from_dict(cfg["features"]))
t = time.perf_counter()
datasets.DatasetDict({"train": ds}).push_to_hub("bench/push_to_hub", max_shard_size=cfg["shard_bytes"])
out["push_to_hub"] = time.perf_counter() - t
t = time.perf_counter(); push_folder(cfg["few"], "bench/hfprep"); out["hfprep_fewer"] = time.perf_counter() - t
a = datasets.load_dataset("bench/push_to_hub", split="train")
b = datasets.load_dataset("bench/hfprep", split="train")
few = datasets.load_dataset("parquet", data_files=cfg["few"] + "/data/train-*", split="train")
out["same_rows"] = a["input_ids"] == ds["input_ids"] and a["loss_mask"] == ds["loss_mask"]
out["fewer_rows_ok"] = b.num_rows == few.num_rows and b["input_ids"] == few["input_ids"]
print("RESULT " + json.dumps(out))
"""


def make_table(num_rows: int, seq_len: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 65_536, size=(num_rows, seq_len), dtype=np.uint32)
    starts = rng.random((num_rows, seq_len)) < 1 / 300
    starts[:, 0] = True
    seg_start = np.maximum.accumulate(np.where(starts, np.arange(seq_len), 0), axis=1)
    pos = (np.arange(seq_len) - seg_start).astype(np.uint32)
    offsets = pa.array(np.arange(0, num_rows * seq_len + 1, seq_len, dtype=np.int32))

    def col(values: np.ndarray) -> pa.Array:
        return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1)))

    return pa.table({"input_ids": col(ids), "position_ids": col(pos), "loss_mask": col(np.ones_like(starts))})


def card(num_rows: int) -> str:
    return (
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n"
        f"dataset_info:\n  splits:\n  - name: train\n    num_examples: {num_rows}\n---\n# bench\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    rows, seq_len, shards = (1024, 2048, 8) if args.quick else (8192, 2048, 32)
    table = make_table(rows, seq_len)
    tmp = Path(tempfile.mkdtemp(prefix="bench_push_"))
    features = tokenized_features()
    folder, few = tmp / "ds", tmp / "few"
    write_split(table, folder, "train", features=features, max_rows_per_shard=rows // shards)
    (folder / "README.md").write_text(card(rows))
    write_split(table.slice(0, rows // 4), few, "train", features=features, max_rows_per_shard=rows // 4)
    (few / "README.md").write_text(card(rows // 4))
    shard_bytes = max(p.stat().st_size for p in (folder / "data").iterdir())

    with HubServer(tokens={TOKEN: ("bench", "write")}) as hub:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
        env.update(HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1", HF_TOKEN=TOKEN, HF_HOME=str(tmp / "home"))
        cfg = {
            "folder": str(folder),
            "few": str(few),
            "features": features.to_dict(),
            "shard_bytes": int(shard_bytes * 1.05),
        }
        proc = subprocess.run([sys.executable, "-c", CLIENT, json.dumps(cfg)], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(proc.stderr[-3000:])
        res = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))[7:])
        commits = {r: sum(1 for c in hub.commit_log if c.repo_id == r) for r in ("bench/hfprep", "bench/push_to_hub")}
        stored = {
            r: sum(len(v) for k, v in hub.repo_files(r).items() if k.startswith("data/"))
            for r in ("bench/hfprep", "bench/push_to_hub")
        }
        requests = len(hub.requests)

    tokens = rows * seq_len
    print(f"rows {rows} x {seq_len} = {tokens / 1e6:.1f}M tokens, {shards} shards, localhost test Hub")
    print(f"{'method':32s} {'time s':>8s} {'Mtok/s':>8s} {'vs push_to_hub':>15s}")
    anchor = res["push_to_hub"]
    for name, key in [
        ("datasets push_to_hub (anchor)", "push_to_hub"),
        ("hfprep push_folder", "hfprep"),
        ("hfprep re-push (unchanged)", "hfprep_repush"),
        ("hfprep push, fewer shards", "hfprep_fewer"),
    ]:
        t = res[key]
        print(f"{name:32s} {t:8.2f} {tokens / t / 1e6:8.1f} {anchor / t:14.2f}x")
    print(f"commits: hfprep {commits['bench/hfprep']} (3 pushes), push_to_hub {commits['bench/push_to_hub']}")
    print(
        f"data bytes on the Hub after the runs: hfprep {stored['bench/hfprep']:,} (fewer-shard push), "
        f"push_to_hub {stored['bench/push_to_hub']:,}; HTTP requests total {requests}"
    )
    print(
        f"rows identical after load_dataset: {res['same_rows']}; fewer-shard re-push leaves only new rows: "
        f"{res['fewer_rows_ok']}"
    )


if __name__ == "__main__":
    main()
