"""The recipe reference, ``docs/recipes.md``, generated from the recipe models: every key with its type, default
and description, the rules the validators enforce, and examples quoted from ``recipes/``.

Regenerate it after changing a recipe model (``tests/test_recipe_reference.py`` fails until then)::

    python -m hfprep.recipe_reference docs/recipes.md

Where the text comes from, so there is one source of truth:

* a key's description: its ``Field(description=...)`` when it has one, else its entry in the ``Attributes:`` section
  of its class docstring (or of a base class's); a key whose value is a section may instead use the first paragraph
  of that section's class docstring. A key with none of these is an error naming the class and the field.
* a section's introduction: its class docstring before ``Attributes:``.
* type and default: the field's annotation, constraints (``ge``, ``lt``, ``pattern``...) and default.
* the rules under each section: :data:`RULES` and :data:`SHORTHANDS` below, one entry per validator (the tests
  check that every validator of the models has one and that every fragment listed as refused is refused).
* the examples: the blocks of the real recipes in ``recipes/`` that :data:`EXAMPLES` names, quoted verbatim.

Example:
    >>> text = render_recipe_reference()
    >>> [line for line in text.splitlines() if line.startswith("| `packing.seq_len` |")]
    ['| `packing.seq_len` | `int >= 2` | *required* | row length (>= 2). |']
    >>> type_label(float, [annotated_types.Ge(0.0), annotated_types.Lt(1.0)]), type_label(list[str] | None)
    ('0 <= float < 1', 'list[str] | null')
"""

from __future__ import annotations

import inspect
import json
import os
import re
import sys
import tempfile
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import annotated_types
import pydantic
import yaml
from pydantic_core import PydanticUndefined

from .configure import SEED_FIELDS
from .errors import ConfigError
from .kd.config import KDCacheConfig
from .pack.packers import PACKERS
from .recipe import Recipe
from .schema import MAX_SOURCES

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
"""The runnable recipes of a source checkout (the examples are quoted from them)."""

REGENERATE = "python -m hfprep.recipe_reference docs/recipes.md"

NOT_RECIPE_KEYS: dict[str, str] = {"tokenize.backend": "set it as `tokenizer.backend`"}
"""Model fields a recipe may not set where the model has them (a validator refuses them), left out of the tables."""

VALID_RECIPE: dict[str, Any] = {
    "source": {"files": ["train.jsonl"]},
    "tokenizer": {"name_or_path": "gpt2"},
    "packing": {"seq_len": 512},
    "output": {"folder": "out"},
}
"""The smallest valid recipe: the fragments of :data:`RULES` and :data:`SHORTHANDS` replace its top-level keys."""

VALID_KD_RECIPE: dict[str, Any] = {
    "input": {"folder": "out"},
    "teacher": {"name_or_path": "teacher"},
    "tokenizer": {"name_or_path": "teacher"},
    "output": {"folder": "out-kd"},
}
"""The smallest valid KD recipe."""


@dataclass(frozen=True)
class Rule:
    """A constraint beyond a key's type, printed under ``section`` ("" for the top level).

    ``refused`` pairs a recipe fragment that breaks the rule with a piece of the one-line error it must raise; a
    fragment replaces the top-level keys it names in :data:`VALID_RECIPE`, ``None`` removing one. ``checked_by`` is
    the dotted name of the validator or function that enforces it.
    """

    section: str
    text: str
    checked_by: str
    refused: tuple[tuple[dict[str, Any], str], ...]


@dataclass(frozen=True)
class Shorthand:
    """A short spelling a validator expands: the fragment ``given`` means the same as ``same_as``."""

    section: str
    text: str
    checked_by: str
    given: dict[str, Any]
    same_as: dict[str, Any]
    kd: bool = False


def _mix(*entries: dict[str, Any], **top: Any) -> dict[str, Any]:
    """A mixture fragment: ``sources`` instead of the valid recipe's ``source``."""
    return {"source": None, "sources": list(entries), **top}


def _src(name: str, **keys: Any) -> dict[str, Any]:
    return {"name": name, "files": [f"{name}.jsonl"], **keys}


