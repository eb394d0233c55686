"""``hfprep repack``: a prepared dataset's documents config packed again, without tokenizer or source.

The reference is a fresh ``hfprep run`` of the same recipe with the new packing: the data shards must be the same
bytes, for every packer and two row lengths, from a local folder and from a Hub repo, after a kill and a re-run,
and in a memory budget smaller than the source.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from hfprep.commands import prepared as prepared_module
from hfprep.commands.repack import repack
from hfprep.errors import ConfigError, DataError
from hfprep.output.card import read_card_metadata
from hfprep.output.hub import push_folder
from hfprep.output.validate import validate_folder
from hfprep.run import run_recipe

sys.path.insert(0, str(Path(__file__).parent))
from prepared_sources import file_bytes, run_killed, write_recipe, write_texts
from test_push import WRITE_TOKEN, hub, hub_in_process  # noqa: F401 - fixtures, used through local_hub


@pytest.fixture
def local_hub(hub_in_process):  # noqa: F811 - test_push's fixture: the test Hub, this process pointed at it
    return hub_in_process

PACKINGS = {
    "dense": {"strategy": "dense"},
    "no_incomplete": {"strategy": "no_incomplete"},
    "bfd": {"strategy": "bfd"},
    "bfd_nopad": {"strategy": "bfd", "packing_kwargs": {"pad": False}},
}
SEQ_LENS = (64, 300)
SOURCE = {"seq_len": 128, "strategy": "dense", "num_reduce_chunks": 4}


@pytest.fixture(scope="module")
def source(tmp_path_factory, tokenizer_path):
    """A prepared folder (dense 128, 4 keys, a held-out split) with the documents config in several shards."""
    root = tmp_path_factory.mktemp("repack")
    write_texts(root / "docs.jsonl", 150, seed=11)
    run_recipe(write_recipe(root, tokenizer_path, packing=SOURCE, splits={"heldout_fraction": 0.2}))
    return root


def fresh_run(root: Path, tokenizer_path: str, name: str, seq_len: int, packing: dict) -> Path:
    """The reference: ``hfprep run`` of the source's recipe with the new packing (same source, tokenizer, keys)."""
    run_recipe(write_recipe(root, tokenizer_path, out=name, packing={**SOURCE, "seq_len": seq_len, **packing},
                            splits={"heldout_fraction": 0.2}))
    return root / name


@pytest.mark.parametrize("seq_len", SEQ_LENS)
@pytest.mark.parametrize("packing", list(PACKINGS))
def test_repack_equals_a_fresh_run_byte_for_byte(source, tokenizer_path, packing, seq_len):
    spec = PACKINGS[packing]
    fresh = fresh_run(source, tokenizer_path, f"fresh-{packing}-{seq_len}", seq_len, spec)
    out = source / f"repacked-{packing}-{seq_len}"
    # A small memory budget: batches of a few rows, groups spanning batches and shards.
    summary = repack(source / "out", out, seq_len=seq_len, strategy=spec["strategy"],
                     packing_kwargs=spec.get("packing_kwargs"), memory_budget=400_000)
    assert file_bytes(out, "data") == file_bytes(fresh, "data")
    assert file_bytes(out, "documents") == file_bytes(fresh, "documents") == file_bytes(source / "out", "documents")
    assert summary["peak_document_bytes"] <= 400_000
    report = validate_folder(out)
    assert report.ok, report.violations
    meta, fresh_meta = read_card_metadata(out / "README.md"), read_card_metadata(fresh / "README.md")
    assert meta["hfprep"]["stats"] == fresh_meta["hfprep"]["stats"]
    assert (meta["hfprep"]["seq_len"], meta["hfprep"]["packing"]) == (seq_len, spec["strategy"])
    assert meta["hfprep"]["repacked_from"]["source"] == "a local folder"  # a path would not travel with the card
    assert meta["hfprep"]["repacked_from"]["revision"].startswith("card sha256:")
    assert meta["configs"] == fresh_meta["configs"]


def test_repack_of_a_repack_needs_only_the_repack(source, tokenizer_path, tmp_path):
    first = tmp_path / "first"
    repack(source / "out", first, seq_len=300, strategy="bfd")
    shutil.copytree(first, tmp_path / "moved")  # nothing of the original source is needed any more
    repack(tmp_path / "moved", tmp_path / "second", seq_len=64, strategy="no_incomplete")
    fresh = fresh_run(source, tokenizer_path, "fresh-chain", 64, PACKINGS["no_incomplete"])
    assert file_bytes(tmp_path / "second", "data") == file_bytes(fresh, "data")


def mixture_recipe(root: Path, tokenizer_path: str, out: str, packing: dict) -> Path:
    sources = [{"name": "long", "files": ["a.jsonl"], "weight": 0.7}, {"name": "short", "files": ["b.jsonl"], "weight": 0.3}]
    recipe = write_recipe(root, tokenizer_path, out=out, packing={**SOURCE, **packing}, sources=sources, max_epochs=3,
                          source_column=True, splits={"heldout_fraction": 0.1})
    data = yaml.safe_load(recipe.read_text())
    del data["source"]
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    return recipe


