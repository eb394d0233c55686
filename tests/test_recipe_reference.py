"""docs/recipes.md is the generated recipe reference: current with the models, complete (every key, a description
each), true to the recipes in recipes/ (they use only documented keys, its examples are quoted from them and parse),
and every rule it states is enforced."""

from __future__ import annotations

import copy
import importlib
import re
import subprocess
import sys
import types
import typing
from pathlib import Path

import pydantic
import pytest
import yaml
from markdown_it import MarkdownIt

from hfprep.errors import ConfigError
from hfprep.kd.config import KDCacheConfig, config_from_dict
from hfprep.recipe import Recipe, RecipeError, load_recipe, parse_recipe
from hfprep.recipe_reference import (
    NOT_RECIPE_KEYS,
    RULES,
    SHORTHANDS,
    docstring_attributes,
    field_description,
    render_recipe_reference,
)

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "recipes.md"
RECIPES = ROOT / "recipes"
REGENERATE = "python -m hfprep.recipe_reference docs/recipes.md"
KD_HEADING = "KD cache recipes"

# A valid recipe of this test's own: the generator's fragments and the doc's examples are applied to it.
BASE = {
    "source": {"files": ["data.jsonl"]},
    "tokenizer": {"name_or_path": "gpt2"},
    "packing": {"seq_len": 16},
    "output": {"folder": "out"},
}
KD_BASE = {"input": {"folder": "in"}, "teacher": {"name_or_path": "t"}, "tokenizer": {"name_or_path": "t"},
           "output": {"folder": "kd"}}


# ----------------------------------------------------------------------------------------------- reading the doc


def _tokens(text: str):
    return MarkdownIt("commonmark").enable("table").parse(text)


def _parts(text: str) -> tuple[str, str]:
    """(the data-recipe part, the KD part): split at the KD heading."""
    at = text.index(f"\n# {KD_HEADING}\n")
    return text[:at], text[at:]


def documented_rows(text: str) -> dict[str, list[str]]:
    """``{key: cells}`` of every table row whose first cell is a `key`, parsed as Markdown (escaped pipes stay)."""
    rows: dict[str, list[str]] = {}
    cells: list[str] = []
    in_cell = False
    for tok in _tokens(text):
        if tok.type == "tr_open":
            cells = []
        elif tok.type in ("td_open", "th_open"):
            in_cell = True
        elif tok.type == "inline" and in_cell:
            cells.append(tok.content)
            in_cell = False
        elif tok.type == "tr_close" and cells and re.fullmatch(r"`[^`]+`", cells[0]):
            key = cells[0].strip("`")
            assert key not in rows, f"{key} is listed twice"
            rows[key] = cells
    return rows


def yaml_examples(text: str) -> list[tuple[str, str]]:
    """``(recipe file, yaml)`` of every yaml block, the file taken from the paragraph before it."""
    out, source = [], None
    for tok in _tokens(text):
        if tok.type == "inline":
            m = re.fullmatch(r"From `recipes/([\w.]+)`:", tok.content)
            source = m.group(1) if m else None
        elif tok.type == "fence" and tok.info == "yaml":
            assert source, f"a yaml example without its 'From `recipes/...`:' line:\n{tok.content}"
            out.append((source, tok.content))
    return out


# ----------------------------------------------------------------------------------------------- the models' keys