RULES: tuple[Rule, ...] = (
    Rule("", "A recipe gives `source` (one source) or `sources` (a mixture), not both and not neither.",
         "hfprep.mixture.check_mixture_recipe",
         ((_mix(_src("web", weight=1)) | {"source": VALID_RECIPE["source"]}, "sources: give either 'source'"),
          ({"source": None}, "source: required key is missing"))),
    Rule("", "`tokens`, `max_epochs` and `source_column` apply only to a mixture (`sources`).",
         "hfprep.mixture.check_mixture_recipe",
         (({"tokens": 100000}, "tokens: only applies to a mixture"),
          ({"max_epochs": 2}, "max_epochs: only applies to a mixture"))),
    Rule("source", "Exactly one of `hub`, `files` or `text_dir`.", "hfprep.recipe.SourceConfig._one_kind",
         (({"source": {"hub": "HuggingFaceFW/fineweb-edu", "files": ["train.jsonl"]}}, "give exactly one of 'hub'"),
          ({"source": {"split": "train"}}, "give exactly one of 'hub', 'files' or 'text_dir' (got none)"))),
    Rule("source", "`files` lists at least one file or glob.", "hfprep.recipe.SourceConfig._one_kind",
         (({"source": {"files": []}}, "'files' is empty"),)),
    Rule("sources", "Each entry gives exactly one of `weight` (a share) or `tokens` (an absolute budget).",
         "hfprep.recipe.MixtureSourceConfig._one_budget",
         ((_mix(_src("web")), "give exactly one of 'weight'"),
          (_mix(_src("web", weight=1, tokens=1000)), "give exactly one of 'weight'"))),
    Rule("sources", f"`sources` lists 1 to {MAX_SOURCES} entries, with distinct names.",
         "hfprep.mixture.check_mixture_recipe",
         ((_mix(_src("web", weight=0.5), _src("web", weight=0.5)), "sources[1].name: 'web' is already the name"),
          (_mix(), "sources: the list is empty"),
          (_mix(*(_src(f"s{i}", weight=1) for i in range(MAX_SOURCES + 1))), f"at most {MAX_SOURCES} can be mixed"))),
    Rule("sources", "When entries mix `weight` and `tokens`, the top-level `tokens` is required and must exceed the "
         "sum of the `tokens` entries (the weighted entries share the rest).", "hfprep.mixture.check_mixture_recipe",
         ((_mix(_src("web", weight=1), _src("code", tokens=1000)), "tokens: required when 'sources' mix"),
          (_mix(_src("web", weight=1), _src("code", tokens=1000), tokens=1000), "leaves nothing for the weighted"))),
    Rule("sources", "When every entry gives `tokens`, a top-level `tokens` must equal their sum.",
         "hfprep.mixture.check_mixture_recipe",
         ((_mix(_src("web", tokens=1000), _src("code", tokens=500), tokens=2000), "differs from the sum"),)),
    Rule("sources", "An entry's `tokenize` holds `tokenize` keys, applied over the recipe's `tokenize` section for "
         "this source (not `backend`: the tokenizer is the same for every source).",
         "hfprep.mixture.check_mixture_recipe",
         ((_mix(_src("code", weight=1, tokenize={"fim_rat": 0.5})), "sources[0].tokenize.fim_rat: unknown key"),
          (_mix(_src("code", weight=1, tokenize={"backend": "hf"})), "sources[0].tokenize.backend: set the backend"))),
    Rule("tokenizer", "Exactly one of `name_or_path` or `train`.", "hfprep.recipe.TokenizerSection._one",
         (({"tokenizer": {"name_or_path": "gpt2", "train": {"vocab_size": 2048}}}, "give exactly one of 'name_or_path'"),
          ({"tokenizer": {"backend": "hf"}}, "give exactly one of 'name_or_path' or 'train'"))),
    Rule("tokenize", "The encoder is chosen by `tokenizer.backend`; `tokenize.backend` is refused.",
         "hfprep.recipe.Recipe._no_backend_here",
         (({"tokenize": {"backend": "hf"}}, "set the backend under tokenizer.backend"),)),
    Rule("packing", "`strategy` names a registered packer (checked when the recipe file is loaded).",
         "hfprep.recipe.check_packing_strategy",
         (({"packing": {"seq_len": 512, "strategy": "greedy"}}, "packing.strategy: unknown packer 'greedy'"),)),
    Rule("splits", "`train_name` and `heldout_name` differ.", "hfprep.recipe.SplitsSection._distinct",
         (({"splits": {"heldout_fraction": 0.1, "heldout_name": "train"}}, "train_name and heldout_name must differ"),)),
)
"""Every constraint the recipe validators enforce beyond a key's type (tests check each fragment is refused)."""

