"""``hfprep inspect`` on a Hub repo (the in-process test Hub) gives what it gives for the folder that was pushed:
schema, stats, the packing report and a row decoded with the bundled tokenizer; configs (``--config``,
``repo:config``), revisions, a multi-config folder on disk, and no shard fetched but the one holding the row."""

from __future__ import annotations

import json
import os
import re
import sys
import sysconfig
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import real_tokenizer

from hfprep.cli import main
from hfprep.errors import DataError
from hfprep.output.card import parse_card_metadata
from hfprep.output.hub import push_folder
from hfprep.output.inspect_cmd import inspect_target
from hfprep.output.layout import write_split
from hfprep.output.quality import format_report
from hfprep.run import run_recipe
from hfprep.tokenization.stage import tokenized_features

sys.path.insert(0, str(Path(__file__).parent))
from hub_server import HubServer

TOKEN = "hf_test_write_token_0123456789"


def stdlib_documents(n: int, lines_per_doc: int) -> list[str]:
    """Real text: chunks of the running Python's ``email`` package sources, in sorted path order."""
    lines = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("email/*.py")):
        lines += path.read_text(encoding="utf-8").splitlines()
    docs = ["\n".join(lines[i : i + lines_per_doc]) for i in range(0, len(lines), lines_per_doc)]
    return [docs[i % len(docs)] + f"\n# copy {i // len(docs)}" for i in range(n)]


def prepare(folder: Path, tokenizer: str, docs: list[str], **extra) -> Path:
    folder.mkdir(parents=True)
    (folder / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    recipe = {
        "source": {"files": ["docs.jsonl"]},
        "tokenizer": {"name_or_path": tokenizer},
        "output": {"folder": "out", "plots": False},
        **extra,
    }
    (folder / "r.yaml").write_text(yaml.safe_dump(recipe))
    run_recipe(str(folder / "r.yaml"))
    return folder / "out"


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tokenizer_path) -> dict[str, Path]:
    """``big``: the Llama 3.1 tokenizer (bundled), 4 train shards of 25-row row groups; ``small``: the tiny test
    tokenizer, padded rows, a held-out split."""
    from fetch_tokenizers import family_dir

    real_tokenizer("llama3_1")  # skips (or fails under CI) when the real tokenizer files are not fetched
    root = tmp_path_factory.mktemp("inspect_hub")
    big = prepare(
        root / "big", str(family_dir("llama3_1")), stdlib_documents(700, 40),
        tokenize={"text_column": "text", "eos_token": "<|end_of_text|>"},
        packing={"seq_len": 256, "strategy": "dense", "num_reduce_chunks": 4},
        output={"folder": "out", "plots": False, "max_rows_per_shard": 400, "row_group_rows": 25},
    )
    small = prepare(
        root / "small", tokenizer_path, stdlib_documents(60, 2), tokenize={"text_column": "text"}, packing={"seq_len": 128, "strategy": "no_incomplete",
                                                     "num_reduce_chunks": 2},
        splits={"heldout_fraction": 0.25, "heldout_name": "test"},
    )
    return {"big": big, "small": small}


@pytest.fixture
def hub(monkeypatch):
    from huggingface_hub import constants

    with HubServer(tokens={TOKEN: ("user", "write")}) as server:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setattr(constants, "ENDPOINT", server.url)
        # Made from the endpoint when huggingface_hub was imported (as HF_ENDPOINT would set both).
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        yield server


def same_report(result: dict, *labels: str) -> str:
    """The rendering with the dataset's names (folder path, repo id, a config's folder in the repo) replaced, so a
    folder and a repo compare."""
    text = result["text"]
    for label in labels:
        text = text.replace(label, "<dataset>")
    # The card's tokenizer entry names where a bundled tokenizer is read, which a push may point at the repo.
    return re.sub(r"^tokenizer: \S+ \(vocab", "tokenizer: <name> (vocab", text, flags=re.M)


def card_packing_report(folder: Path, split: str) -> str:
    """The packing report of ``split`` as the run wrote it into the card's prose (from every packed row)."""
    card = (folder / "README.md").read_text()
    m = re.search(rf"\*\*{re.escape(split)}\*\*\n\n```text\n(.*?)\n```", card, re.S)
    assert m, card
    return m.group(1)


def cache_state() -> list[str]:
    """Every file in the Hub and datasets caches, and the names in the temp folder (where scratch goes)."""
    import tempfile

    import datasets.config
    from huggingface_hub import constants

    roots = (constants.HF_HUB_CACHE, datasets.config.HF_DATASETS_CACHE)
    return sorted(str(p) for root in roots for p in Path(root).rglob("*")) + sorted(os.listdir(tempfile.gettempdir()))


