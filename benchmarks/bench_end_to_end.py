"""The whole run, side by side: read JSON Lines -> tokenize -> pack (dense 2048) -> write Parquet, start-up included.

The corpus is real Python code from this machine (the ``.py`` files of the standard library and ``site-packages``,
one document per file, as JSON Lines with a ``text`` field; distinct files first, repeated in order past the
distinct text there is) and the tokenizer the real Llama 3.1 one (fetched like the tests do:
``python tests/fetch_tokenizers.py llama3_1``). Every row runs in a fresh process, one row after another, ``--repeats``
times (best of N for every row) after the same untimed warm-up (each row once on 10 documents, the input read once);
between rows the machine is left alone. Rows:

* ``raw gigatoken`` / ``raw hf``: the floor. The texts already in memory and the tokenizer already loaded, one
  ``encode_batch(parallel=True)`` / ``encode_batch_fast`` call: what a pipeline could not beat.
* ``hfprep run``: the CLI on a recipe (``--num-proc 2``), wall time from process start to exit.
* ``usual HF recipe``: ``load_dataset("json")`` -> ``map(tokenizer, batched, num_proc=2)`` -> transformers'
  ``group_texts`` (concatenate, cut 2048-token blocks) -> ``to_parquet``.
* ``TRL``: ``load_dataset("json")`` -> ``map(tokenizer, num_proc=2)`` -> ``trl.pack_dataset(strategy="wrapped")``
  (TRL's concatenate-and-cut, the same work as dense packing) -> ``to_parquet``.
* ``datatrove``: ``JsonlReader`` -> ``DocumentTokenizer`` (its defaults: shuffled documents, an index file), 2 tasks on
  2 workers, its documented local executor.

Columns: wall seconds, tokens per second per core (2 cores), peak RSS of the process tree (sampled every 20 ms), and
bytes written anywhere: the output, the ``datasets`` cache and the temporary folder (each row gets fresh ones).

    python benchmarks/bench_end_to_end.py --quick            # 40 MB input, best of 1
    python benchmarks/bench_end_to_end.py                    # 160 MB and 640 MB inputs, best of 3
    python benchmarks/bench_end_to_end.py --sizes 640 2500 --rows hfprep   # memory at 640 MB vs 2.5 GB
    python benchmarks/bench_end_to_end.py --startup          # a 10-document recipe, best of 5
    python benchmarks/bench_end_to_end.py --sizes 640 --rows "raw gigatoken" "hfprep run" --cores 1   # scaling

``--cores N`` pins every row's process tree to the first N cores (``--num-proc N``, N Rayon threads): rows at 1 and 2
cores side by side say how the run scales.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests"))

from corpus import MB, WORK_DIR, distinct_documents  # noqa: E402
from fetch_tokenizers import family_dir, fetch  # noqa: E402

SEQ_LEN = 2048
CORES = 2
ROWS = ("raw gigatoken", "raw hf", "hfprep run", "usual HF recipe", "TRL", "datatrove")


# --- corpus -----------------------------------------------------------------------------------------------------


def corpus(size_mb: int) -> Path:
    """``size_mb`` MB of JSON Lines (one source file per line), cached under ``benchmarks/_work``."""
    path = WORK_DIR / f"e2e-code-{size_mb}MB.jsonl"
    if path.exists():
        return path
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    target = size_mb * MB
    try:
        docs = distinct_documents(target)
    except ValueError:  # less distinct text on this machine than asked for: repeat all of it in order
        docs = _all_distinct()
    tmp = path.with_suffix(".tmp")
    written = 0
    with open(tmp, "w", encoding="utf-8") as f:
        while written < target:
            for d in docs:
                line = json.dumps({"text": d}) + "\n"
                f.write(line)
                written += len(line.encode("utf-8"))
                if written >= target:
                    break
    tmp.rename(path)
    return path


def _all_distinct() -> list[str]:
    """Every distinct ``.py`` text on the machine (the corpus repeats them in order past this)."""
    try:
        return distinct_documents(10**12)
    except ValueError as e:  # the message says how much there is; read it all with a reachable target
        have = float(str(e).split("only ")[1].split(" MB")[0])
        return distinct_documents(int(have * MB) - MB)


def corpus_tokens(path: Path, tokenizer_json: Path) -> int:
    """Tokens of the corpus (documents + one eos each): the count every row's tokens/s uses."""
    cache = path.with_suffix(".tokens.json")
    if cache.exists():
        return json.loads(cache.read_text())["tokens"]
    import gigatoken

    with open(path, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    out = gigatoken.Tokenizer(str(tokenizer_json)).encode_batch(texts, parallel=True)
    tokens = len(out.layout.content) + len(texts)
    cache.write_text(json.dumps({"tokens": tokens}))
    return tokens


# --- rows: each a script run in a fresh process --------------------------------------------------------------------

RAW = """
import json, sys, time
path, tok, kind = sys.argv[1:4]
texts = [json.loads(line)["text"] for line in open(path, encoding="utf-8")]
if kind == "gigatoken":
    import gigatoken
    t = gigatoken.Tokenizer(tok + "/tokenizer.json")
    t.encode_batch(texts[:50], parallel=True)  # warm its thread pool
    start = time.perf_counter()
    t.encode_batch(texts, parallel=True)
else:
    from tokenizers import Tokenizer
    t = Tokenizer.from_file(tok + "/tokenizer.json")
    start = time.perf_counter()
    t.encode_batch_fast(texts, add_special_tokens=False)
print("SECONDS", time.perf_counter() - start)
"""

USUAL = """
import sys, itertools
from datasets import load_dataset
from transformers import AutoTokenizer
path, tok, out = sys.argv[1:4]
block = int(sys.argv[4])
tokenizer = AutoTokenizer.from_pretrained(tok)
ds = load_dataset("json", data_files=path, split="train")
ds = ds.map(lambda b: tokenizer(b["text"]), batched=True, num_proc=2, remove_columns=ds.column_names)

def group_texts(examples):  # transformers' examples/pytorch/language-modeling/run_clm.py
    concatenated = {k: list(itertools.chain(*examples[k])) for k in examples.keys()}
    total = (len(concatenated[list(examples.keys())[0]]) // block) * block
    return {k: [t[i : i + block] for i in range(0, total, block)] for k, t in concatenated.items()}

ds = ds.map(group_texts, batched=True, num_proc=2)
ds.to_parquet(out + "/train.parquet")
"""

TRL = """
import sys
from datasets import load_dataset
from transformers import AutoTokenizer
from trl import pack_dataset
path, tok, out = sys.argv[1:4]
block = int(sys.argv[4])
tokenizer = AutoTokenizer.from_pretrained(tok)
ds = load_dataset("json", data_files=path, split="train")
ds = ds.map(lambda b: {"input_ids": tokenizer(b["text"])["input_ids"]}, batched=True, num_proc=2,
            remove_columns=ds.column_names)
ds = pack_dataset(ds, block, strategy="wrapped")
ds.to_parquet(out + "/train.parquet")
"""

DATATROVE = """
import os, sys
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.tokens import DocumentTokenizer
path, tok, out = sys.argv[1:4]
LocalPipelineExecutor(
    pipeline=[
        JsonlReader(os.path.dirname(path), glob_pattern=os.path.basename(path)),
        DocumentTokenizer(out + "/tokens", tokenizer_name_or_path=tok + "/tokenizer.json"),
    ],
    tasks=2, workers=2, logging_dir=out + "/logs",
).run()
"""


def recipe(path: Path, tok: Path, out: Path) -> Path:
    text = textwrap.dedent(f"""\
        source: {{files: {json.dumps(str(path))}, columns: {{text: content}}}}
        tokenizer: {{name_or_path: {json.dumps(str(tok))}}}
        packing: {{seq_len: {SEQ_LEN}, strategy: dense, num_reduce_chunks: 64}}
        output: {{folder: {json.dumps(str(out / "prepared"))}}}
        """)
    p = out / "recipe.yaml"
    p.write_text(text)
    return p


def command(row: str, path: Path, tok: Path, out: Path) -> list[str]:
    py = sys.executable
    if row == "raw gigatoken":
        return [py, "-c", RAW, str(path), str(tok), "gigatoken"]
    if row == "raw hf":
        return [py, "-c", RAW, str(path), str(tok), "hf"]
    if row == "hfprep run":
        return [py, "-m", "hfprep", "run", str(recipe(path, tok, out)), "--num-proc", str(CORES)]
    if row == "usual HF recipe":
        return [py, "-c", USUAL, str(path), str(tok), str(out), str(SEQ_LEN)]
    if row == "TRL":
        return [py, "-c", TRL, str(path), str(tok), str(out), str(SEQ_LEN)]
    if row == "datatrove":
        return [py, "-c", DATATROVE, str(path), str(tok), str(out)]
    raise ValueError(row)


def folder_bytes(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):  # a file removed while the folder was walked
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


class PeakRSS:
    """The largest sum of RSS over a process and its children, sampled every 20 ms."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs if p.is_running()))
            except psutil.Error:
                pass
            self._stop.wait(0.02)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_row(row: str, path: Path, tok: Path) -> dict:
    """One run of ``row`` in a fresh process with a fresh output, datasets cache and temporary folder."""
    with tempfile.TemporaryDirectory(prefix="e2e-", dir=WORK_DIR) as work:
        work = Path(work)
        out, cache, tmp = work / "out", work / "hf_datasets_cache", work / "tmp"
        for d in (out, cache, tmp):
            d.mkdir()
        env = {**os.environ, "HF_DATASETS_CACHE": str(cache), "TMPDIR": str(tmp), "HF_HUB_OFFLINE": "1",
               "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "true", "RAYON_NUM_THREADS": str(CORES)}
        cores = set(sorted(os.sched_getaffinity(0))[:CORES])
        start = time.perf_counter()
        proc = subprocess.Popen(command(row, path, tok, out), env=env, cwd=work, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, preexec_fn=lambda: os.sched_setaffinity(0, cores))
        rss = PeakRSS(proc.pid)
        stdout, stderr = proc.communicate()
        wall = time.perf_counter() - start
        peak = rss.stop()
        if proc.returncode != 0:
            raise RuntimeError(f"{row} failed ({proc.returncode}):\n{stderr[-3000:]}")
        if row.startswith("raw"):  # the floor: the encode call alone
            wall = float(next(line.split()[1] for line in stdout.splitlines() if line.startswith("SECONDS")))
        written = folder_bytes(out) + folder_bytes(cache) + folder_bytes(tmp)
        if row == "hfprep run":
            written -= (out / "recipe.yaml").stat().st_size
        return {"wall": wall, "rss": peak, "written": written}


def measure(size_mb: int, rows: list[str], repeats: int, tok: Path) -> None:
    path = corpus(size_mb)
    tokens = corpus_tokens(path, tok / "tokenizer.json")
    with open(path, "rb") as f:
        n_docs = sum(1 for _ in f)
    print(f"\n### {path.stat().st_size / MB:.0f} MB of JSON Lines ({n_docs:,} documents, "
          f"{tokens / 1e6:.1f}M tokens), Llama 3.1 tokenizer, dense {SEQ_LEN}, {CORES} cores, best of {repeats}\n")
    # Warm-up, untimed and the same for every row: each row once on 10 documents (it fails here, in seconds, if its
    # packages are missing, and the page cache then holds their files), and the input read once.
    tiny = ten_documents()
    for row in rows:
        run_row(row, tiny, tok)
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass
    results: dict[str, dict] = {}
    for _ in range(repeats):  # round robin: every row sees the same machine state on average
        for row in rows:
            r = run_row(row, path, tok)
            best = results.get(row)
            if best is None or r["wall"] < best["wall"]:
                results[row] = {**r, "runs": [*(best or {}).get("runs", []), r["wall"]]}
            else:
                best["runs"].append(r["wall"])
            results[row]["rss"] = max(results[row]["rss"], r["rss"])
    floor = results.get("raw gigatoken")
    usual = results.get("usual HF recipe")
    print("| row | wall s (best) | runs | tokens/s per core | peak RSS | bytes written | x usual recipe | % of raw gigatoken |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for row in rows:
        r = results[row]
        tps = tokens / r["wall"] / CORES
        vs_usual = f"{usual['wall'] / r['wall']:.1f}x" if usual else "-"
        vs_floor = f"{100 * floor['wall'] / r['wall']:.0f}%" if floor else "-"
        runs = " / ".join(f"{w:.2f}" for w in r["runs"])
        print(f"| {row} | {r['wall']:.2f} | {runs} | {tps / 1e6:.2f}M | {r['rss'] / 2**30:.2f} GiB | "
              f"{r['written'] / MB:,.0f} MB | {vs_usual} | {vs_floor} |")


def ten_documents() -> Path:
    """The first 10 documents of the corpus as JSON Lines."""
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    path = WORK_DIR / "e2e-10docs.jsonl"
    docs = distinct_documents(MB)[:10]
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


def startup(repeats: int, tok: Path) -> None:
    """A 10-document recipe: the fixed cost of ``hfprep run``."""
    path = ten_documents()
    walls = [run_row("hfprep run", path, tok)["wall"] for _ in range(repeats)]
    print(f"\n### start-up: `hfprep run` on 10 documents, {repeats} runs: "
          + " / ".join(f"{w:.2f}" for w in walls) + f" s (best {min(walls):.2f} s)")


def main() -> None:
    global CORES
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a 40 MB input, best of 1")
    parser.add_argument("--sizes", type=int, nargs="+", help="input sizes in MB (default 160 640)")
    parser.add_argument("--rows", nargs="+", help=f"rows to run (default all): {', '.join(ROWS)}")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--startup", action="store_true", help="only the 10-document start-up measurement")
    parser.add_argument("--cores", type=int, default=CORES, help=f"cores every row may use (default {CORES})")
    args = parser.parse_args()
    CORES = args.cores
    fetch("llama3_1")
    tok = family_dir("llama3_1")
    repeats = args.repeats or (1 if args.quick else 3)
    if args.startup:
        startup(args.repeats or 5, tok)
        return
    rows = args.rows or list(ROWS)
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {list(ROWS)}")
    for size in args.sizes or ([40] if args.quick else [160, 640]):
        # The slow competitors only on the sizes the targets name: a 640 MB usual-recipe run takes minutes.
        sized = [r for r in rows if size <= 200 or r in ("raw gigatoken", "raw hf", "hfprep run")]
        measure(size, sized, repeats, tok)
    startup(5 if not args.quick else 2, tok)


if __name__ == "__main__":
    main()
