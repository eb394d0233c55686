"""The hfprep command line: exit codes 0/1/2/130, one-line errors, --json lines, Ctrl-C leaves no output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from hfprep.cli import main
from hfprep.output.layout import write_parquet
from hfprep.tokenization.stage import tokenized_features

WORDS = ["alpha", "beta", "gamma", "import", "def", "fox", "lazy"]


def make_recipe(folder: Path, tokenizer_path: str, n_docs: int = 40, **packing) -> Path:
    import random

    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))) for _ in range(n_docs)]
    (folder / "docs.jsonl").write_text("".join(json.dumps({"content": d}) + "\n" for d in docs))
    path = folder / "r.yaml"
    path.write_text(yaml.safe_dump({
        "source": {"files": ["docs.jsonl"]},
        "tokenizer": {"name_or_path": tokenizer_path},
        "packing": {"seq_len": 32, "strategy": "no_incomplete", "num_reduce_chunks": 2, **packing},
        "output": {"folder": "out"},
    }))
    return path


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_run_json_then_refuse_overwrite_then_validate_and_inspect(tmp_path, tokenizer_path, capsys):
    recipe = make_recipe(tmp_path, tokenizer_path)
    assert main(["run", str(recipe), "--json"]) == 0
    events = json_lines(capsys.readouterr().out)
    assert events[-1]["event"] == "summary"
    totals = events[-1]["totals"]
    assert totals["tokens_in"] == totals["tokens_out"] + totals["tokens_dropped"]
    assert {"source", "tokenizer", "split", "wrote"} <= {e["event"] for e in events}

    assert main(["run", str(recipe)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("hfprep run: error: output folder") and "--overwrite" in err[-1]
    assert "Traceback" not in "\n".join(err)

    assert main(["run", str(recipe), "--overwrite"]) == 0
    out = capsys.readouterr().out
    assert "rows in" in out and "tokens/s" in out and "fill" in out

    assert main(["validate", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.startswith("ok: ")
    assert main(["validate", str(tmp_path / "out"), "--json"]) == 0
    assert json_lines(capsys.readouterr().out)[0]["ok"] is True

    assert main(["inspect", str(tmp_path / "out"), "--row", "0"]) == 0
    shown = capsys.readouterr().out
    assert "input_ids: list<element: uint32>" in shown
    assert "-- segment 1: tokens 0.." in shown
    assert any(w in shown for w in WORDS)  # decoded with the tokenizer named in the card


def test_validate_reports_violations_with_exit_1(tmp_path, tokenizer_path, capsys):
    assert main(["run", str(make_recipe(tmp_path, tokenizer_path)), "--json"]) == 0
    shard = tmp_path / "out" / "data" / "train-00000-of-00001.parquet"
    rows = pq.read_table(shard).to_pylist()
    rows[0]["position_ids"][1] = 5
    import pyarrow as pa

    write_parquet(pa.Table.from_pylist(rows, schema=tokenized_features().arrow_schema), shard, tokenized_features())
    capsys.readouterr()
    assert main(["validate", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "invalid:" in err and "row 0, token 1: position 5 after 0" in err


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("packing: {seq_len: 8}\n", "output: required key is missing"),
        ("source: {files: [a.jsonl]}\ntokenizer: {name_or_path: x}\npacking: {seq_len: 8, colour: 1}\n"
         "output: {folder: o}\n", "packing.colour: unknown key"),
    ],
)
def test_invalid_recipe_exits_2_with_one_line(tmp_path, capsys, content, expected):
    p = tmp_path / "bad.yaml"
    p.write_text(content)
    assert main(["run", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err and str(p) in err


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2
    assert main(["run", "r.yaml", "--num-proc", "0"]) == 2
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    help_text = capsys.readouterr().out
    for cmd in ("run", "push", "inspect", "validate", "kd-cache"):
        assert cmd in help_text


def test_runtime_errors_exit_1(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nothing-here")]) == 1
    assert "not a dataset folder" in capsys.readouterr().err
    assert main(["inspect", "nobody-xyz/not-a-dataset"]) == 1  # offline in tests: a clear Hub error
    err = capsys.readouterr().err.strip()
    assert err.startswith("hfprep inspect: error: could not load 'nobody-xyz/not-a-dataset'") and "\n" not in err
    assert main(["push", str(tmp_path), "--repo-id", "me/x", "--json"]) == 1
    ev = json_lines(capsys.readouterr().out)[-1]
    assert ev["event"] == "error" and ev["exit_code"] == 1 and "README.md" in ev["message"]


def test_help_and_usage_errors_answer_before_any_stage_is_imported(tmp_path):
    # The stages load datasets/transformers/torch (seconds): `--help` and a usage error must not wait for them.
    code = (
        "import sys\n"
        "from hfprep.cli import main\n"
        "codes = [main(['validate', 'no-such-folder']), main(['run', 'r.yaml', '--num-proc', '0'])]\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit as e:\n"
        "    codes.append(e.code)\n"
        "print(codes, sorted(m for m in ('torch', 'transformers', 'datasets', 'pyarrow') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[2, 2, 0] []"


def test_every_stage_function_of_the_cli_resolves():
    # The table names modules and functions as strings: a typo would only show when that command runs.
    from hfprep.cli import STAGE_FUNCTIONS, _stage

    for name, module in STAGE_FUNCTIONS.items():
        fn = _stage(name)
        assert callable(fn) and module in sys.modules, name


def test_keyboard_interrupt_in_process_exits_130_without_output(tmp_path, tokenizer_path, capsys, monkeypatch):
    import hfprep.run

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(hfprep.run.SplitOutputs, "close", boom)
    assert main(["run", str(make_recipe(tmp_path, tokenizer_path))]) == 130
    assert "interrupted; no partial output" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs.jsonl", "r.yaml"]


def test_keyboard_interrupt_after_the_output_is_in_place_says_it_is_complete(tmp_path, tokenizer_path, capsys,
                                                                            monkeypatch):
    # Ctrl-C while the command stops its figure-drawing process, after the output folder was renamed into place:
    # still 130, but the message must not claim that nothing was written.
    import hfprep.output.plots
    from hfprep.output.validate import validate_folder

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(hfprep.output.plots, "stop_worker", boom)
    assert main(["run", str(make_recipe(tmp_path, tokenizer_path))]) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("hfprep run: error: interrupted; ") and "no partial output" not in err, err
    assert err.endswith(f"{tmp_path / 'out'} was written before it and is complete "
                        f"(`hfprep validate {tmp_path / 'out'}` checks it)"), err
    assert validate_folder(tmp_path / "out").ok


def test_sigint_subprocess_mid_run_then_rerun(tmp_path, tokenizer_path):
    """A real Ctrl-C (SIGINT) while the output is being written: exit 130, nothing left behind; the re-run completes.

    The child blocks inside the atomic output folder (its shard writer waits) and says so on stderr, so the signal
    always lands mid-write, however fast the machine is.
    """
    recipe = make_recipe(tmp_path, tokenizer_path, n_docs=2000)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "hfprep", "run", str(recipe)]
    child = (
        "import sys, time, hfprep.run as p\n"
        "real = p.SplitOutputs.close\n"
        "def slow(*a, **k):\n"
        "    out = real(*a, **k)\n"
        "    print('TEST-WRITING', file=sys.stderr, flush=True)\n"
        "    time.sleep(120)\n"
        "    return out\n"
        "p.SplitOutputs.close = slow\n"
        "from hfprep.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", child, "run", str(recipe)],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "TEST-WRITING" in line:
            break
    assert any("TEST-WRITING" in line for line in seen), "".join(seen)[-2000:]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs.jsonl", "r.yaml"]
    done = subprocess.run([*cmd, "--json"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json_lines(done.stdout)[-1]["event"] == "summary"
