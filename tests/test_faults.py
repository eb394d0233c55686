"""Fault injection: Ctrl-C (a real SIGINT to the process group, as a terminal sends it) and kill -9 at chosen and at
random moments of ``hfprep run``, ``kd-cache`` and ``push``; a full disk; two runs writing one output at once.

After each: the previous output (if any) is intact or replaced by a complete new one, nothing partial looks like an
output, no scratch is left (a kill -9 cannot clean up: its leftovers carry its pid and the next run removes them),
and the reason is one line.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import file_hashes

from hfprep.output.layout import foreign_files
from hfprep.output.validate import validate_folder

REPO_ROOT = Path(__file__).resolve().parents[1]
WORDS = ["alpha", "beta", "gamma", "import", "def", "fox", "lazy", "café", "return", "numpy"]

# Runs the CLI after optional patches; a patch prints TEST-AT-<moment> (from whichever process reaches it first:
# the main one or a forked worker) and then waits, so the signal lands exactly there.
CHILD = """
import faulthandler, importlib, os, signal, sys, time
faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test asks for every thread's stack before a kill
moment = os.environ.get("TEST_MOMENT")

def mark(name):
    print(f"TEST-AT-{name} pid={os.getpid()}", file=sys.stderr, flush=True)

def hold(name):
    mark(name)
    time.sleep(120)

def patch(module, path, before=None, after=None):
    # Wraps module.<path> (a function or Class.method): ``before``/``after`` run around the real call.
    owner = importlib.import_module(module)
    *outer, name = path.split(".")
    for part in outer:
        owner = getattr(owner, part)
    real = getattr(owner, name)
    def wrapper(*a, **k):
        if before:
            before(moment)
        out = real(*a, **k)
        if after:
            after(moment)
        return out
    setattr(owner, name, wrapper)

PATCHES = {
    "split": ("hfprep.source.loading", "heldout_mask", hold, None),
    "map": ("hfprep.pack.transform", "PrepareForTrainingTransform.map_batch", hold, None),
    "reduce": ("hfprep.pack.transform", "PrepareForTrainingTransform.reduce_group", hold, None),
    # no hold: the signal lands while ray.init starts Ray's processes (seconds)
    "ray-start": ("hfprep.engines.ray_engine", "_connect", mark, None),
    # the driver holds the first packed range while the other reduce tasks run
    "ray-run": ("hfprep.engines.ray_engine", "_OutputSink.add", hold, None),
    "write": ("hfprep.run", "SplitOutputs.close", None, hold),
    # the direct engine (local files read in this process): reading, tokenizing, packing, writing shards
    "direct-read": ("hfprep.source.readers", "SourceBatch.__init__", None, hold),
    "direct-map": ("hfprep.pack.transform", "PrepareForTrainingTransform.map_documents", hold, None),
    "direct-reduce": ("hfprep.pack.transform", "PrepareForTrainingTransform.reduce_group", hold, None),
    "direct-write": ("hfprep.output.shards", "_ShardThread.put", None, hold),
    # the last step before an output is published (run and kd-cache): the output is complete in its staging folder
    "publish": ("hfprep.output.layout", "_write_marker", hold, None),
}
# The text_dir conversion (datasets writes the rows the generator yields): hold at the N-th row. datasets calls the
# generator once per shard of its list arguments, so rows are counted across calls.
GENERATOR_HOLDS = {"convert-start": 0, "convert-late": 1100}

def hold_in_generator(module, name, at):
    owner = importlib.import_module(module)
    real = getattr(owner, name)
    seen = [0]
    def wrapper(*a, **k):
        for row in real(*a, **k):
            if seen[0] == at:
                hold(moment)
            seen[0] += 1
            yield row
    setattr(owner, name, wrapper)

if moment in PATCHES:
    patch(*PATCHES[moment])
if moment in GENERATOR_HOLDS:
    hold_in_generator("hfprep.source.loading", "_text_dir_rows", GENERATOR_HOLDS[moment])
