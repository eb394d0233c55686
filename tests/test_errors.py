"""One-line errors that name the file, the row and a real recipe key (bad bytes, null texts, hints, CLI exits)."""

from __future__ import annotations

import ast
import json
import re
import typing
from pathlib import Path

import pydantic
import pytest
import yaml

import hfprep
from hfprep.kd.config import KDCacheConfig
from hfprep.recipe import Recipe

PACKAGE = Path(hfprep.__file__).parent


# ----------------------------------------------------------------------------------------------- hints name real keys


def _model_of(annotation: typing.Any) -> type[pydantic.BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        m = _model_of(arg)
        if m is not None:
            return m
    return None


def _keys(model: type[pydantic.BaseModel], prefix: str = "") -> set[str]:
    out = set()
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        out.add(prefix + name)
        sub = _model_of(field.annotation)
        if sub is not None:
            out |= _keys(sub, prefix + name + ".")
    return out


RECIPE_KEYS = _keys(Recipe) | _keys(KDCacheConfig)
SECTIONS = {k for k in RECIPE_KEYS if "." not in k and any(x.startswith(k + ".") for x in RECIPE_KEYS)}
LEAF_NAMES = {k.rsplit(".", 1)[-1] for k in RECIPE_KEYS}
DOTTED = re.compile(r"\b(" + "|".join(sorted(SECTIONS)) + r")((?:\.[A-Za-z_]\w*)+)")
# "set text_column / fim_kwargs", "use masking: position_ids": bare recipe-key-looking names after set/use.
BARE = re.compile(r"\b(?:set|use)\s+([a-z]+_[a-z_]+(?:\s*/\s*[a-z]+_[a-z_]+)*)\b(?![=(])")


def _message_strings() -> list[tuple[str, int, str]]:
    """Every string that goes into a raised error or a warning in the package (f-string parts included)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            is_warning = (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("warn", "warning", "error")
            )
            if not (isinstance(node, ast.Raise) or is_warning):
                continue
            text = "".join(
                c.value for c in ast.walk(node) if isinstance(c, ast.Constant) and isinstance(c.value, str)
            )
            found.append((path.relative_to(PACKAGE.parent).as_posix(), node.lineno, text))
    return found


def test_key_universe_is_the_recipe_models():
    # Independent spot checks that the walk over the pydantic models found what a recipe can hold.
    assert {"source.decode_errors", "tokenize.on_empty", "packing.packing_kwargs", "teacher.masking"} <= RECIPE_KEYS
    assert "tokenizer.chat_template" not in RECIPE_KEYS and "fim_kwargs" not in LEAF_NAMES


def test_every_hint_names_a_real_recipe_key():
    messages = _message_strings()
    assert len(messages) > 50  # the walk sees the package's raise statements
    bad = []
    for where, line, text in messages:
        for m in DOTTED.finditer(text):
            key = m.group(1) + m.group(2)
            # "tokenizer.json", "packing.py": file names; "tokenizer.add_special_tokens(": a Python call
            if re.match(r"\.(json|py|yaml|md)\b", m.group(2)) or text[m.end() : m.end() + 1] == "(":
                continue
            if key not in RECIPE_KEYS:
                bad.append(f"{where}:{line}: {key}")
        for m in BARE.finditer(text):
            for name in re.split(r"\s*/\s*", m.group(1)):
                if name not in LEAF_NAMES:
                    bad.append(f"{where}:{line}: {name}")
    assert not bad, "hints name keys no recipe has:\n" + "\n".join(bad)


def test_hint_checker_catches_the_known_bad_hints():
    # The two hints the issue found, fed to the same patterns, must be flagged.
    for text in ("set tokenizer.chat_template (a Jinja string)", "set text_column / fim_kwargs column names"):
        dotted = [m.group(1) + m.group(2) for m in DOTTED.finditer(text)]
        bare = [n for m in BARE.finditer(text) for n in re.split(r"\s*/\s*", m.group(1))]
        assert [k for k in dotted if k not in RECIPE_KEYS] + [n for n in bare if n not in LEAF_NAMES]


# ----------------------------------------------------------------------------------------------- helpers


def _recipe(folder: Path, tokenizer_path: str, source: dict, **over) -> Path:
    data = {
        "source": source,
        "tokenizer": {"name_or_path": tokenizer_path},
        "tokenize": {"strategy": "pretrain", "text_column": "text"},
        "packing": {"seq_len": 8, "strategy": "dense", "num_reduce_chunks": 2},
        "output": {"folder": "out", "plots": False},
        **over,
    }
    p = folder / "recipe.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def _run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    from hfprep.cli import main

    capsys.readouterr()
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err.strip()


def _run_error(recipe: Path, capsys) -> tuple[int, str]:
    """``hfprep run --json``: (exit code, the error event's message); nothing may go to stderr."""
    code, out, err = _run_cli(["run", str(recipe), "--json"], capsys)
    assert err == ""
    event = json.loads(out.strip().splitlines()[-1])
    assert event["event"] == "error" and event["exit_code"] == code
    assert "\n" not in event["message"]
    return code, event["message"]


# ----------------------------------------------------------------------------------------------- bad bytes


def test_non_utf8_jsonl_is_one_line_naming_file_line_and_column(tmp_path, tokenizer_path, capsys):
    src = tmp_path / "docs.jsonl"
    src.write_bytes(b'{"text": "fine"}\n\n{"text": "caf\xe9 au lait"}\n{"text": "also fine"}\n')
    code, line = _run_error(_recipe(tmp_path, tokenizer_path, {"files": ["docs.jsonl"]}), capsys)
    assert code == 1
    # Line 3 of the file, column 14: '{"text": "caf' is 13 bytes, the bad byte is the 14th.
    assert f"{src}: line 3, column 14" in line and "e9" in line and "UTF-8" in line
    assert not (tmp_path / "out").exists()


def _text_dir(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"plain ascii text here\n")
    # Three undecodable sequences, counted by hand: a lone 0xff, a latin-1 0xe9, a truncated 2-byte sequence.
    (root / "sub" / "b.txt").write_bytes(b"one\nbad \xff here and caf\xe9 too\nend \xc3")
    (root / "c.txt").write_bytes("ok \ufffd already replaced\n".encode())  # a real U+FFFD is not a replacement
    return root


def test_text_dir_strict_refuses_naming_the_file(tmp_path, tokenizer_path, capsys):
    root = _text_dir(tmp_path)
    code, line = _run_error(_recipe(tmp_path, tokenizer_path, {"text_dir": "corpus"}), capsys)
    assert code == 1
    assert f"{root / 'sub' / 'b.txt'}: line 2, column 5" in line and "source.decode_errors: replace" in line
    assert not (tmp_path / "out").exists()


def test_text_dir_replace_counts_in_summary_and_card(tmp_path, tokenizer_path):
    from hfprep.describe import format_summary
    from hfprep.output.card import read_card_metadata
    from hfprep.run import run_recipe

    _text_dir(tmp_path)
    recipe = _recipe(tmp_path, tokenizer_path, {"text_dir": "corpus", "decode_errors": "replace"})
    summary = run_recipe(recipe)
    assert summary["decode_replacements"] == 3
    assert "3 undecodable byte sequence(s) replaced by U+FFFD" in format_summary(summary)
    meta = read_card_metadata(tmp_path / "out" / "README.md")
    assert meta["hfprep"]["source_decode_replacements"] == 3
    assert "3 undecodable byte sequence(s) in 1 file(s)" in (tmp_path / "out" / "README.md").read_text()


# ----------------------------------------------------------------------------------------------- source rows


def _write_jsonl_with_blank_lines(path: Path, texts: list[str]) -> dict[int, int]:
    """Write ``texts`` with a blank line after every 7th row; returns {row index: 1-based file line}."""
    lines, where = [], {}
    for i, t in enumerate(texts):
        lines.append(json.dumps({"text": t}))
        where[i] = len(lines)
        if i % 7 == 6:
            lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return where


@pytest.mark.parametrize("heldout", [0.0, 0.3])
def test_row_errors_name_the_source_file_and_line(tmp_path, tokenizer_path, capsys, heldout):
    texts = [f"document {i} " * 3 for i in range(40)]
    bad = 29
    texts[bad] = ""  # tokenize.on_empty defaults to error
    where = _write_jsonl_with_blank_lines(tmp_path / "docs.jsonl", texts)
    recipe = _recipe(tmp_path, tokenizer_path, {"files": ["docs.jsonl"]}, splits={"heldout_fraction": heldout})
    code, line = _run_error(recipe, capsys)
    assert code == 1
    assert f"{tmp_path / 'docs.jsonl'} line {where[bad]} (source row {bad})" in line
    assert "tokenize.on_empty: drop" in line


def test_row_errors_name_the_parquet_file_and_its_row(tmp_path, tokenizer_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    first = [f"first file {i}" for i in range(12)]
    second = [f"second file {i}" for i in range(9)]
    second[4] = ""
    pq.write_table(pa.table({"text": first}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"text": second}), tmp_path / "b.parquet")
    recipe = _recipe(tmp_path, tokenizer_path, {"files": ["a.parquet", "b.parquet"]})
    code, line = _run_error(recipe, capsys)
    assert code == 1
    assert f"{tmp_path / 'b.parquet'} row 4 (source row 16)" in line


# ----------------------------------------------------------------------------------------------- null texts


def test_on_empty_drop_also_drops_null_texts(tmp_path, tokenizer_path, tokenizer):
    from hfprep.run import run_recipe

    texts = ["alpha beta", None, "gamma", "", None, "delta epsilon"]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    recipe = _recipe(tmp_path, tokenizer_path, {"files": ["docs.jsonl"]},
                     tokenize={"strategy": "pretrain", "text_column": "text", "on_empty": "drop"},
                     packing={"seq_len": 4, "strategy": "dense", "num_reduce_chunks": 1})
    summary = run_recipe(recipe)
    kept = [t for t in texts if t]
    assert summary["splits"]["train"]["docs_dropped_by_tokenizer"] == len(texts) - len(kept) == 3
    assert summary["totals"]["tokens_in"] == sum(len(tokenizer.encode(t, add_special_tokens=False)) + 1 for t in kept)


def test_null_text_without_drop_names_the_fix(tokenizer):
    from hfprep.errors import DataError
    from hfprep.tokenization.stage import TokenizeConfig, tokenize_batch

    with pytest.raises(DataError, match=r"row 1: column 'text' must be a string, got NoneType.*tokenize.on_empty"):
        tokenize_batch({"text": ["a", None]}, tokenizer, TokenizeConfig(text_column="text"))


# ----------------------------------------------------------------------------------------------- validate / inspect


def _bad_folder(folder: Path, rows: int, shards: int = 1) -> Path:
    """A folder of ``rows`` rows whose positions all start at 1 (one violation per row) and no card."""
    import pyarrow as pa

    from hfprep.output.layout import write_split
    from hfprep.tokenization.stage import tokenized_features

    table = pa.table(
        {"input_ids": [[1, 2, 3]] * rows, "position_ids": [[1, 2, 3]] * rows, "loss_mask": [[True] * 3] * rows},
        schema=tokenized_features().arrow_schema,
    )
    write_split(table, folder, "train", features=tokenized_features(), max_rows_per_shard=-(-rows // shards))
    return folder


def test_validate_of_a_missing_folder_is_a_usage_error(tmp_path, capsys):
    code, _, err = _run_cli(["validate", str(tmp_path / "nope")], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and str(tmp_path / "nope") in err and "does not exist" in err
    (tmp_path / "file.txt").write_text("x")
    code, _, err = _run_cli(["validate", str(tmp_path / "file.txt")], capsys)
    assert code == 2 and "is a file" in err


def test_validate_says_when_it_cut_the_list(tmp_path, capsys):
    from hfprep.output.validate import validate_folder

    folder = _bad_folder(tmp_path / "bad", rows=20)
    full = validate_folder(folder, max_violations=100)
    # Hand count: 20 rows whose positions start at 1, plus the missing card.
    assert len(full.violations) == 21 and not full.truncated
    cut = validate_folder(folder, max_violations=5)
    assert cut.truncated and cut.violations == full.violations[:5]
    code, _, err = _run_cli(["validate", str(folder), "--max-violations", "5"], capsys)
    assert code == 1
    head, *rest = err.splitlines()
    assert "cut at --max-violations 5" in head and len(rest) == 5
    code, out, _ = _run_cli(["validate", str(folder), "--max-violations", "5", "--json"], capsys)
    assert json.loads(out)["truncated"] is True
    code, _, err = _run_cli(["validate", str(folder), "--max-violations", "21"], capsys)
    assert "cut at" not in err.splitlines()[0] and len(err.splitlines()) == 22


def test_validate_names_a_missing_shard_file(tmp_path):
    from hfprep.output.validate import validate_folder

    folder = _bad_folder(tmp_path / "bad", rows=9, shards=3)
    assert sorted(p.name for p in (folder / "data").iterdir()) == [
        f"train-0000{i}-of-00003.parquet" for i in range(3)
    ]
    (folder / "data" / "train-00001-of-00003.parquet").unlink()
    report = validate_folder(folder)
    assert any("missing shard file(s) data/train-00001-of-00003.parquet" in v for v in report.violations)


@pytest.mark.parametrize("damage", ["truncate", "garble"])
def test_inspect_of_a_damaged_parquet_is_one_line(tmp_path, capsys, damage):
    folder = _bad_folder(tmp_path / "bad", rows=4)
    shard = folder / "data" / "train-00000-of-00001.parquet"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2] if damage == "truncate" else data[:4] + b"\0" * (len(data) - 8) + data[-8:])
    code, _, err = _run_cli(["inspect", str(folder)], capsys)
    assert code == 1 and len(err.splitlines()) == 1
    assert str(shard) in err and "unreadable Parquet" in err


# ----------------------------------------------------------------------------------------------- Hub and warnings


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _subprocess_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE") and "PROXY" not in k.upper()}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_DATASETS_CACHE=str(tmp_path / "ds_cache"), **extra)
    env["PYTHONPATH"] = str(PACKAGE.parent) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.parametrize("what", ["source", "tokenizer"])
def test_hub_only_recipe_without_hub_fails_in_one_line(tmp_path, tokenizer_path, what):
    import subprocess
    import sys

    (tmp_path / "docs.jsonl").write_text('{"text": "hello"}\n')
    source = {"hub": "someone/some-dataset"} if what == "source" else {"files": ["docs.jsonl"]}
    recipe = _recipe(tmp_path, tokenizer_path, source)
    if what == "tokenizer":
        data = yaml.safe_load(recipe.read_text())
        data["tokenizer"] = {"name_or_path": "someone/some-tokenizer"}
        recipe.write_text(yaml.safe_dump(data))
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    env = _subprocess_env(tmp_path, HF_ENDPOINT=endpoint)
    proc = subprocess.run(
        [sys.executable, "-m", "hfprep", "run", str(recipe), "--json"],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 1
    # No retry chatter: the Hub clients print a line per retry when they are left to find out themselves.
    assert proc.stderr.strip() == "", proc.stderr
    event = json.loads(proc.stdout.strip().splitlines()[-1])
    key = "source.hub 'someone/some-dataset'" if what == "source" else "tokenizer.name_or_path 'someone/some-tokenizer'"
    assert event["event"] == "error" and key in event["message"] and endpoint in event["message"]
    assert "cannot be reached" in event["message"]


def test_backend_auto_fallback_warning_is_one_line(tmp_path):
    import subprocess
    import sys

    from hfprep.tokenization.backends import FAST_BACKEND_MIN_BYTES
    from hfprep.tokenization.loading import train_tiny_tokenizer

    tok_dir = tmp_path / "tok"
    train_tiny_tokenizer(["hello world, def f(x): return x"] * 20, tok_dir, vocab_size=300)
    # A single_word added token is a feature the fast backend does not implement: 'auto' must fall back to 'hf'.
    config = json.loads((tok_dir / "tokenizer.json").read_text())
    config["added_tokens"][-1]["single_word"] = True
    (tok_dir / "tokenizer.json").write_text(json.dumps(config))
    # Above FAST_BACKEND_MIN_BYTES: for smaller inputs 'auto' keeps 'hf' without trying the fast backend.
    body = "hello world " * (FAST_BACKEND_MIN_BYTES // 12 // 30 + 1)
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": f"document {i} {body}"}) + "\n" for i in range(30)))
    recipe = _recipe(tmp_path, str(tok_dir), {"files": ["docs.jsonl"]}, splits={"heldout_fraction": 0.2})
    data = yaml.safe_load(recipe.read_text())
    data["tokenizer"]["backend"] = "auto"
    recipe.write_text(yaml.safe_dump(data))
    proc = subprocess.run(
        [sys.executable, "-m", "hfprep", "run", str(recipe), "--json"],
        env=_subprocess_env(tmp_path, HF_HUB_OFFLINE="1"), capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("hfprep: warning: tokenizer backend 'auto' falls back to 'hf'")
    assert "single_word" in lines[0]


# ----------------------------------------------------------------------------------------------- errors that name the cause


@pytest.mark.parametrize("hub", ["online", "offline"])
@pytest.mark.parametrize("form", ["absolute", "dot", "dotdot", "existing-parent"])
def test_missing_tokenizer_folder_is_named_without_hub_advice(tmp_path, capsys, monkeypatch, form, hub):
    """A path to a tokenizer folder that does not exist used to be sent to the Hub: "needs the Hub, but ... cannot be
    reached" with advice about source.files (online) or "Repo id must be in the form ..." (offline)."""
    from huggingface_hub import constants

    project = tmp_path / "project"
    (project / "tokenizers").mkdir(parents=True)
    (project / "docs.jsonl").write_text('{"text": "hello"}\n')
    value, shown = {
        "absolute": (str(tmp_path / "nowhere" / "tok"), str(tmp_path / "nowhere" / "tok")),
        "dot": ("./tok", str(project / "tok")),
        "dotdot": ("../tok", str(tmp_path / "tok")),
        "existing-parent": ("tokenizers/mine", str(project / "tokenizers" / "mine")),
    }[form]
    if hub == "online":  # a Hub that cannot be reached, as on a machine without network
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    recipe = _recipe(project, "unused", {"files": ["docs.jsonl"]})
    data = yaml.safe_load(recipe.read_text())
    data["tokenizer"] = {"name_or_path": value}
    recipe.write_text(yaml.safe_dump(data))
    code, line = _run_error(recipe, capsys)
    assert code == 1
    assert line == (
        f"tokenizer.name_or_path: folder {shown!r} does not exist; fix the path (relative paths start at the "
        "recipe's folder) to the folder holding tokenizer.json"
    )
    assert sorted(p.name for p in project.iterdir()) == ["docs.jsonl", "recipe.yaml", "tokenizers"]


def test_tokenizer_hub_id_without_hub_gives_tokenizer_advice(tmp_path, capsys, monkeypatch):
    """A Hub id is still a Hub question, and the advice is about the tokenizer, not about source.files."""
    from huggingface_hub import constants

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    (tmp_path / "docs.jsonl").write_text('{"text": "hello"}\n')
    recipe = _recipe(tmp_path, "someone/some-tokenizer", {"files": ["docs.jsonl"]})
    code, line = _run_error(recipe, capsys)
    assert code == 1
    assert line.startswith(f"tokenizer.name_or_path 'someone/some-tokenizer' needs the Hub, but {endpoint} cannot be")
    assert line.endswith("or set tokenizer.name_or_path to a local folder holding tokenizer.json")
    assert "source.files" not in line


def _lines_file(path: Path, lines: list[str], end: str = "\n") -> None:
    path.write_text("\n".join(lines) + end)


BROKEN_JSON = {
    # name: (file name, its lines, the 1-based line a reader must name, the reason, the fix); written by hand.
    "jsonl-middle": ("docs.jsonl", ['{"text": "a"}', "", '{"text": "b"}', '{"text": "c', '{"text": "d"}'], 4,
                     "Unterminated string starting at column 10", "fix or remove that line"),
    "jsonl-last": ("docs.jsonl", ['{"text": "a"}', '{"text": "b"}', '{"text": "c"},'], 3,
                   "Extra data at column 14", "fix or remove that line"),
    "json-lines-middle": ("docs.json", ['{"text": "a"}', '{"text" "b"}', '{"text": "c"}'], 2,
                          "Expecting ':' delimiter at column 9", "fix or remove that line"),
    "jsonl-first": ("docs.jsonl", ['{"text": a}', '{"text": "b"}'], 1,
                    "Expecting value at column 10", "fix or remove that line"),
    "not-json-lines": ("docs.jsonl", ["text,id", "hello,1", "world,2"], 1, "Expecting value at column 1",
                       "the file is neither JSON Lines (one object per line) nor one JSON document: fix it or set "
                       "source.format"),
    "broken-document": ("docs.json", ["[", '  {"text": "a"},', '  {"text": "b"}', '  {"text": "c"}', "]"], 4,
                        "Expecting ',' delimiter at column 3",
                        "the file is neither JSON Lines (one object per line) nor one JSON document: fix it or set "
                        "source.format"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_JSON))
def test_broken_json_line_names_the_file_and_line(tmp_path, tokenizer_path, capsys, case):
    """datasets knew the row ("JSON parse error ... in row 6") but hfprep said "An error occurred while generating the
    dataset"."""
    name, lines, line_no, reason, fix = BROKEN_JSON[case]
    _lines_file(tmp_path / name, lines, "" if case == "jsonl-last" else "\n")
    (tmp_path / "ok.jsonl").write_text('{"text": "fine"}\n')  # a good file first: the bad one is named, not the list
    code, line = _run_error(_recipe(tmp_path, tokenizer_path, {"files": ["ok.jsonl", name], "format": "jsonl"}),
                            capsys)
    assert code == 1
    assert line == f"{tmp_path / name}: line {line_no}: not valid JSON ({reason}); {fix}"
    assert not (tmp_path / "out").exists()


def test_broken_json_line_is_one_line_on_stderr(tmp_path, tokenizer_path):
    """The CLI's stderr holds one error line: datasets' own "Failed to load JSON from file" log line is kept out."""
    import subprocess
    import sys

    from test_faults import error_lines

    name, lines, line_no, reason, fix = BROKEN_JSON["jsonl-middle"]
    _lines_file(tmp_path / name, lines)
    recipe = _recipe(tmp_path, tokenizer_path, {"files": [name]})
    proc = subprocess.run(
        [sys.executable, "-m", "hfprep", "run", str(recipe)],
        env=_subprocess_env(tmp_path, HF_HUB_OFFLINE="1"), capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 1
    assert error_lines(proc.stderr) == [
        f"hfprep run: error: {tmp_path / name}: line {line_no}: not valid JSON ({reason}); {fix}"
    ]


def test_the_ray_reader_names_the_same_file_and_line(tmp_path):
    """The Ray engine reads JSON Lines itself: the same one-line message as the datasets engine."""
    from hfprep.engines.ray_engine import read_item
    from hfprep.errors import DataError

    name, lines, line_no, reason, fix = BROKEN_JSON["jsonl-middle"]
    _lines_file(tmp_path / name, lines)
    with pytest.raises(DataError) as e:
        read_item({"path": str(tmp_path / name), "format": "json", "row_group": -1, "start": 0})
    assert str(e.value) == f"{tmp_path / name}: line {line_no}: not valid JSON ({reason}); {fix}"


def test_locate_json_error_passes_valid_files(tmp_path):
    from hfprep.source.loading import locate_json_error

    _lines_file(tmp_path / "a.jsonl", ['{"text": "a"}', "", '{"text": 5}'])  # other types are not a syntax error
    _lines_file(tmp_path / "b.json", ["[", '  {"text": "a"}', "]"])  # one document: datasets reads it too
    assert locate_json_error(str(tmp_path / "a.jsonl")) is None
    assert locate_json_error(str(tmp_path / "b.json")) is None
    assert locate_json_error(str(tmp_path / "a.jsonl"), ["text"]) == (  # a reader that needs strings says so
        3, f"{tmp_path / 'a.jsonl'}: line 3: column 'text' holds a int, not a string; fix or remove that line"
    )
    _lines_file(tmp_path / "c.jsonl", ['{"text": "a"}', "[1, 2]"])
    assert locate_json_error(str(tmp_path / "c.jsonl")) == (
        2, f"{tmp_path / 'c.jsonl'}: line 2: not a JSON object (an array; one object per line); fix or remove that line"
    )


@pytest.mark.parametrize("parent", ["new", "nested-new", "existing"])
def test_a_failed_run_leaves_no_output_parent_behind(tmp_path, tokenizer_path, capsys, parent):
    """``output.folder: out/ds`` with a run that fails: the lock file used to create ``out/`` and leave it. A parent
    that existed before the run stays."""
    folder = {"new": "out/ds", "nested-new": "out/deeper/ds", "existing": "keep/ds"}[parent]
    (tmp_path / "keep").mkdir()
    _lines_file(tmp_path / "docs.jsonl", ['{"text": "a"}', '{"text": '])
    recipe = _recipe(tmp_path, tokenizer_path, {"files": ["docs.jsonl"]}, output={"folder": folder, "plots": False})
    code, line = _run_error(recipe, capsys)
    assert code == 1 and "docs.jsonl: line 2: not valid JSON" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs.jsonl", "keep", "recipe.yaml"]
    assert list((tmp_path / "keep").iterdir()) == []
    _lines_file(tmp_path / "docs.jsonl", ['{"text": "a b c d e f g h i j k l m n o p"}'] * 4)
    assert _run_cli(["run", str(recipe), "--json"], capsys)[0] == 0
    assert (tmp_path / folder / "README.md").is_file()  # the run that succeeds keeps its parents


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_hfprep_did_not_write_is_named_at_once(tmp_path, tokenizer_path, capsys, overwrite):
    """The first message used to suggest --overwrite, which then refused: now one line says whose folder it is."""
    (tmp_path / "docs.jsonl").write_text('{"text": "hello world"}\n')
    (tmp_path / "out" / "b").mkdir(parents=True)
    (tmp_path / "out" / "a.txt").write_text("mine")
    (tmp_path / "out" / "b" / "c.txt").write_text("mine too")
    recipe = _recipe(tmp_path, tokenizer_path, {"files": ["docs.jsonl"]})
    args = ["run", str(recipe), "--json", *(["--overwrite"] if overwrite else [])]
    code, out, _ = _run_cli(args, capsys)
    message = json.loads(out.strip().splitlines()[-1])["message"]
    assert code == 1
    assert message == (
        f"{tmp_path / 'out'} exists and was not written by hfprep (it holds 'a.txt', 'b/c.txt'); hfprep never deletes "
        "it: remove it yourself or choose another output.folder"
    )
    assert (tmp_path / "out" / "a.txt").read_text() == "mine"


def test_a_file_added_to_hfprep_output_is_named_without_suggesting_overwrite(tmp_path, tokenizer_path, capsys):
    (tmp_path / "docs.jsonl").write_text('{"text": "hello world, hello world"}\n' * 3)
    recipe = _recipe(tmp_path, tokenizer_path, {"files": ["docs.jsonl"]})
    assert _run_cli(["run", str(recipe), "--json"], capsys)[0] == 0
    (tmp_path / "out" / "notes.txt").write_text("mine")
    code, line = _run_error(recipe, capsys)
    assert code == 1
    assert "--overwrite" in line and "pass --overwrite" not in line  # "not even with --overwrite"
    assert line.startswith(f"output folder {str(tmp_path / 'out')!r} holds 'notes.txt', which hfprep did not write")