@pytest.mark.parametrize("packing", ["dense", "bfd"])
def test_repack_of_a_mixture_equals_a_fresh_run(tmp_path, tokenizer_path, packing):
    write_texts(tmp_path / "a.jsonl", 40, seed=13)
    write_texts(tmp_path / "b.jsonl", 40, seed=14, hi=60)
    run_recipe(mixture_recipe(tmp_path, tokenizer_path, "source", {}))
    run_recipe(mixture_recipe(tmp_path, tokenizer_path, "fresh", {"seq_len": 300, **PACKINGS[packing]}))
    out = tmp_path / "repacked"
    repack(tmp_path / "source", out, seq_len=300, **({"strategy": "bfd"} if packing == "bfd" else {}))
    assert file_bytes(out, "data") == file_bytes(tmp_path / "fresh", "data")  # the `source` column included
    meta, fresh = read_card_metadata(out / "README.md"), read_card_metadata(tmp_path / "fresh" / "README.md")
    assert meta["hfprep"]["mixture"] == fresh["hfprep"]["mixture"] and meta["hfprep"]["stats"] == fresh["hfprep"]["stats"]
    assert (out / "images" / "mixture_shares.png").read_bytes() == (tmp_path / "fresh" / "images" / "mixture_shares.png").read_bytes()
    report = validate_folder(out)
    assert report.ok, report.violations


def test_repack_refuses_what_it_cannot_reproduce(source, tmp_path, tokenizer_path):
    src = source / "out"
    with pytest.raises(ConfigError, match=r"--num-reduce-chunks 8: a repack keeps the source's 4 keys"):
        repack(src, tmp_path / "a", seq_len=64, num_reduce_chunks=8)
    with pytest.raises(ConfigError, match=r"--seq-len: Input should be greater than or equal to 2"):
        repack(src, tmp_path / "a", seq_len=1)
    with pytest.raises(ConfigError, match=r"--packing-kwargs \{\"overflow\": \"split\"\}: .*packer 'dense'"):
        repack(src, tmp_path / "a", seq_len=64, packing_kwargs={"overflow": "split"})
    with pytest.raises(ConfigError, match=r"the memory budget; raise it \(--memory-budget \d+\)"):
        repack(src, tmp_path / "a", seq_len=64, memory_budget=20_000)
    write_texts(tmp_path / "docs.jsonl", 10, seed=3)
    run_recipe(write_recipe(tmp_path, tokenizer_path, out="plain", output={"documents": False}))
    with pytest.raises(DataError, match=r"no documents config .* re-run its recipe with output.documents: true"):
        repack(tmp_path / "plain", tmp_path / "a", seq_len=64)
    assert not (tmp_path / "a").exists() and not (tmp_path / ".a.partial").exists()


def test_repack_from_the_hub_at_a_revision(source, local_hub, tmp_path):
    server = local_hub
    push_folder(source / "out", "user/src", token=WRITE_TOKEN)
    sha = server.repos[("dataset", "user/src")].resolve("main").oid
    local = tmp_path / "local"
    repack(source / "out", local, seq_len=300, strategy="bfd")
    out = tmp_path / "from-hub"
    repack("user/src", out, seq_len=300, strategy="bfd", revision=sha, token=WRITE_TOKEN)
    assert file_bytes(out, "data") == file_bytes(local, "data")
    assert file_bytes(out, "documents") == file_bytes(local, "documents")
    meta = read_card_metadata(out / "README.md")
    assert meta["hfprep"]["repacked_from"] == {"source": "user/src", "revision": sha}
    assert (out / "tokenizer" / "tokenizer.json").read_bytes() == (source / "out" / "tokenizer" / "tokenizer.json").read_bytes()
    assert validate_folder(out).ok
    assert not list(tmp_path.glob(".*.partial"))


def test_killed_repack_from_the_hub_resumes_with_the_same_bytes(source, local_hub, tmp_path, monkeypatch):
    server = local_hub
    push_folder(source / "out", "user/resume", token=WRITE_TOKEN)
    reference = tmp_path / "reference"
    repack(source / "out", reference, seq_len=64, strategy="no_incomplete")
    out = tmp_path / "out"
    env = server.client_env(dict(os.environ), WRITE_TOKEN, str(tmp_path / "hf_home"))
    run_killed("repack", "repack", "user/resume", out, {"seq_len": 64, "strategy": "no_incomplete"}, 3, env,
               WRITE_TOKEN)
    staging = tmp_path / ".out.partial"
    manifest = json.loads((staging / "manifest.json").read_text())
    assert [r["shard"] for r in manifest["done"]["train"]] == [0, 1, 2]
    assert not out.exists()

    fetched = []
    fetch = prepared_module.PreparedDataset.fetch
    monkeypatch.setattr(prepared_module.PreparedDataset, "fetch",
                        lambda self, rel, into: fetched.append(rel) or fetch(self, rel, into))
    summary = repack("user/resume", out, seq_len=64, strategy="no_incomplete", token=WRITE_TOKEN)
    assert summary["resumed"]
    train = [r for r in fetched if "train-" in r]
    assert len(train) == len([p for p in (source / "out" / "documents").iterdir() if p.name.startswith("train-")]) - 3
    assert file_bytes(out, "data") == file_bytes(reference, "data")
    assert file_bytes(out, "documents") == file_bytes(reference, "documents")
    assert not staging.exists()