from hfprep.cli import main
sys.argv[0] = "hfprep"
sys.exit(main())  # as the console script calls it
"""


class Child:
    """An ``hfprep`` process in a session of its own (like a terminal job); stderr is collected as it comes."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.err = b""
        self._seen = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for chunk in iter(lambda: self.proc.stderr.read1(4096), b""):
            with self._seen:
                self.err += chunk
                self._seen.notify_all()
        with self._seen:
            self._seen.notify_all()

    def wait_for(self, text: str, timeout: float = 240) -> bool:
        """Block until ``text`` is on stderr (True) or the process ended without it (False)."""
        deadline = time.monotonic() + timeout
        with self._seen:
            while text.encode() not in self.err:
                if not self._reader.is_alive() or time.monotonic() > deadline:
                    return False
                self._seen.wait(0.1)
        return True

    def signal_group(self, sig: int) -> None:
        """What a terminal's Ctrl-C does: the signal goes to every process of the job."""
        os.killpg(self.proc.pid, sig)

    def finish(self, timeout: float = 120) -> tuple[int, str]:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with _suppress_lookup():  # where it hangs: every thread's stack, in the failure message
                os.kill(self.proc.pid, signal.SIGUSR1)
                time.sleep(2)
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            pytest.fail(f"hfprep did not stop within {timeout} s of the signal:\n{self.text[-6000:]}")
        self._reader.join(10)
        with _suppress_lookup():  # workers of the killed job may outlive it: stop them
            os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.returncode, self.text

    @property
    def text(self) -> str:
        return self.err.decode(errors="replace")


class _suppress_lookup:
    def __enter__(self) -> None:
        return None

    def __exit__(self, typ, *rest) -> bool:
        return typ is not None and issubclass(typ, ProcessLookupError | PermissionError)


def error_lines(err: str) -> list[str]:
    """The lines that report an error (tqdm bars and ``[hfprep]`` events aside)."""
    err = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "\n", err)  # a progress bar's cursor moves start a new line on screen
    # The test's own markers are not part of the CLI's output; a bar's line clearing can glue the next line to one.
    err = re.sub(r"TEST-AT-\S+ pid=\d+", "\n", err)
    lines = [seg.strip() for line in err.splitlines() for seg in line.split("\r")]
    lines = [line for line in lines if not line.startswith("[hfprep] ")]  # events name paths, which may say "error"
    return [line for line in lines if line and ("error" in line.lower() or "Traceback" in line)]


def scratch_in(*roots: Path) -> list[str]:
    """hfprep scratch (``hfprep-<kind>-<pid>-*``) anywhere under ``roots``. (A Ray run's driver log,
    ``hfprep-driver.log`` in Ray's own session folder, is a log the run announces, not scratch.)"""
    found = []
    for root in roots:
        for p in root.rglob("hfprep-*"):
            if re.match(r"^hfprep-[a-z]+-\d+-", p.name):
                found.append(str(p))
    return sorted(found)


@pytest.fixture
def env_dirs(tmp_path, monkeypatch) -> Iterator[tuple[dict[str, str], Path, Path]]:
    """A temp folder and a datasets cache of this test's own, for child processes (environment) and for this one
    (short path: worker pools put AF_UNIX sockets in the temp folder)."""
    import shutil

    import datasets.config
    from datasets.fingerprint import get_temporary_cache_files_directory

    get_temporary_cache_files_directory()  # datasets' own, for the whole process: made in the real temp folder
    tmp = Path(tempfile.mkdtemp(prefix="hff"))
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        "PYTHONUNBUFFERED": "1",
        "TMPDIR": str(tmp),
        "HF_DATASETS_CACHE": str(cache),
        "HFPREP_CACHE": str(tmp_path / "hfprep_cache"),
    }
    yield env, tmp, cache
    shutil.rmtree(tmp, ignore_errors=True)


def write_project(folder: Path, tokenizer_path: str, n_docs: int, **recipe_extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30))) for _ in range(n_docs)]
    (folder / "docs.jsonl").write_text("".join(json.dumps({"content": d}) + "\n" for d in docs))
    recipe = {
        "source": {"files": ["docs.jsonl"]},
        "tokenizer": {"name_or_path": tokenizer_path},
        "packing": {"seq_len": 64, "strategy": "no_incomplete", "num_reduce_chunks": 4},
        "output": {"folder": "out", "plots": False},
        **recipe_extra,
    }
    path = folder / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def assert_interrupted_cleanly(code: int, err: str, command: str = "run") -> None:
    assert code == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    errors = error_lines(err)
    assert len(errors) == 1 and errors[0].startswith(f"hfprep {command}: error: interrupted"), errors


