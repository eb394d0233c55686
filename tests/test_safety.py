"""Data safety: ``--overwrite`` only ever replaces a folder hfprep wrote; scratch folders never outlive a run.

Every refusal is one line (exit 1) and leaves every file as it was, byte for byte.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import file_hashes

from hfprep.cli import main
from hfprep.errors import OutputError, OutputExistsError
from hfprep.output.layout import MARKER_NAME, atomic_output, check_output, foreign_files, write_split

WORDS = ["alpha", "beta", "gamma", "import", "def", "fox", "lazy", "café"]


def write_project(folder: Path, tokenizer_path: str, output: str = "out", n_docs: int = 40, **extra) -> Path:
    """A user's project folder: a JSONL source, a recipe next to it, some other file of the user's."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))) for _ in range(n_docs)]
    (folder / "docs.jsonl").write_text("".join(json.dumps({"content": d}) + "\n" for d in docs))
    (folder / "notes.md").write_text("my notes, not hfprep's\n")
    recipe = {
        "source": {"files": ["docs.jsonl"]},
        "tokenizer": {"name_or_path": tokenizer_path},
        "packing": {"seq_len": 32, "strategy": "no_incomplete", "num_reduce_chunks": 2},
        "output": {"folder": output},
        **extra,
    }
    path = folder / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def one_error_line(err: str, command: str = "run") -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert lines and lines[-1].startswith(f"hfprep {command}: error: "), err
    return lines[-1]


# --- hfprep run ---------------------------------------------------------------------------------------------


def test_overwrite_of_the_project_folder_is_refused_and_deletes_nothing(tmp_path, tokenizer_path, capsys, monkeypatch):
    """``output.folder: .`` + ``--overwrite`` used to delete the recipe, the source and the user's files."""
    project = tmp_path / "project"
    recipe = write_project(project, tokenizer_path, output=".")
    before = file_hashes(project)
    monkeypatch.chdir(project)
    assert main(["run", "r.yaml", "--overwrite"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "current folder" in line and "hfprep never replaces it" in line
    assert file_hashes(project) == before
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(recipe), "--overwrite"]) == 1  # the same from elsewhere: the folder holds the recipe
    line = one_error_line(capsys.readouterr().err)
    assert "hfprep never replaces it" in line and "r.yaml" in line and "an input of this run" in line
    assert file_hashes(project) == before