def _inner(annotation) -> tuple[type | None, bool]:
    """(the pydantic model a field holds, whether as a list) or (None, False) for a leaf."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if typing.get_origin(annotation) is list:
        item = typing.get_args(annotation)[0]
        return (item, True) if isinstance(item, type) and issubclass(item, pydantic.BaseModel) else (None, False)
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation, False
    return None, False


def model_paths(model: type[pydantic.BaseModel], prefix: str = "") -> tuple[set[str], set[str]]:
    """(every key path, the leaf paths) of a model, sections recursed into (``sources[].name``)."""
    paths, leaves = set(), set()
    for name, field in model.model_fields.items():
        if field.exclude:  # set by the loader, refused in a recipe (test_recipe.py)
            continue
        path = prefix + name
        paths.add(path)
        inner, is_list = _inner(field.annotation)
        if inner is None:
            leaves.add(path)
        else:
            sub_paths, sub_leaves = model_paths(inner, path + ("[]." if is_list else "."))
            paths |= sub_paths
            leaves |= sub_leaves
    return paths, leaves


def models_of(model: type[pydantic.BaseModel]) -> set[type[pydantic.BaseModel]]:
    out = {model}
    for field in model.model_fields.values():
        inner, _ = _inner(field.annotation)
        if inner is not None:
            out |= models_of(inner)
    return out


# ----------------------------------------------------------------------------------------------- the YAML walk


def undocumented_keys(data: dict, documented: set[str]) -> list[str]:
    """The key paths of a recipe's YAML that the reference does not list. A mapping or list is walked into only
    where the reference lists keys below it (``columns: {text: content}`` is a value); a mixture entry's
    ``tokenize`` holds ``tokenize`` keys."""
    bad: list[str] = []

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            path = prefix + str(key)
            if prefix == "sources[].tokenize.":
                if f"tokenize.{key}" not in documented or f"tokenize.{key}" in NOT_RECIPE_KEYS:
                    bad.append(path)
                continue
            if path not in documented:
                bad.append(path)
                continue
            if isinstance(value, dict) and (any(d.startswith(path + ".") for d in documented)
                                            or path == "sources[].tokenize"):
                walk(value, path + ".")
            elif isinstance(value, list) and any(d.startswith(path + "[].") for d in documented):
                for item in value:
                    walk(item, path + "[].")

    walk(data, "")
    return bad


def test_walk_finds_misspelled_and_unknown_keys():
    documented = {"source", "source.files", "source.columns", "sources", "sources[].name", "sources[].tokenize",
                  "tokenize", "tokenize.fim_rate"}
    data = {"source": {"files": ["a"], "colums": {"x": "y"}, "columns": {"anything": "goes"}},
            "sources": [{"name": "a", "tokenize": {"fim_rate": 0.5, "fim_rat": 1}}, {"nmae": "b"}], "seeds": 1}
    assert undocumented_keys(data, documented) == [
        "source.colums", "sources[].tokenize.fim_rat", "sources[].nmae", "seeds"]


# ----------------------------------------------------------------------------------------------- the tests


def test_docs_recipes_md_is_the_generated_reference():
    expected = render_recipe_reference()
    committed = DOC.read_text(encoding="utf-8") if DOC.is_file() else ""
    assert committed == expected, (
        f"docs/recipes.md is out of date with the recipe models: run `{REGENERATE}` and commit the result")


def test_every_key_of_every_model_is_listed_with_type_default_and_description():
    recipe_part, kd_part = _parts(DOC.read_text(encoding="utf-8"))
    for model, part in ((Recipe, recipe_part), (KDCacheConfig, kd_part)):
        rows = documented_rows(part)
        paths, leaves = model_paths(model)
        skipped = set(NOT_RECIPE_KEYS) if model is Recipe else set()
        assert leaves - skipped <= set(rows), f"leaf keys missing from docs/recipes.md: {sorted(leaves - set(rows))}"
        assert set(rows) == paths - skipped, f"listed but not keys: {sorted(set(rows) - paths)}"
        for key, cells in rows.items():
            assert len(cells) == 4 and all(c.strip() for c in cells), f"{key}: a row needs 4 filled cells: {cells}"
        # Spot checks against the models, by hand.
        if model is Recipe:
            assert rows["packing.seq_len"][1:3] == ["`int >= 2`", "*required*"]
            assert rows["splits.heldout_fraction"][1:3] == ["`0 <= float < 1`", "`0.0`"]
            assert rows["source.decode_errors"][1] == '`"strict" | "replace"`'
            assert rows["sources[].name"][1] == "`str matching ^[A-Za-z0-9_.-]+$`"
            assert rows["hub.tags"][1:3] == ["`list[str]`", "`[]`"]
            assert rows["tokenizer.train.vocab_size"][1:3] == ["`int >= 300`", "`2048`"]
            assert rows["tokenize"][1:3] == ["`section`", "`{}`"]
        else:
            assert rows["k"][1:3] == ["`int >= 1`", "`32`"]
            assert rows["teacher.masking"][1:3] == ['`"position_ids" | "4d"`', '`"position_ids"`']


def test_not_recipe_keys_are_refused_where_the_model_has_them(tmp_path):
    for key in NOT_RECIPE_KEYS:
        section, name = key.split(".")
        data = copy.deepcopy(BASE) | {section: {name: "hf"}}
        with pytest.raises(RecipeError, match=re.escape(section)):
            parse_recipe(data)


def test_a_key_without_a_description_is_an_error_naming_it():
    class Documented(pydantic.BaseModel):
        """Intro.

        Attributes:
            a, b: two numbers,
                documented together.
        """

        a: int = 0
        b: int = 0
        c: int = pydantic.Field(default=0, description="from ``Field``")
        d: int = 0

    class Child(Documented):
        """A subclass keeps its base's descriptions.

        Attributes:
            e: its own.
        """

        e: int = 0

    assert docstring_attributes(Documented) == {"a": "two numbers, documented together.",
                                                "b": "two numbers, documented together."}
    assert [field_description(Child, n) for n in "abce"] == [
        "two numbers, documented together.", "two numbers, documented together.", "from `Field`", "its own."]
    with pytest.raises(ConfigError, match=rf"Documented\.d has no description.*{re.escape(REGENERATE)}"):
        field_description(Child, "d")


def test_every_model_field_has_a_description():
    for model in models_of(Recipe) | models_of(KDCacheConfig):
        for name, field in model.model_fields.items():
            if not field.exclude:
                assert field_description(model, name).strip(), f"{model.__name__}.{name}"


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_recipes_use_only_documented_keys(path):
    recipe_part, kd_part = _parts(DOC.read_text(encoding="utf-8"))
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    is_kd = "teacher" in data or "kd" in data
    documented = set(documented_rows(kd_part if is_kd else recipe_part))
    assert undocumented_keys(data.get("kd", data), documented) == []


def test_examples_are_quoted_from_the_recipes_and_parse():
    recipe_part, kd_part = _parts(DOC.read_text(encoding="utf-8"))
    examples = [(f, y, False) for f, y in yaml_examples(recipe_part)] + [(f, y, True) for f, y in yaml_examples(kd_part)]
    assert len(examples) >= 10
    covered = set()
    for file, block, is_kd in examples:
        recipe_lines = (RECIPES / file).read_text(encoding="utf-8").splitlines()
        # Verbatim: the block's lines appear in the recipe in the same order.
        it = iter(recipe_lines)
        assert all(any(line == r for r in it) for line in block.splitlines()), f"not quoted from {file}:\n{block}"
        fragment = yaml.safe_load(block)
        if is_kd:
            config_from_dict(fragment, source=file)
            continue
        data = copy.deepcopy(BASE) | fragment
        if "sources" in fragment:
            del data["source"]
        parse_recipe(data, where=file)
        covered |= set(fragment)
    assert {"source", "sources", "tokenizer", "tokenize", "packing", "splits", "output", "hub", "engine"} <= covered


def _apply(base: dict, fragment: dict) -> dict:
    data = copy.deepcopy(base)
    for key, value in fragment.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = copy.deepcopy(value)
    return data


@pytest.mark.parametrize("rule", RULES, ids=lambda r: f"{r.section or 'top'}-{r.text[:40]}")
def test_each_rule_is_enforced(tmp_path, rule):
    assert rule.refused
    for fragment, error in rule.refused:
        path = tmp_path / "r.yaml"
        path.write_text(yaml.safe_dump(_apply(BASE, fragment)))
        with pytest.raises(RecipeError) as e:
            load_recipe(path)
        assert error in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("short", SHORTHANDS, ids=lambda s: s.text[:40])
def test_each_shorthand_means_what_it_says(tmp_path, short):
    if short.kd:
        assert config_from_dict(short.given) == config_from_dict(short.same_as)
        return
    given, same = tmp_path / "a.yaml", tmp_path / "b.yaml"
    given.write_text(yaml.safe_dump(_apply(BASE, short.given)))
    same.write_text(yaml.safe_dump(_apply(BASE, short.same_as)))
    assert load_recipe(given).model_dump() == load_recipe(same).model_dump()


def _resolve(dotted: str):
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):  # the longest importable prefix, then attributes
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def test_every_validator_of_the_models_has_a_rule_or_shorthand():
    validators = set()
    for model in models_of(Recipe) | models_of(KDCacheConfig):
        decorators = model.__pydantic_decorators__
        for dec in [*decorators.model_validators.values(), *decorators.field_validators.values()]:
            func = getattr(dec.func, "__func__", dec.func)
            validators.add(f"{func.__module__}.{func.__qualname__}")
    named = {r.checked_by for r in RULES} | {s.checked_by for s in SHORTHANDS}
    assert validators <= named, f"validators without a rule in hfprep.recipe_reference: {sorted(validators - named)}"
    for dotted in named:
        assert callable(_resolve(dotted)), dotted


def test_module_entry_point_prints_or_writes_atomically(tmp_path):
    env_cmd = [sys.executable, "-m", "hfprep.recipe_reference"]
    printed = subprocess.run(env_cmd, capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert printed == render_recipe_reference()
    out = tmp_path / "recipes.md"
    out.write_text("stale")
    subprocess.run([*env_cmd, str(out)], check=True, cwd=tmp_path)
    assert out.read_text(encoding="utf-8") == printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipes.md"]
    bad = subprocess.run([*env_cmd, "--check"], capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and "usage:" in bad.stderr