def test_a_repo_reads_like_the_folder_that_was_pushed(folders, hub, tmp_path, monkeypatch):
    import tempfile

    import datasets.config
    from huggingface_hub import constants

    # Caches and a temp folder of this test's own: tests running beside it write into the shared ones.
    for name in ("hub", "datasets", "tmp"):
        (tmp_path / name).mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    small = folders["small"]
    push_folder(str(small), "user/data")
    before = cache_state()
    for split in ("train", "test"):
        local = inspect_target(str(small), split=split, row=1)
        remote = inspect_target("user/data", split=split, row=1)
        assert same_report(remote, "user/data") == same_report(local, str(small))
        assert "decoded with user/data/tokenizer" in remote["text"]
        # The row itself, read here with pyarrow from the local shard: the Hub read gives the same values.
        expected = pq.read_table(next((small / "data").glob(f"{split}-*.parquet"))).slice(1, 1).to_pylist()[0]
        assert remote["row"] == expected
        # The card's recorded stats, as the report's first line says them.
        stats = parse_card_metadata((small / "README.md").read_text())["hfprep"]["stats"][split]
        fill = stats["tokens"] / (stats["rows"] * 128)
        head = f"rows {stats['rows']:,} x seq_len 128: {stats['tokens']:,} tokens + {stats['pad_tokens']:,} pad, "
        assert f"    {head}fill {fill:.4f}\n" in remote["text"]
    assert cache_state() == before  # nothing cached, the tokenizer's scratch copy gone


def test_report_from_the_rows_is_the_cards_packing_report(folders, hub):
    small = folders["small"]
    push_folder(str(small), "user/data")
    for split in ("train", "test"):
        result = inspect_target("user/data", split=split, report=True)
        assert format_report(result["packing_report"]) == card_packing_report(small, split)
        # The card's stats give the same first line as the rows do.
        first = card_packing_report(small, split).splitlines()[0]
        assert f"  {split}:\n    {first}\n" in inspect_target("user/data", split=split)["text"]


def test_only_the_shard_holding_the_row_is_read_and_only_in_part(folders, hub):
    big = folders["big"]
    push_folder(str(big), "user/big")
    shards = sorted((big / "data").glob("train-*.parquet"))
    assert len(shards) >= 3
    sizes = [p.stat().st_size for p in shards]
    first_rows = pq.read_metadata(shards[0]).num_rows
    hub.served.clear()
    result = inspect_target("user/big", row=first_rows + 30)  # in the second shard's second row group
    assert result["row"] == pq.read_table(shards[1]).slice(30, 1).to_pylist()[0]
    served: dict[str, int] = {}
    for repo, path, n in hub.served:
        if repo == "user/big" and path.endswith(".parquet"):
            name = path.rsplit("/", 1)[1].split("-", 1)[1]  # the pushed name without its push id
            served[name] = served.get(name, 0) + n
    assert set(served) == {shards[0].name, shards[1].name}, served  # the shards after the row: not touched
    for shard, size in zip(shards[:2], sizes):
        assert served[shard.name] < size / 2, (served, sizes)  # a footer (and one row group), not the shard


