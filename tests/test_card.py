"""Dataset card: YAML keys, prose sections, embedded recipe, figures; deterministic PNGs; template errors."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from hfprep.errors import ConfigError
from hfprep.output.card import parse_card_metadata, render_card, size_category
from hfprep.output.plots import fill_bin_counts, fill_histogram_png, length_bin_counts, length_histogram_png
from hfprep.run import run_recipe

SECRET = "hf_SECRETtokenXYZ123"


@pytest.fixture(scope="module")
def card_run(tmp_path_factory, tokenizer_path):
    import os

    root = tmp_path_factory.mktemp("card")
    docs = [f"document {i} " + "word " * (i % 9) for i in range(30)]
    (root / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    recipe_text = yaml.safe_dump({
        "name": "Tiny card test",
        "source": {"files": ["docs.jsonl"]},
        "tokenizer": {"name_or_path": tokenizer_path},
        "tokenize": {"strategy": "pretrain", "text_column": "text"},
        "packing": {"seq_len": 64, "strategy": "no_incomplete", "num_reduce_chunks": 2},
        "splits": {"heldout_fraction": 0.3},
        "output": {"folder": "out"},
        "hub": {"repo_id": "me/tiny", "push": False, "license": "mit", "tags": ["unit-test"]},
    }, sort_keys=False) + "# a comment kept verbatim\n"
    (root / "r.yaml").write_text(recipe_text)
    old = os.environ.get("HF_TOKEN")
    os.environ["HF_TOKEN"] = SECRET
    try:
        summary = run_recipe(root / "r.yaml")
    finally:
        if old is None:
            os.environ.pop("HF_TOKEN", None)
        else:
            os.environ["HF_TOKEN"] = old
    return root / "out", recipe_text, summary


def meta_tokenizer_dir(recipe_text: str) -> str:
    return yaml.safe_load(recipe_text)["tokenizer"]["name_or_path"]


def test_card_yaml_metadata(card_run, tokenizer):
    out, _, summary = card_run
    meta = parse_card_metadata((out / "README.md").read_text())
    assert meta["license"] == "mit"
    assert meta["task_categories"] == ["text-generation"]
    assert meta["size_categories"] == ["n<1K"]
    assert meta["source_datasets"] == ["original"]
    assert "unit-test" in meta["tags"] and "hfprep" in meta["tags"]
    splits = {d["split"]: d["path"] for d in meta["configs"][0]["data_files"]}
    assert splits == {"train": "data/train-*", "test": "data/test-*"}
    info = {s["name"]: s["num_examples"] for s in meta["dataset_info"]["splits"]}
    assert info == {k: v["rows_out"] for k, v in summary["splits"].items()}
    assert [f["name"] for f in meta["dataset_info"]["features"]] == ["input_ids", "position_ids", "loss_mask"]
    hf = meta["hfprep"]
    expected_fp = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()
    assert hf["tokenizer"]["fingerprint"] == expected_fp
    assert hf["tokenizer"]["vocab_size"] == len(tokenizer)
    assert hf["tokenizer"]["eos_token_id"] == hf["tokenizer"]["pad_token_id"] == tokenizer.eos_token_id
    assert (hf["strategy"], hf["seq_len"], hf["packing"], hf["num_reduce_chunks"]) == ("pretrain", 64, "no_incomplete", 2)
    assert set(hf["stats"]) == {"train", "test"}


def test_card_prose_recipe_images_and_no_token(card_run):
    out, recipe_text, summary = card_run
    text = (out / "README.md").read_text()
    assert "from hfprep import DataCollatorForPackedLM" in text
    assert 'load_dataset("me/tiny")' in text
    # The recipe as run, as the folder's recipe.yaml holds it: the settings the recipe wrote, the local tokenizer
    # folder (outside the recipe's folder) as the copy bundled next to the recipe, the output folder by a neutral
    # name; the local inputs with their sha256 in the comment on top.
    bundled = (out / "recipe.yaml").read_text()
    assert "```yaml\n" + bundled.rstrip("\n") + "\n```" in text
    expected = yaml.safe_load(recipe_text)
    expected["tokenizer"]["name_or_path"] = "./tokenizer"
    expected["output"]["folder"] = "prepared"
    assert yaml.safe_load(bundled) == expected
    tok_dir = Path(meta_tokenizer_dir(recipe_text))
    tok_files = sorted(p for p in tok_dir.rglob("*") if p.is_file())
    # The sha256 of what `sha256sum` prints for the folder's files (paths relative to it).
    tok_digest = hashlib.sha256("".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(tok_dir).as_posix()}\n"
                                        for p in tok_files).encode()).hexdigest()
    assert f"#   docs.jsonl  local file, sha256:{hashlib.sha256((out.parent / 'docs.jsonl').read_bytes()).hexdigest()}" \
        in bundled
    assert f"#   ./tokenizer  local tokenizer folder, bundled with this dataset, sha256:{tok_digest} of its files'" \
        in bundled
    assert str(tok_dir) not in bundled and str(out.parent) not in bundled
    for img in re.findall(r"\]\((images/[^)]+)\)", text):
        assert (out / img).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(re.findall(r"\]\((images/[^)]+)\)", text)) == 2
    t = summary["totals"]
    assert f"{t['tokens_dropped']:,} tokens" in text
    assert "| train |" in text and "| test |" in text
    assert "hfprep version" in text and "source revision" in text and "prepared on" in text
    assert "${" not in text
    for p in out.rglob("*"):
        if p.is_file():
            assert SECRET.encode() not in p.read_bytes(), p


def test_size_categories():
    assert [size_category(n) for n in (0, 999, 1000, 9999, 10_000, 2_000_000)] == [
        "n<1K", "n<1K", "1K<n<10K", "1K<n<10K", "10K<n<100K", "1M<n<10M",
    ]


def test_render_card_template_errors(tmp_path):
    t = tmp_path / "t.md"
    t.write_text("---\n${metadata}\n---\n# ${title}\n${unknown_thing}\n")
    with pytest.raises(ConfigError, match=r"uses \$\{unknown_thing\}"):
        render_card({"metadata": "a: 1", "title": "x"}, t)
    with pytest.raises(ConfigError, match="template .* not found"):
        render_card({}, tmp_path / "nope.md")
    t.write_text("---\n${metadata}\n---\n# ${title}\n")
    assert parse_card_metadata(render_card({"metadata": "a: 1", "title": "x"}, t)) == {"a": 1}


def test_histogram_bins_and_deterministic_png(tmp_path):
    assert length_bin_counts(np.array([1, 2, 3, 4, 4])) == {0: 1, 4: 1, 6: 1, 8: 2}  # floor(4*log2(n))
    assert fill_bin_counts(np.array([0.0, 0.5, 0.99, 1.0])) == [1] + [0] * 9 + [1] + [0] * 8 + [2]
    for name in ("a.png", "b.png"):
        length_histogram_png({"train": {0: 3, 9: 1}, "test": {4: 2}}, tmp_path / name)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    for name in ("c.png", "d.png"):
        fill_histogram_png({"train": [1] * 20}, tmp_path / name, 16)
    assert (tmp_path / "c.png").read_bytes() == (tmp_path / "d.png").read_bytes()
    assert Path(tmp_path / "c.png").stat().st_size > 1000


def _front_matter_and_body(text: str) -> tuple[str, str]:
    end = text.index("\n---\n", 4)
    return text[4:end], text[end + 5 :]


def test_card_is_valid_hub_metadata_and_renders_as_markdown(card_run):
    """The card as the Hub reads it: huggingface_hub's DatasetCard parses it, datasets reads configs and sizes
    from it; a CommonMark+tables renderer turns every pipe table into a <table> and every image resolves."""
    from datasets import load_dataset
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard
    from markdown_it import MarkdownIt

    out, _, _ = card_run
    card = DatasetCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "mit" and data["task_categories"] == ["text-generation"]
    configs = MetadataConfigs.from_dataset_card_data(card.data)
    assert {d["split"] for d in configs["default"]["data_files"]} == {"train", "test"}
    infos = DatasetInfosDict.from_dataset_card_data(card.data)["default"]
    loaded = load_dataset(str(out))
    for split, ds in loaded.items():
        # num_bytes is what push_to_hub would write for these rows: datasets' own Arrow size estimate.
        assert infos.splits[split].num_bytes == ds._estimate_nbytes()
        assert infos.splits[split].num_examples == len(ds)
    assert infos.download_size == sum(p.stat().st_size for p in (out / "data").glob("*.parquet"))

    body = card.text
    html = MarkdownIt("commonmark").enable("table").render(body)
    pipe_tables = len(re.findall(r"^\|[-:|]+\|\s*$", body, flags=re.M))  # one separator line per table
    assert pipe_tables >= 4 and html.count("<table>") == pipe_tables
    assert "<p>|" not in html  # no table left as a paragraph of pipes
    images = re.findall(r'<img src="([^"]+)"', html)
    assert sorted(images) == ["images/doc_lengths.png", "images/fill_per_row.png"]
    for src in images:
        target = (out / src).resolve()
        assert target.is_file() and out.resolve() in target.parents
    links = re.findall(r'<a href="([^"]+)"', html)
    assert all(not link.startswith(("http://", "https://")) for link in links), links  # no undeclared sites


def test_card_header_is_compact(card_run):
    out, _, _ = card_run
    header, _ = _front_matter_and_body((out / "README.md").read_text())
    meta = yaml.safe_load(header)
    assert set(meta) <= {"license", "license_name", "pretty_name", "task_categories", "size_categories",
                         "source_datasets", "tags", "configs", "dataset_info", "hfprep"}
    hf = meta["hfprep"]
    assert "quality" not in hf  # histograms live in the images and the prose
    assert not {"prefix_column", "middle_column", "suffix_column", "fim_format", "fim_rate"} & set(hf["tokenize"])
    assert len(header.splitlines()) < 90


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory, tokenizer_path):
    """A dense run without a Hub repo: sources outside the recipe's folder, absolute paths in the recipe."""
    import os

    root = tmp_path_factory.mktemp("dense-card")
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    docs = [f"document {i} " + "word " * (3 + i % 40) for i in range(80)]
    src = elsewhere / "docs.jsonl"
    src.write_text("".join(json.dumps({"content": d}) + "\n" for d in docs))
    (root / "proj").mkdir()
    recipe_text = yaml.safe_dump({
        "source": {"files": [str(src)]},
        "tokenizer": {"name_or_path": tokenizer_path},
        "packing": {"seq_len": 32, "strategy": "dense", "num_reduce_chunks": 1},
        "output": {"folder": str(root / "proj" / "out")},
        "hub": {"license": "psf-2.0"},
    }, sort_keys=False)
    (root / "proj" / "r.yaml").write_text(recipe_text)
    cwd = os.getcwd()
    os.chdir(root / "proj")
    try:
        run_recipe(root / "proj" / "r.yaml")
    finally:
        os.chdir(cwd)
    return root / "proj", src