SHORTHANDS: tuple[Shorthand, ...] = (
    Shorthand("source", "One file may be given as a string", "hfprep.recipe.SourceConfig._one_file",
              {"source": {"files": "train.jsonl"}}, {"source": {"files": ["train.jsonl"]}}),
    Shorthand("engine", "The section may be just the engine's name", "hfprep.recipe.Recipe._engine_shorthand",
              {"engine": "ray"}, {"engine": {"name": "ray"}}),
    Shorthand("", "The whole KD recipe may sit under one top-level `kd:` key", "hfprep.kd.config.config_from_dict",
              {"kd": VALID_KD_RECIPE}, VALID_KD_RECIPE, kd=True),
)
"""Short spellings the validators expand (tests check each means what it says)."""

EXAMPLES: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "": (("quickstart.yaml", ("name", "description", "seed")),),
    "source": (("quickstart.yaml", ("source",)), ("pretrain_fineweb_edu.yaml", ("source",)),
               ("pretrain_ray.yaml", ("source",))),
    "sources": (("mixture_stdlib.yaml", ("sources", "tokens", "max_epochs", "source_column")),),
    "tokenizer": (("quickstart.yaml", ("tokenizer",)), ("pretrain_fineweb_edu.yaml", ("tokenizer",))),
    "tokenize": (("fim_code.yaml", ("tokenize",)), ("sft_chat.yaml", ("tokenize",))),
    "packing": (("pretrain_ray.yaml", ("packing",)),),
    "splits": (("fim_code.yaml", ("splits",)),),
    "output": (("pretrain_fineweb_edu.yaml", ("output",)),),
    "hub": (("pretrain_fineweb_edu.yaml", ("hub",)),),
    "engine": (("pretrain_ray.yaml", ("engine",)), ("fim_code.yaml", ("engine",))),
}
"""Per section: (recipe file, top-level keys whose blocks are quoted from it)."""

KD_EXAMPLE = "kd_cache.yaml"

_MAX_INLINE = 110  # a rule's fragment longer than this is not printed (the rule's text says it)


# ----------------------------------------------------------------------------------------------- text from code


_ROLE = re.compile(r":(?:mod|func|class|data|meth|attr|obj|exc):`(~?)([^`<]*?)(?:\s*<([^>]+)>)?`")


def rst_to_markdown(text: str) -> str:
    """Docstring text -> one line of Markdown: ``code`` -> `code`, :role:`~a.b` -> `b`, whitespace collapsed.

    Example:
        >>> rst_to_markdown("see :mod:`hfprep.mixture` and\\n    :func:`~hfprep.recipe.load_recipe`; ``null``")
        'see `hfprep.mixture` and `load_recipe`; `null`'
    """

    def role(m: re.Match) -> str:
        target = m.group(2).strip()
        return f"`{target.rsplit('.', 1)[-1] if m.group(1) else target}`"

    text = _ROLE.sub(role, text)
    text = re.sub(r"``(.+?)``", r"`\1`", text, flags=re.S)
    return " ".join(text.split())


def _docstring(cls: type) -> list[str]:
    return inspect.cleandoc(cls.__dict__.get("__doc__") or "").splitlines()


def docstring_attributes(cls: type) -> dict[str, str]:
    """The ``Attributes:`` entries of ``cls``'s own docstring, ``{field: raw text}`` (``a, b: text`` gives both).

    Example:
        >>> class C:
        ...     '''Intro.
        ...
        ...     Attributes:
        ...         x, y: the two
        ...             coordinates.
        ...     '''
        >>> docstring_attributes(C)
        {'x': 'the two coordinates.', 'y': 'the two coordinates.'}
    """
    lines = _docstring(cls)
    if "Attributes:" not in lines:
        return {}
    entries: dict[str, list[str]] = {}
    current: list[str] = []
    for line in lines[lines.index("Attributes:") + 1 :]:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent == 0:
            break
        m = re.match(r"^ {4}([A-Za-z_]\w*(?:, [A-Za-z_]\w*)*): (.*)$", line)
        if indent == 4 and m:
            current = [m.group(2)]
            for name in m.group(1).split(", "):
                entries[name] = current
        elif indent > 4 and current:
            current.append(line.strip())
        else:
            raise ConfigError(f"{cls.__qualname__}: malformed Attributes: line {line.strip()!r} (want 'name: text')")
    return {name: " ".join(parts) for name, parts in entries.items()}


