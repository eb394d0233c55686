"""Push a prepared folder to a Hub-protocol server on 127.0.0.1 and load it back (no network).

The round trip runs in a subprocess, as a user would: ``HF_ENDPOINT``/``HF_HUB_DISABLE_XET``/``HF_TOKEN`` must be
set before ``datasets``/``huggingface_hub`` are imported, and this test process imported them long ago (with
``HF_HUB_OFFLINE=1``). The other tests push in-process with huggingface_hub's constants patched to the server.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from hfprep.errors import ConfigError, DataError, HubError
from hfprep.hub import MAX_FILES_PER_COMMIT, plan_commits, push_folder, validate_folder_for_push
from hfprep.layout import write_split
from hfprep.tokenize import tokenized_features

sys.path.insert(0, str(Path(__file__).parent))
from hub_server import HubServer

WRITE_TOKEN = "hf_test_write_token_0123456789"
READ_TOKEN = "hf_test_read_token_0123456789"
TOKENS = {WRITE_TOKEN: ("user", "write"), READ_TOKEN: ("user", "read")}


# ------------------------------------------------------------------------------------------------ helpers


def rows_table(n: int, seed: int) -> pa.Table:
    """Packed-row-shaped data (uint32 ids/positions, bool loss mask) with varied lengths."""
    ids, pos, mask = [], [], []
    for i in range(n):
        length = 1 + (i * 7 + seed) % 9
        ids.append([(seed * 1000 + i * 31 + j) % 4_000_000_000 for j in range(length)])
        pos.append(list(range(length)))
        mask.append([(i + j + seed) % 3 != 0 for j in range(length)])
    t = pa.uint32()
    return pa.table(
        {
            "input_ids": pa.array(ids, pa.list_(t)),
            "position_ids": pa.array(pos, pa.list_(t)),
            "loss_mask": pa.array(mask, pa.list_(pa.bool_())),
        }
    )


def card_text(splits: dict[str, pa.Table], extra: str = "") -> str:
    features = tokenized_features()
    meta = {
        "license": "apache-2.0",
        "tags": ["hfprep", "tokenized"],
        "configs": [{"config_name": "default", "data_files": [{"split": s, "path": f"data/{s}-*"} for s in splits]}],
        "dataset_info": {
            "features": features._to_yaml_list(),
            "splits": [{"name": s, "num_bytes": t.nbytes, "num_examples": t.num_rows} for s, t in splits.items()],
        },
        "hfprep": {"seq_len": 8, "strategy": "pretrain", "tokenizer": {"id": "local/tiny", "vocab_size": 400}},
    }
    return f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n\n# Test dataset\n\nProse survives.{extra}\n"


def make_folder(path: Path, splits: dict[str, tuple[pa.Table, int]], images: bool = True) -> Path:
    """A prepared folder: ``splits`` maps split -> (table, rows per shard)."""
    features = tokenized_features()
    for split, (table, per_shard) in splits.items():
        write_split(table, path, split, features=features, max_rows_per_shard=per_shard)
    if images:
        (path / "images").mkdir(parents=True, exist_ok=True)
        (path / "images" / "fill.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    (path / "README.md").write_text(card_text({s: t for s, (t, _) in splits.items()}))
    return path


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file (hidden ones too) with its content hash and mtime: proof that nothing local changed."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            out[p.relative_to(folder).as_posix()] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
    return out


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def data_files(files: dict[str, bytes]) -> list[str]:
    return sorted(p for p in files if p.startswith("data/"))


@pytest.fixture
def hub():
    with HubServer(tokens=TOKENS) as server:
        yield server


@pytest.fixture
def hub_in_process(hub, monkeypatch):
    """Point this process's huggingface_hub at the server (conftest made it offline; Xet needs a real Hub)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    return hub


# ------------------------------------------------------------------------- end to end, in a subprocess