@pytest.mark.parametrize("overwrite", [False, True])
def test_output_path_that_is_a_file_is_never_replaced(tmp_path, tokenizer_path, capsys, overwrite):
    recipe = write_project(tmp_path, tokenizer_path, output="out.bin")
    (tmp_path / "out.bin").write_bytes(b"\x00precious")
    before = file_hashes(tmp_path)
    assert main(["run", str(recipe), *(["--overwrite"] if overwrite else [])]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "out.bin" in line and "is a file, not a folder" in line
    assert file_hashes(tmp_path) == before


def test_parent_path_that_is_a_file_is_one_line(tmp_path, tokenizer_path, capsys):
    recipe = write_project(tmp_path, tokenizer_path, output="notes.md/out")
    before = file_hashes(tmp_path)
    assert main(["run", str(recipe), "--overwrite"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "notes.md" in line and "is a file, not a folder" in line
    assert file_hashes(tmp_path) == before
    with pytest.raises(OutputError, match="is a file, not a folder"), atomic_output(tmp_path / "notes.md" / "a" / "b"):
        pass


def test_overwrite_refuses_a_folder_hfprep_did_not_write(tmp_path, tokenizer_path, capsys):
    recipe = write_project(tmp_path, tokenizer_path, output="mine")
    (tmp_path / "mine" / "data").mkdir(parents=True)
    (tmp_path / "mine" / "data" / "thesis.tex").write_text("years of work")
    before = file_hashes(tmp_path)
    assert main(["run", str(recipe), "--overwrite"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "was not written by hfprep (it holds 'data/thesis.tex')" in line and "remove it yourself" in line
    assert file_hashes(tmp_path) == before


def test_overwrite_replaces_hfprep_output_but_not_a_file_added_to_it(tmp_path, tokenizer_path, capsys):
    recipe = write_project(tmp_path, tokenizer_path)
    out = tmp_path / "out"
    assert main(["run", str(recipe), "--json"]) == 0
    marker = json.loads((out / MARKER_NAME).read_text())
    # The marker lists exactly the files of the folder (computed here by walking it).
    assert sorted(marker["files"]) == sorted(k for k in file_hashes(out) if k != MARKER_NAME)
    assert foreign_files(out) == []
    assert main(["run", str(recipe), "--overwrite", "--json"]) == 0  # hfprep's own folder: replaced
    capsys.readouterr()
    (out / "data" / "my-extra.parquet").write_bytes(b"not hfprep's")
    before = file_hashes(tmp_path)
    assert main(["run", str(recipe), "--overwrite"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "data/my-extra.parquet" in line and "hfprep did not write" in line
    assert file_hashes(tmp_path) == before


def test_overwrite_refuses_an_output_that_holds_the_source(tmp_path, tokenizer_path, capsys):
    """Re-packing a prepared folder into itself would delete the source being read: refused."""
    recipe = write_project(tmp_path, tokenizer_path)
    assert main(["run", str(recipe), "--json"]) == 0
    capsys.readouterr()
    shard = "out/data/train-00000-of-00001.parquet"
    again = tmp_path / "again.yaml"
    again.write_text(
        yaml.safe_dump(
            {
                "source": {"files": [shard], "columns": {"input_ids": "ids"}},
                "tokenize": {"text_column": "ids"},
                "tokenizer": {"name_or_path": tokenizer_path},
                "packing": {"seq_len": 16},
                "output": {"folder": "out"},
            }
        )
    )
    before = file_hashes(tmp_path)
    code = main(["run", str(again), "--overwrite"])
    err = capsys.readouterr().err
    assert code == 1, err
    line = one_error_line(err)
    assert "an input of this run" in line and "train-00000-of-00001.parquet" in line
    assert file_hashes(tmp_path) == before


def test_card_without_marker_is_recognised_but_git_clone_is_not_replaced(tmp_path):
    """A folder from an hfprep version without the marker (or a Hub download) is recognised by its card; a clone
    (``.git``) is someone's work."""
    folder = tmp_path / "ds"
    (folder / "data").mkdir(parents=True)
    (folder / "README.md").write_text("---\nhfprep:\n  seq_len: 8\nconfigs: []\n---\n# card\n")
    (folder / "data" / "train-00000-of-00001.parquet").write_bytes(b"PAR1")
    assert foreign_files(folder) == []
    assert check_output(folder, overwrite=True) == folder.absolute()
    (folder / ".git").mkdir()
    with pytest.raises(OutputExistsError, match=r"holds '\.git'"):
        check_output(folder, overwrite=True)
    other = tmp_path / "other"
    other.mkdir()
    (other / "README.md").write_text("---\nlicense: mit\n---\n# someone's dataset\n")
    with pytest.raises(OutputExistsError, match=r"was not written by hfprep \(it holds 'README.md'\)"):
        check_output(other, overwrite=True)


def test_symlinked_output_is_refused(tmp_path):
    real = tmp_path / "real"
    with atomic_output(real) as tmp:
        write_split(pa.table({"x": [1]}), tmp, "train")
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(OutputExistsError, match="symbolic link"):
        check_output(link, overwrite=True)


# --- hfprep kd-cache --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kd_project(tmp_path_factory, tokenizer) -> Path:
    from hfprep.kd.example import save_tiny_teacher, write_prepared

    root = tmp_path_factory.mktemp("kd_safety")
    write_prepared(tokenizer, root / "prepared", ["one document here.", "another one", "x y z"] * 4, seq_len=24)
    save_tiny_teacher(root / "teacher", len(tokenizer), seed=1)
    return root


def write_kd_recipe(folder: Path, kd_project: Path, tokenizer_path: str, output: str) -> Path:
    path = folder / "kd.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "input": {"folder": str(kd_project / "prepared")},
                "teacher": {"name_or_path": str(kd_project / "teacher")},
                "tokenizer": {"name_or_path": tokenizer_path},
                "output": {"folder": output, "rows_per_shard": 2},
                "k": 4,
            }
        )
    )
    return path


def test_kd_cache_overwrite_refuses_its_input_and_foreign_folders(tmp_path, kd_project, tokenizer_path, capsys):
    before = file_hashes(kd_project)
    # The KD output set to the prepared input folder (an hfprep folder!): replacing it would delete the input.
    recipe = write_kd_recipe(tmp_path, kd_project, tokenizer_path, str(kd_project / "prepared"))
    assert main(["kd-cache", str(recipe), "--overwrite"]) == 1
    line = one_error_line(capsys.readouterr().err, "kd-cache")
    assert "an input of this run" in line
    assert file_hashes(kd_project) == before
    # A user's folder.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "a.txt").write_text("mine")
    recipe = write_kd_recipe(tmp_path, kd_project, tokenizer_path, "mine")
    assert main(["kd-cache", str(recipe), "--overwrite"]) == 1
    assert "was not written by hfprep" in one_error_line(capsys.readouterr().err, "kd-cache")
    assert (tmp_path / "mine" / "a.txt").read_text() == "mine"
    # The recipe's own folder.
    recipe = write_kd_recipe(tmp_path, kd_project, tokenizer_path, ".")
    assert main(["kd-cache", str(recipe), "--overwrite"]) == 1
    assert "hfprep never replaces it" in one_error_line(capsys.readouterr().err, "kd-cache")
    assert recipe.is_file() and (tmp_path / "mine" / "a.txt").is_file()
    # A regular file, and a parent that is a file.
    (tmp_path / "cache.bin").write_bytes(b"x")
    for output in ("cache.bin", "cache.bin/kd"):
        recipe = write_kd_recipe(tmp_path, kd_project, tokenizer_path, output)
        assert main(["kd-cache", str(recipe), "--overwrite"]) == 1
        assert "is a file, not a folder" in one_error_line(capsys.readouterr().err, "kd-cache")
    assert (tmp_path / "cache.bin").read_bytes() == b"x"
    # Its own output is replaced, and carries the marker.
    recipe = write_kd_recipe(tmp_path, kd_project, tokenizer_path, "kd")
    assert main(["kd-cache", str(recipe), "--json"]) == 0
    assert main(["kd-cache", str(recipe), "--overwrite", "--json"]) == 0
    assert foreign_files(tmp_path / "kd") == [] and (tmp_path / "kd" / MARKER_NAME).is_file()
    assert file_hashes(kd_project) == before


def test_kd_partial_folder_not_written_by_hfprep_is_left_alone(tmp_path, kd_project, tokenizer_path, capsys):
    """The resumable ``.<output>.partial`` folder is only reused or replaced when hfprep's state file is in it."""
    (tmp_path / ".kd.partial").mkdir()
    (tmp_path / ".kd.partial" / "keep.txt").write_text("someone's")
    recipe = write_kd_recipe(tmp_path, kd_project, tokenizer_path, "kd")
    assert main(["kd-cache", str(recipe), "--overwrite"]) == 1
    assert "hfprep did not write it" in one_error_line(capsys.readouterr().err, "kd-cache")
    assert (tmp_path / ".kd.partial" / "keep.txt").read_text() == "someone's"
    assert not (tmp_path / "kd").exists()


def test_output_lock_and_marker_need_no_cleanup(tmp_path):
    """A finished write leaves the output and nothing else next to it (no lock file, no staging folder)."""
    with atomic_output(tmp_path / "ds") as tmp:
        write_split(pa.table({"x": [1, 2]}), tmp, "train")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    with atomic_output(tmp_path / "ds", overwrite=True) as tmp:
        write_split(pa.table({"x": [3]}), tmp, "train")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    assert pq.read_table(tmp_path / "ds" / "data" / "train-00000-of-00001.parquet").column("x").to_pylist() == [3]


# --- scratch: nothing but the output and datasets' own cache files ----------------------------------------------


@pytest.fixture
def isolated_dirs(tmp_path, monkeypatch) -> Iterator[tuple[Path, Path]]:
    """A temp folder and a datasets cache folder of this test's own, so leftovers can be listed exactly.

    The temp folder has a short path: worker pools put AF_UNIX sockets there (at most 107 bytes).
    """
    import shutil
    import tempfile

    import datasets.config
    from datasets.fingerprint import get_temporary_cache_files_directory

    get_temporary_cache_files_directory()  # datasets' own, for the whole process: made in the real temp folder
    tmp, cache = Path(tempfile.mkdtemp(prefix="hfs")), tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    yield tmp, cache
    shutil.rmtree(tmp, ignore_errors=True)


def entries(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def ours(paths: set[str]) -> list[str]:
    """hfprep's scratch (folders or files whose name starts with ``hfprep-``), at any depth."""
    return sorted(p for p in paths if any(part.startswith("hfprep-") for part in Path(p).parts))


def small_transform(tokenizer_path: str, strategy: str = "no_incomplete"):
    from hfprep.pack.transform import PrepareForTrainingTransform, PrepareForTrainingTransformConfig

    cfg = PrepareForTrainingTransformConfig(
        processing_strategy="pretrain",
        packing_strategy=strategy,
        tokenizer_name=tokenizer_path,
        seq_len=16,
        num_reduce_chunks=3,
    )
    return PrepareForTrainingTransform(cfg)


def docs(n: int = 60) -> list[str]:
    rng = random.Random(1)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 9))) for _ in range(n)]


@pytest.mark.parametrize("num_proc", [None, 2])
def test_transform_run_leaves_no_scratch_in_memory_input(isolated_dirs, tokenizer_path, num_proc):
    """In-memory input: the reduce output used to stay in an ``hfprep-reduce-*`` folder of the temp folder."""
    from datasets import Dataset

    tmp, _ = isolated_dirs
    ds = Dataset.from_dict({"content": docs()})
    out = small_transform(tokenizer_path).run(ds, num_proc=num_proc)
    rows = out.to_list()
    assert ours(entries(tmp)) == []
    # The rows are whole: every input token is either in the output or counted as dropped.
    t = small_transform(tokenizer_path)
    again = t.run(ds)
    assert again.to_list() == rows
    real = sum(sum(r["loss_mask"]) for r in rows)
    assert real + t.stats["tokens_dropped"] == t.stats["tokens_in"]


def test_transform_run_leaves_only_datasets_cache_files_for_file_input(isolated_dirs, tokenizer_path):
    """File input: the reduce output used to stay in an ``hfprep-reduce-*`` folder inside the datasets cache."""
    from datasets import load_dataset

    tmp, cache = isolated_dirs
    src = cache.parent / "docs.jsonl"
    src.write_text("".join(json.dumps({"content": d}) + "\n" for d in docs()))
    ds = load_dataset("json", data_files=[str(src)], split="train")
    before = entries(cache)
    out = small_transform(tokenizer_path).run(ds, num_proc=2)
    assert out.num_rows > 0
    new = entries(cache) - before
    assert ours(new) == [] and ours(entries(tmp)) == []
    assert all(Path(p).name.startswith("cache-") and p.endswith(".arrow") for p in new), sorted(new)
    assert len(out.to_list()) == out.num_rows  # still readable: the cache files are the dataset's


@pytest.mark.parametrize("fail", [None, "error", "interrupt"])
@pytest.mark.parametrize("streaming", [False, True])
def test_run_recipe_leaves_no_scratch(isolated_dirs, tmp_path, tokenizer_path, monkeypatch, fail, streaming):
    """A whole run, on success, on an error and on Ctrl-C: no hfprep folder in the temp folder or datasets cache."""
    import hfprep.run
    from hfprep.run import run_recipe

    tmp, cache = isolated_dirs
    recipe = write_project(
        tmp_path / "p", tokenizer_path, n_docs=120, source={"files": ["docs.jsonl"], "streaming": streaming}
    )
    if fail is not None:
        real = hfprep.run.SplitOutputs.close

        def broken(*args, **kwargs):
            real(*args, **kwargs)
            raise KeyboardInterrupt if fail == "interrupt" else OSError(28, "No space left on device")

        monkeypatch.setattr(hfprep.run.SplitOutputs, "close", broken)
    tmp_before = entries(tmp)
    if fail is None:
        run_recipe(str(recipe), num_proc=2 if not streaming else None)
    else:
        with pytest.raises(KeyboardInterrupt if fail == "interrupt" else OutputError):
            run_recipe(str(recipe), num_proc=2 if not streaming else None)
    assert ours(entries(tmp)) == [], sorted(entries(tmp) - tmp_before)
    assert ours(entries(cache)) == []
    leftovers = sorted(p.name for p in (tmp_path / "p").iterdir())
    assert leftovers == (
        ["docs.jsonl", "notes.md", "out", "r.yaml"] if fail is None else ["docs.jsonl", "notes.md", "r.yaml"]
    )


def test_stale_scratch_of_a_killed_process_is_removed_by_the_next_one(tmp_path):
    """kill -9 runs no cleanup: the next scratch folder made in the same place removes the dead one's, never a live
    one's."""
    from hfprep.scratch import ScratchDir

    make = "from hfprep.scratch import ScratchDir; import os, sys, time; d = ScratchDir('reduce', sys.argv[1]); "
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    live = subprocess.Popen(
        [sys.executable, "-c", make + "print(d.path, flush=True); time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert live.stdout is not None
        alive = live.stdout.readline().strip()
        dead = subprocess.run(  # made after the live one (making one sweeps the dead ones), then "killed"
            [sys.executable, "-c", make + "print(d.path, flush=True); os._exit(0)", str(tmp_path)],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        ).stdout.strip()
        assert Path(dead).is_dir() and Path(alive).is_dir()
        (tmp_path / "hfprep-notes").mkdir()  # not a scratch name: never touched
        mine = ScratchDir("reduce", tmp_path)
        assert not Path(dead).exists() and Path(alive).is_dir() and (tmp_path / "hfprep-notes").is_dir()
        mine.cleanup()
        assert not mine.path.exists()
    finally:
        live.kill()
        live.wait()
    ScratchDir("spill", tmp_path).cleanup()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hfprep-notes"]
