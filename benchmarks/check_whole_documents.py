"""Loss tokens written by ``hfprep run`` with a tokenizer.json that enables truncation and padding, per ``add_bos``
mode and backend, next to the counts an untouched copy of the same tokenizer file gives (issue 26, point 1).

Input: the first 300 ``.py`` files of the running Python's standard library (one document per file, empty ones
dropped), pretrain, ``bfd`` at seq_len 256. The tokenizer folder is copied and its ``tokenizer.json`` given
``truncation: {max_length: 16}`` and ``padding: {Fixed: 64}``; the expected count is, per document,
``len(encode(text, add_special_tokens=False))`` of the untouched file + 1 (the token that ends it) + 1 (the bos,
for ``always`` and for ``auto`` when ``encode`` adds one). The table also gives the backend the run used, the
warning lines it printed and the token that ended its documents (from the card).

Run: ``python benchmarks/check_whole_documents.py --tokenizer PATH/TO/llama3_1`` (a folder with tokenizer.json
and tokenizer_config.json; ``python tests/fetch_tokenizers.py`` fetches real ones). It runs the ``hfprep`` on the
path: point ``PYTHONPATH`` at another checkout to measure that one.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import tokenizers
import yaml

MAX_FILES = 300


def stdlib_texts() -> list[str]:
    """The documents the recipe reads (``text_dir: "{stdlib}"``, ``glob: "**/*.py"``, first 300 in path order)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p.relative_to(root).as_posix() for p in root.glob("**/*.py") if p.is_file())[:MAX_FILES]
    return [t for t in ((root / f).read_text(encoding="utf-8", errors="replace") for f in files) if t]


def with_length_settings(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    config = json.loads((dest / "tokenizer.json").read_text(encoding="utf-8"))
    eos = json.loads((dest / "tokenizer_config.json").read_text(encoding="utf-8")).get("eos_token")
    pad = eos if isinstance(eos, str) else config["added_tokens"][0]["content"]
    pad_id = next(t["id"] for t in config["added_tokens"] if t["content"] == pad)
    config["truncation"] = {"direction": "Right", "max_length": 16, "strategy": "LongestFirst", "stride": 0}
    config["padding"] = {"strategy": {"Fixed": 64}, "direction": "Right", "pad_to_multiple_of": None,
                         "pad_id": pad_id, "pad_type_id": 0, "pad_token": pad}
    (dest / "tokenizer.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    return dest


def run(work: Path, tokenizer: Path, backend: str, add_bos: str) -> tuple[dict, list[str], str]:
    out = work / f"out-{backend}-{add_bos}"
    recipe = {
        "source": {"text_dir": "{stdlib}", "glob": "**/*.py", "max_files": MAX_FILES, "columns": {"text": "content"}},
        "tokenizer": {"name_or_path": str(tokenizer), "backend": backend},
        "tokenize": {"strategy": "pretrain", "on_empty": "drop", "add_bos": add_bos},
        "packing": {"seq_len": 256, "strategy": "bfd", "num_reduce_chunks": 4},
        "splits": {"heldout_fraction": 0.0},
        "output": {"folder": str(out), "overwrite": True, "plots": False},
    }
    (work / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    proc = subprocess.run([sys.executable, "-m", "hfprep", "run", str(work / "recipe.yaml"), "--json"], capture_output=True,
                          text=True)
    if proc.returncode:
        sys.exit(proc.stdout[-2000:] + proc.stderr[-2000:])
    summary = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")][-1]
    warned = [line for line in proc.stderr.splitlines() if "warning:" in line]
    card = (out / "README.md").read_text(encoding="utf-8")
    meta = yaml.safe_load(card.split("\n---", 1)[0].removeprefix("---\n"))["hfprep"]["tokenizer"]
    shutil.rmtree(out)
    return summary, warned, f"{meta['eos_token']} ({meta['eos_token_id']})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, type=Path, help="a tokenizer folder (tokenizer.json + config)")
    args = parser.parse_args()
    texts = stdlib_texts()
    raw = tokenizers.Tokenizer.from_file(str(args.tokenizer / "tokenizer.json"))  # untouched
    body = sum(len(e.ids) for e in raw.encode_batch(texts, add_special_tokens=False))
    encode_adds_bos = len(raw.encode("x").ids) > len(raw.encode("x", add_special_tokens=False).ids)
    expected = {"never": body + len(texts), "always": body + 2 * len(texts),
                "auto": body + (2 if encode_adds_bos else 1) * len(texts)}
    print(f"{len(texts)} documents, {body:,} text tokens (untouched tokenizer)")
    print(f"{'add_bos':<8}{'backend':<9}{'used':<11}{'loss tokens':>13}{'expected':>13}  {'ends with':<26}warnings")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tok = with_length_settings(args.tokenizer, work / "tokenizer")
        for backend in ("hf", "auto"):
            for add_bos in ("never", "always", "auto"):
                summary, warned, ends = run(work, tok, backend, add_bos)
                loss = summary["splits"]["train"]["loss_tokens"]
                used = (summary.get("backend") or {}).get("backend", "?")
                print(f"{add_bos:<8}{backend:<9}{used:<11}{loss:>13,}{expected[add_bos]:>13,}  {ends:<26}{len(warned)}")
        for line in warned:
            print(f"  last run's warning: {line}")


if __name__ == "__main__":
    main()