# --- Ctrl-C at chosen moments -----------------------------------------------------------------------------------


# Where Ctrl-C lands: datasets' num_proc worker processes (reuse_tokenized takes the source through datasets' cache)
# running the split filter, the tokenize map or the reduce; the direct engine's reader thread, tokenizing, packing or
# its shard writer threads.
WORKER_MOMENTS = [(m, {"reuse_tokenized": True}) for m in ("split", "map", "reduce")]
DIRECT_MOMENTS = [(m, {}) for m in ("direct-read", "direct-map", "direct-reduce", "direct-write")]


@pytest.mark.slow
@pytest.mark.parametrize(("moment", "engine"), WORKER_MOMENTS + DIRECT_MOMENTS,
                         ids=[m for m, _ in WORKER_MOMENTS + DIRECT_MOMENTS])
def test_ctrl_c_mid_run_stops_at_once_with_one_line(tmp_path, tokenizer_path, env_dirs, moment, engine):
    """Ctrl-C at each moment above with ``--num-proc 2``: exit 130, one line, no traceback from any worker or
    thread, no hang (it used to print ~115 lines and once hung), no output, no scratch, no spill folder left."""
    env, tmp, cache = env_dirs
    project = tmp_path / "project"
    recipe = write_project(project, tokenizer_path, n_docs=200, splits={"heldout_fraction": 0.2}, engine=engine)
    child = Child(["run", str(recipe), "--num-proc", "2"], project, {**env, "TEST_MOMENT": moment})
    assert child.wait_for(f"TEST-AT-{moment}"), child.text[-3000:]
    child.signal_group(signal.SIGINT)
    code, err = child.finish()
    assert_interrupted_cleanly(code, err)
    assert sorted(p.name for p in project.iterdir()) == ["docs.jsonl", "r.yaml"]
    assert scratch_in(tmp, cache) == []


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "shape, moment",
    # A single text folder is read by the direct engine (no conversion; its moments are tested above): only its
    # reduce is a moment here. A mixture's sources are converted by datasets.
    [("single", "reduce")] + [("mixture", m) for m in ("convert-start", "convert-late", "split")],
)
def test_ctrl_c_during_a_text_dir_run_leaves_nothing_in_the_datasets_cache(
    tmp_path, tokenizer_path, env_dirs, shape, moment
):
    """Ctrl-C while a ``text_dir`` source (the recipe's one source, or a source of a mixture) is converted to Arrow
    (the generator's first and a late row), split by ``num_proc=2`` workers, tokenized or reduced: nothing new under
    the datasets cache (an interrupted run used to leave the conversion, the split filters' and the map's cache
    files and the killed workers' ``tmp*`` files under ``generator/...``), no output and no ``out/`` parent."""
    env, tmp, cache = env_dirs
    project = tmp_path / "project"
    corpus = project / "corpus"
    corpus.mkdir(parents=True)
    rng = random.Random(5)
    for i in range(1200):  # more rows than datasets writes per batch: the late hold is after a flushed batch
        (corpus / f"{i:04d}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40))))
    source = {"text_dir": "corpus", "columns": {"text": "content"}}
    recipe = project / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        **({"source": source} if shape == "single" else {"sources": [{"name": "corpus", "weight": 1, **source}]}),
        "tokenizer": {"name_or_path": tokenizer_path},
        "packing": {"seq_len": 64, "strategy": "no_incomplete", "num_reduce_chunks": 4},
        "splits": {"heldout_fraction": 0.2},
        "output": {"folder": "out/ds", "plots": False},
    }))
    before = files_under(cache)
    child = Child(["run", str(recipe), "--num-proc", "2"], project, {**env, "TEST_MOMENT": moment})
    assert child.wait_for(f"TEST-AT-{moment}"), child.text[-3000:]
    child.signal_group(signal.SIGINT)
    code, err = child.finish()
    assert_interrupted_cleanly(code, err)
    assert files_under(cache) == before
    assert sorted(p.name for p in project.iterdir()) == ["corpus", "r.yaml"]
    assert scratch_in(tmp, cache) == []


