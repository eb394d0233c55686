"""``hfprep export``: the documents config as Megatron-LM's indexed dataset (read back by megatron-core's own
``IndexedDataset``) and as a flat token file (memory-mapped with numpy), compared document by document with the
documents config; SFT documents refused for Megatron, their loss mask written for flat; a killed export resumes.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from datasets import load_dataset

from hfprep.commands.export import export
from hfprep.errors import ConfigError, DataError, OutputExistsError
from hfprep.output.hub import push_folder
from hfprep.run import run_recipe

sys.path.insert(0, str(Path(__file__).parent))
from prepared_sources import file_bytes, real_tokenizer_dir, run_killed, write_recipe, write_texts
from test_push import WRITE_TOKEN, hub, hub_in_process  # noqa: F401 - fixtures, used through local_hub

indexed_dataset = pytest.importorskip("megatron.core.datasets.indexed_dataset")


@pytest.fixture
def local_hub(hub_in_process):  # noqa: F811 - test_push's fixture: the test Hub, this process pointed at it
    return hub_in_process


@pytest.fixture(scope="module")
def small(tmp_path_factory, tokenizer_path):
    """A tiny-vocabulary source (400 ids: uint16 files) with a held-out split, documents in several shards."""
    root = tmp_path_factory.mktemp("export")
    write_texts(root / "docs.jsonl", 120, seed=21)
    run_recipe(write_recipe(root, tokenizer_path, splits={"heldout_fraction": 0.2}))
    return root / "out"


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    """A source on real Qwen3 tokenizer files (151,669 ids: int32 for Megatron, uint32 flat)."""
    root = tmp_path_factory.mktemp("export-qwen")
    write_texts(root / "docs.jsonl", 40, seed=22)
    tokenize = {"text_column": "text", "eos_token": "<|endoftext|>"}
    run_recipe(write_recipe(root, real_tokenizer_dir("qwen3"), tokenize=tokenize, output={"max_rows_per_shard": 15}))
    return root / "out"


def documents(folder: Path, split: str = "train") -> list[dict]:
    return load_dataset(str(folder), "documents", split=split).to_list()


def read_megatron(prefix: Path) -> list[list[int]]:
    ds = indexed_dataset.IndexedDataset(str(prefix))
    assert ds.document_indices.tolist() == list(range(len(ds) + 1))  # one sequence per document
    return [np.array(ds[i]) for i in range(len(ds))]  # copies: the arrays view a memory map closed with ds


@pytest.mark.parametrize("which, dtype", [("small", np.uint16), ("qwen", np.int32)])
def test_megatron_core_reads_the_export_document_by_document(which, dtype, request, tmp_path):
    folder = request.getfixturevalue(which)
    summary = export(folder, tmp_path / "mg" / "train", format="megatron")
    seqs = read_megatron(tmp_path / "mg" / "train")
    docs = documents(folder)
    assert [s.dtype for s in seqs[:1]] == [np.dtype(dtype)] and summary["dtype"] == np.dtype(dtype).name
    assert [s.tolist() for s in seqs] == [d["input_ids"] for d in docs]
    assert sorted(p.name for p in (tmp_path / "mg").iterdir()) == ["train.bin", "train.idx"]


def test_megatron_exports_the_held_out_split_too(small, tmp_path):
    export(small, tmp_path / "test", format="megatron", split="test")
    assert [s.tolist() for s in read_megatron(tmp_path / "test")] == [d["input_ids"] for d in documents(small, "test")]
    with pytest.raises(ConfigError, match=r"--split 'valid': .* has documents for \['train', 'test'\]"):
        export(small, tmp_path / "x", format="megatron", split="valid")


@pytest.mark.parametrize("which, dtype", [("small", np.uint16), ("qwen", np.uint32)])
def test_flat_export_is_the_ids_end_to_end(which, dtype, request, tmp_path):
    from tokenizers import Tokenizer

    folder = request.getfixturevalue(which)
    export(folder, tmp_path / "flat", format="flat")
    docs = documents(folder)
    ids = np.memmap(tmp_path / "flat.bin", dtype=dtype, mode="r")
    assert ids.tolist() == [t for d in docs for t in d["input_ids"]]
    sidecar = json.loads((tmp_path / "flat.json").read_text())
    tok = Tokenizer.from_file(str(folder / "tokenizer" / "tokenizer.json"))  # the bundled copy, read directly
    eos = tok.token_to_id("<|endoftext|>")
    assert sidecar["dtype"] == np.dtype(dtype).name and sidecar["vocab_size"] == tok.get_vocab_size()
    assert sidecar["separator_id"] == eos and all(d["input_ids"][-1] == eos for d in docs)
    assert (sidecar["documents"], sidecar["tokens"]) == (len(docs), len(ids))
    assert sidecar["documents_ending_with_separator"] == len(docs) and sidecar["loss_mask"] is None
    assert sidecar["revision"].startswith("card sha256:") and sidecar["split"] == "train"
    assert not (tmp_path / "flat.mask.bin").exists()


@pytest.fixture(scope="module")
def sft(tmp_path_factory, tokenizer_path):
    root = tmp_path_factory.mktemp("export-sft")
    rows = [{"messages": [{"role": "user", "content": f"question {i} " * (i % 5 + 1)},
                          {"role": "assistant", "content": f"answer {i} " * (i % 7 + 1)}]} for i in range(30)]
    (root / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_recipe(write_recipe(root, tokenizer_path, source={"files": ["chat.jsonl"]},
                            tokenize={"strategy": "sft", "text_column": "messages", "chat_template": "never"},
                            packing={"strategy": "bfd", "seq_len": 64}))
    return root / "out"


def test_megatron_refuses_sft_documents_in_one_line(sft, tmp_path):
    with pytest.raises(DataError, match=r"^megatron export refused: SFT documents carry a loss mask, and Megatron's "
                                        r"indexed dataset holds none .*use --format flat"):
        export(sft, tmp_path / "mg", format="megatron")
    assert os.listdir(tmp_path) == []


def test_flat_export_of_sft_documents_writes_their_loss_mask(sft, tmp_path):
    summary = export(sft, tmp_path / "flat", format="flat")
    docs = documents(sft)
    mask = np.memmap(tmp_path / "flat.mask.bin", dtype=np.bool_, mode="r")
    assert mask.tolist() == [m for d in docs for m in d["loss_mask"]] and not mask.all()
    assert summary["loss_mask"] == "flat.mask.bin"
    assert json.loads((tmp_path / "flat.json").read_text())["tokens_without_loss"] == int((~mask).sum())


def test_existing_output_is_refused_then_replaced_with_overwrite(small, tmp_path, capsys):
    from hfprep.cli import main

    prefix = tmp_path / "mg"
    assert main(["export", str(small), "--format", "megatron", "--output", str(prefix)]) == 0
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(OutputExistsError, match="already exists; pass --overwrite"):
        export(small, prefix, format="megatron")
    assert main(["export", str(small), "--format", "megatron", "--output", str(prefix)]) == 1
    assert main(["export", str(small), "--format", "megatron", "--output", str(prefix), "--overwrite",
                 "--split", "test"]) == 0
    assert len(read_megatron(prefix)) == len(documents(small, "test"))


def test_killed_export_from_the_hub_resumes_with_the_same_bytes(small, local_hub, tmp_path):
    server = local_hub
    push_folder(small, "user/export", token=WRITE_TOKEN)
    export(small, tmp_path / "reference" / "train", format="megatron")
    prefix = tmp_path / "out" / "train"
    env = server.client_env(dict(os.environ), WRITE_TOKEN, str(tmp_path / "hf_home"))
    run_killed("export", "export", "user/export", prefix, {"format": "megatron"}, 2, env, WRITE_TOKEN)
    staging = tmp_path / "out" / ".train.partial"
    assert [r["shard"] for r in json.loads((staging / "manifest.json").read_text())["done"]["train"]] == [0, 1]
    assert not prefix.with_suffix(".idx").exists()
    summary = export("user/export", prefix, format="megatron", token=WRITE_TOKEN)
    assert summary["resumed"] and summary["revision"] == server.repos[("dataset", "user/export")].resolve("main").oid
    assert file_bytes(tmp_path, "out") == {k.replace("reference/", "out/"): v
                                          for k, v in file_bytes(tmp_path, "reference").items()}