def class_intro(cls: type) -> str:
    """The class docstring before ``Attributes:`` as Markdown paragraphs."""
    lines = _docstring(cls)
    if "Attributes:" in lines:
        lines = lines[: lines.index("Attributes:")]
    paragraphs = "\n".join(lines).strip().split("\n\n")
    return "\n\n".join(rst_to_markdown(p) for p in paragraphs if p.strip())


def field_description(model: type[pydantic.BaseModel], name: str) -> str:
    """A field's description (see the module docstring for where it comes from), as Markdown."""
    info = model.model_fields[name]
    if info.description:
        return rst_to_markdown(info.description)
    for cls in _recipe_classes(model):
        text = docstring_attributes(cls).get(name)
        if text:
            return rst_to_markdown(text)
    section = _section_model(info.annotation)
    if section is not None and class_intro(section):
        return class_intro(section).split("\n\n")[0]
    owner = next(c for c in reversed(_recipe_classes(model)) if name in c.model_fields)  # where it is declared
    raise ConfigError(
        f"{owner.__module__}.{owner.__qualname__}.{name} has no description: add it to the class docstring's "
        f"Attributes: section (or give Field(description=...)), then run `{REGENERATE}`"
    )


def _recipe_classes(model: type[pydantic.BaseModel]) -> list[type]:
    """``model`` and its bases up to (not including) pydantic's ``BaseModel``."""
    return [c for c in model.__mro__ if issubclass(c, pydantic.BaseModel) and c is not pydantic.BaseModel]


# ----------------------------------------------------------------------------------------------- types, defaults


def _optional_parts(annotation: Any) -> tuple[list[Any], bool]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        return [a for a in args if a is not type(None)], type(None) in args
    return [annotation], False


def _section_model(annotation: Any) -> type[pydantic.BaseModel] | None:
    """The section model a field holds (alone, optional or as list items), else None."""
    parts, _ = _optional_parts(annotation)
    if len(parts) != 1:
        return None
    inner = parts[0]
    if typing.get_origin(inner) is list:
        inner = typing.get_args(inner)[0]
    return inner if isinstance(inner, type) and issubclass(inner, pydantic.BaseModel) else None


def _is_list(annotation: Any) -> bool:
    parts, _ = _optional_parts(annotation)
    return len(parts) == 1 and typing.get_origin(parts[0]) is list


def _num(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def type_label(annotation: Any, metadata: typing.Sequence[Any] = ()) -> str:
    """A readable type: ``int >= 2``, ``"psm" | "spm"``, ``list[str] | null``, ``section``, ``0 <= float < 1``."""
    parts, optional = _optional_parts(annotation)
    if len(parts) > 1 or optional:
        return " | ".join(type_label(p, metadata) for p in parts) + (" | null" if optional else "")
    t = parts[0]
    origin = typing.get_origin(t)
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in typing.get_args(t))
    if origin is list:
        return f"list[{type_label(typing.get_args(t)[0])}]"
    if origin is dict:
        k, v = typing.get_args(t)
        return f"dict[{type_label(k)}, {type_label(v)}]"
    if t is Any:
        return "any"
    if isinstance(t, type) and issubclass(t, pydantic.BaseModel):
        return "section"
    label = t.__name__
    low = next((f">= {_num(m.ge)}" for m in metadata if isinstance(m, annotated_types.Ge)), None)
    low = low or next((f"> {_num(m.gt)}" for m in metadata if isinstance(m, annotated_types.Gt)), None)
    high = next((f"<= {_num(m.le)}" for m in metadata if isinstance(m, annotated_types.Le)), None)
    high = high or next((f"< {_num(m.lt)}" for m in metadata if isinstance(m, annotated_types.Lt)), None)
    if low and high:
        op, value = low.split(" ")
        label = f"{value} {'<=' if op == '>=' else '<'} {label} {high}"
    elif low or high:
        label = f"{label} {low or high}"
    pattern = next((getattr(m, "pattern", None) for m in metadata if getattr(m, "pattern", None)), None)
    return f"{label} matching {pattern}" if pattern else label


