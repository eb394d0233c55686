"""A 3-source mixture vs one source of the same documents, side by side, through ``hfprep run``.

The standard library's ``.py`` files (repeated to ``--mb`` MB) are dealt round-robin into three jsonl sources. The
mixture recipe asks for each source's share of the bytes with no total, so it takes (almost) every document once;
the single-source recipe reads the same documents from one file. Same tokenizer, packing (dense, 2,048), engine
(datasets, ``num_proc``), datasets' cache off (every run tokenizes), no card PNGs. Runs alternate (mixture, single,
mixture, single, ...) and the table reports the best wall time of each, tokens/s and the ratio of seconds per token
(mixture / single). What the mixture does beyond the single source: one tokenize map per source, a sha256 of every
document's text (the choice), the choice and the mixing order (numpy over one hash and length per document), and a
per-token source index in the reduce; the reduce reads the chosen rows in mixing order, with no mixed copy.

    python benchmarks/bench_mixture.py --mb 20 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import MB, stdlib_documents

from hfprep.run import run_recipe
from hfprep.tokenization.loading import train_tiny_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=20.0, help="corpus size in MB of UTF-8 text")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--num-proc", type=int, default=None)
    args = ap.parse_args()
    import datasets

    # Every run tokenizes from scratch: without this, repeats would load the maps from datasets' cache.
    datasets.disable_caching()

    docs = stdlib_documents(min_bytes=int(args.mb * MB))
    with tempfile.TemporaryDirectory(prefix="bench-mixture-") as tmp:
        root = Path(tmp)
        tok = root / "tok"
        train_tiny_tokenizer(docs[:2000], tok, vocab_size=8192)
        parts: list[list[str]] = [docs[i::3] for i in range(3)]
        sizes = [sum(len(d.encode()) for d in p) for p in parts]
        for i, p in enumerate(parts):
            (root / f"s{i}.jsonl").write_text("".join(json.dumps({"content": d}) + "\n" for d in p))
        (root / "all.jsonl").write_text("".join(json.dumps({"content": d}) + "\n" for p in parts for d in p))
        common = {
            "tokenizer": {"name_or_path": str(tok)},
            "tokenize": {"strategy": "pretrain", "on_empty": "drop"},
            "packing": {"seq_len": 2048, "strategy": "dense", "num_reduce_chunks": 8},
            "engine": {"name": "datasets", "num_proc": args.num_proc},
            "output": {"overwrite": True, "plots": False},  # the PNGs are a fixed cost, not the data path
        }
        mix = {
            **common,
            "sources": [
                {"name": f"s{i}", "files": [f"s{i}.jsonl"], "weight": sizes[i] / sum(sizes)} for i in range(3)
            ],
            "output": {**common["output"], "folder": "out-mix"},
        }
        single = {**common, "source": {"files": ["all.jsonl"]}, "output": {**common["output"], "folder": "out-one"}}
        (root / "mix.yaml").write_text(yaml.safe_dump(mix))
        (root / "one.yaml").write_text(yaml.safe_dump(single))
        best: dict[str, tuple[float, int]] = {}
        for _ in range(args.repeats):
            for name in ("mix", "one"):
                t0 = time.perf_counter()
                summary = run_recipe(root / f"{name}.yaml")
                wall = time.perf_counter() - t0
                tokens = int(summary["totals"]["tokens_in"])
                if name not in best or wall < best[name][0]:
                    best[name] = (wall, tokens)
    print(f"corpus: {len(docs):,} documents, {sum(sizes) / MB:.1f} MB, 3 sources; num_proc {args.num_proc}")
    print(f"{'run':<22}{'wall s':>10}{'tokens':>14}{'Mtok/s':>10}")
    for name, label in (("one", "one source"), ("mix", "3-source mixture")):
        wall, tokens = best[name]
        print(f"{label:<22}{wall:>10.2f}{tokens:>14,}{tokens / wall / 1e6:>10.3f}")
    per_tok = {k: w / t for k, (w, t) in best.items()}
    print(f"overhead (seconds per token, mixture / one source): {per_tok['mix'] / per_tok['one']:.3f}x")


if __name__ == "__main__":
    main()
