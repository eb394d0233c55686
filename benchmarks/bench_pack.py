"""Packing throughput, fill, token loss and peak memory: hfprep's packers vs TRL ``pack_dataset``, same data, same run.

Data: synthetic lognormal document lengths (median ~400 tokens, clipped 1..8192; 200k documents ~131M tokens by
default, ``--quick`` uses 50k), random token ids, ``position_ids`` = arange per document, ``loss_mask`` all True.
The whole input is one reduce group (the worst case for memory).

Every method runs in its own subprocess on the same Arrow input held in memory. By default its output is written
to an Arrow file (``Dataset.map``'s cache file for TRL; an Arrow IPC stream of the packed table for hfprep), so the
times include building and writing the output. ``--no-write`` measures the packers alone: both sides return an
in-memory Arrow table (TRL's ``map`` on an in-memory dataset keeps its output in memory) and nothing touches disk.
Every row alike: one untimed warm-up run, then ``--repeat`` timed runs in the same process, the fastest reported
(wall time, and the process's CPU time: every method runs on one thread, so on a machine shared with other jobs the
CPU-time ratio is the steadier one).
Peak RSS is the process's high-water mark during the last timed run minus its RSS before (Linux ``clear_refs``),
next to the input's Arrow bytes.

Ratios: dense vs TRL ``wrapped``; no_incomplete vs TRL ``bfd``; every hfprep bfd row vs TRL ``bfd`` *and* TRL
``bfd_split``.

Usage:
    python benchmarks/bench_pack.py --quick                     # 50k docs, with the output write
    python benchmarks/bench_pack.py --no-write --docs 60000     # the packers alone, Arrow table out
    python benchmarks/bench_pack.py                             # 200k docs at seq_len 2048 and 8192
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

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


def make_input(n_docs: int, seed: int = 0, rng: np.random.Generator | None = None) -> pa.Table:
    """Lognormal lengths (median 400, sigma 1, clipped 1..8192) as a tokenized-row Arrow table."""
    from hfprep.schema import flat_to_table
    from hfprep.tokenization.pieces import positions_from_offsets

    rng = rng if rng is not None else np.random.default_rng(seed)
    lengths = np.clip(np.rint(rng.lognormal(np.log(400), 1.0, n_docs)), 1, 8192).astype(np.int64)
    offsets = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    ids = rng.integers(0, 65_000, total, dtype=np.uint32)
    return flat_to_table(ids, positions_from_offsets(offsets), np.ones(total, dtype=np.bool_), offsets)


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


def worker(method: str, seq_len: int, path: str, out_dir: str, repeat: int = 1, write: bool = True) -> dict:
    """Run one method (one warm-up, then ``repeat`` timed runs); returns its measurements (printed as JSON)."""
    import datasets

    datasets.disable_progress_bars()
    with pa.OSFile(path, "rb") as f:
        table = pa.ipc.open_file(f).read_all()  # in memory, not memory-mapped
    tokens_in = int(pa.compute.list_value_length(table.column("input_ids")).to_numpy().sum())
    input_bytes = table.nbytes
    out_path = os.path.join(out_dir, f"{method}-{seq_len}.arrow")
    if method.startswith("trl_"):
        from trl import pack_dataset

        strategy = method[len("trl_") :]

        def run() -> pa.Table:
            map_kwargs = {"cache_file_name": out_path} if write else {}
            # A fresh in-memory dataset each run: with no cache files, TRL's map keeps its output in memory.
            out = pack_dataset(datasets.Dataset(table), seq_len, strategy=strategy, map_kwargs=map_kwargs)
            return out.data.table

    else:
        import hfprep.pack.bfd  # noqa: F401  (registers bfd)
        from hfprep.pack.packers import get_packer
        from hfprep.pack.transform import pack_table

        strategy, kwargs = HFPREP[method]

        def run() -> pa.Table:
            out_table, _ = pack_table(table, seq_len, 0, get_packer(strategy), kwargs)
            if write:
                with pa.OSFile(out_path, "wb") as sink, pa.ipc.new_stream(sink, out_table.schema) as writer:
                    writer.write_table(out_table)
            return out_table

    def clean() -> None:
        for p in Path(out_dir).glob("*"):
            p.unlink()

    run()  # warm-up: imports, first-touch allocations, caches
    clean()
    times, cpu_times = [], []
    for _ in range(repeat):
        rss0 = _status_kib("VmRSS")
        exact = _reset_peak()
        c0, t0 = time.process_time(), time.perf_counter()
        out_table = run()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        if len(times) < repeat:
            del out_table
            clean()
    dt = min(times)
    peak = _status_kib("VmHWM")
    lens = pa.compute.list_value_length(out_table.column("input_ids")).to_numpy()
    if method.startswith("trl_"):
        real = int(lens.sum())  # TRL rows are unpadded
    else:
        # inputs are all loss True and padding is loss False, so real tokens = loss tokens
        flat = pa.compute.list_flatten(out_table.column("loss_mask"))
        real = int(pa.compute.sum(flat.cast(pa.int64())).as_py() or 0)
    rows = len(lens)
    return {
        "method": method,
        "seq_len": seq_len,
        "seconds": dt,
        "cpu_seconds": min(cpu_times),
        "tokens_in": tokens_in,
        "tokens_out": real,
        "rows": rows,
        "fill": real / (rows * seq_len) if rows else 0.0,
        "lost": tokens_in - real,
        "rss_added_mib": (peak - rss0) / 1024,
        "input_mib": input_bytes / 2**20,
        "peak_exact": exact,
    }


def run_all(n_docs: int, seq_lens: list[int], methods: list[str], repeat: int, write: bool = True) -> list[dict]:
    table = make_input(n_docs)
    results = []
    with tempfile.TemporaryDirectory(prefix="hfprep-bench-pack-") as tmp:
        path = os.path.join(tmp, "input.arrow")
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        total = int(pa.compute.list_value_length(table.column("input_ids")).to_numpy().sum())
        print(f"input: {n_docs:,} docs, {total / 1e6:.1f}M tokens, {table.nbytes / 2**20:.0f} MiB Arrow", flush=True)
        del table
        for seq_len in seq_lens:
            for method in methods:
                out_dir = tempfile.mkdtemp(dir=tmp)
                cmd = [sys.executable, __file__, "--worker", method, str(seq_len), path, out_dir, str(repeat)]
                proc = subprocess.run([*cmd, "write" if write else "no-write"], capture_output=True, text=True)
                if proc.returncode:
                    raise RuntimeError(f"{method} at {seq_len} failed:\n{proc.stderr[-3000:]}")
                best = json.loads(proc.stdout.strip().splitlines()[-1])
                for p in Path(out_dir).glob("*"):
                    p.unlink()
                results.append(best)
                print(f"  {method:26s} seq_len {seq_len}: {best['seconds']:.3f}s", file=sys.stderr, flush=True)
    return results


def print_table(results: list[dict], write: bool = True) -> None:
    by = {(r["method"], r["seq_len"]): r for r in results}
    mode = "output written to an Arrow file" if write else "packer alone, Arrow table out, nothing written"
    print(f"timing: {mode}; one warm-up, best of the timed runs, every row alike")
    header = (
        f"| {'method':26s} | seq_len | {'s':>7s} | {'cpu s':>7s} | {'Mtok/s':>7s} | {'vs TRL bfd':>13s} | "
        f"{'vs TRL bfd_split':>16s} | {'vs TRL wrapped':>14s} | {'fill':>7s} | {'tokens lost':>16s} | {'rows':>8s} | {'peak RSS added':>22s} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for r in results:
        tps = r["tokens_in"] / r["seconds"] / 1e6
        ratios = {}
        for anchor in ANCHORS.get(r["method"], []):
            if (anchor, r["seq_len"]) in by:
                a = by[(anchor, r["seq_len"])]
                ratios[anchor] = f"{a['seconds'] / r['seconds']:.1f}x ({a['cpu_seconds'] / r['cpu_seconds']:.1f}x)"
        lost = f"{r['lost']:,} ({100 * r['lost'] / r['tokens_in']:.1f}%)"
        rss = f"{r['rss_added_mib']:.0f} MiB ({r['rss_added_mib'] / r['input_mib']:.2f}x in)"
        print(
            f"| {r['method']:26s} | {r['seq_len']:7d} | {r['seconds']:7.3f} | {r['cpu_seconds']:7.3f} | {tps:7.1f} | "
            f"{ratios.get('trl_bfd', ''):>13s} | {ratios.get('trl_bfd_split', ''):>16s} | "
            f"{ratios.get('trl_wrapped', ''):>14s} | {r['fill']:.5f} | {lost:>16s} | {r['rows']:8,d} | {rss:>22s} |"
        )
    for seq_len in sorted({r["seq_len"] for r in results}):
        bfd_rows = [r for r in results if r["seq_len"] == seq_len and r["method"].startswith("hfprep_bfd")]
        for anchor in ("trl_bfd", "trl_bfd_split"):
            if bfd_rows and (anchor, seq_len) in by:
                worst = min(by[(anchor, seq_len)]["seconds"] / r["seconds"] for r in bfd_rows)
                worst_cpu = min(by[(anchor, seq_len)]["cpu_seconds"] / r["cpu_seconds"] for r in bfd_rows)
                print(
                    f"seq_len {seq_len}: slowest hfprep bfd row is {worst:.1f}x {anchor} in wall time, "
                    f"{worst_cpu:.1f}x in CPU time (target >= 4x)"
                )
    print("input = Arrow bytes of the input group; 'x in' = peak RSS added during packing / input bytes")
    print("ratios: wall time (CPU time of the process in brackets: steadier than wall time on a loaded machine)")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        method, seq_len, path, out_dir, repeat = sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
        print(json.dumps(worker(method, seq_len, path, out_dir, int(repeat), sys.argv[7] == "write")))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="50k documents (a few minutes)")
    ap.add_argument("--docs", type=int, default=None, help="number of documents (default 200k, quick 50k)")
    ap.add_argument("--seq-lens", type=int, nargs="+", default=[2048, 8192])
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per method after a warm-up; fastest reported")
    ap.add_argument("--no-write", action="store_true", help="time the packers alone (Arrow table out, no disk)")
    args = ap.parse_args()
    n_docs = args.docs or (50_000 if args.quick else 200_000)
    results = run_all(n_docs, args.seq_lens, args.methods, args.repeat, write=not args.no_write)
    print_table(results, write=not args.no_write)


if __name__ == "__main__":
    main()
