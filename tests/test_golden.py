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
        ".hfprep-output.json": "bf4d08643abf42b5d75e710bb0da441a06486b04dbfd80b1f25978193776e17a",
        "README.md": "ca89b1059c58c7e9ba774c28b89fefa89649fb8f55b474dae6118adf0d7c7a77",
        "data/test-00000-of-00001.parquet": "d4f02f2eff785256b82c85bb90e1ffb1f1ae165251a71351a3fb8a3037367df0",
        "data/train-00000-of-00001.parquet": "62430fe42d25283fe87eae3525fb131a6daa95862ff5fcaa741e30178a231f8f",
        "images/doc_lengths.png": "8954ada6c8df1bb84810ac608d811509d49befb79b1afeeadcaf4ec7f58f03cf",
        "recipe.yaml": "45b21b4a38f734a87508a6499c829c55088de546555a8745e63b72c41208d52e",
        "tokenizer/tokenizer.json": "1d45ba5f25dde6aa3f37b2343bcd21183c1ae6b47e978d6ea19bccf095350838",
        "tokenizer/tokenizer_config.json": "cf58dec7a6fcdc71732b7953037011d097edf0a526f5c4be44686658fe1c1916",
    },
    "pretrain-dense": {
        ".hfprep-output.json": "bf4d08643abf42b5d75e710bb0da441a06486b04dbfd80b1f25978193776e17a",
        "README.md": "b19caddd48e42197b8f9fd021b1e93ec744f5fb46b5e63ca836069ec5a796f4b",
        "data/test-00000-of-00001.parquet": "2fc2042cdd5e0abc1c1a5208cae40ce8f5ec6e6d6ec3f9efff94b5f99436f415",
        "data/train-00000-of-00001.parquet": "e1df731ba7f94679688e59fe91c3f390ba8b752fccaa301279c53b2a8cd8dddf",
        "images/doc_lengths.png": "a20e0b70d69055fdc6854782560db6e558b58d64ee5a74df67f8471f8523756a",
        "recipe.yaml": "9e4b0a88d86ce595f16ab48c88e6a7e159e3de683a5b15e59ca0acbc2a441bbd",
        "tokenizer/tokenizer.json": "88a8b01df5f34785b377ee670569ec2939fa57c00c3edd2cefc2ec16435bc886",
        "tokenizer/tokenizer_config.json": "cf58dec7a6fcdc71732b7953037011d097edf0a526f5c4be44686658fe1c1916",
    },
    "pretrain-no_incomplete": {
        ".hfprep-output.json": "d2f21824ad1dec320ca7257111ce4b9e0e581009b1c67ff792113949f4893b90",
        "README.md": "aa8924dd538d58015b8aa310f1f546ee15920ae337216ff4296b61df8fdb8eac",
        "data/train-00000-of-00001.parquet": "851649af991abda97dca00cdc5134e939d269b2230bd875fba34524223f3669e",
        "images/doc_lengths.png": "94caeffbd5afd6b5f2a3b2d56ab9c47ca040ec91524cf39de33b8e81d5c33c5b",
        "images/fill_per_row.png": "5cbadd574edc1d465e37b96be163300be3bb2802872990cf402253df7cce21d1",
        "recipe.yaml": "4bb5328b894c86975f3fa415727ef66ab0bcdb5fd3e01bec486c241e4553528b",
        "tokenizer/tokenizer.json": "88a8b01df5f34785b377ee670569ec2939fa57c00c3edd2cefc2ec16435bc886",
        "tokenizer/tokenizer_config.json": "cf58dec7a6fcdc71732b7953037011d097edf0a526f5c4be44686658fe1c1916",
    },
    "pretrain-bfd": {
        ".hfprep-output.json": "c6a95cda86d8d7ab36384e496f0a2214b70f8f531710d97993d1bc4651e9edd1",
        "README.md": "c4eb07eeacb532e0cb629000067760c948ae6e081d18378f1cd8410617d159d8",
        "data/test-00000-of-00001.parquet": "2d94ff546736474449e4a9a9f4dc42e00cba0b6576899d737b71f3a6acb6ba29",
        "data/train-00000-of-00001.parquet": "b15515cca137575106de3ac36652c3280de162009d2eb597e7bd5aed7353562f",
        "images/doc_lengths.png": "a20e0b70d69055fdc6854782560db6e558b58d64ee5a74df67f8471f8523756a",
        "images/fill_per_row.png": "69fe71bf4edc78339b1468ce8d5b44dcf299450118caede06f254f0439180057",
        "recipe.yaml": "1897d66a4adbf11025aa23242ae070c5ad7fcc7e2c9a378fa3594ef1ed762234",
        "tokenizer/tokenizer.json": "88a8b01df5f34785b377ee670569ec2939fa57c00c3edd2cefc2ec16435bc886",
        "tokenizer/tokenizer_config.json": "cf58dec7a6fcdc71732b7953037011d097edf0a526f5c4be44686658fe1c1916",
    },
    "fim_raw-dense": {
        ".hfprep-output.json": "bf4d08643abf42b5d75e710bb0da441a06486b04dbfd80b1f25978193776e17a",
        "README.md": "6aa7f0a66e58d8d38dd5114502ac503760009250d4fb9383a69afa2f82601e6f",
        "data/test-00000-of-00001.parquet": "c48e8f8373123bc67fc60c6667a8e758c253fbdd6bc4ed4db0357ffc85adc378",
        "data/train-00000-of-00001.parquet": "73acb5a8d09104ed23d99fcd126326a51c8dfbff5143446bcc52285b6a7b68b2",
        "images/doc_lengths.png": "f00006fb56ab3f03057dd24b17b6fb831ad14d63792c645c8f43a530945af4e3",
        "recipe.yaml": "08994059861d1763a27a00b82fd639a1b8a9bb826198c8baa834189911ee07c7",
        "tokenizer/tokenizer.json": "88a8b01df5f34785b377ee670569ec2939fa57c00c3edd2cefc2ec16435bc886",
        "tokenizer/tokenizer_config.json": "cf58dec7a6fcdc71732b7953037011d097edf0a526f5c4be44686658fe1c1916",
    },
    "fim_raw-no_incomplete": {
        ".hfprep-output.json": "d2f21824ad1dec320ca7257111ce4b9e0e581009b1c67ff792113949f4893b90",
        "README.md": "c4c0b2fd636e19478d4f7992db521adcd0e66da7547ba263c6beebeae4e911d4",
        "data/train-00000-of-00001.parquet": "88a5931c6ab6cb6609ecfb54060a0ba3437079c35117d6e9a621ee12d254f667",
        "images/doc_lengths.png": "ec94bd47b99a9c303eee530cfe96e9e6ea470f95cf44480f3d0e8c365f7ff1b6",
        "images/fill_per_row.png": "5ef9fa6fc6e2cdc39228695addd5332da5820f329592ba38ff02daceb2d2b5ea",
        "recipe.yaml": "a153ff2dd4bb8b3e7e3e5408f62c7db70752dfcb6631ea35b87cefc762439ef2",
        "tokenizer/tokenizer.json": "88a8b01df5f34785b377ee670569ec2939fa57c00c3edd2cefc2ec16435bc886",
        "tokenizer/tokenizer_config.json": "cf58dec7a6fcdc71732b7953037011d097edf0a526f5c4be44686658fe1c1916",
    },
    "fim_raw-bfd": {
        ".hfprep-output.json": "c6a95cda86d8d7ab36384e496f0a2214b70f8f531710d97993d1bc4651e9edd1",
        "README.md": "e351e9da32b11f5f8a23ca822655dec78b0e9d23ea11590d1248824c20f064d6",
        "data/test-00000-of-00001.parquet": "26e1221fa9b38b25285e67dd1b9f996dc5d5637ee4f4e4f9382d25b178c975c3",
        "data/train-00000-of-00001.parquet": "51e73861420f6e2e9e8bb7c5da1a12611ecdd686ce67820de615ac998223ec32",
        "images/doc_lengths.png": "f00006fb56ab3f03057dd24b17b6fb831ad14d63792c645c8f43a530945af4e3",
        "images/fill_per_row.png": "dd8c6834e78ac02021485d96b4ee4d4b7fe5431ed24a71ff958a93b84794632f",
        "recipe.yaml": "f3c12e7e548b8aa05674d6850f38f2709960e333447b013ebcdcfc9ce6e19e2d",
        "tokenizer/tokenizer.json": "88a8b01df5f34785b377ee670569ec2939fa57c00c3edd2cefc2ec16435bc886",
        "tokenizer/tokenizer_config.json": "cf58dec7a6fcdc71732b7953037011d097edf0a526f5c4be44686658fe1c1916",
    },
    "fim-dense": {
        ".hfprep-output.json": "bf4d08643abf42b5d75e710bb0da441a06486b04dbfd80b1f25978193776e17a",
        "README.md": "0e30897f500b7b5143381ffa39ae8b0135e104350aebc4276c35d17f23f733b3",
        "data/test-00000-of-00001.parquet": "5f2b44e9f5e83c9c17585c134c2caaf6eae6013ec31bfb306e3f25df9ad5c624",
        "data/train-00000-of-00001.parquet": "621d85f48def7773276bb431a06db60859a3f481c2e6f50f6130b6e34e734807",
        "images/doc_lengths.png": "5fa1224d341de8d9d686b0c4e1427348f87929844c255ec0009496b1d088507e",
        "recipe.yaml": "507da612e2ddd547073da4b93ee301c3d9d1410794fd19cd240e5139cd66130a",
        "tokenizer/tokenizer.json": "88a8b01df5f34785b377ee670569ec2939fa57c00c3edd2cefc2ec16435bc886",
        "tokenizer/tokenizer_config.json": "cf58dec7a6fcdc71732b7953037011d097edf0a526f5c4be44686658fe1c1916",
    },
    "fim-no_incomplete": {
        ".hfprep-output.json": "d2f21824ad1dec320ca7257111ce4b9e0e581009b1c67ff792113949f4893b90",
        "README.md": "e01f447ed2319a153c4b16608b0e6d47160d51dc4b6df2b7ceea9315e6e03343",
        "data/train-00000-of-00001.parquet": "05d56b3470a0abc5fb68367e0b1d340c754b1424b2f6d411652ce52c67049b72",
        "images/doc_lengths.png": "2db1ca03b9deb4c8547cb30c3ac626601c3905ce5d579c33a6edd2fd37da5dc8",
        "images/fill_per_row.png": "421e0ca01fc2589131bc2911bfa8eeee28c58d881739ecabf0f8f2dc0541d866",
        "recipe.yaml": "231c3d293d6d99815e858508042cd4a9becf157d60f951dd21e068112f54b5d1",
        "tokenizer/tokenizer.json": "88a8b01df5f34785b377ee670569ec2939fa57c00c3edd2cefc2ec16435bc886",
        "tokenizer/tokenizer_config.json": "cf58dec7a6fcdc71732b7953037011d097edf0a526f5c4be44686658fe1c1916",
    },
    "fim-bfd": {
        ".hfprep-output.json": "c6a95cda86d8d7ab36384e496f0a2214b70f8f531710d97993d1bc4651e9edd1",
        "README.md": "c75def84963a883627440b9e38f35f2e71ac27d0d4348d4a399b7c0591aaa08c",
        "data/test-00000-of-00001.parquet": "96d99418cafee6ffea504d092a14e7c6f28105126001fa0597aea10187734086",
        "data/train-00000-of-00001.parquet": "0fdae0f22fdd02aebe3d557b5121c82a1c98072d138c644580a91b4985f0b3ec",
        "images/doc_lengths.png": "5fa1224d341de8d9d686b0c4e1427348f87929844c255ec0009496b1d088507e",
        "images/fill_per_row.png": "8548c825e2f6308cbfb1a5651391b9544e4289e09895f90fd4a90052091171ab",
        "recipe.yaml": "fb8ec350cd942870f0954ad4fa002fd833b40fd4546cb42ce1df2ca9a11853b3",
        "tokenizer/tokenizer.json": "88a8b01df5f34785b377ee670569ec2939fa57c00c3edd2cefc2ec16435bc886",
        "tokenizer/tokenizer_config.json": "cf58dec7a6fcdc71732b7953037011d097edf0a526f5c4be44686658fe1c1916",
    },
    "sft-dense": {
        ".hfprep-output.json": "bf4d08643abf42b5d75e710bb0da441a06486b04dbfd80b1f25978193776e17a",
        "README.md": "8cbc89db30add84425eb55319d02b0ddc8f0ef97d454e5392a7fc0dde6df8161",
        "data/test-00000-of-00001.parquet": "815b46abf459be12f2a03b49bf4c6ef4201c39e07faa4e6a75f0854a2bbfb005",
        "data/train-00000-of-00001.parquet": "4b6730eaa4371259925c7e7211587da967e4e30c76f4aad42062c580302f75db",
        "images/doc_lengths.png": "ac34966d54e87993aaa1df0d1955f0daf0df646d00000b57bf3fd5ff0e6ee14e",
        "recipe.yaml": "66b5b841d401612ef8fbf291c624bfe28c178b523ec530d269663a33d0eb37d8",
        "tokenizer/tokenizer.json": "88a8b01df5f34785b377ee670569ec2939fa57c00c3edd2cefc2ec16435bc886",
        "tokenizer/tokenizer_config.json": "cf58dec7a6fcdc71732b7953037011d097edf0a526f5c4be44686658fe1c1916",
    },
    "sft-no_incomplete": {
        ".hfprep-output.json": "d2f21824ad1dec320ca7257111ce4b9e0e581009b1c67ff792113949f4893b90",
        "README.md": "e7d16cca2dbae391ddc7613eca9e9cb421d3be0fd3bbef049d5ae07b9bade888",
        "data/train-00000-of-00001.parquet": "25104ccba38c53dab1bfbe0465405ccf011d7823bcb6a9ae55db2ef94457549d",
        "images/doc_lengths.png": "05214be7ebbea2aec3f0011d5311a8eedd7ffb9f8ef51dfacde459990f04342e",
        "images/fill_per_row.png": "bd04a0fdbd6a9d6f1f46e1d8096a5a3d2d76cccc84ec012ed32994004071363c",
        "recipe.yaml": "8ed30fe59f570be282d3efef16cb840d73201018fb4e1676035bf9bf61c6c655",
        "tokenizer/tokenizer.json": "88a8b01df5f34785b377ee670569ec2939fa57c00c3edd2cefc2ec16435bc886",
        "tokenizer/tokenizer_config.json": "cf58dec7a6fcdc71732b7953037011d097edf0a526f5c4be44686658fe1c1916",
    },
    "sft-bfd": {
        ".hfprep-output.json": "c6a95cda86d8d7ab36384e496f0a2214b70f8f531710d97993d1bc4651e9edd1",
        "README.md": "94be9bbf4984403b6640d63fe3cea32df3b38cca6fc9fdb95dc8bc904f360b14",
        "data/test-00000-of-00001.parquet": "aca8afbd874b1916d952405eb7823bf20258d428b90a1acb44aec90f613cd420",
        "data/train-00000-of-00001.parquet": "1565db2aa259d8e054ee2d20f0006cfb04c8ca62e577400963b83316aee1df4c",
        "images/doc_lengths.png": "ac34966d54e87993aaa1df0d1955f0daf0df646d00000b57bf3fd5ff0e6ee14e",
        "images/fill_per_row.png": "539d5e94906eb5d6fee9acd6239349c0d9bbf95fdd0b525e99a1acafb6c780a9",
        "recipe.yaml": "5fc6a8dd4117438bc484c42ab28b3c4b5233459708ae5d252d65fa45d31359c0",
        "tokenizer/tokenizer.json": "88a8b01df5f34785b377ee670569ec2939fa57c00c3edd2cefc2ec16435bc886",
        "tokenizer/tokenizer_config.json": "cf58dec7a6fcdc71732b7953037011d097edf0a526f5c4be44686658fe1c1916",
    },
    "pretrain-bfd_truncate": {
        ".hfprep-output.json": "c6a95cda86d8d7ab36384e496f0a2214b70f8f531710d97993d1bc4651e9edd1",
        "README.md": "9c644df7f11fda1bb8b5cbb20cf8b89d24af0b9c278b2b5cae76f55b9094d8b7",
        "data/test-00000-of-00001.parquet": "05cf4c98269306c7f68de92f943c79147b5f3b195a8f002169526a6e47f18cf3",
        "data/train-00000-of-00001.parquet": "452b9a73e08691e21119b91c4f9f38d14a8e517f00572345bfbe33054df70d60",
        "images/doc_lengths.png": "a20e0b70d69055fdc6854782560db6e558b58d64ee5a74df67f8471f8523756a",
        "images/fill_per_row.png": "249c8dc456b6b12e5035de89ab96ef2b2fa5ab19b5e2b75c9c2dcd2ec37c35d6",
        "recipe.yaml": "73e6dc3e030d78bbb8f283ee31822e148e1c839ea4e3289c88f456b3e23a2103",
        "tokenizer/tokenizer.json": "88a8b01df5f34785b377ee670569ec2939fa57c00c3edd2cefc2ec16435bc886",
        "tokenizer/tokenizer_config.json": "cf58dec7a6fcdc71732b7953037011d097edf0a526f5c4be44686658fe1c1916",
    },
    "pretrain-bfd_drop": {
        ".hfprep-output.json": "d2f21824ad1dec320ca7257111ce4b9e0e581009b1c67ff792113949f4893b90",
        "README.md": "39547575c92f472ca52f6f68593752a765a47b0b5f666ffb6102710ab2c5d2be",
        "data/train-00000-of-00001.parquet": "270665dace4d0579523fdaec037f42c1f98dc17562e52510721707e9ba3166b2",
        "images/doc_lengths.png": "94caeffbd5afd6b5f2a3b2d56ab9c47ca040ec91524cf39de33b8e81d5c33c5b",
        "images/fill_per_row.png": "8f333bc9ee287963eca16f2325a7b4a6c4c333c9b2050a140cb11f19fab9a69d",
        "recipe.yaml": "cd4ef3e4516100d65eb58bc047e99a7210b29816b60ec84a22136eb993903541",
        "tokenizer/tokenizer.json": "88a8b01df5f34785b377ee670569ec2939fa57c00c3edd2cefc2ec16435bc886",
        "tokenizer/tokenizer_config.json": "cf58dec7a6fcdc71732b7953037011d097edf0a526f5c4be44686658fe1c1916",
    },
    "pretrain-bfd_nopad": {
        ".hfprep-output.json": "c6a95cda86d8d7ab36384e496f0a2214b70f8f531710d97993d1bc4651e9edd1",
        "README.md": "eb1b9ff5fe1c4c450ff618b8e741b88115c574696319af16c3c9512ffdb919d5",
        "data/test-00000-of-00001.parquet": "f9c51965b1f92d212cd5734437a5c59d3ada45de128fc616e9c0e8bb98ea9acd",
        "data/train-00000-of-00001.parquet": "d9d0cc54357c5303eb6d76eb677075573360ab613f7e1bbdb0cb784dd0cd5313",
        "images/doc_lengths.png": "a20e0b70d69055fdc6854782560db6e558b58d64ee5a74df67f8471f8523756a",
        "images/fill_per_row.png": "e8d4d0531fad6c1cb8f381e8d7c7c1299e8c0522b4e20e8e67c1772b2249ea8a",
        "recipe.yaml": "2aecf02afc1a3f6742cd10b64055d3cfc2535865201c1879c47c2749f8b8cf5b",
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
