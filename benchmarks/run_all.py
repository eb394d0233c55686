"""Run the benchmarks one after another and print their tables (most of docs/benchmarks.md in one command).

    python benchmarks/run_all.py            # full sizes (tens of minutes on 2 cores)
    python benchmarks/run_all.py --quick    # reduced sizes, a few minutes each
    python benchmarks/run_all.py --only pack collate

Each benchmark runs in its own process (so one's memory does not count against the next) and its output is
printed as it comes; a failing benchmark is reported and the others still run. Speed is never asserted here:
the scripts print side-by-side ratios against the anchors named in their docstrings.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

BENCHMARKS: dict[str, str] = {
    "tokenize": "bench_tokenize.py",  # tokenize stage vs the raw encode floor, usual map recipe, datatrove, gigatoken
    "pack": "bench_pack.py",  # dense / no_incomplete / bfd vs TRL pack_dataset, per use (pretrain, sft), cold
    "reduce_keys": "bench_reduce_keys.py",  # reduce cost with 4 vs 1,024 keys
    "engines": "bench_engines.py",  # in-RAM floor (same cores, same write) vs datasets engine vs Ray
    "streaming": "bench_streaming.py",  # peak memory at 1x / 4x / 16x the input
    "collate": "bench_collate.py",  # collators vs DataCollatorWithFlattening, TRL padding_free, seed collate_lm
    "kd": "bench_kd.py",  # KD cache bytes/token, teacher tokens/s, reader vs to_pydict
    "push": "bench_push.py",  # push_folder vs push_to_hub against the local test Hub
    "audit": "bench_audit.py",  # the loss audit per batch vs validate's other per-batch work and a Python loop
    "repack": "bench_repack.py",  # repack vs a fresh run at the new seq_len; export tokens/s
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    ap.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run only these")
    args = ap.parse_args(argv)
    failed = []
    for name in args.only or BENCHMARKS:
        cmd = [sys.executable, str(HERE / BENCHMARKS[name])] + (["--quick"] if args.quick else [])
        print(f"\n===== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        print(f"===== {name}: exit {rc}, {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