def test_configs_and_the_bundled_tokenizer_of_each(folders, hub, capsys):
    """Two configs with different tokenizers: each row is decoded with its own config's bundled tokenizer."""
    big, small = folders["big"], folders["small"]
    push_folder(str(small), "user/multi")
    push_folder(str(big), "user/multi", config_name="code")
    llama = real_tokenizer("llama3_1")
    code = inspect_target("user/multi:code")
    assert code["config"] == "code" and inspect_target("user/multi", config="code")["text"] == code["text"]
    assert "decoded with user/multi/code/tokenizer" in code["text"]
    first_doc_text = llama.decode(code["row"]["input_ids"][:50], skip_special_tokens=False)
    assert first_doc_text in code["text"]
    local = inspect_target(str(big))
    assert same_report(code, "user/multi (config 'code')", "user/multi/code") == same_report(local, str(big))
    default = inspect_target("user/multi")
    assert default["config"] == "default" and "decoded with user/multi/tokenizer" in default["text"]
    # The CLI says the same, in JSON too.
    assert main(["inspect", "user/multi:code", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"] == "code"


def test_both_hfprep_block_layouts_are_read(folders, hub):
    """One ``hfprep`` block for the config pushed last (its name in ``config_name``), or one block per config
    (``hfprep: {configs: {NAME: ...}}``): each config gets its own stats, and none gets another config's."""
    from huggingface_hub import HfApi

    big, small = folders["big"], folders["small"]
    push_folder(str(small), "user/blocks")
    push_folder(str(big), "user/blocks", config_name="code")
    pushed = parse_card_metadata(hub.repo_files("user/blocks")["README.md"].decode())
    body = hub.repo_files("user/blocks")["README.md"].decode().split("\n---\n", 1)[1]
    small_block = parse_card_metadata((small / "README.md").read_text())["hfprep"]
    code_block = parse_card_metadata((big / "README.md").read_text())["hfprep"]
    api = HfApi(endpoint=hub.url, token=TOKEN)

    def card_with(block: dict) -> None:
        meta = {**pushed, "hfprep": block}
        api.upload_file(path_or_fileobj=f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n{body}".encode(),
                        path_in_repo="README.md", repo_id="user/blocks", repo_type="dataset")

    card_with({**code_block, "config_name": "code"})
    assert inspect_target("user/blocks", config="code")["stats"] == code_block["stats"]
    default = inspect_target("user/blocks")
    assert default["stats"] == {} and "the card records no stats for config 'default'" in default["text"]
    card_with({"configs": {"default": small_block, "code": code_block}})
    for config, block in (("default", small_block), ("code", code_block)):
        result = inspect_target("user/blocks", config=config)
        assert result["stats"] == block["stats"]
        assert f"seq_len {block['seq_len']}" in result["text"]


def test_revision(folders, hub, capsys):
    big, small = folders["big"], folders["small"]
    push_folder(str(small), "user/rev")
    push_folder(str(big), "user/rev", revision="v2")
    small_stats = parse_card_metadata((small / "README.md").read_text())["hfprep"]["stats"]
    big_stats = parse_card_metadata((big / "README.md").read_text())["hfprep"]["stats"]
    assert inspect_target("user/rev")["stats"] == small_stats
    v2 = inspect_target("user/rev", revision="v2")
    assert v2["stats"] == big_stats and v2["text"].startswith("user/rev@v2\n")
    assert main(["inspect", "user/rev", "--revision", "v2", "--report", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["stats"] == big_stats and out["packing_report"]["rows"] == big_stats["train"]["rows"]


def test_a_multi_config_folder_on_disk(folders, hub, tmp_path):
    """The repo's files downloaded as they are (``data/<push id>-...``, ``code/tokenizer``): the same reports."""
    big, small = folders["big"], folders["small"]
    push_folder(str(small), "user/disk")
    push_folder(str(big), "user/disk", config_name="code")
    local = tmp_path / "clone"
    for path, content in hub.repo_files("user/disk").items():
        (local / path).parent.mkdir(parents=True, exist_ok=True)
        (local / path).write_bytes(content)
    for config in ("default", "code"):
        on_disk = inspect_target(f"{local}:{config}")
        assert on_disk == {**inspect_target(str(local), config=config)}
        remote = inspect_target("user/disk", config=config)
        assert same_report(on_disk, str(local)) == same_report(remote, "user/disk")


def test_config_and_target_errors_are_one_line(folders, hub, tmp_path):
    big, small = folders["big"], folders["small"]
    push_folder(str(small), "user/errs", config_name="a")
    push_folder(str(big), "user/errs", config_name="b")
    with pytest.raises(DataError, match=r"has configs \['a', 'b'\] and none is 'default'; choose one with --config"):
        inspect_target("user/errs")
    with pytest.raises(DataError, match=r"has no config 'c'; its configs are \['a', 'b'\]"):
        inspect_target("user/errs:c")
    with pytest.raises(DataError, match="names config 'a' but --config says 'b'"):
        inspect_target("user/errs:a", config="b")
    with pytest.raises(DataError, match="--revision picks a Hub revision; .* is a local folder"):
        inspect_target(str(small), revision="v1")
    with pytest.raises(DataError, match=r"has no config 'x'; its configs are \['default'\]"):
        inspect_target(f"{small}:x")
    bare = tmp_path / "bare"  # shards without a card: the default config only
    write_split(pq.read_table(next((small / "data").glob("train-*"))), bare, "train", features=tokenized_features())
    assert inspect_target(f"{bare}:default")["config"] == "default"
    with pytest.raises(DataError, match=r"has no configs \(its card lists none\), so no config 'x'; drop --config"):
        inspect_target(f"{bare}:x")
