"""Peak memory of streaming preparation as the input grows (1x, 4x, 16x), side by side with the in-RAM run.

Each measurement runs in a fresh subprocess (peak RSS = ``ru_maxrss`` of that process) on a synthetic stream of
documents (lognormal word counts, deterministic). ``num_reduce_chunks`` grows with the input (a fixed number of
documents per key), as the design asks: a reduce group is held in memory whatever the engine.

* ``streaming``: ``prepare_streaming(transform, IterableDataset.from_generator(...))`` (bounded memory);
* ``run (in RAM)``: the anchor, ``transform.run(Dataset.from_list(rows))`` on the materialised rows.

Usage:
    python benchmarks/bench_streaming.py --quick          # 1x = 2,000 docs, a few minutes on 2 cores
    python benchmarks/bench_streaming.py --base-docs 20000 --scales 1 4 16
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

# fmt: off
WORDS = (
    "the", "of", "and", "to", "in", "is", "for", "that", "with", "on", "as", "it", "by", "this", "be", "are",
    "from", "at", "or", "an", "was", "which", "not", "have", "but", "all", "can", "def", "return", "import",
    "class", "self", "numpy", "data", "model", "train", "token", "value", "list", "dict", "print", "range", "len",
    "if", "else", "while", "café", "naïve", "東京", "über", "año",
)
# fmt: on


def make_docs(n: int, seed: int):
    """Deterministic synthetic documents: lognormal word counts (median ~150 words)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(mean=5.0, sigma=0.8, size=n), 1, 4000).astype(int)
    vocab = np.array(WORDS)
    for length in lengths.tolist():
        yield {"content": " ".join(vocab[rng.integers(0, len(vocab), size=length)].tolist())}


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: argparse.Namespace) -> None:
    from datasets import Dataset, IterableDataset

    from hfprep.engines.streaming import prepare_streaming
    from hfprep.pack.transform import PrepareForTrainingTransform, PrepareForTrainingTransformConfig

    cfg = PrepareForTrainingTransformConfig(
        processing_strategy="pretrain",
        packing_strategy=args.packing,
        tokenizer_name=args.tokenizer,
        seq_len=args.seq_len,
        num_reduce_chunks=max(1, args.docs // args.docs_per_key),
    )
    transform = PrepareForTrainingTransform(cfg)
    base = rss_mib()
    t0 = time.perf_counter()
    if args.mode == "streaming":
        stream = IterableDataset.from_generator(make_docs, gen_kwargs={"n": args.docs, "seed": 0})
        out = prepare_streaming(
            transform, stream, batch_size=1000, spill_buffer_bytes=args.spill_mib * 2**20, cache_dir=args.cache_dir
        )
    else:
        rows = list(make_docs(args.docs, 0))
        out = transform.run(Dataset.from_list(rows), batch_size=1000)
    seconds = time.perf_counter() - t0
    stats = transform.stats
    print(
        json.dumps(
            {
                "rows": out.num_rows,
                "tokens": stats["tokens_in"],
                "keys": cfg.num_reduce_chunks,
                "seconds": seconds,
                "peak_rss_mib": rss_mib(),
                "base_rss_mib": base,
            }
        )
    )


def measure(mode: str, docs: int, args: argparse.Namespace, tokenizer: str, cache_dir: str) -> dict:
    cmd = [
        sys.executable, __file__, "--child", "--mode", mode, "--docs", str(docs), "--tokenizer", tokenizer,
        "--seq-len", str(args.seq_len), "--docs-per-key", str(args.docs_per_key), "--packing", args.packing,
        "--spill-mib", str(args.spill_mib), "--cache-dir", cache_dir,
    ]  # fmt: skip
    env = {**os.environ, "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0:
        raise SystemExit(f"{mode} x{docs} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1x = 2,000 documents")
    p.add_argument("--base-docs", type=int, default=None)
    p.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--docs-per-key", type=int, default=1000, help="num_reduce_chunks = docs // this")
    p.add_argument("--packing", default="no_incomplete")
    p.add_argument("--spill-mib", type=int, default=None, help="spill buffer (default 4 MiB --quick, else 64)")
    p.add_argument("--skip-run", action="store_true", help="measure streaming only")
    # child-process arguments
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="streaming", help=argparse.SUPPRESS)
    p.add_argument("--docs", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--tokenizer", default="", help=argparse.SUPPRESS)
    p.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    base_docs = args.base_docs or (2000 if args.quick else 20000)
    if args.spill_mib is None:
        # Small enough that the 1x input already spills, so every scale runs the same bounded code path.
        args.spill_mib = 4 if args.quick else 64

    from hfprep.tokenization.loading import train_tiny_tokenizer

    with tempfile.TemporaryDirectory(prefix="bench-streaming-") as tmp:
        tok_dir = os.path.join(tmp, "tokenizer")
        train_tiny_tokenizer((d["content"] for d in make_docs(300, 1)), tok_dir, vocab_size=1000)
        modes = ["streaming"] + ([] if args.skip_run else ["run (in RAM)"])
        results: dict[tuple[str, int], dict] = {}
        for scale in args.scales:
            for mode in modes:
                cache = os.path.join(tmp, f"cache-{mode[:3]}-{scale}")
                os.makedirs(cache)
                r = measure("streaming" if mode == "streaming" else "run", base_docs * scale, args, tok_dir, cache)
                results[(mode, scale)] = r
                print(f"  measured {mode:>13} x{scale:<3}: {r['peak_rss_mib']:.0f} MiB, {r['seconds']:.1f} s",
                      file=sys.stderr, flush=True)  # fmt: skip

    first = args.scales[0]
    print(f"\nseq_len={args.seq_len}, packing={args.packing}, {args.docs_per_key} docs per reduce key, "
          f"spill buffer {args.spill_mib} MiB, 1x = {base_docs} docs")  # fmt: skip
    head = (f"{'mode':<14}{'scale':>6}{'docs':>9}{'tokens':>12}{'keys':>6}{'rows':>8}{'time s':>8}"
            f"{'Mtok/s':>8}{'peak RSS MiB':>14}{'work MiB':>10}{'vs 1x':>7}{'vs run':>8}")  # fmt: skip
    print(head)
    print("-" * len(head))
    for scale in args.scales:
        for mode in modes:
            r = results[(mode, scale)]
            work = r["peak_rss_mib"] - r["base_rss_mib"]
            work_first = results[(mode, first)]["peak_rss_mib"] - results[(mode, first)]["base_rss_mib"]
            run = results.get(("run (in RAM)", scale))
            vs_run = f"{work / (run['peak_rss_mib'] - run['base_rss_mib']):.2f}" if run else "-"
            print(
                f"{mode:<14}{'x' + str(scale):>6}{base_docs * scale:>9}{r['tokens']:>12}{r['keys']:>6}{r['rows']:>8}"
                f"{r['seconds']:>8.1f}{r['tokens'] / r['seconds'] / 1e6:>8.2f}{r['peak_rss_mib']:>14.0f}"
                f"{work:>10.0f}{work / work_first:>7.2f}{vs_run:>8}"
            )
    print(
        "(peak RSS includes the interpreter and imports; work = peak - RSS after imports and tokenizer load; "
        "'vs 1x' and 'vs run' compare work)"
    )


if __name__ == "__main__":
    main()