MEASURE = textwrap.dedent(
    """
    import json, sys, tracemalloc
    import pyarrow as pa
    from hfprep.commands.{module} import {function}

    cfg = json.loads(sys.argv[1])
    tracemalloc.start()
    summary = {function}(cfg["src"], cfg["out"], **cfg["kwargs"])
    python_peak = tracemalloc.get_traced_memory()[1]
    print("RESULT " + json.dumps({{"python": python_peak, "arrow": pa.default_memory_pool().max_memory(),
                                  "summary": summary}}))
    """
)


def measure(module: str, function: str, src: Path, out: Path, kwargs: dict) -> dict:
    """Run a command in a fresh process; its peak memory: Python + numpy (tracemalloc) and Arrow's pool."""
    code = MEASURE.format(module=module, function=function)
    cfg = {"src": str(src), "out": str(out), "kwargs": kwargs}
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(cfg)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))[7:])


BIG_OUTPUT = {"max_rows_per_shard": 500, "row_group_rows": 50, "plots": False}  # plots: a fixed ~25 MB of matplotlib


@pytest.fixture(scope="module")
def big_source(tmp_path_factory, tokenizer_path):
    """A source whose documents take ~50 MB in memory (9 bytes per token while packed), in 32 keys."""
    root = tmp_path_factory.mktemp("big")
    write_texts(root / "docs.jsonl", 4000, seed=12, lo=200, hi=1400)
    run_recipe(write_recipe(root, tokenizer_path, packing={"seq_len": 512, "num_reduce_chunks": 32}, output=BIG_OUTPUT))
    meta = read_card_metadata(root / "out" / "README.md")
    return root, int(meta["hfprep"]["stats"]["train"]["tokens_in"]) * 9


BUDGET = 2 * 2**20


def test_repack_holds_one_group_in_a_budget_smaller_than_the_source(big_source, tokenizer_path):
    root, source_bytes = big_source
    assert source_bytes > 16 * BUDGET  # the premise: the source does not fit the budget
    got = measure("repack", "repack", root / "out", root / "repacked", {"seq_len": 256, "memory_budget": BUDGET})
    assert got["summary"]["peak_document_bytes"] <= BUDGET
    # What the process allocated at its peak (Python and numpy, and Arrow's pool), against the source's size: a
    # repack that loaded the documents would hold all of them.
    assert got["python"] + got["arrow"] < source_bytes / 2, (got["python"], got["arrow"], source_bytes)
    run_recipe(write_recipe(root, tokenizer_path, out="fresh", packing={"seq_len": 256, "num_reduce_chunks": 32},
                            output=BIG_OUTPUT))
    assert file_bytes(root / "repacked", "data") == file_bytes(root / "fresh", "data")


def test_export_holds_one_batch_in_a_budget_smaller_than_the_source(big_source):
    root, source_bytes = big_source
    got = measure("export", "export", root / "out", root / "flat" / "train", {"format": "flat", "memory_budget": BUDGET})
    assert got["python"] + got["arrow"] < source_bytes / 4, (got["python"], got["arrow"], source_bytes)
    tokens = np.memmap(root / "flat" / "train.bin", dtype=np.uint16, mode="r")
    docs = pq.read_table(sorted((root / "out" / "documents").glob("train-*.parquet")), columns=["input_ids"])
    assert np.array_equal(tokens, docs.column("input_ids").combine_chunks().flatten().to_numpy())


def test_cli_repack(source, tmp_path, capsys):
    from hfprep.cli import main

    out = tmp_path / "cli"
    assert main(["repack", str(source / "out"), "--seq-len", "300", "--strategy", "bfd", "--packing-kwargs",
                 '{"overflow": "truncate"}', "--output", str(out)]) == 0
    assert "hfprep repack:" in capsys.readouterr().out
    assert yaml.safe_load((out / "README.md").read_text().split("---\n")[1])["hfprep"]["packing_kwargs"] == {
        "overflow": "truncate"}
    assert main(["repack", str(source / "out"), "--seq-len", "64", "--packing-kwargs", "{oops", "--output",
                 str(tmp_path / "x")]) == 2
    assert main(["repack", str(source / "out"), "--seq-len", "64", "--num-reduce-chunks", "3", "--output",
                 str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("hfprep repack: error: --packing-kwargs: not JSON")
    assert err[-1].startswith("hfprep repack: error: --num-reduce-chunks 3: a repack keeps the source's 4 keys")
