"""Recipe loading: validation errors name the file and the key; paths resolve against the recipe; shipped recipes load."""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

import pytest
import yaml

from hfprep.recipe import RecipeError, load_recipe, parse_recipe
from hfprep.tokenization.stage import TokenizeConfig

REPO = Path(__file__).resolve().parent.parent
BASE = {
    "source": {"files": ["data/a.jsonl"]},
    "tokenizer": {"name_or_path": "gpt2"},
    "packing": {"seq_len": 16},
    "output": {"folder": "out/x"},
}


def write(tmp_path: Path, data: dict | str, name: str = "r.yaml") -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


def with_(**sections) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE.items()}
    for k, v in sections.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def test_minimal_recipe_resolves_paths_relative_to_the_recipe(tmp_path):
    sub = tmp_path / "recipes"
    sub.mkdir()
    r = load_recipe(write(sub, BASE))
    assert r.source.files == [str((sub / "data/a.jsonl").resolve())]
    assert r.output.folder == str((sub / "out/x").resolve())
    assert r.tokenizer.name_or_path == "gpt2"  # a Hub id stays a Hub id
    assert r.packing.strategy == "dense" and r.packing.num_reduce_chunks == 4
    assert r.tokenize == TokenizeConfig()
    assert r.splits_to_write() == ["train"]
    assert r.text == write(sub, BASE).read_text()


def test_local_tokenizer_path_and_stdlib_placeholder(tmp_path):
    (tmp_path / "tok").mkdir()
    r = load_recipe(write(tmp_path, with_(source={"files": None, "text_dir": "{stdlib}"}, tokenizer={"name_or_path": "tok"})))
    assert r.tokenizer.name_or_path == str((tmp_path / "tok").resolve())
    assert r.source.text_dir == str(Path(sysconfig.get_paths()["stdlib"]).resolve())


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (with_(packing={"seqlen": 8}), "packing.seqlen: unknown key"),
        (with_(packing={"seq_len": "eight"}), "packing.seq_len: Input should be a valid integer"),
        (with_(packing={"seq_len": 1}), "packing.seq_len: Input should be greater than or equal to 2"),
        ({k: v for k, v in BASE.items() if k != "output"}, "output: required key is missing"),
        (with_(colour="red"), "colour: unknown key"),
        # load_recipe sets `path` and `text` (the file and its text) itself: a recipe may not give them.
        (with_(path="elsewhere.yaml"), "path: unknown key"),
        (with_(text="hello"), "text: unknown key"),
        (with_(tokenize={"strategy": "translate"}), "tokenize.strategy: Input should be 'pretrain', 'fim' or 'sft'"),
        (with_(tokenize={"strategy": "pretrain", "backend": "hf"}), "tokenizer.backend, not tokenize.backend"),
        (with_(source={"hub": "a/b"}), "source: give exactly one of 'hub', 'files' or 'text_dir'"),
        (with_(tokenizer={"train": {"vocab_size": 500}}), "tokenizer: give exactly one of 'name_or_path' or 'train'"),
        (with_(splits={"heldout_fraction": 1.5}), "splits.heldout_fraction: Input should be less than 1"),
        (with_(engine="spark"), "engine.name: Input should be 'datasets' or 'ray'"),
        (with_(packing={"strategy": "zigzag"}), "packing.strategy: unknown packer 'zigzag'"),
    ],
)
def test_invalid_recipes_are_one_line_naming_file_and_key(tmp_path, data, expected):
    path = write(tmp_path, data)
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    msg = str(e.value)
    assert msg.startswith(str(path) + ": ")
    assert expected in msg
    assert "\n" not in msg


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = write(tmp_path, "source:\n  files: [a.jsonl\npacking: {seq_len: 8}\n")
    with pytest.raises(RecipeError, match=r"r\.yaml: invalid YAML at line \d+"):
        load_recipe(path)


def test_missing_recipe_file_and_non_mapping(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(RecipeError, match="must be a YAML mapping"):
        load_recipe(write(tmp_path, "- a\n- b\n"))


def test_engine_shorthand_and_tokenize_fields_pass_through():
    r = parse_recipe(with_(engine="ray", tokenize={"strategy": "fim", "only_middle_not_masked": True}))
    assert r.engine.name == "ray"
    assert r.tokenize.strategy == "fim" and r.tokenize.only_middle_not_masked
    # Any field TokenizeConfig gains is accepted in the tokenize section without touching the recipe models.
    extra = sorted(set(TokenizeConfig.model_fields) - {"backend"})
    assert set(extra) >= {"strategy", "text_column", "on_empty"}


def test_heldout_split_names():
    r = parse_recipe(with_(splits={"heldout_fraction": 0.1, "heldout_name": "validation"}))
    assert r.splits_to_write() == ["train", "validation"]
    with pytest.raises(RecipeError, match="train_name and heldout_name must differ"):
        parse_recipe(with_(splits={"heldout_fraction": 0.1, "heldout_name": "train"}))


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "recipes").glob("*.yaml")))
def test_shipped_recipes_are_valid(name):
    path = REPO / "recipes" / name
    data = yaml.safe_load(path.read_text())
    if "source" not in data and "sources" not in data:  # a KD-cache recipe: validated by its own loader
        from hfprep.kd.config import load_kd_recipe

        assert load_kd_recipe(str(path)).k >= 1
        return
    r = load_recipe(path)
    assert os.path.isabs(r.output.folder)
    assert r.packing.seq_len >= 2
