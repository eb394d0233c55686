"""Packing throughput, fill, token loss and peak memory: hfprep's packers vs TRL ``pack_dataset``, same documents.

Two uses; every row is labelled with the one it models, and each side gets the input its own users pass:

* ``pretrain``: a TRL user packing pre-training data passes ``input_ids`` only (``list<int32>``, what
  ``Dataset.map(tokenizer)`` stores for that column). hfprep packs the rows its tokenize stage writes
  (``input_ids``, ``position_ids``, ``loss_mask`` all True).
* ``sft``: ``SFTTrainer(packing=True)`` passes ``input_ids`` + ``labels`` (``list<int64>``, -100 on prompt tokens):
  trl 1.16's ``SFTTrainer._prepare_dataset`` builds ``labels`` from the completion mask and calls
  ``pack_dataset(dataset.select_columns(["input_ids", "labels"]), max_length, packing_strategy)``. hfprep packs its
  rows with ``loss_mask`` False on the prompt.

Data: :func:`corpus.lognormal_token_flat` (lognormal lengths, median ~400 tokens; 200k documents ~131M tokens, 60k
~39M), each document ending with eos (id 0, also the pad id); the sft prompt is the first 10-50% of each document.
The whole input is one reduce group (the worst case for memory).

Timing, every row alike (one mode per run, printed with the table, the same N for every row):

* ``cold`` (default): every measured run is a fresh process. It imports its packer and reads the input into memory
  (untimed), then times the packer's first call; the best of ``--repeat`` processes is reported. Nothing in the
  process has packed before, so first-touch allocations, lazily built caches and first-call costs are in the time.
* ``warm``: one process per row: one untimed warm-up call, then ``--repeat`` timed calls in that process, the fastest
  reported.

By default the output is written to an Arrow file (``Dataset.map``'s cache file for TRL, an Arrow IPC stream of the
packed table for hfprep), so times include building and writing the output; ``--no-write`` times the packers alone
(both return an in-memory Arrow table: TRL's ``map`` on an in-memory dataset keeps its output in memory). Wall time
and the process's CPU time of the timed call are both reported (and the kernel's share of it, ``sys s``: mostly the
page faults of freshly allocated memory): every method runs on one thread, so on a machine shared with other jobs
the CPU-time ratio is the steadier one. Every timed call writes into an empty folder (TRL's ``map`` is also told not
to load a cache file). Peak RSS is the process's high-water mark during the
last timed call minus its RSS before (Linux ``clear_refs``), next to the input's Arrow bytes.

Ratios (same use, same seq_len): dense vs TRL ``wrapped``; no_incomplete vs TRL ``bfd``; every hfprep bfd row vs TRL
``bfd`` *and* TRL ``bfd_split``. Target (issue 23): cold hfprep bfd >= 4x TRL ``bfd`` on ``input_ids`` only.

Usage:
    python benchmarks/bench_pack.py --quick                  # 60k docs (39M tokens), seq_len 2048, the bfd rows
    python benchmarks/bench_pack.py --mode warm --no-write   # the packers alone, warm processes
    python benchmarks/bench_pack.py --docs 60000 200000      # every row at 39M and 131M tokens, 2048 and 8192
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import lognormal_token_flat

USES = {
    "pretrain": "pre-training: TRL gets input_ids only; hfprep its tokenized rows, loss everywhere",
    "sft": "SFTTrainer packing: TRL gets input_ids + labels (-100 on the prompt); hfprep its rows, loss off the prompt",
}
METHODS = [
    "trl_wrapped",
    "trl_bfd",
    "trl_bfd_split",
    "hfprep_dense",
    "hfprep_no_incomplete",
    "hfprep_bfd_split",
    "hfprep_bfd_split_nopad",
    "hfprep_bfd_truncate",
    "hfprep_bfd_truncate_nopad",
    "hfprep_bfd_drop",
]
QUICK_METHODS = ["trl_bfd", "trl_bfd_split", "hfprep_bfd_split", "hfprep_bfd_truncate"]
HFPREP = {
    "hfprep_dense": ("dense", {}),
    "hfprep_no_incomplete": ("no_incomplete", {}),
    "hfprep_bfd_split": ("bfd", {"overflow": "split"}),
    "hfprep_bfd_split_nopad": ("bfd", {"overflow": "split", "pad": False}),
    "hfprep_bfd_truncate": ("bfd", {"overflow": "truncate"}),
    "hfprep_bfd_truncate_nopad": ("bfd", {"overflow": "truncate", "pad": False}),
    "hfprep_bfd_drop": ("bfd", {"overflow": "drop"}),
}
ANCHORS = {
    "hfprep_dense": ["trl_wrapped"],
    "hfprep_no_incomplete": ["trl_bfd"],
    **{m: ["trl_bfd", "trl_bfd_split"] for m in HFPREP if m.startswith("hfprep_bfd")},
}
PAD_ID = 0  # the corpus' eos id; hfprep pads with it, as it does by default
COLD = (
    "cold: every measured run is a fresh process (packer imported and input read untimed, then its first call timed)"
)
WARM = "warm: one process per row, one untimed warm-up call, then the timed calls in that process"


def make_inputs(n_docs: int, seed: int = 0) -> dict[str, pa.Table]:
    """The four input tables: ``{use}-{side}`` for use in pretrain/sft and side in hfprep/trl (same documents)."""
    from hfprep.schema import flat_to_table
    from hfprep.tokenization.pieces import positions_from_offsets

    ids, offsets = lognormal_token_flat(n_docs, seed=seed)
    lengths = np.diff(offsets)
    positions = positions_from_offsets(offsets)
    prompt = np.floor(np.random.default_rng(seed + 2).uniform(0.1, 0.5, n_docs) * lengths).astype(np.uint32)
    completion = positions >= np.repeat(prompt, lengths)
    off32 = pa.array(offsets.astype(np.int32))
    ids32 = pa.ListArray.from_arrays(off32, pa.array(ids.astype(np.int32)))
    labels = pa.ListArray.from_arrays(off32, pa.array(np.where(completion, ids.astype(np.int64), -100)))
    return {
        "pretrain-hfprep": flat_to_table(ids, positions, np.ones(len(ids), dtype=np.bool_), offsets),
        "pretrain-trl": pa.table({"input_ids": ids32}),
        "sft-hfprep": flat_to_table(ids, positions, completion, offsets),
        "sft-trl": pa.table({"input_ids": ids32, "labels": labels}),
    }


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _real_tokens(method: str, table: pa.Table) -> int:
    """Tokens of data in the output. TRL rows are unpadded; hfprep's padding is the pad id at position 0 with no loss,
    which no data token of this corpus is (its only id-0 tokens are the eos, always with loss), so counting it needs
    nothing from the packer."""
    total = int(pc.sum(pc.list_value_length(table.column("input_ids"))).as_py() or 0)
    if method.startswith("trl_"):
        return total
    ids, pos, loss = (pc.list_flatten(table.column(c)) for c in ("input_ids", "position_ids", "loss_mask"))
    pad = pc.and_(pc.and_(pc.equal(ids, PAD_ID), pc.equal(pos, 0)), pc.invert(loss))
    return total - int(pc.sum(pad.cast(pa.int64())).as_py() or 0)


def worker(method: str, use: str, seq_len: int, path: str, out_dir: str, repeat: int, mode: str, write: bool) -> dict:
    """Run one method on one use; returns its measurements (printed as JSON). ``mode`` cold: one timed call (the
    parent starts ``repeat`` of these processes); warm: a warm-up call, then ``repeat`` timed calls."""
    import datasets

    datasets.disable_progress_bars()
    with pa.OSFile(path, "rb") as f:
        table = pa.ipc.open_file(f).read_all()  # in memory, not memory-mapped
    tokens_in = int(pc.sum(pc.list_value_length(table.column("input_ids"))).as_py())
    input_bytes = table.nbytes
    out_path = os.path.join(out_dir, f"{method}-{use}-{seq_len}.arrow")
    if method.startswith("trl_"):
        from trl import pack_dataset

        strategy = method[len("trl_") :]

        def run() -> pa.Table:
            # Never an earlier run's cache file: with a cache_file_name, map would load it instead of packing.
            map_kwargs = {"cache_file_name": out_path, "load_from_cache_file": False} if write else {}
            # A fresh in-memory dataset each run: with no cache files, TRL's map keeps its output in memory.
            out = pack_dataset(datasets.Dataset(table), seq_len, strategy=strategy, map_kwargs=map_kwargs)
            return out.data.table

    else:
        import hfprep.pack.bfd  # noqa: F401  (registers bfd)
        from hfprep.pack.packers import get_packer
        from hfprep.pack.transform import pack_table

        strategy, kwargs = HFPREP[method]

        def run() -> pa.Table:
            out_table, _ = pack_table(table, seq_len, PAD_ID, get_packer(strategy), kwargs)
            if write:
                with pa.OSFile(out_path, "wb") as sink, pa.ipc.new_stream(sink, out_table.schema) as writer:
                    writer.write_table(out_table, max_chunksize=1000)  # as the engines (and datasets' writer) do
            return out_table

    def clean() -> None:
        for p in Path(out_dir).glob("*"):
            p.unlink()

    if mode == "warm":
        run()  # warm-up: imports, first-touch allocations, caches
        clean()
    times, cpu_times, sys_times = [], [], []
    for _ in range(repeat if mode == "warm" else 1):
        rss0 = _status_kib("VmRSS")
        exact = _reset_peak()
        s0, c0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_stime, time.process_time(), time.perf_counter()
        out_table = run()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        sys_times.append(resource.getrusage(resource.RUSAGE_SELF).ru_stime - s0)
        peak = _status_kib("VmHWM")
        if len(times) < repeat and mode == "warm":
            del out_table
            clean()
    real = _real_tokens(method, out_table)
    rows = out_table.num_rows
    return {
        "method": method,
        "use": use,
        "seq_len": seq_len,
        "seconds": min(times),
        "cpu_seconds": min(cpu_times),
        "sys_seconds": min(sys_times),
        "tokens_in": tokens_in,
        "tokens_out": real,
        "rows": rows,
        "fill": real / (rows * seq_len) if rows else 0.0,
        "lost": tokens_in - real,
        "rss_added_mib": (peak - rss0) / 1024,
        "input_mib": input_bytes / 2**20,
        "peak_exact": exact,
    }


def _run_worker(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args[:3])} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_all(
    n_docs: int, seq_lens: list[int], methods: list[str], uses: list[str], repeat: int, mode: str, write: bool
) -> list[dict]:
    inputs = make_inputs(n_docs)
    results = []
    with tempfile.TemporaryDirectory(prefix="hfprep-bench-pack-") as tmp:
        paths = {}
        for name, table in inputs.items():
            paths[name] = os.path.join(tmp, f"{name}.arrow")
            with pa.OSFile(paths[name], "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
        ref = inputs["pretrain-hfprep"]
        total = int(pc.sum(pc.list_value_length(ref.column("input_ids"))).as_py())
        print(f"input: {n_docs:,} docs, {total / 1e6:.1f}M tokens, {ref.nbytes / 2**20:.0f} MiB Arrow (hfprep rows)")
        del inputs, ref
        for seq_len in seq_lens:
            for use in uses:
                for method in methods:
                    side = "trl" if method.startswith("trl_") else "hfprep"
                    out_dir = tempfile.mkdtemp(dir=tmp)
                    args = [method, use, str(seq_len), paths[f"{use}-{side}"], out_dir, str(repeat), mode]
                    args.append("write" if write else "no-write")
                    # cold: one fresh process per measured run, each into an empty folder, the best one kept
                    runs = []
                    for _ in range(repeat if mode == "cold" else 1):
                        runs.append(_run_worker(args))
                        for p in Path(out_dir).glob("*"):
                            p.unlink()
                    best = min(runs, key=lambda r: r["seconds"])
                    for key in ("cpu_seconds", "sys_seconds"):
                        best[key] = min(r[key] for r in runs)
                    results.append(best)
                    print(f"  {use:8s} {method:26s} seq_len {seq_len}: {best['seconds']:.3f}s", file=sys.stderr)
    return results


def print_table(results: list[dict], mode: str, repeat: int, write: bool) -> None:
    by = {(r["method"], r["use"], r["seq_len"]): r for r in results}
    out = "output written to an Arrow file" if write else "packer alone, Arrow table out, nothing written"
    print(f"timing: {COLD if mode == 'cold' else WARM}; best of {repeat} for every row; {out}")
    for use, what in USES.items():
        if any(r["use"] == use for r in results):
            print(f"use {use}: {what}")
    header = (
        f"| {'use':8s} | {'method':26s} | seq_len | {'s':>7s} | {'cpu s':>7s} | {'sys s':>7s} | {'Mtok/s':>7s} | "
        f"{'vs TRL bfd':>13s} | "
        f"{'vs TRL bfd_split':>16s} | {'vs TRL wrapped':>14s} | {'fill':>7s} | {'tokens lost':>16s} | {'rows':>8s} | "
        f"{'peak RSS added':>22s} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for r in results:
        tps = r["tokens_in"] / r["seconds"] / 1e6
        ratios = {}
        for anchor in ANCHORS.get(r["method"], []):
            a = by.get((anchor, r["use"], r["seq_len"]))
            if a:
                ratios[anchor] = f"{a['seconds'] / r['seconds']:.1f}x ({a['cpu_seconds'] / r['cpu_seconds']:.1f}x)"
        lost = f"{r['lost']:,} ({100 * r['lost'] / r['tokens_in']:.1f}%)"
        rss = f"{r['rss_added_mib']:.0f} MiB ({r['rss_added_mib'] / r['input_mib']:.2f}x in)"
        print(
            f"| {r['use']:8s} | {r['method']:26s} | {r['seq_len']:7d} | {r['seconds']:7.3f} | {r['cpu_seconds']:7.3f} | "
            f"{r['sys_seconds']:7.3f} | {tps:7.1f} | {ratios.get('trl_bfd', ''):>13s} | {ratios.get('trl_bfd_split', ''):>16s} | "
            f"{ratios.get('trl_wrapped', ''):>14s} | {r['fill']:.5f} | {lost:>16s} | {r['rows']:8,d} | {rss:>22s} |"
        )
    for use in USES:
        for seq_len in sorted({r["seq_len"] for r in results}):
            bfd_rows = [r for r in results if (r["use"], r["seq_len"]) == (use, seq_len) and "_bfd" in r["method"]]
            bfd_rows = [r for r in bfd_rows if r["method"].startswith("hfprep_")]
            for anchor in ("trl_bfd", "trl_bfd_split"):
                a = by.get((anchor, use, seq_len))
                if bfd_rows and a:
                    worst = min(a["seconds"] / r["seconds"] for r in bfd_rows)
                    worst_cpu = min(a["cpu_seconds"] / r["cpu_seconds"] for r in bfd_rows)
                    target = " (target >= 4x)" if (use, anchor) == ("pretrain", "trl_bfd") else ""
                    print(
                        f"{use}, seq_len {seq_len}, {mode}: slowest hfprep bfd row is {worst:.1f}x {anchor} in wall "
                        f"time, {worst_cpu:.1f}x in CPU time{target}"
                    )
    print("input = Arrow bytes of the input group; 'x in' = peak RSS added during packing / input bytes")
    print("ratios: wall time (CPU time of the process in brackets: steadier than wall time on a loaded machine)")
    print("sys s: the kernel's share of the CPU time, mostly page faults of freshly allocated memory (first touch)")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        method, use, seq_len, path, out_dir, repeat, mode, write = sys.argv[2:10]
        print(json.dumps(worker(method, use, int(seq_len), path, out_dir, int(repeat), mode, write == "write")))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="60k documents, seq_len 2048, the bfd rows, best of 2")
    ap.add_argument("--docs", type=int, nargs="+", default=None, help="documents per input (default 200k; quick 60k)")
    ap.add_argument("--seq-lens", type=int, nargs="+", default=None, help="default 2048 8192 (quick 2048)")
    ap.add_argument("--methods", nargs="+", default=None, choices=METHODS)
    ap.add_argument("--uses", nargs="+", default=list(USES), choices=list(USES))
    ap.add_argument("--mode", choices=["cold", "warm"], default="cold", help="cold (default) or warm, every row alike")
    ap.add_argument("--repeat", type=int, default=None, help="measured runs per row, best reported (default 3)")
    ap.add_argument("--no-write", action="store_true", help="time the packers alone (Arrow table out, no disk)")
    args = ap.parse_args()
    docs = args.docs or ([60_000] if args.quick else [200_000])
    seq_lens = args.seq_lens or ([2048] if args.quick else [2048, 8192])
    methods = args.methods or (QUICK_METHODS if args.quick else METHODS)
    repeat = args.repeat or (2 if args.quick else 3)
    for n_docs in docs:
        results = run_all(n_docs, seq_lens, methods, args.uses, repeat, args.mode, write=not args.no_write)
        print_table(results, args.mode, repeat, write=not args.no_write)


if __name__ == "__main__":
    main()