def _type_of(path: str, info: Any) -> str:
    if path == "packing.strategy":  # a str checked against the packer registry (check_packing_strategy)
        return " | ".join(json.dumps(k) for k in sorted(PACKERS))
    return type_label(info.annotation, info.metadata)


def default_label(path: str, info: Any) -> str:
    """``*required*``, or the default as YAML (``null``, ``"train"``, ``[]``; ``{}`` for a section of defaults)."""
    if path.startswith("tokenize.") and path.split(".", 1)[1] in SEED_FIELDS:
        return "the recipe's `seed`"  # configure.effective_tokenize_config
    if info.is_required():
        return "*required*"
    value = info.default_factory() if info.default_factory is not None else info.default
    if value is PydanticUndefined:
        return "*required*"
    if isinstance(value, pydantic.BaseModel):
        return "`{}`"
    text = f"`{json.dumps(value)}`"
    if isinstance(value, int) and not isinstance(value, bool) and value >= 2**20 and value % 2**20 == 0:
        text += f" ({value // 2**30} GiB)" if value % 2**30 == 0 else f" ({value // 2**20} MiB)"
    return text


# ----------------------------------------------------------------------------------------------- the keys


@dataclass(frozen=True)
class Key:
    """One row of a section's table."""

    path: str
    type: str
    default: str
    description: str


def _fields(model: type[pydantic.BaseModel]) -> list[str]:
    """A model's recipe keys, its own first (a mixture entry's name/weight before the source keys it inherits)."""
    inherited = {n for base in model.__bases__ if issubclass(base, pydantic.BaseModel) for n in base.model_fields}
    names = [n for n, f in model.model_fields.items() if not f.exclude]
    return [n for n in names if n not in inherited] + [n for n in names if n in inherited]


def section_keys(model: type[pydantic.BaseModel], prefix: str) -> Iterator[Key]:
    """The rows of one section: every field, and the fields of the sections nested in it (``tokenizer.train.*``)."""
    for name in _fields(model):
        path = f"{prefix}{name}"
        if path in NOT_RECIPE_KEYS:
            continue
        info = model.model_fields[name]
        yield Key(path, _type_of(path, info), default_label(path, info), field_description(model, name))
        nested = _section_model(info.annotation)
        if nested is not None:
            yield from section_keys(nested, f"{path}{'[]' if _is_list(info.annotation) else ''}.")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def key_table(keys: list[Key]) -> str:
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    rows += [f"| `{k.path}` | `{_cell(k.type)}` | {_cell(k.default)} | {_cell(k.description)} |" for k in keys]
    return "\n".join(rows)


# ----------------------------------------------------------------------------------------------- notes, examples


def _flow(fragment: dict[str, Any]) -> str:
    """A fragment as inline YAML (``None`` values, removals, left out)."""
    dumped = [f"{k}: {yaml.safe_dump(v, default_flow_style=True, sort_keys=False, width=10**6).strip()}"
              for k, v in fragment.items() if v is not None]
    return "; ".join(d.removesuffix("\n...") for d in dumped)


def notes(section: str, kd: bool = False) -> str:
    lines = []
    for s in SHORTHANDS:
        if s.section == section and s.kd == kd:
            given, same = _flow(s.given), _flow(s.same_as)
            lines.append(f"* {s.text}" + (f": `{given}` is `{same}`." if len(given + same) <= _MAX_INLINE else "."))
    for r in () if kd else RULES:
        if r.section == section:
            first = _flow(r.refused[0][0])
            lines.append(f"* {r.text}" + (f" Refused: `{first}`." if len(first) <= _MAX_INLINE else ""))
    return "Rules:\n\n" + "\n".join(lines) if lines else ""


def recipe_block(text: str, key: str, where: str) -> str:
    """The lines of top-level ``key`` in a recipe file's text, verbatim (comments kept, trailing blanks cut)."""
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith(f"{key}:")), None)
    if start is None:
        raise ConfigError(f"{where}: has no top-level {key!r} to quote; fix EXAMPLES in {__name__}")
    end = next((i for i in range(start + 1, len(lines)) if lines[i][:1] not in ("", " ")), len(lines))
    return "\n".join(lines[start:end]).rstrip()