def test_a_finished_text_dir_run_leaves_nothing_in_the_datasets_cache(tmp_path, tokenizer_path, env_dirs):
    """The converted source and every file datasets derives from it live in the run's scratch, not the cache."""
    from hfprep.run import run_recipe

    _, tmp, cache = env_dirs
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(30):
        (corpus / f"{i:02d}.txt").write_text(" ".join(WORDS[(i + j) % len(WORDS)] for j in range(i + 5)))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "source": {"text_dir": "corpus", "columns": {"text": "content"}},
        "tokenizer": {"name_or_path": tokenizer_path},
        "packing": {"seq_len": 32, "strategy": "dense", "num_reduce_chunks": 2},
        "splits": {"heldout_fraction": 0.2},
        "output": {"folder": "out", "plots": False},
    }))
    summary = run_recipe(str(recipe), num_proc=2)
    assert summary["totals"]["rows_out"] > 0
    assert files_under(cache) == []
    assert scratch_in(tmp, cache) == []


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["ray-start", "ray-run"])
def test_ctrl_c_with_the_ray_engine(tmp_path, tokenizer_path, env_dirs, moment):
    """Ctrl-C while Ray starts or while its tasks run: exit 130 with one line, no output, no scratch. It used to hang
    (the interrupt landed in a fork hook while Ray started its processes, and was dropped) or die with SIGSEGV at
    interpreter exit (Ray's threads outliving the run)."""
    pytest.importorskip("ray")
    env, tmp, cache = env_dirs
    project = tmp_path / "project"
    recipe = write_project(project, tokenizer_path, n_docs=400, engine={"name": "ray", "num_cpus": 2})
    child = Child(["run", str(recipe)], project, {**env, "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "TEST_MOMENT": moment})
    assert child.wait_for(f"TEST-AT-{moment}"), child.text[-3000:]
    child.signal_group(signal.SIGINT)
    code, err = child.finish()
    assert_interrupted_cleanly(code, err)
    assert sorted(p.name for p in project.iterdir()) == ["docs.jsonl", "r.yaml"]
    assert scratch_in(tmp, cache) == []


DROPPED_IN_FORK_HOOK = """
import _thread, os, time
from hfprep.interrupts import handle_interrupts

ran = []

def after_fork_hook():
    ran.append(os.getpid())

# Ctrl-C arrives while the fork hooks run (a library starting a process): interrupt_main is a builtin, so Python
# handles the pending signal at the first line of the next hook, where it drops the exception ("Exception ignored").
os.register_at_fork(after_in_parent=_thread.interrupt_main)
os.register_at_fork(after_in_parent=after_fork_hook)
try:
    with handle_interrupts():
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            time.sleep(0.01)
        print("NOT INTERRUPTED", ran == [os.getpid()])
except KeyboardInterrupt:
    print("INTERRUPTED", ran == [os.getpid()])
"""


def test_ctrl_c_dropped_in_a_fork_hook_is_delivered_again(env_dirs):
    """A Ctrl-C that lands in a fork hook (Ray starts its processes with one: logging's hook was hit) used to be
    lost, and logging's lock stayed taken, so the Ray run hung: now the interrupt comes again and the hook it cut
    short runs."""
    env, _, _ = env_dirs
    proc = subprocess.run(
        [sys.executable, "-c", DROPPED_IN_FORK_HOOK], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.stdout.split() == ["INTERRUPTED", "True"], proc.stdout + proc.stderr[-3000:]
    assert "Exception ignored" not in proc.stderr, proc.stderr[-3000:]


# --- kill -9 / SIGINT at random moments ------------------------------------------------------------------------
# Each command is held at its last step before its result becomes visible (the output's publish, the push's commit)
# until the signal has been sent, so the random moment always falls while the command runs; the exit status proves
# the signal stopped it (130 through hfprep's handler, or -9), never a run that had already finished.


def leftovers_of(pid: int, *roots: Path) -> list[str]:
    """Paths under ``roots`` that a killed process ``pid`` may leave (its staging folder, lock, scratch)."""
    found = []
    for root in roots:
        for p in root.rglob("*"):
            name = p.name
            if re.match(rf"^(hfprep-[a-z]+-{pid}-|\.out\.tmp-{pid}-|\.out\.old-{pid}-)", name) or name == ".out.lock":
                found.append(str(p))
    return found


def check_output_state(out: Path, previous: dict[str, str]) -> None:
    """The output is the previous one, byte for byte, or a complete new one (validates, marker names every file)."""
    assert out.is_dir()
    now = file_hashes(out)
    if now != previous:
        assert validate_folder(str(out)).ok and foreign_files(out) == [], sorted(now)


def signal_while_running(child: Child, sig: int, delay: float, gate: str) -> None:
    """Send ``sig`` after ``delay`` seconds. The child holds at ``gate`` (the last step before its result becomes
    visible) until it is signalled, so the signal lands while the command runs: never after it has finished."""
    time.sleep(delay)
    assert child.proc.poll() is None, f"the command ended before the signal, held at {gate}: {child.text[-3000:]}"
    child.signal_group(sig)


def assert_stopped_by(sig: int, code: int, err: str, command: str = "run") -> None:
    """The signal stopped the command: SIGINT through hfprep's handler (exit 130, its one line), SIGKILL at once."""
    if sig == signal.SIGINT:
        assert_interrupted_cleanly(code, err, command)
    else:
        assert code == -signal.SIGKILL, err[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_run_killed_or_interrupted_at_a_random_moment(tmp_path, tokenizer_path, env_dirs, seed):
    from hfprep.run import run_recipe

    env, tmp, cache = env_dirs
    rng = random.Random(seed)
    project = tmp_path / "project"
    recipe = write_project(project, tokenizer_path, n_docs=300, splits={"heldout_fraction": 0.1})
    run_recipe(str(recipe))
    out = project / "out"
    previous = file_hashes(out)
    sig = signal.SIGKILL if seed % 2 else signal.SIGINT
    child = Child(["run", str(recipe), "--overwrite", "--num-proc", "2"], project, {**env, "TEST_MOMENT": "publish"})
    assert child.wait_for("[hfprep] source"), child.text[-3000:]
    signal_while_running(child, sig, rng.uniform(0.0, 2.5), "publish")
    code, err = child.finish()
    assert_stopped_by(sig, code, err)
    assert file_hashes(out) == previous  # stopped before publishing: the previous output, byte for byte
    left = sorted(set(map(str, project.iterdir())) - {str(out), str(recipe), str(project / "docs.jsonl")})
    stale = scratch_in(tmp, cache) + left
    if sig == signal.SIGINT:
        assert stale == []
    else:  # kill -9: only what carries the dead process's pid (or the lock file), removed by the next run
        assert sorted(stale) == sorted(set(leftovers_of(child.proc.pid, tmp, cache, project)) & set(stale))
        run_recipe(str(recipe), overwrite=True, num_proc=2)
        assert scratch_in(tmp, cache) == []
        assert sorted(p.name for p in project.iterdir()) == ["docs.jsonl", "out", "r.yaml"]
        check_output_state(out, previous)


# --- kd-cache: killed or interrupted at random moments; the resumable .partial folder -----------------------------


@pytest.fixture(scope="module")
def kd_inputs(tmp_path_factory, tokenizer) -> Path:
    from hfprep.kd.example import save_tiny_teacher, write_prepared

    root = tmp_path_factory.mktemp("kd_faults")
    texts = [" ".join(random.Random(i).choice(WORDS) for _ in range(20)) for i in range(60)]
    write_prepared(tokenizer, root / "prepared", texts, seq_len=48, max_rows_per_shard=8)
    save_tiny_teacher(root / "teacher", len(tokenizer), seed=2)
    return root


def write_kd_recipe(folder: Path, kd_inputs: Path, tokenizer_path: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "kd.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "input": {"folder": str(kd_inputs / "prepared")},
                "teacher": {"name_or_path": str(kd_inputs / "teacher")},
                "tokenizer": {"name_or_path": tokenizer_path},
                "output": {"folder": "kd", "rows_per_shard": 3},
                "k": 4,
                "batch_size": 1,
            }
        )
    )
    return path


@pytest.mark.slow
@pytest.mark.parametrize("seed", [4, 5])
def test_kd_cache_killed_or_interrupted_at_a_random_moment(tmp_path, kd_inputs, tokenizer_path, env_dirs, seed):
    from hfprep.kd.builder import run_kd_recipe

    env, tmp, cache = env_dirs
    rng = random.Random(seed)
    project = tmp_path / "kdp"
    recipe = write_kd_recipe(project, kd_inputs, tokenizer_path)
    run_kd_recipe(str(recipe))
    out, partial = project / "kd", project / ".kd.partial"
    previous = file_hashes(out)
    inputs_before = file_hashes(kd_inputs)
    sig = signal.SIGKILL if seed % 2 else signal.SIGINT
    child = Child(["kd-cache", str(recipe), "--overwrite"], project, {**env, "TEST_MOMENT": "publish"})
    assert child.wait_for("kd-cache train"), child.text[-3000:]
    signal_while_running(child, sig, rng.uniform(0.0, 2.0), "publish")
    code, err = child.finish()
    assert_stopped_by(sig, code, err, "kd-cache")
    assert file_hashes(out) == previous  # stopped before publishing: the previous cache, byte for byte
    assert file_hashes(kd_inputs) == inputs_before
    if sig == signal.SIGINT:
        assert "re-run to resume" in err
    names = sorted(p.name for p in project.iterdir())
    # What may stay: the resumable folder (complete shards only; a kill -9 can leave one torn .tmp file in it)
    # and, after a kill -9, the dead process's lock file and staging folder.
    allowed = {"kd", "kd.yaml", ".kd.partial", ".kd.lock"}
    assert set(names) <= allowed | {n for n in names if n.startswith(f".kd.tmp-{child.proc.pid}-")}, names
    if partial.exists():
        import pyarrow.parquet as pq

        for shard in (partial / "data").glob("*.parquet"):
            pq.read_metadata(shard)  # complete: its footer is there
        torn = [p.name for p in (partial / "data").glob(".*")]
        assert torn == [] or (sig == signal.SIGKILL and len(torn) == 1), torn
    summary = run_kd_recipe(str(recipe), overwrite=True)  # resumes, and cleans what the dead run left
    assert summary["splits"]["train"]["written"] + summary["splits"]["train"]["skipped"] > 0
    assert file_hashes(out) == previous
    assert sorted(p.name for p in project.iterdir()) == ["kd", "kd.yaml"]
    assert scratch_in(tmp, cache) == []


# --- push: killed or interrupted at random moments ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("seed", [6, 7])
def test_push_killed_or_interrupted_at_a_random_moment(tmp_path, tokenizer_path, env_dirs, monkeypatch, seed):
    """The remote repo holds the previous version or the complete new one; the local folder is untouched."""
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        from hub_server import DEFAULT_TOKENS, HubServer
    finally:
        sys.path.pop(0)
    from huggingface_hub import constants

    from hfprep.output.hub import push_folder
    from hfprep.run import run_recipe

    env, tmp, cache = env_dirs
    rng = random.Random(seed)
    folders = {}
    for name, n in (("v1", 40), ("v2", 90)):
        recipe = write_project(tmp_path / name, tokenizer_path, n_docs=n)
        run_recipe(str(recipe))
        folders[name] = tmp_path / name / "out"
    local = {name: file_hashes(f) for name, f in folders.items()}
    token = next(iter(DEFAULT_TOKENS))
    with HubServer() as hub:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", token)
        push_folder(str(folders["v1"]), "user/faults")
        push_folder(str(folders["v2"]), "user/reference")  # what a complete push of v2 gives
        v1_remote = hub.repo_files("user/faults")
        # The pushed card names its repo in its snippets: the reference's card, as it reads in user/faults.
        v2_remote = {
            path: data.replace(b"user/reference", b"user/faults") if path == "README.md" else data
            for path, data in hub.repo_files("user/reference").items()
        }
        assert v1_remote != v2_remote
        child_env = hub.client_env(env, token, str(tmp_path / "hf_home"))
        seen = len(hub.requests)
        # The commit waits until the child has been signalled: the push cannot finish before the signal lands.
        held = hub.hold_next_commit()
        child = Child(["push", str(folders["v2"]), "--repo-id", "user/faults"], tmp_path, child_env)
        deadline = time.monotonic() + 120
        while len(hub.requests) == seen and child.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        sig = signal.SIGKILL if seed % 2 else signal.SIGINT
        signal_while_running(child, sig, rng.uniform(0.0, 0.4), "the commit request")
        code, err = child.finish()
        in_flight = held.reached.is_set()
        assert held.release()  # a commit the server received whole is applied, as the Hub does
        remote = hub.repo_files("user/faults")
    assert_stopped_by(sig, code, err, "push")
    # Stopped before its commit reached the Hub: the previous version; during it: the complete new one.
    assert remote == (v2_remote if in_flight else v1_remote), sorted(remote)
    assert {name: file_hashes(f) for name, f in folders.items()} == local
    assert sorted(p.name for p in folders["v2"].parent.iterdir()) == ["docs.jsonl", "out", "r.yaml"]
    assert scratch_in(tmp, cache) == []


# --- a full disk ------------------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A 256 KiB tmpfs (skipped where this process may not mount one)."""
    where = tmp_path / "small"
    where.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(where)], capture_output=True, text=True
        )
    except OSError as e:
        pytest.skip(f"cannot mount a small tmpfs to fill up ({e})")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_full_disk_keeps_the_previous_output_and_says_so_in_one_line(
    tmp_path, tokenizer_path, small_disk, capsys, monkeypatch
):
    from hfprep.cli import main

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    recipe = write_project(
        tmp_path / "p",
        tokenizer_path,
        n_docs=20,
        output={"folder": str(small_disk / "out"), "plots": False},
        packing={"seq_len": 64, "strategy": "dense", "num_reduce_chunks": 4},
    )
    assert main(["run", str(recipe), "--json"]) == 0
    previous = file_hashes(small_disk / "out")
    rng = random.Random(3)
    letters = "abcdefghijklmnopqrstuvwxyz .,;"
    big = ["".join(rng.choice(letters) for _ in range(400)) for _ in range(1500)]  # ~600k chars: far over 256 KiB
    (tmp_path / "p" / "docs.jsonl").write_text("".join(json.dumps({"content": d}) + "\n" for d in big))
    capsys.readouterr()
    assert main(["run", str(recipe), "--overwrite"]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if "error" in line]
    assert "Traceback" not in err and len(lines) == 1, err[-3000:]
    assert "No space left on device" in lines[0] and "could not write output" in lines[0], lines
    assert file_hashes(small_disk / "out") == previous
    assert sorted(p.name for p in small_disk.iterdir()) == ["out"]  # no staging folder, no lock file
    assert scratch_in(tmp_path) == []


