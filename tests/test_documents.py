"""The ``documents`` config (``output.documents: true``): every tokenized document, unpacked, in the order the
packer reads them, held to the row contract, checked by ``validate``, listed by the card and pushed with the data.

Expected documents come from an independent reference: each text tokenized on its own with transformers'
``AutoTokenizer`` (real Qwen3 files) plus the eos, keyed with sha256 written out in the test, stably sorted by key.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from datasets import load_dataset

from hfprep.errors import ConfigError
from hfprep.output.card import hfprep_block, read_card_metadata
from hfprep.output.hub import push_folder
from hfprep.output.layout import write_parquet
from hfprep.output.validate import validate_folder
from hfprep.run import run_recipe
from hfprep.schema import document_features

sys.path.insert(0, str(Path(__file__).parent))
from prepared_sources import file_bytes, real_tokenizer_dir, reference_key, write_recipe, write_texts
from test_push import WRITE_TOKEN, front_matter, hub, hub_in_process, visible_rows  # noqa: F401 - fixtures, used through local_hub


@pytest.fixture
def local_hub(hub_in_process):  # noqa: F811 - test_push's fixture: the test Hub, this process pointed at it
    return hub_in_process

KEYS = 4
EOS = "<|endoftext|>"  # Qwen3's end-of-document token (its eos_token is the chat's end of turn)
TOKENIZE = {"text_column": "text", "eos_token": EOS}


@pytest.fixture(scope="module")
def qwen_dir() -> str:
    return real_tokenizer_dir("qwen3")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, qwen_dir):
    """A dense run on real Qwen3 tokenizer files with the documents config; returns (folder, texts, root)."""
    root = tmp_path_factory.mktemp("documents")
    texts = write_texts(root / "docs.jsonl", 90, seed=1)
    run_recipe(write_recipe(root, qwen_dir, packing={"num_reduce_chunks": KEYS}, tokenize=TOKENIZE))
    return root / "out", texts, root


def reference_documents(texts: list[str], tokenizer_dir: str, num_keys: int) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    docs = [[*tok.encode(t, add_special_tokens=False), tok.convert_tokens_to_ids(EOS)] for t in texts if t]
    keys = [reference_key(d, num_keys) for d in docs]
    return [docs[i] for i in sorted(range(len(docs)), key=lambda i: keys[i])]  # sorted() is stable


def test_documents_are_every_document_in_the_order_the_packer_reads_them(prepared, qwen_dir):
    folder, texts, _ = prepared
    docs = load_dataset(str(folder), "documents", split="train")
    assert docs.features == document_features()
    assert docs["input_ids"] == reference_documents(texts, qwen_dir, KEYS)
    assert all(all(m) for m in docs["loss_mask"])  # pretrain: loss on every token


def test_card_lists_both_configs_and_validate_passes(prepared):
    folder = prepared[0]
    meta = read_card_metadata(folder / "README.md")
    configs = {c["config_name"]: c["data_files"] for c in meta["configs"]}
    assert configs == {"default": [{"split": "train", "path": "data/train-*"}],
                       "documents": [{"split": "train", "path": "documents/train-*"}]}
    block = meta["hfprep"]["documents"]
    assert block["columns"] == ["input_ids", "loss_mask"]
    assert yaml.safe_load(block["provenance"]["recipe"])["packing"]["num_reduce_chunks"] == KEYS
    body = (folder / "README.md").read_text()
    assert '## Documents config' in body and 'load_dataset("' in body and '"documents")' in body
    report = validate_folder(folder)
    assert report.ok, report.violations
    # The documents hold exactly the tokens the packer was given.
    docs = load_dataset(str(folder), "documents", split="train")
    assert sum(len(x) for x in docs["input_ids"]) == meta["hfprep"]["stats"]["train"]["tokens_in"]
    assert len(docs) > len(list((folder / "documents").glob("*.parquet"))) > 1  # several shards


def test_a_run_without_the_option_writes_no_documents(tmp_path, tokenizer_path):
    write_texts(tmp_path / "docs.jsonl", 20, seed=2)
    run_recipe(write_recipe(tmp_path, tokenizer_path, output={"documents": False}))
    meta = read_card_metadata(tmp_path / "out" / "README.md")
    assert not (tmp_path / "out" / "documents").exists()
    assert [c["config_name"] for c in meta["configs"]] == ["default"] and "documents" not in meta["hfprep"]


def _copy(prepared, tmp_path) -> Path:
    dest = tmp_path / "copy"
    shutil.copytree(prepared[0], dest)
    return dest


def test_validate_flags_documents_out_of_order(prepared, tmp_path):
    folder = _copy(prepared, tmp_path)
    shards = {}
    for shard in sorted((folder / "documents").glob("train-*.parquet")):
        table = pq.read_table(shard)
        shards[shard] = (table, {reference_key(x, KEYS) for x in table.column("input_ids").to_pylist()})
    shard, (table, _) = next((k, v) for k, v in shards.items() if len(v[1]) > 1)  # a shard holding two keys
    write_parquet(table.take(pa.array(np.arange(table.num_rows)[::-1])), shard, document_features())
    report = validate_folder(folder)
    assert any(v.startswith(f"documents/{shard.name} row ") and "must be in the order the packer reads them" in v
               for v in report.violations), report.violations


def test_validate_flags_document_counts(prepared, tmp_path):
    folder = _copy(prepared, tmp_path)
    card = (folder / "README.md").read_text()
    docs_in = front_matter(card)["hfprep"]["stats"]["train"]["docs_in"]
    (folder / "README.md").write_text(card.replace(f"docs_in: {docs_in},", f"docs_in: {docs_in + 1},", 1))
    violations = validate_folder(folder).violations
    assert f"README.md: split 'train' docs_in = {docs_in + 1} in the card, {docs_in} in documents/" in violations


def test_validate_flags_document_dtypes(prepared, tmp_path):
    folder = _copy(prepared, tmp_path)
    shard = sorted((folder / "documents").glob("train-*.parquet"))[-1]
    table = pq.read_table(shard)
    pq.write_table(table.set_column(0, "input_ids", table.column("input_ids").cast(pa.list_(pa.int64()))), shard)
    violations = validate_folder(folder).violations
    assert any(v.startswith(f"documents/{shard.name}: column 'input_ids' has type list<") and "int64" in v
               for v in violations), violations


def test_streaming_engine_writes_the_same_documents(tmp_path, tokenizer_path):
    write_texts(tmp_path / "docs.jsonl", 60, seed=7)
    run_recipe(write_recipe(tmp_path, tokenizer_path, out="loaded"))
    run_recipe(write_recipe(tmp_path, tokenizer_path, out="streamed", source={"files": ["docs.jsonl"], "streaming": True}))
    assert file_bytes(tmp_path / "streamed", "documents") == file_bytes(tmp_path / "loaded", "documents")
    assert file_bytes(tmp_path / "streamed", "data") == file_bytes(tmp_path / "loaded", "data")


def test_parquet_files_mapped_directly_write_the_same_documents(tmp_path, tokenizer_path):
    texts = write_texts(tmp_path / "docs.jsonl", 60, seed=8)
    pq.write_table(pa.table({"text": texts}), tmp_path / "docs.parquet", row_group_size=7)
    run_recipe(write_recipe(tmp_path, tokenizer_path, out="from-jsonl"))
    run_recipe(write_recipe(tmp_path, tokenizer_path, out="from-parquet", source={"files": ["docs.parquet"]}))
    assert file_bytes(tmp_path / "from-parquet", "documents") == file_bytes(tmp_path / "from-jsonl", "documents")


def test_ray_engine_refuses_the_documents_config_before_any_work(tmp_path, tokenizer_path):
    write_texts(tmp_path / "docs.jsonl", 5, seed=3)
    with pytest.raises(ConfigError, match="the Ray engine does not write the documents config"):
        run_recipe(write_recipe(tmp_path, tokenizer_path), engine="ray")
    assert not (tmp_path / "out").exists()


def test_mixture_documents_carry_their_source(tmp_path, tokenizer_path):
    from transformers import AutoTokenizer

    a = write_texts(tmp_path / "a.jsonl", 30, seed=4)
    b = write_texts(tmp_path / "b.jsonl", 30, seed=5, hi=60)
    sources = [{"name": n, "files": [f], "weight": w} for n, f, w in (("a", "a.jsonl", 0.7), ("b", "b.jsonl", 0.3))]
    recipe = write_recipe(tmp_path, tokenizer_path, sources=sources, max_epochs=3)
    data = yaml.safe_load(recipe.read_text())
    del data["source"]
    recipe.write_text(yaml.safe_dump(data))
    run_recipe(recipe)
    folder = tmp_path / "out"
    docs = load_dataset(str(folder), "documents", split="train")
    assert docs.features == document_features(with_source=True)
    tok = AutoTokenizer.from_pretrained(tokenizer_path)
    own = [{(*tok.encode(t, add_special_tokens=False), tok.eos_token_id) for t in texts} for texts in (a, b)]
    sources_seen = docs["source"]
    assert set(sources_seen) == {0, 1}
    assert all(tuple(ids) in own[s] for ids, s in zip(docs["input_ids"], sources_seen))
    chosen = {r["name"]: r["tokens_chosen"] for r in read_card_metadata(folder / "README.md")["hfprep"]["mixture"]["sources"]}
    per_source = [sum(len(x) for x, s in zip(docs["input_ids"], sources_seen) if s == k) for k in (0, 1)]
    assert per_source == [chosen["a"], chosen["b"]]
    assert validate_folder(folder).ok


def test_push_pushes_both_configs_and_a_later_push_without_documents_removes_them(prepared, local_hub, tmp_path,
                                                                                tokenizer_path):
    server = local_hub
    folder = prepared[0]
    local_docs = load_dataset(str(folder), "documents", split="train").to_list()
    push_folder(folder, "user/docs", token=WRITE_TOKEN)
    files = server.repo_files("user/docs")
    meta = front_matter(files["README.md"])
    entry = next(c for c in meta["configs"] if c["config_name"] == "documents")
    assert entry["data_files"][0]["path"].startswith("data/documents/")
    assert hfprep_block(meta)["documents"]["config_name"] == "documents"
    rows = visible_rows(server, "user/docs", config="documents")
    assert rows["train"] == local_docs
    assert len(visible_rows(server, "user/docs")["train"]) == hfprep_block(meta)["stats"]["train"]["rows"]

    push_folder(folder, "user/docs", token=WRITE_TOKEN, config_name="fr")
    meta = front_matter(server.repo_files("user/docs")["README.md"])
    assert [c["config_name"] for c in meta["configs"]] == ["default", "documents", "fr", "fr-documents"]
    assert visible_rows(server, "user/docs", config="fr-documents")["train"] == local_docs

    write_texts(tmp_path / "docs.jsonl", 10, seed=6)
    run_recipe(write_recipe(tmp_path, tokenizer_path, output={"documents": False}))
    push_folder(tmp_path / "out", "user/docs", token=WRITE_TOKEN)
    files = server.repo_files("user/docs")
    meta = front_matter(files["README.md"])
    assert [c["config_name"] for c in meta["configs"]] == ["default", "fr", "fr-documents"]
    assert not [p for p in files if p.startswith("data/documents/")]
    assert [p for p in files if p.startswith("data/fr-documents/")]  # another config's documents stay
