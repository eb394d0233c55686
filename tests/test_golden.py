"""Golden output bytes: the sha256 of every file ``hfprep run`` writes, for the quickstart and one small recipe per
tokenization strategy x packer, recorded before the package was restructured. A refactor that changes any output
byte fails here; a change that means to alter the output updates the table below in the same commit and says why.

Card lines that legitimately vary between runs (the date, the hfprep version and git commit) and the temporary
folder's absolute path are normalised before hashing. Output bytes depend on library versions (Parquet: pyarrow;
tokenizer files: tokenizers, transformers; figures: matplotlib, pillow, numpy; the card: datasets; the backend
named in the card: gigatoken) and on the Python version (the quickstart reads the standard library's sources), so
the hashes belong to the pinned CI environment, ``.ci/constraints.txt`` (read here, the single source of ``ENV``).
Elsewhere the test skips with the reason; under ``CI=true`` (``.ci/run`` installs the pins) a mismatch fails.
Refreshing the pins and re-recording the hashes: ``docs/development.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import re
from pathlib import Path

import pytest
import yaml
from pins import CONSTRAINTS, installed_version, pinned_python, pinned_versions

import hfprep

# The distributions whose versions change output bytes (see the module docstring); their versions come from the pins.
ENV_DISTRIBUTIONS = ("pyarrow", "tokenizers", "datasets", "gigatoken", "transformers", "matplotlib", "pillow", "numpy")
ENV = {"python": pinned_python(), **{d: pinned_versions()[d] for d in ENV_DISTRIBUTIONS}}

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "import",
    "numpy",
    "def",
    "return",
    "print",
    "the",
    "quick",
    "brown",
    "fox",
    "lazy",
    "dog",
    "(x)",
    "=",
    "+",
    "\n",
    "    ",
]


def _env() -> dict[str, str]:
    # gigatoken may be absent: the tokenize backend ``auto`` then uses hf, and the card names the backend.
    return {"python": platform.python_version(), **{d: installed_version(d) for d in ENV_DISTRIBUTIONS}}


def require_recorded_env(env: dict[str, str], ci: bool) -> None:
    """Skip (fail under CI) unless ``env`` is the environment the hashes were recorded in, naming what differs."""
    diff = {k: f"{env.get(k)} (pinned {v})" for k, v in ENV.items() if env.get(k) != v}
    if not diff:
        return
    message = (
        f"golden hashes belong to the pinned environment in {CONSTRAINTS.parent.name}/{CONSTRAINTS.name}; here: "
        + ", ".join(f"{k} {v}" for k, v in diff.items())
        + f"; install the pins (pip install -e '.[dev,ray,fast,trl]' -c {CONSTRAINTS.parent.name}/{CONSTRAINTS.name}"
        ") or refresh them and re-record the hashes (docs/development.md)"
    )
    if ci:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _require_env() -> None:
    require_recorded_env(_env(), os.environ.get("CI", "").lower() == "true")


def _text(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def _write_sources(root: Path) -> None:
    rng = random.Random(13)
    # Lengths up to ~3x seq_len, so truncation, splitting and dropping all happen.
    docs = [_text(rng, 1, 60) for _ in range(60)]
    (root / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    fim = [{"prefix": _text(rng, 1, 10), "middle": _text(rng, 1, 8), "suffix": _text(rng, 0, 10)} for _ in range(40)]
    (root / "fim.jsonl").write_text("".join(json.dumps(r) + "\n" for r in fim))
    chats = []
    for _ in range(40):
        turns = []
        for t in range(rng.randint(1, 3) * 2):
            turns.append({"role": "user" if t % 2 == 0 else "assistant", "content": _text(rng, 1, 12)})
        chats.append({"messages": turns})
    (root / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chats))


SEQ_LEN = 24
PACKERS: dict[str, dict] = {
    "dense": {"strategy": "dense"},
    "no_incomplete": {"strategy": "no_incomplete"},
    "bfd": {"strategy": "bfd"},
    "bfd_truncate": {"strategy": "bfd", "packing_kwargs": {"overflow": "truncate"}},
    "bfd_drop": {"strategy": "bfd", "packing_kwargs": {"overflow": "drop"}},
    "bfd_nopad": {"strategy": "bfd", "packing_kwargs": {"pad": False}},
}
STRATEGIES: dict[str, dict] = {
    "pretrain": {
        "source": {"files": ["docs.jsonl"], "columns": {"text": "content"}},
        "tokenize": {"strategy": "pretrain"},
    },
    "fim_raw": {
        "source": {"files": ["docs.jsonl"], "columns": {"text": "content"}},
        "tokenize": {"strategy": "pretrain", "fim_rate": 0.5, "fim_spm_rate": 0.5},
    },
    "fim": {"source": {"files": ["fim.jsonl"]}, "tokenize": {"strategy": "fim", "fim_format": "psm"}},
    "sft": {
        "source": {"files": ["chat.jsonl"]},
        "tokenize": {"strategy": "sft", "text_column": "messages", "chat_template": "never"},
    },
}
# Every strategy with the three packers; the bfd overflow/pad variants on pretrain only (they act after tokenizing).
CASES = [(s, p) for s in STRATEGIES for p in ("dense", "no_incomplete", "bfd")] + [
    ("pretrain", p) for p in ("bfd_truncate", "bfd_drop", "bfd_nopad")
]


def _normalise(name: str, data: bytes, tmp: Path) -> bytes:
    if name not in ("README.md", ".hfprep-output.json"):
        return data
    text = data.decode()
    text = text.replace(str(tmp), "<TMP>")
    text = re.sub(r"(\| prepared on \| )[^|]*\|", r"\1<DATE> |", text)
    text = re.sub(r"(\| hfprep git commit \| )[^|]*\|", r"\1<COMMIT> |", text)
    text = re.sub(r"(\| hfprep version \| )[^|]*\|", r"\1<VERSION> |", text)
    text = re.sub(
        r"^(\s*(?:version|\"hfprep_version\"):\s*)\"?" + re.escape(hfprep.__version__) + r"\"?",
        r"\1<VERSION>",
        text,
        flags=re.M,
    )
    return text.encode()


def _hashes(folder: Path, tmp: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(_normalise(p.name, p.read_bytes(), tmp)).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def run_cases(root: Path) -> dict[str, dict[str, str]]:
    """Run every case in ``root`` and return {case: {relative file: sha256}}."""
    from hfprep.run import run_recipe
    from hfprep.tokenization.loading import DEFAULT_SPECIAL_TOKENS, train_tiny_tokenizer

    _write_sources(root)
    rng = random.Random(7)
    train_tiny_tokenizer(
        [_text(rng, 5, 40) for _ in range(200)], root / "tok", vocab_size=300, special_tokens=DEFAULT_SPECIAL_TOKENS
    )
    result = {}
    for strategy, packer in CASES:
        name = f"{strategy}-{packer}"
        spec = STRATEGIES[strategy]
        recipe = {
            "name": name,
            "source": spec["source"],
            "tokenizer": {"name_or_path": "tok"},
            "tokenize": spec["tokenize"],
            "packing": {"seq_len": SEQ_LEN, "num_reduce_chunks": 3, **PACKERS[packer]},
            "splits": {"heldout_fraction": 0.1, "heldout_name": "test"},
            "output": {"folder": f"out/{name}"},
            "seed": 3,
        }
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        run_recipe(path)
        result[name] = _hashes(root / "out" / name, root)
    return result


def run_quickstart(root: Path) -> dict[str, str]:
    """The shipped quickstart recipe in ``root``, unchanged except for the output folder; the tokenizer is trained
    afresh. Returns {relative file: sha256}."""
    from hfprep.run import run_recipe

    text = (Path(__file__).parents[1] / "recipes" / "quickstart.yaml").read_text()
    assert "folder: ../out/quickstart" in text
    (root / "quickstart.yaml").write_text(text.replace("folder: ../out/quickstart", "folder: out"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HFPREP_CACHE", str(root / "cache"))
        run_recipe(root / "quickstart.yaml")
    return _hashes(root / "out", root)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, dict[str, str]]:
    """Every case, run once (module scope)."""
    _require_env()
    return run_cases(tmp_path_factory.mktemp("golden"))


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory) -> dict[str, str]:
    _require_env()
    return run_quickstart(tmp_path_factory.mktemp("golden_quickstart"))


def test_a_mismatch_fails_under_ci_and_skips_elsewhere():
    require_recorded_env(dict(ENV), ci=True)  # the recorded environment passes either way
    other = {**ENV, "pyarrow": "0.0.1"}
    with pytest.raises(pytest.fail.Exception, match=r"here: pyarrow 0\.0\.1 \(pinned [0-9.]+\); install the pins"):
        require_recorded_env(other, ci=True)
    with pytest.raises(pytest.skip.Exception, match="refresh them and re-record the hashes"):
        require_recorded_env(other, ci=False)


def test_quickstart_output_bytes(quickstart):
    assert quickstart == GOLDEN["quickstart"]


def test_recipe_output_bytes(outputs):
    # One test for all cases (not parametrised), so that under xdist only one worker runs the recipes.
    assert outputs == {k: v for k, v in GOLDEN.items() if k != "quickstart"}


GOLDEN: dict[str, dict[str, str]] = {
    "quickstart": {
        ".hfprep-output.json": "9c7efe3aeefeece1248f9358906854b39d916a20ff232d764366339c2f27b798",
        "README.md": "d8a445553c70f226920e24785c4c713b4bb6c82a4e68a10422bf580d234db40f",
        "data/test-00000-of-00001.parquet": "90e876e08ea863da60a54cd9ecb532e1519a0c1b286848144c4b4bbd1403d5cc",
        "data/train-00000-of-00001.parquet": "4a4f4cf136636c1e2b8156ac8d61aba8e2e0a048ad6a38c6e473c18b8b7594d7",
        "images/doc_lengths.png": "8954ada6c8df1bb84810ac608d811509d49befb79b1afeeadcaf4ec7f58f03cf",
        "tokenizer/tokenizer.json": "1d45ba5f25dde6aa3f37b2343bcd21183c1ae6b47e978d6ea19bccf095350838",
        "tokenizer/tokenizer_config.json": "cf58dec7a6fcdc71732b7953037011d097edf0a526f5c4be44686658fe1c1916",
    },
    "pretrain-dense": {
        ".hfprep-output.json": "9c7efe3aeefeece1248f9358906854b39d916a20ff232d764366339c2f27b798",
        "README.md": "61a41c2104ae64e1ebada9d5b8394d1a71b06de16483fe50c6cf672b9c2c78dc",
        "data/test-00000-of-00001.parquet": "b175c4edc06f617eaa4b6398c0e76400385004596f74a80f6ab5bdae74575ec6",
        "data/train-00000-of-00001.parquet": "afa69e207312f0bb67dc59258c3b9fcbe67f17779b058cdf36c1fc5d4a084fbd",
        "images/doc_lengths.png": "a20e0b70d69055fdc6854782560db6e558b58d64ee5a74df67f8471f8523756a",
        "tokenizer/tokenizer.json": "88a8b01df5f34785b377ee670569ec2939fa57c00c3edd2cefc2ec16435bc886",
        "tokenizer/tokenizer_config.json": "cf58dec7a6fcdc71732b7953037011d097edf0a526f5c4be44686658fe1c1916",
    },
    "pretrain-no_incomplete": {
        ".hfprep-output.json": "65dc205fa84183c1e937a030f1cf94eac7514a9b650fae717ac7b5812418a025",
        "README.md": "3127f6d70ae23a6a689764402683c8bac59d5d144265ad014370d07e01b3ce84",
        "data/train-00000-of-00001.parquet": "dd1044eef5d334a7a80bc1b06d56adbd74ce4dac97b87bd2a4159af71b21705a",
        "images/doc_lengths.png": "94caeffbd5afd6b5f2a3b2d56ab9c47ca040ec91524cf39de33b8e81d5c33c5b",
        "images/fill_per_row.png": "5cbadd574edc1d465e37b96be163300be3bb2802872990cf402253df7cce21d1",
        "tokenizer/tokenizer.json": "88a8b01df5f34785b377ee670569ec2939fa57c00c3edd2cefc2ec16435bc886",
        "tokenizer/tokenizer_config.json": "cf58dec7a6fcdc71732b7953037011d097edf0a526f5c4be44686658fe1c1916",
    },
    "pretrain-bfd": {
        ".hfprep-output.json": "d7c3b03a09f92ea48507031793343f939ee2141281c707d30ff1e677a501915e",
        "README.md": "2c4a61f993f3b85f06aac76ef9dc53172c64fedf1370485acdead704e8934872",
        "data/test-00000-of-00001.parquet": "c2d1dd00fb99527b9a6e278498a271066fb002b49bba3c439c1a0fab99d09ff0",
        "data/train-00000-of-00001.parquet": "89cc88217a236c9ca084f1ec8560a6c7cadf5f6670f775b594b3f4174ff16ad0",
        "images/doc_lengths.png": "a20e0b70d69055fdc6854782560db6e558b58d64ee5a74df67f8471f8523756a",
        "images/fill_per_row.png": "69fe71bf4edc78339b1468ce8d5b44dcf299450118caede06f254f0439180057",
        "tokenizer/tokenizer.json": "88a8b01df5f34785b377ee670569ec2939fa57c00c3edd2cefc2ec16435bc886",
        "tokenizer/tokenizer_config.json": "cf58dec7a6fcdc71732b7953037011d097edf0a526f5c4be44686658fe1c1916",
    },
    "fim_raw-dense": {
        ".hfprep-output.json": "9c7efe3aeefeece1248f9358906854b39d916a20ff232d764366339c2f27b798",
        "README.md": "b8aae775d97cadd8c4c1a8f15cf90537315254a0a1cf1a25122b3c7c0c630e3e",
        "data/test-00000-of-00001.parquet": "8164e93677bdc6805deea3a487c42e2bee5e0189c1bd7396820e1f97bc4d87ba",
        "data/train-00000-of-00001.parquet": "5872ea62f4c30f910a7a97c3c99f19911d4d894032d405f2c7faafc8017a4755",
        "images/doc_lengths.png": "f00006fb56ab3f03057dd24b17b6fb831ad14d63792c645c8f43a530945af4e3",
        "tokenizer/tokenizer.json": "88a8b01df5f34785b377ee670569ec2939fa57c00c3edd2cefc2ec16435bc886",
        "tokenizer/tokenizer_config.json": "cf58dec7a6fcdc71732b7953037011d097edf0a526f5c4be44686658fe1c1916",
    },
    "fim_raw-no_incomplete": {
        ".hfprep-output.json": "65dc205fa84183c1e937a030f1cf94eac7514a9b650fae717ac7b5812418a025",
        "README.md": "c354aad67d698a672731cbb55b7c0f58f2e75ce23cca259038c317f6f2c35f01",
        "data/train-00000-of-00001.parquet": "a0adb076cafbe1cc77913904494b3f7d0ea7db3b7281fae9f679e00795e5b7fc",
        "images/doc_lengths.png": "ec94bd47b99a9c303eee530cfe96e9e6ea470f95cf44480f3d0e8c365f7ff1b6",
        "images/fill_per_row.png": "5ef9fa6fc6e2cdc39228695addd5332da5820f329592ba38ff02daceb2d2b5ea",
        "tokenizer/tokenizer.json": "88a8b01df5f34785b377ee670569ec2939fa57c00c3edd2cefc2ec16435bc886",
        "tokenizer/tokenizer_config.json": "cf58dec7a6fcdc71732b7953037011d097edf0a526f5c4be44686658fe1c1916",
    },
    "fim_raw-bfd": {
        ".hfprep-output.json": "d7c3b03a09f92ea48507031793343f939ee2141281c707d30ff1e677a501915e",
        "README.md": "c91b2604240871b4961ef11fc7831f1ae941782f66704066acb17d5ea13546e3",
        "data/test-00000-of-00001.parquet": "e30cf964d6582d5efba3ea5257349e30d2b6d8f4df76b29513edc01b46200d20",
        "data/train-00000-of-00001.parquet": "8e821deaac856d49cb07ef3b925abb69486861181102b8e738e2e287bba8476c",
        "images/doc_lengths.png": "f00006fb56ab3f03057dd24b17b6fb831ad14d63792c645c8f43a530945af4e3",
        "images/fill_per_row.png": "dd8c6834e78ac02021485d96b4ee4d4b7fe5431ed24a71ff958a93b84794632f",
        "tokenizer/tokenizer.json": "88a8b01df5f34785b377ee670569ec2939fa57c00c3edd2cefc2ec16435bc886",
        "tokenizer/tokenizer_config.json": "cf58dec7a6fcdc71732b7953037011d097edf0a526f5c4be44686658fe1c1916",
    },
    "fim-dense": {
        ".hfprep-output.json": "9c7efe3aeefeece1248f9358906854b39d916a20ff232d764366339c2f27b798",
        "README.md": "a2b95a241512ff3219d8403876aab28d506785d7cacf0729f7feec532f96563a",
        "data/test-00000-of-00001.parquet": "6cbb05181ce6f40b25039cdf04ca424a11b8a584a2ee2c05c6c417db9dc1bc33",
        "data/train-00000-of-00001.parquet": "001c6338ff0ddc9c99bd69895f8ed221b8f722ea90e6ddaf2e8157e89ba7b597",
        "images/doc_lengths.png": "5fa1224d341de8d9d686b0c4e1427348f87929844c255ec0009496b1d088507e",
        "tokenizer/tokenizer.json": "88a8b01df5f34785b377ee670569ec2939fa57c00c3edd2cefc2ec16435bc886",
        "tokenizer/tokenizer_config.json": "cf58dec7a6fcdc71732b7953037011d097edf0a526f5c4be44686658fe1c1916",
    },
    "fim-no_incomplete": {
        ".hfprep-output.json": "65dc205fa84183c1e937a030f1cf94eac7514a9b650fae717ac7b5812418a025",
        "README.md": "b8112a9e495e463b718cd651bbe2542361f4483fbd6e1f7ed69c0060552a332b",
        "data/train-00000-of-00001.parquet": "3e67f80de591ebcb4e31008542bde5eaabea9da366cfbedfe2108360df144132",
        "images/doc_lengths.png": "2db1ca03b9deb4c8547cb30c3ac626601c3905ce5d579c33a6edd2fd37da5dc8",
        "images/fill_per_row.png": "421e0ca01fc2589131bc2911bfa8eeee28c58d881739ecabf0f8f2dc0541d866",
        "tokenizer/tokenizer.json": "88a8b01df5f34785b377ee670569ec2939fa57c00c3edd2cefc2ec16435bc886",
        "tokenizer/tokenizer_config.json": "cf58dec7a6fcdc71732b7953037011d097edf0a526f5c4be44686658fe1c1916",
    },
    "fim-bfd": {
        ".hfprep-output.json": "d7c3b03a09f92ea48507031793343f939ee2141281c707d30ff1e677a501915e",
        "README.md": "502ae009b6b8bcee77a4748f22f92a742843f720e6c9257a6a92cdc9fda7e0f8",
        "data/test-00000-of-00001.parquet": "deb80defa109ec49c8260e260eade04050b8cb45416fbcbe6d4c110bd293cd69",
        "data/train-00000-of-00001.parquet": "9f7df66ceba530c8096a6c84e78745466d534146cc94ce3dcabcc8f518504013",
        "images/doc_lengths.png": "5fa1224d341de8d9d686b0c4e1427348f87929844c255ec0009496b1d088507e",
        "images/fill_per_row.png": "8548c825e2f6308cbfb1a5651391b9544e4289e09895f90fd4a90052091171ab",
        "tokenizer/tokenizer.json": "88a8b01df5f34785b377ee670569ec2939fa57c00c3edd2cefc2ec16435bc886",
        "tokenizer/tokenizer_config.json": "cf58dec7a6fcdc71732b7953037011d097edf0a526f5c4be44686658fe1c1916",
    },
    "sft-dense": {
        ".hfprep-output.json": "9c7efe3aeefeece1248f9358906854b39d916a20ff232d764366339c2f27b798",
        "README.md": "f7c5b90fc38a4bb6c6675a77c27dd99453d8d3028227d095df8a84c95a21c405",
        "data/test-00000-of-00001.parquet": "ec7393748431c3b45e19357585e3702625472c2236465b7ab5ca360f7cc01056",
        "data/train-00000-of-00001.parquet": "6ec903cf4dfb3e3d860181390cf20250ad6d67b7b4a3663215ee0592e788ab9b",
        "images/doc_lengths.png": "ac34966d54e87993aaa1df0d1955f0daf0df646d00000b57bf3fd5ff0e6ee14e",
        "tokenizer/tokenizer.json": "88a8b01df5f34785b377ee670569ec2939fa57c00c3edd2cefc2ec16435bc886",
        "tokenizer/tokenizer_config.json": "cf58dec7a6fcdc71732b7953037011d097edf0a526f5c4be44686658fe1c1916",
    },
    "sft-no_incomplete": {
        ".hfprep-output.json": "65dc205fa84183c1e937a030f1cf94eac7514a9b650fae717ac7b5812418a025",
        "README.md": "6f69d36a64cf0c9d9f1ff27275ed7c2fdf6e260cee75be1932d2e8ff4950fc6d",
        "data/train-00000-of-00001.parquet": "2d3e1f5596a696c432e87046bd37a99340170733cc8d784f4df1d766d2cffb72",
        "images/doc_lengths.png": "05214be7ebbea2aec3f0011d5311a8eedd7ffb9f8ef51dfacde459990f04342e",
        "images/fill_per_row.png": "bd04a0fdbd6a9d6f1f46e1d8096a5a3d2d76cccc84ec012ed32994004071363c",
        "tokenizer/tokenizer.json": "88a8b01df5f34785b377ee670569ec2939fa57c00c3edd2cefc2ec16435bc886",
        "tokenizer/tokenizer_config.json": "cf58dec7a6fcdc71732b7953037011d097edf0a526f5c4be44686658fe1c1916",
    },
    "sft-bfd": {
        ".hfprep-output.json": "d7c3b03a09f92ea48507031793343f939ee2141281c707d30ff1e677a501915e",
        "README.md": "6728e00903e919cbe370734c3c4fb067dd0aaed36ec51d4a414de7872ac5b0e8",
        "data/test-00000-of-00001.parquet": "a675027bd94c82fba436cc7f0b76185f72eae68a817a5ab0f65511752e21d65d",
        "data/train-00000-of-00001.parquet": "9fed5a97ef950be6e6437d3f142fe1ae1c10c66d314ba6067b30f97521b22bb4",
        "images/doc_lengths.png": "ac34966d54e87993aaa1df0d1955f0daf0df646d00000b57bf3fd5ff0e6ee14e",
        "images/fill_per_row.png": "539d5e94906eb5d6fee9acd6239349c0d9bbf95fdd0b525e99a1acafb6c780a9",
        "tokenizer/tokenizer.json": "88a8b01df5f34785b377ee670569ec2939fa57c00c3edd2cefc2ec16435bc886",
        "tokenizer/tokenizer_config.json": "cf58dec7a6fcdc71732b7953037011d097edf0a526f5c4be44686658fe1c1916",
    },
    "pretrain-bfd_truncate": {
        ".hfprep-output.json": "d7c3b03a09f92ea48507031793343f939ee2141281c707d30ff1e677a501915e",
        "README.md": "9809419f8d1c1ca7b429da579d8e08f5e9636f5af471f2cfb390e3ead537b81b",
        "data/test-00000-of-00001.parquet": "067eb4ea54f43485a843e18a5be10b18fb3283279aee36fbe5e14efb69320598",
        "data/train-00000-of-00001.parquet": "f2a63564eeccd37b72877efb01390f68d30eb7f6648b037b0ffc64415e6c236c",
        "images/doc_lengths.png": "a20e0b70d69055fdc6854782560db6e558b58d64ee5a74df67f8471f8523756a",
        "images/fill_per_row.png": "249c8dc456b6b12e5035de89ab96ef2b2fa5ab19b5e2b75c9c2dcd2ec37c35d6",
        "tokenizer/tokenizer.json": "88a8b01df5f34785b377ee670569ec2939fa57c00c3edd2cefc2ec16435bc886",
        "tokenizer/tokenizer_config.json": "cf58dec7a6fcdc71732b7953037011d097edf0a526f5c4be44686658fe1c1916",
    },
    "pretrain-bfd_drop": {
        ".hfprep-output.json": "65dc205fa84183c1e937a030f1cf94eac7514a9b650fae717ac7b5812418a025",
        "README.md": "1d90e75f16e568f7ed7dc6c5a9f17d02ce8b0d17426e754d52b66ae920c65661",
        "data/train-00000-of-00001.parquet": "6717038c1d6349a192c697a0133600744624cfdbce2847f9ccc9c8bc641a1604",
        "images/doc_lengths.png": "94caeffbd5afd6b5f2a3b2d56ab9c47ca040ec91524cf39de33b8e81d5c33c5b",
        "images/fill_per_row.png": "8f333bc9ee287963eca16f2325a7b4a6c4c333c9b2050a140cb11f19fab9a69d",
        "tokenizer/tokenizer.json": "88a8b01df5f34785b377ee670569ec2939fa57c00c3edd2cefc2ec16435bc886",
        "tokenizer/tokenizer_config.json": "cf58dec7a6fcdc71732b7953037011d097edf0a526f5c4be44686658fe1c1916",
    },
    "pretrain-bfd_nopad": {
        ".hfprep-output.json": "d7c3b03a09f92ea48507031793343f939ee2141281c707d30ff1e677a501915e",
        "README.md": "4264a32a9c5e8dac5ead8176cf99a3689905f234b3273280127964dfdd511679",
        "data/test-00000-of-00001.parquet": "73b72ef9c0efb6076b0e7c8d809369ad63957c89a6a3521670d3d5d8738a3915",
        "data/train-00000-of-00001.parquet": "bc2edc5787023608a69b841b24f138bd84869d260ad084d1198f0043271a3a47",
        "images/doc_lengths.png": "a20e0b70d69055fdc6854782560db6e558b58d64ee5a74df67f8471f8523756a",
        "images/fill_per_row.png": "e8d4d0531fad6c1cb8f381e8d7c7c1299e8c0522b4e20e8e67c1772b2249ea8a",
        "tokenizer/tokenizer.json": "88a8b01df5f34785b377ee670569ec2939fa57c00c3edd2cefc2ec16435bc886",
        "tokenizer/tokenizer_config.json": "cf58dec7a6fcdc71732b7953037011d097edf0a526f5c4be44686658fe1c1916",
    },
}


if __name__ == "__main__":
    # `python tests/test_golden.py`: print this environment's table (re-recording: docs/development.md).
    import pprint
    import sys
    import tempfile

    try:
        require_recorded_env(_env(), ci=True)
    except pytest.fail.Exception as e:
        sys.exit(str(e))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "q").mkdir()
        (Path(tmp) / "c").mkdir()
        table = {"quickstart": run_quickstart(Path(tmp) / "q"), **run_cases(Path(tmp) / "c")}
    changed = sorted(f"{case}/{f}" for case, files in table.items() for f, h in files.items()
                     if GOLDEN.get(case, {}).get(f) != h)
    changed += sorted(f"{case}/{f} (gone)" for case, files in GOLDEN.items() for f in files if f not in table.get(case, {}))
    print("changed:", changed or "nothing")
    print("GOLDEN: dict[str, dict[str, str]] = " + pprint.pformat(table, width=120, sort_dicts=False))