# --- two runs writing the same output at once ---------------------------------------------------------------------


@pytest.mark.slow
def test_two_runs_writing_the_same_output_at_once(tmp_path, tokenizer_path, env_dirs, capsys):
    """The second run stops at once with one line naming the first one's pid; the first one's output is whole."""
    from hfprep.cli import main

    env, tmp, cache = env_dirs
    project = tmp_path / "project"
    recipe = write_project(project, tokenizer_path, n_docs=60)
    assert main(["run", str(recipe), "--json"]) == 0
    previous = file_hashes(project / "out")
    first = Child(["run", str(recipe), "--overwrite"], project, {**env, "TEST_MOMENT": "write"})
    assert first.wait_for("TEST-AT-write"), first.text[-3000:]
    capsys.readouterr()
    assert main(["run", str(recipe), "--overwrite"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "being written by another hfprep process" in err and f"pid {first.proc.pid}" in err, err
    assert file_hashes(project / "out") == previous
    first.signal_group(signal.SIGINT)
    code, err = first.finish()
    assert_interrupted_cleanly(code, err)
    assert file_hashes(project / "out") == previous
    assert main(["run", str(recipe), "--overwrite", "--json"]) == 0  # the lock went with the first run
    assert sorted(p.name for p in project.iterdir()) == ["docs.jsonl", "out", "r.yaml"]
    assert scratch_in(tmp, cache) == []