def test_card_leaks_no_local_path_and_checks_the_license(dense_run, tokenizer_path):
    proj, src = dense_run
    text = (proj / "out" / "README.md").read_text()
    for local in (str(proj), str(src.parent), tokenizer_path, str(Path.home()) + "/"):
        assert local not in text, local
    assert not re.search(r"(?<![\w.])/(tmp|home|root|Users)/", text)
    assert f"sha256 {hashlib.sha256(src.read_bytes()).hexdigest()[:16]}" in text  # the file by name + hash
    # The source revision: the sha256 of the `sha256sum` line of the file (path relative to its folder).
    line = f"{hashlib.sha256(src.read_bytes()).hexdigest()}  {src.name}\n"
    assert f"| source revision | sha256:{hashlib.sha256(line.encode()).hexdigest()} over 1 local file(s) |" in text
    meta = parse_card_metadata(text)
    assert (meta["license"], meta["license_name"]) == ("other", "psf-2.0")  # not a Hub license id
    assert "github.com" not in text


def test_chat_template_path_shows_relative_to_the_recipe(tmp_path, tokenizer_path, monkeypatch):
    """The recipe names its chat template relative to itself; the run resolves it to an absolute path, and the card
    (front matter and tokenize line) shows it relative to the recipe again, run from another folder."""
    proj = tmp_path / "proj"
    (proj / "templates").mkdir(parents=True)
    (proj / "chat.jsonl").write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": f"q {i}"}, {"role": "assistant", "content": f"a {i}"}]})
        + "\n" for i in range(40)))
    (proj / "templates" / "t.jinja").write_text(
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}{% endfor %}")
    (proj / "r.yaml").write_text(yaml.safe_dump({
        "source": {"files": ["chat.jsonl"]},
        "tokenizer": {"name_or_path": tokenizer_path},
        "tokenize": {"strategy": "sft", "text_column": "messages", "chat_template_path": "templates/t.jinja"},
        "packing": {"seq_len": 32, "strategy": "no_incomplete", "num_reduce_chunks": 1},
        "output": {"folder": "out"},
    }, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    run_recipe(proj / "r.yaml")
    text = (proj / "out" / "README.md").read_text()
    assert str(tmp_path) not in text
    assert parse_card_metadata(text)["hfprep"]["tokenize"]["chat_template_path"] == "templates/t.jinja"


def test_card_tokenizer_and_load_snippet_are_loadable(dense_run, tokenizer):
    import os

    from datasets import load_dataset

    from hfprep.tokenization.loading import load_tokenizer

    proj, _ = dense_run
    text = (proj / "out" / "README.md").read_text()
    tok = parse_card_metadata(text)["hfprep"]["tokenizer"]
    assert 'load_dataset("out")' in text  # the folder as typed from where the run was started
    cwd = os.getcwd()
    os.chdir(proj)
    try:
        loaded = load_tokenizer(tok["name_or_path"], subfolder=tok["subfolder"])
        assert loaded.get_vocab() == tokenizer.get_vocab()
        assert len(load_dataset("out", split="train")) == parse_card_metadata(text)["hfprep"]["stats"]["train"]["rows"]
    finally:
        os.chdir(cwd)


def test_backend_row_is_a_sentence_and_full_rows_get_no_fill_plot(dense_run):
    proj, _ = dense_run
    out = proj / "out"
    text = (out / "README.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| backend check |"))
    assert "{" not in row and row.rstrip(" |").endswith(".")
    # dense rows are all full: a one-bar fill histogram says nothing, so neither the file nor the link exists
    assert not (out / "images" / "fill_per_row.png").exists() and "fill_per_row" not in text
    assert (out / "images" / "doc_lengths.png").is_file()


def test_length_histogram_marks_seq_len(tmp_path):
    from PIL import Image

    counts = {"train": {4: 3, 20: 5, 30: 2}}
    length_histogram_png(counts, tmp_path / "plain.png")
    length_histogram_png(counts, tmp_path / "marked.png", seq_len=64)
    a = np.asarray(Image.open(tmp_path / "plain.png").convert("L"))
    b = np.asarray(Image.open(tmp_path / "marked.png").convert("L"))
    # the marker is a vertical dark dashed line inside the axes: a column with far more dark pixels than in the
    # plain plot (bars are lighter than the threshold; the axis spine is the same in both)
    gained = ((b < 100) & ~(a < 100)).sum(axis=0)
    assert gained.max() > 60