def examples(section: str, recipes_dir: Path) -> str:
    out = []
    for file, keys in EXAMPLES.get(section, ()):
        path = recipes_dir / file
        text = path.read_text(encoding="utf-8")
        block = "\n".join(recipe_block(text, k, str(path)) for k in keys)
        out.append(f"From `recipes/{file}`:\n\n```yaml\n{block}\n```")
    return "\n\n".join(out)


# ----------------------------------------------------------------------------------------------- the document


def _section(title: str, intro: str, keys: list[Key], *parts: str) -> str:
    return "\n\n".join(p for p in (f"## {title}", intro, key_table(keys), *parts) if p)


def _model_sections(root: type[pydantic.BaseModel], recipes_dir: Path, kd: bool) -> list[str]:
    top = [k for k in section_keys(root, "") if "." not in k.path]
    label = "KD recipe: top-level keys" if kd else "Top-level keys"
    out = [_section(label, class_intro(root), top, notes("", kd), "" if kd else examples("", recipes_dir))]
    for name in _fields(root):
        model = _section_model(root.model_fields[name].annotation)
        if model is None:
            continue
        prefix = f"{name}[]." if _is_list(root.model_fields[name].annotation) else f"{name}."
        title = f"KD `{name}`" if kd else f"`{name}`"
        out.append(_section(title, class_intro(model), list(section_keys(model, prefix)),
                            notes(name, kd), "" if kd else examples(name, recipes_dir)))
    return out


INTRO = f"""\
<!-- Generated from the recipe models by `{REGENERATE}`: do not edit by hand. Change the
models' docstrings (hfprep/recipe.py, hfprep/tokenization/stage.py, hfprep/kd/config.py) and regenerate;
tests/test_recipe_reference.py fails while this file is out of date. -->

# Recipe reference

A recipe is one YAML file that says everything about a prepared dataset: `hfprep run RECIPE`. This page lists every
key a recipe accepts: its type, its default (*required* when it has none) and what it does, then the rules that
relate keys to each other and examples quoted from the recipes in `recipes/`. The KD-cache recipes of
`hfprep kd-cache` follow at the end.

* Unknown keys, wrong types and missing keys are refused with one line naming the file and the key.
* `null` is YAML's null (`~`, or nothing after the colon); a key left out takes its default.
* Relative paths (`source.files`, `source.text_dir`, `output.folder`, local tokenizer folders...) resolve against the
  recipe file's folder; `{{stdlib}}` in `source.text_dir` is the running Python's standard-library folder.
* `hfprep run` options override some keys: `--overwrite` (`output.overwrite`), `--engine` (`engine.name`),
  `--num-proc` (`engine.num_proc`), `--no-push` (`hub.push`)."""

KD_INTRO = """\
# KD cache recipes

`hfprep kd-cache RECIPE` runs a teacher over a prepared dataset and stores its top-k log-probabilities (and, if
asked, hidden states) next to the packed rows. Its recipe is a separate YAML file with these keys; relative folders
resolve against the recipe's folder, and unknown keys are errors."""


def render_recipe_reference(recipes_dir: str | os.PathLike | None = None) -> str:
    """The whole ``docs/recipes.md``: the recipe keys by section, then the KD-cache recipe keys.

    Raises:
        ConfigError: a key without a description, or ``recipes_dir`` (default: the checkout's ``recipes/``)
            lacks an example the reference quotes.
    """
    recipes = Path(recipes_dir) if recipes_dir is not None else RECIPES_DIR
    if not recipes.is_dir():
        raise ConfigError(f"recipes folder {str(recipes)!r} not found: run from a source checkout of hfprep")
    kd_text = (recipes / KD_EXAMPLE).read_text(encoding="utf-8").rstrip()
    parts = [
        INTRO,
        *_model_sections(Recipe, recipes, kd=False),
        KD_INTRO,
        *_model_sections(KDCacheConfig, recipes, kd=True),
        f"## KD example\n\nFrom `recipes/{KD_EXAMPLE}`:\n\n```yaml\n{kd_text}\n```",
    ]
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m hfprep.recipe_reference [OUTPUT]``: print the reference, or write it to OUTPUT atomically."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1 or (args and args[0].startswith("-")):
        print(f"usage: {REGENERATE.replace('docs/recipes.md', '[OUTPUT]')}", file=sys.stderr)
        return 2
    text = render_recipe_reference()
    if not args:
        sys.stdout.write(text)
        return 0
    target = Path(args[0])
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