CLIENT = textwrap.dedent(
    """
    import json, sys
    from hfprep.hub import push_folder
    import datasets

    cfg = json.loads(sys.argv[1])
    out = {}

    def load(repo):
        d = datasets.load_dataset(repo)
        s = datasets.load_dataset(repo, streaming=True)
        return {
            split: {
                "rows": d[split].to_list(),
                "features": d[split].features.to_dict(),
                "stream_rows": list(s[split]),
                "stream_features": s[split].features.to_dict() if s[split].features is not None else None,
            }
            for split in d
        }

    out["url1"] = push_folder(cfg["v1"], cfg["repo"])
    out["load1"] = load(cfg["repo"])
    out["url2"] = push_folder(cfg["v2"], cfg["repo"], commit_message="fewer shards")
    out["load2"] = load(cfg["repo"])
    print("RESULT " + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def roundtrip(tmp_path_factory):
    """Push v1 (3 train shards + 1 test shard), load it, push v2 (1 train shard), load again."""
    tmp = tmp_path_factory.mktemp("roundtrip")
    train1, test1, train2 = rows_table(7, seed=1), rows_table(3, seed=2), rows_table(4, seed=3)
    v1 = make_folder(tmp / "v1", {"train": (train1, 3), "test": (test1, 10)})
    v2 = make_folder(tmp / "v2", {"train": (train2, 10)}, images=False)
    before = {"v1": snapshot(v1), "v2": snapshot(v2)}
    with HubServer(tokens=TOKENS) as hub:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
        env.update(
            HF_ENDPOINT=hub.url,
            HF_HUB_DISABLE_XET="1",
            HF_TOKEN=WRITE_TOKEN,
            HF_HOME=str(tmp / "hf_home"),
            HF_HUB_DISABLE_TELEMETRY="1",
        )
        cfg = {"v1": str(v1), "v2": str(v2), "repo": "user/roundtrip"}
        proc = subprocess.run(
            [sys.executable, "-c", CLIENT, json.dumps(cfg)], env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
        yield {
            "result": result,
            "hub": hub,
            "v1": v1,
            "v2": v2,
            "tables": {"train1": train1, "test1": test1, "train2": train2},
            "before": before,
            "output": proc.stdout + proc.stderr,
        }


def test_roundtrip_load_dataset_returns_the_pushed_rows_and_features(roundtrip):
    res, tables = roundtrip["result"], roundtrip["tables"]
    assert res["url1"] == f"{roundtrip['hub'].url}/datasets/user/roundtrip"
    expected_features = tokenized_features().to_dict()
    loaded = res["load1"]
    assert sorted(loaded) == ["test", "train"]
    for split, table in (("train", tables["train1"]), ("test", tables["test1"])):
        assert loaded[split]["rows"] == table.to_pylist()
        assert loaded[split]["features"] == expected_features


def test_roundtrip_streaming_returns_the_same_rows(roundtrip):
    res, tables = roundtrip["result"], roundtrip["tables"]
    for split, table in (("train", tables["train1"]), ("test", tables["test1"])):
        assert res["load1"][split]["stream_rows"] == table.to_pylist()
        assert res["load1"][split]["stream_features"] == tokenized_features().to_dict()


def test_second_push_with_fewer_shards_leaves_no_stale_shards(roundtrip):
    hub, res = roundtrip["hub"], roundtrip["result"]
    files = hub.repo_files("user/roundtrip")
    assert data_files(files) == ["data/train-00000-of-00001.parquet"]
    assert (
        files["data/train-00000-of-00001.parquet"]
        == (roundtrip["v2"] / "data/train-00000-of-00001.parquet").read_bytes()
    )
    # load_dataset sees only v2: no stale train shards, no test split left over from v1.
    assert sorted(res["load2"]) == ["train"]
    assert res["load2"]["train"]["rows"] == roundtrip["tables"]["train2"].to_pylist()
    assert res["load2"]["train"]["stream_rows"] == roundtrip["tables"]["train2"].to_pylist()
    v1_shards = {f"data/train-0000{i}-of-00003.parquet" for i in range(3)} | {"data/test-00000-of-00001.parquet"}
    last = [c for c in hub.commit_log if c.repo_id == "user/roundtrip"][-1]
    assert last.title == "fewer shards"
    assert set(last.deleted) == v1_shards


def test_card_yaml_and_prose_survive_byte_for_byte(roundtrip):
    files = roundtrip["hub"].repo_files("user/roundtrip")
    assert files["README.md"] == (roundtrip["v2"] / "README.md").read_bytes()
    meta = yaml.safe_load(files["README.md"].decode().split("---\n")[1])
    assert meta["hfprep"]["tokenizer"] == {"id": "local/tiny", "vocab_size": 400}
    assert meta["license"] == "apache-2.0"
    assert meta["configs"][0]["data_files"] == [{"split": "train", "path": "data/train-*"}]
    assert b"Prose survives." in files["README.md"]


def test_roundtrip_never_leaks_the_token_and_keeps_the_folders(roundtrip):
    hub = roundtrip["hub"]
    assert hub.token_leaks == []
    assert not any(WRITE_TOKEN.encode() in blob for blob in hub.stored_blobs())
    assert WRITE_TOKEN not in roundtrip["output"]
    assert snapshot(roundtrip["v1"]) == roundtrip["before"]["v1"]
    assert snapshot(roundtrip["v2"]) == roundtrip["before"]["v2"]
    # v1 carried images/fill.png; v2 does not delete it (only data/ is managed).
    assert "images/fill.png" in hub.repo_files("user/roundtrip")


# ---------------------------------------------------------------------------- in-process pushes


def test_many_files_are_split_into_commits_of_at_most_50(hub_in_process, tmp_path):
    hub = hub_in_process
    many = make_folder(tmp_path / "many", {"train": (rows_table(60, seed=4), 1)})  # 60 shards + image + card
    push_folder(many, "user/many", token=WRITE_TOKEN)
    log = [c for c in hub.commit_log if c.repo_id == "user/many"]
    assert [c.num_operations for c in log] == [50, 12]
    assert log[-1].added[-1] == "README.md"
    assert "README.md" not in log[0].added
    assert data_files(hub.repo_files("user/many")) == [f"data/train-{i:05d}-of-00060.parquet" for i in range(60)]

    few = make_folder(tmp_path / "few", {"train": (rows_table(5, seed=5), 3)}, images=False)
    push_folder(few, "user/many", token=WRITE_TOKEN)
    log = [c for c in hub.commit_log if c.repo_id == "user/many"][2:]
    # 2 new shards + 60 stale deletions + the card = 63 operations.
    assert all(c.num_operations <= MAX_FILES_PER_COMMIT for c in log)
    assert sum(len(c.deleted) for c in log) == 60
    assert sum(len(c.added) for c in log) == 3
    assert log[-1].added == ["README.md"]
    files = hub.repo_files("user/many")
    assert data_files(files) == ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"]
    for rel in data_files(files):
        assert files[rel] == (few / rel).read_bytes()


def test_pushing_an_unchanged_folder_makes_no_commit(hub_in_process, tmp_path):
    hub = hub_in_process
    folder = make_folder(tmp_path / "ds", {"train": (rows_table(6, seed=6), 2)})
    url1 = push_folder(folder, "user/same", token=WRITE_TOKEN)
    n = len(hub.commit_log)
    uploads = sum(1 for m, p, _ in hub.requests if m == "PUT")
    url2 = push_folder(folder, "user/same", token=WRITE_TOKEN)
    assert url1 == url2
    assert len(hub.commit_log) == n
    assert sum(1 for m, p, _ in hub.requests if m == "PUT") == uploads


def test_private_repo_and_branch_revision(hub_in_process, tmp_path):
    hub = hub_in_process
    folder = make_folder(tmp_path / "ds", {"train": (rows_table(4, seed=7), 10)})
    push_folder(folder, "user/priv", token=WRITE_TOKEN, private=True, revision="v1")
    assert hub.repos[("dataset", "user/priv")].private is True
    assert data_files(hub.repo_files("user/priv", revision="v1")) == ["data/train-00000-of-00001.parquet"]
    assert sorted(hub.repo_files("user/priv", revision="main")) == [".gitattributes"]


def test_repo_id_without_namespace_goes_to_the_token_user(hub_in_process, tmp_path):
    folder = make_folder(tmp_path / "ds", {"train": (rows_table(2, seed=8), 10)}, images=False)
    url = push_folder(folder, "bare-name", token=WRITE_TOKEN)
    assert url.endswith("/datasets/user/bare-name")
    assert "README.md" in hub_in_process.repo_files("user/bare-name")


def test_token_never_in_logs_or_uploads(hub_in_process, tmp_path, caplog, capfd):
    folder = make_folder(tmp_path / "ds", {"train": (rows_table(5, seed=9), 2)})
    with caplog.at_level(logging.DEBUG):
        push_folder(folder, "user/logs", token=WRITE_TOKEN)
    captured = capfd.readouterr()
    assert "pushing" in caplog.text  # the push did log
    assert WRITE_TOKEN not in caplog.text
    assert WRITE_TOKEN not in captured.out + captured.err
    assert hub_in_process.token_leaks == []
    assert not any(WRITE_TOKEN.encode() in blob for blob in hub_in_process.stored_blobs())


# ------------------------------------------------------------------------------------------ faults


def assert_one_line_hub_error(excinfo: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(excinfo.value)
    assert isinstance(excinfo.value, HubError)
    assert "\n" not in message
    assert WRITE_TOKEN not in message and READ_TOKEN not in message
    for fragment in fragments:
        assert fragment in message, message


@pytest.fixture
def folder(tmp_path) -> Path:
    return make_folder(tmp_path / "ds", {"train": (rows_table(5, seed=10), 2)})


def test_unreachable_hub(hub_in_process, folder):
    before = snapshot(folder)
    endpoint = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(HubError) as excinfo:
        push_folder(folder, "user/x", token=WRITE_TOKEN, endpoint=endpoint)
    assert_one_line_hub_error(excinfo, "cannot reach the Hub", endpoint)
    assert snapshot(folder) == before


def test_invalid_token(hub_in_process, folder):
    before = snapshot(folder)
    with pytest.raises(HubError) as excinfo:
        push_folder(folder, "user/x", token="hf_not_a_valid_token")
    assert_one_line_hub_error(excinfo, "rejected the token", "401")
    assert "hf_not_a_valid_token" not in str(excinfo.value)
    assert snapshot(folder) == before
    assert hub_in_process.repos == {}


def test_read_only_token_has_no_permission(hub_in_process, folder):
    before = snapshot(folder)
    with pytest.raises(HubError) as excinfo:
        push_folder(folder, "user/x", token=READ_TOKEN)
    assert_one_line_hub_error(excinfo, "403", "write access")
    assert snapshot(folder) == before


def test_other_namespace_has_no_permission(hub_in_process, folder):
    with pytest.raises(HubError) as excinfo:
        push_folder(folder, "someone-else/x", token=WRITE_TOKEN)
    assert_one_line_hub_error(excinfo, "403", "someone-else")


def test_server_error_mid_push_keeps_the_folder(hub_in_process, folder):
    hub = hub_in_process
    before = snapshot(folder)
    hub.fail_next("commit", 500, "Internal Error")
    with pytest.raises(HubError) as excinfo:
        push_folder(folder, "user/x", token=WRITE_TOKEN)
    assert_one_line_hub_error(excinfo, "500", "user/x")
    assert snapshot(folder) == before
    assert data_files(hub.repo_files("user/x")) == []  # the failed commit published nothing
    push_folder(folder, "user/x", token=WRITE_TOKEN)  # a retry completes
    assert len(data_files(hub.repo_files("user/x"))) == 3


def test_offline_mode_is_a_clear_error(hub_in_process, folder, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError) as excinfo:
        push_folder(folder, "user/x", token=WRITE_TOKEN)
    assert_one_line_hub_error(excinfo, "HF_HUB_OFFLINE")


def test_missing_token_is_a_clear_error_before_any_request(hub_in_process, folder, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(HubError) as excinfo:
        push_folder(folder, "user/x")
    assert_one_line_hub_error(excinfo, "no Hugging Face token", "HF_TOKEN")
    assert hub_in_process.requests == []


def test_token_inside_the_card_is_refused_before_any_request(hub_in_process, folder):
    card = folder / "README.md"
    card.write_text(card.read_text() + f"\nmy token is {WRITE_TOKEN}\n")
    with pytest.raises(HubError) as excinfo:
        push_folder(folder, "user/x", token=WRITE_TOKEN)
    assert_one_line_hub_error(excinfo, "contains the Hub token", "README.md")
    assert hub_in_process.requests == []


def test_invalid_repo_id(folder):
    with pytest.raises(ConfigError, match="invalid repo id 'a/b/c'"):
        push_folder(folder, "a/b/c", token=WRITE_TOKEN)


# --------------------------------------------------------------------------- folder pre-checks


def test_validate_folder_lists_shards_first_card_last_and_skips_hidden(folder):
    (folder / ".cache").mkdir()
    (folder / ".cache" / "x").write_text("tmp")
    (folder / ".DS_Store").write_text("tmp")
    plan = validate_folder_for_push(folder)
    assert plan.files == [
        "data/train-00000-of-00003.parquet",
        "data/train-00001-of-00003.parquet",
        "data/train-00002-of-00003.parquet",
        "images/fill.png",
        "README.md",
    ]
    assert plan.shards == {"train": plan.files[:3]}
    assert plan.card_metadata["hfprep"]["seq_len"] == 8


def test_validate_missing_folder(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        validate_folder_for_push(tmp_path / "nope")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: (f / "README.md").unlink(), "has no README.md"),
        (lambda f: (f / "README.md").write_text("# no metadata\n"), "has no YAML front matter"),
        (lambda f: (f / "README.md").write_text("---\nkey: [unclosed\n---\n"), "invalid YAML front matter"),
        (lambda f: (f / "README.md").write_text("---\n- a list\n---\n"), "must be a mapping"),
        (lambda f: (f / "data/train-00001-of-00003.parquet").unlink(), "train-00001-of-00003.parquet is missing"),
        (
            lambda f: (f / "data/train-00000-of-00009.parquet").write_bytes(b"x"),
            "mixes shard counts [3, 9]",
        ),
        (lambda f: [p.unlink() for p in (f / "data").iterdir()], "has no data shards"),
        (
            lambda f: (f / "README.md").write_text(
                "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: validation\n"
                "    path: data/validation-*\n---\n"
            ),
            "configs pattern 'data/validation-*' matches no file",
        ),
        (
            lambda f: (f / "README.md").write_text("---\nconfigs:\n- config_name: default\n---\n"),
            "configs[0] has no 'data_files'",
        ),
    ],
)
def test_validate_folder_errors(folder, mutate, message):
    mutate(folder)
    with pytest.raises(DataError) as excinfo:
        validate_folder_for_push(folder)
    assert message in str(excinfo.value)
    assert "\n" not in str(excinfo.value)


def test_push_of_incomplete_folder_sends_nothing(hub_in_process, folder):
    (folder / "data/train-00002-of-00003.parquet").unlink()
    with pytest.raises(DataError, match="missing"):
        push_folder(folder, "user/x", token=WRITE_TOKEN)
    assert hub_in_process.requests == []


# ------------------------------------------------------------------------------------ commit plan


def test_plan_commits_hand_worked():
    files = ["data/t-0", "data/t-1", "images/a.png", "README.md"]
    assert plan_commits(files, ["data/t-0", "data/old-0", "data/old-1"], max_files_per_commit=2) == [
        (["data/t-0", "data/t-1"], []),
        (["images/a.png"], ["data/old-0"]),
        (["README.md"], ["data/old-1"]),
    ]
    assert plan_commits(files, [], max_files_per_commit=50) == [(files, [])]
    with pytest.raises(ConfigError):
        plan_commits(files, [], max_files_per_commit=0)


@pytest.mark.parametrize(
    ("n_local", "n_remote", "limit"), [(1, 0, 50), (49, 0, 50), (50, 1, 50), (120, 77, 50), (7, 9, 3)]
)
def test_plan_commits_invariants(n_local, n_remote, limit):
    files = [f"data/train-{i:05d}-of-{n_local:05d}.parquet" for i in range(n_local)] + ["README.md"]
    remote = [f"data/train-{i:05d}-of-{n_remote:05d}.parquet" for i in range(n_remote)] + [files[0], ".gitattributes"]
    commits = plan_commits(files, remote, limit)
    flat_adds = [p for adds, _ in commits for p in adds]
    flat_dels = [p for _, dels in commits for p in dels]
    assert flat_adds == files  # every file once, in order, the card last
    assert sorted(flat_dels) == sorted(set(remote) - set(files) - {".gitattributes"})
    assert all(0 < len(a) + len(d) <= limit for a, d in commits)
    assert len(commits) == math.ceil((len(files) + len(flat_dels)) / limit)
    assert "README.md" in commits[-1][0]


def test_xet_against_an_endpoint_without_xet_names_the_fix(hub_in_process, folder, monkeypatch):
    pytest.importorskip("hf_xet")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)
    with pytest.raises(HubError) as excinfo:
        push_folder(folder, "user/x", token=WRITE_TOKEN)
    assert_one_line_hub_error(excinfo, "HF_HUB_DISABLE_XET=1")
