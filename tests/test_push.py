"""Push a prepared folder to a Hub-protocol server on 127.0.0.1 and load it back (no network).

The round trip runs in a subprocess, as a user would: ``HF_ENDPOINT``/``HF_HUB_DISABLE_XET``/``HF_TOKEN`` must be
set before ``datasets``/``huggingface_hub`` are imported, and this test process imported them long ago (with
``HF_HUB_OFFLINE=1``). The other tests push in-process with huggingface_hub's constants patched to the server.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import logging
import math
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from hfprep.errors import ConfigError, DataError, HubError
from hfprep.output.hub import (
    MAX_FILES_PER_COMMIT,
    merge_card,
    plan_commits,
    plan_push,
    push_folder,
    validate_folder_for_push,
)
from hfprep.output.layout import write_split
from hfprep.tokenization.stage import tokenized_features

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
    return f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n\n# Test dataset\n\nProse survives.\n\n![fill](images/fill.png){extra}\n"


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


PUSHED = r"[0-9a-f]{10}"  # the push id prefix of a pushed shard's name


def front_matter(text: bytes | str) -> dict:
    text = text.decode() if isinstance(text, bytes) else text
    return yaml.safe_load(text.split("---\n")[1])


def seg_match(path: str, pattern: str) -> bool:
    """fsspec-style glob for the patterns these cards use: ``*``/``?``/``[..]`` never cross a ``/``."""
    a, b = path.split("/"), pattern.split("/")
    return len(a) == len(b) and all(fnmatch.fnmatchcase(x, y) for x, y in zip(a, b))


def visible_rows(hub: HubServer, repo_id: str, revision: str = "main", config: str = "default") -> dict | None:
    """What ``load_dataset(repo_id, config)`` reads at ``revision``, from the card's ``configs`` and the files alone
    (a reference reader, independent of hfprep); None when a pattern matches nothing (loading fails)."""
    files = hub.repo_files(repo_id, revision=revision)
    entry = next(c for c in front_matter(files["README.md"])["configs"] if c.get("config_name") == config)
    out = {}
    for item in entry["data_files"]:
        paths = sorted(p for p in files if seg_match(p, item["path"]))
        if not paths:
            return None
        out[item["split"]] = [r for p in paths for r in _parquet_rows(files[p])]
    return out


_ROWS_CACHE: dict[str, list[dict]] = {}


def _parquet_rows(content: bytes) -> list[dict]:
    key = hashlib.sha256(content).hexdigest()
    if key not in _ROWS_CACHE:
        _ROWS_CACHE[key] = pq.read_table(io.BytesIO(content)).to_pylist()
    return [dict(r) for r in _ROWS_CACHE[key]]


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


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
    from hfprep.output.hub import push_folder
    import datasets

    cfg = json.loads(sys.argv[1])
    out = {}

    def load(repo, name=None):
        d = datasets.load_dataset(repo, name)
        s = datasets.load_dataset(repo, name, streaming=True)
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
    out["url3"] = push_folder(cfg["v1"], cfg["repo"], config_name="extra")
    out["load3"] = load(cfg["repo"])
    out["load3_extra"] = load(cfg["repo"], "extra")
    print("RESULT " + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def roundtrip(tmp_path_factory):
    """Push v1 (3 train shards + 1 test shard), load it, push v2 (1 train shard), load again; then push v1 as
    config ``extra`` and load both configs."""
    tmp = tmp_path_factory.mktemp("roundtrip")
    train1, test1, train2 = rows_table(7, seed=1), rows_table(3, seed=2), rows_table(4, seed=3)
    v1 = make_folder(tmp / "v1", {"train": (train1, 3), "test": (test1, 10)})
    v2 = make_folder(tmp / "v2", {"train": (train2, 10)}, images=False)
    before = {"v1": snapshot(v1), "v2": snapshot(v2)}
    with HubServer(tokens=TOKENS) as hub:
        env = hub.client_env(dict(os.environ), WRITE_TOKEN, str(tmp / "hf_home"))
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
    v2_oid = next(c.oid for c in hub.commit_log if c.title == "fewer shards")
    files = hub.repo_files("user/roundtrip", revision=v2_oid)
    [shard] = data_files(files)
    assert re.fullmatch(rf"data/{PUSHED}-train-00000-of-00001\.parquet", shard)
    assert files[shard] == (roundtrip["v2"] / "data/train-00000-of-00001.parquet").read_bytes()
    # load_dataset sees only v2: no stale train shards, no test split left over from v1.
    assert sorted(res["load2"]) == ["train"]
    assert res["load2"]["train"]["rows"] == roundtrip["tables"]["train2"].to_pylist()
    assert res["load2"]["train"]["stream_rows"] == roundtrip["tables"]["train2"].to_pylist()
    v1_files = hub.repo_files("user/roundtrip", revision=hub.commit_log[0].oid)  # v1 was one commit
    last = next(c for c in hub.commit_log if c.title == "fewer shards")
    # v1's 4 shards and its image (recorded in the card as written by that push) go; nothing else does.
    assert set(last.deleted) == set(data_files(v1_files)) | {"images/fill.png"}
    assert len(data_files(v1_files)) == 4


def test_config_push_keeps_the_default_config_and_loads_by_name(roundtrip):
    hub, res, tables = roundtrip["hub"], roundtrip["result"], roundtrip["tables"]
    assert sorted(res["load3"]) == ["train"]
    assert res["load3"]["train"]["rows"] == tables["train2"].to_pylist()  # default config untouched
    assert sorted(res["load3_extra"]) == ["test", "train"]
    assert res["load3_extra"]["train"]["rows"] == tables["train1"].to_pylist()
    assert res["load3_extra"]["test"]["stream_rows"] == tables["test1"].to_pylist()
    files = hub.repo_files("user/roundtrip")
    extra = [p for p in data_files(files) if p.startswith("data/extra/")]
    assert len(extra) == 4 and all(re.fullmatch(rf"data/extra/{PUSHED}-(train|test)-\d{{5}}-of-0000[13]\.parquet", p)
                                   for p in extra)
    assert files["extra/images/fill.png"] == (roundtrip["v1"] / "images/fill.png").read_bytes()
    meta = front_matter(files["README.md"])
    assert [c["config_name"] for c in meta["configs"]] == ["default", "extra"]
    assert [i["config_name"] for i in meta["dataset_info"]] == ["default", "extra"]
    assert sorted(meta["hfprep"]["pushes"]) == ["default", "extra"]
    card = files["README.md"].decode()
    extra_section = card.split("<!-- hfprep:begin config=extra -->")[1].split("<!-- hfprep:end config=extra -->")[0]
    default_section = card.split("<!-- hfprep:begin config=default -->")[1].split("<!-- hfprep:end")[0]
    assert "![fill](extra/images/fill.png)" in extra_section  # links follow the config's files
    assert "![fill](images/fill.png)" in default_section


def test_card_yaml_and_prose_survive(roundtrip):
    hub = roundtrip["hub"]
    v2_oid = next(c.oid for c in hub.commit_log if c.title == "fewer shards")
    files = hub.repo_files("user/roundtrip", revision=v2_oid)
    local = (roundtrip["v2"] / "README.md").read_text()
    meta, local_meta = front_matter(files["README.md"]), front_matter(local)
    for key in ("license", "tags", "dataset_info"):
        assert meta[key] == local_meta[key]
    assert meta["hfprep"]["configs"] == {"default": local_meta["hfprep"]}  # one block per config
    [shard] = data_files(files)
    assert meta["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": shard[:15] + "-train-?????-of-?????.parquet"}]}
    ]
    body = files["README.md"].decode().split("---\n", 2)[2]
    assert body == "\n<!-- hfprep:begin config=default -->\n" + local.split("---\n", 2)[2].strip("\n") + (
        "\n<!-- hfprep:end config=default -->\n"
    )


def test_roundtrip_never_leaks_the_token_and_keeps_the_folders(roundtrip):
    hub = roundtrip["hub"]
    assert hub.token_leaks == []
    assert not any(WRITE_TOKEN.encode() in blob for blob in hub.stored_blobs())
    assert WRITE_TOKEN not in roundtrip["output"]
    assert snapshot(roundtrip["v1"]) == roundtrip["before"]["v1"]
    assert snapshot(roundtrip["v2"]) == roundtrip["before"]["v2"]
    # v1's images/fill.png was written by hfprep (recorded in the card), so v2, which has none, deleted it.
    assert "images/fill.png" not in hub.repo_files("user/roundtrip")


# ---------------------------------------------------------------------------- in-process pushes


def test_many_files_are_split_into_commits_of_at_most_50(hub_in_process, tmp_path):
    hub = hub_in_process
    many = make_folder(tmp_path / "many", {"train": (rows_table(60, seed=4), 1)})  # 60 shards + image + card
    push_folder(many, "user/many", token=WRITE_TOKEN)
    log = [c for c in hub.commit_log if c.repo_id == "user/many"]
    # A new repo has no card configs: a placeholder card that matches no file comes first, so the first commit's
    # shards are not read by file-name conventions (a partial dataset); the real card comes with the last commit.
    assert [c.num_operations for c in log] == [50, 13]
    assert log[-1].added[-1] == "README.md"
    assert log[0].added[0] == "README.md"
    assert visible_rows(hub, "user/many", revision=log[0].oid) is None
    assert visible_rows(hub, "user/many") == {"train": rows_table(60, seed=4).to_pylist()}
    names = data_files(hub.repo_files("user/many"))
    assert [n[15:] for n in names] == [f"-train-{i:05d}-of-00060.parquet" for i in range(60)]

    few = make_folder(tmp_path / "few", {"train": (rows_table(5, seed=5), 3)}, images=False)
    push_folder(few, "user/many", token=WRITE_TOKEN)
    log = [c for c in hub.commit_log if c.repo_id == "user/many"][2:]
    # 2 new shards + the card, then 60 stale shards + the image of the first push deleted: 64 operations.
    assert [(len(c.added), len(c.deleted)) for c in log] == [(3, 47), (0, 14)]
    assert all(c.num_operations <= MAX_FILES_PER_COMMIT for c in hub.commit_log)
    assert log[0].added[-1] == "README.md"  # the card switches in the first commit, deletions follow it
    files = hub.repo_files("user/many")
    names = data_files(files)
    assert [n[15:] for n in names] == ["-train-00000-of-00002.parquet", "-train-00001-of-00002.parquet"]
    for name in names:
        assert files[name] == (few / "data" / name[16:].lstrip("-")).read_bytes()
    assert visible_rows(hub, "user/many") == {"train": rows_table(5, seed=5).to_pylist()}


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
    [shard] = data_files(hub.repo_files("user/priv", revision="v1"))
    assert re.fullmatch(rf"data/{PUSHED}-train-00000-of-00001\.parquet", shard)
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
    files = ["README.md", "data/t-0", "data/t-1", "images/a.png"]
    assert plan_commits(files, ["data/old-0", "data/old-1"], max_files_per_commit=2) == [
        (["data/t-0", "data/t-1"], []),
        (["images/a.png", "README.md"], []),
        ([], ["data/old-0", "data/old-1"]),
    ]
    assert plan_commits(files, [], max_files_per_commit=50) == [([*files[1:], "README.md"], [])]
    with pytest.raises(ConfigError):
        plan_commits(files, [], max_files_per_commit=0)


@pytest.mark.parametrize(
    ("n_local", "n_remote", "limit"), [(1, 0, 50), (49, 0, 50), (50, 1, 50), (120, 77, 50), (7, 9, 3)]
)
def test_plan_commits_invariants(n_local, n_remote, limit):
    files = [f"data/x-train-{i:05d}-of-{n_local:05d}.parquet" for i in range(n_local)] + ["README.md"]
    old = [f"data/y-train-{i:05d}-of-{n_remote:05d}.parquet" for i in range(n_remote)]
    commits = plan_commits(files, old, limit)
    flat_adds = [p for adds, _ in commits for p in adds]
    flat_dels = [p for _, dels in commits for p in dels]
    assert flat_adds == files  # every file once, in order, the card last
    assert flat_dels == old
    assert all(0 < len(a) + len(d) <= limit for a, d in commits)
    assert len(commits) == math.ceil((len(files) + len(old)) / limit)
    card_commit = next(i for i, (a, _) in enumerate(commits) if "README.md" in a)
    assert all(not d for _, d in commits[:card_commit])  # nothing is deleted before the card switches


def test_xet_against_an_endpoint_without_xet_names_the_fix(hub_in_process, folder, monkeypatch):
    pytest.importorskip("hf_xet")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)
    with pytest.raises(HubError) as excinfo:
        push_folder(folder, "user/x", token=WRITE_TOKEN)
    assert_one_line_hub_error(excinfo, "HF_HUB_DISABLE_XET=1")


# -------------------------------------------------------------- what a push keeps: configs, files, card


def legacy_hfprep_repo(hub: HubServer, repo_id: str, train: pa.Table, fr: pa.Table) -> None:
    """A repo as an older hfprep left it (unsuffixed ``data/train-*`` shards, a card without section markers),
    to which its owner added a ``fr`` config, ``data/NOTES.md`` and a paragraph of prose."""
    hub.create_repo({"type": "dataset", "name": repo_id.split("/")[1]}, ("user", "write"))
    half = train.num_rows // 2
    card = card_text({"train": train}).replace("# Test dataset", "# Test dataset\n\nOld hfprep prose.")
    meta = front_matter(card)
    meta["configs"].append({"config_name": "fr", "data_files": [{"split": "train", "path": "data/fr/train-*"}]})
    owner = "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n" + card.split("---\n", 2)[2]
    hub.commit_files(
        repo_id,
        {
            "data/train-00000-of-00002.parquet": parquet_bytes(train.slice(0, half)),
            "data/train-00001-of-00002.parquet": parquet_bytes(train.slice(half)),
            "data/fr/train-00000-of-00001.parquet": parquet_bytes(fr),
            "data/NOTES.md": b"owner notes\n",
            "README.md": owner.encode(),
        },
    )


def test_push_never_deletes_other_configs_or_files(hub_in_process, tmp_path):
    hub = hub_in_process
    old, fr = rows_table(6, seed=30), rows_table(3, seed=31)
    legacy_hfprep_repo(hub, "user/keep", old, fr)
    assert visible_rows(hub, "user/keep") == {"train": old.to_pylist()}
    before = hub.repo_files("user/keep")

    new = rows_table(5, seed=32)
    folder = make_folder(tmp_path / "ds", {"train": (new, 2)}, images=False)
    push_folder(folder, "user/keep", token=WRITE_TOKEN)
    files = hub.repo_files("user/keep")
    # The older hfprep's default-config shards are gone; the fr config's shard and the notes are byte-identical.
    assert "data/train-00000-of-00002.parquet" not in files and "data/train-00001-of-00002.parquet" not in files
    for kept in ("data/fr/train-00000-of-00001.parquet", "data/NOTES.md", ".gitattributes"):
        assert files[kept] == before[kept]
    assert visible_rows(hub, "user/keep") == {"train": new.to_pylist()}
    assert visible_rows(hub, "user/keep", config="fr") == {"train": fr.to_pylist()}

    # A second config next to them: the default config and the owner's files are untouched.
    other = rows_table(4, seed=33)
    push_folder(make_folder(tmp_path / "cfg", {"train": (other, 10)}), "user/keep", token=WRITE_TOKEN,
                config_name="code")
    after = hub.repo_files("user/keep")
    assert {p: after[p] for p in files if p != "README.md"} == {p: files[p] for p in files if p != "README.md"}
    assert visible_rows(hub, "user/keep") == {"train": new.to_pylist()}
    assert visible_rows(hub, "user/keep", config="fr") == {"train": fr.to_pylist()}
    assert visible_rows(hub, "user/keep", config="code") == {"train": other.to_pylist()}
    assert [c["config_name"] for c in front_matter(after["README.md"])["configs"]] == ["default", "fr", "code"]

    # Re-pushing the default config deletes only its own earlier shards, not the code config's or fr's.
    newer = rows_table(3, seed=34)
    push_folder(make_folder(tmp_path / "ds2", {"train": (newer, 10)}, images=False), "user/keep", token=WRITE_TOKEN)
    last = hub.commit_log[-1]
    assert sorted(last.deleted) == sorted(p for p in files if re.fullmatch(rf"data/{PUSHED}-train-.*", p))
    assert visible_rows(hub, "user/keep", config="code") == {"train": other.to_pylist()}
    assert visible_rows(hub, "user/keep", config="fr") == {"train": fr.to_pylist()}


def test_card_merge_keeps_foreign_yaml_and_prose(hub_in_process, tmp_path):
    hub = hub_in_process
    hub.create_repo({"type": "dataset", "name": "owned"}, ("user", "write"))
    owner_meta = {
        "license": "mit",
        "annotations_creators": ["expert-generated"],
        "configs": [{"config_name": "fr", "data_files": [{"split": "train", "path": "fr/*.parquet"}]}],
        "dataset_info": {"config_name": "fr", "features": [{"name": "text", "dtype": "string"}],
                         "splits": [{"name": "train", "num_examples": 3}]},
        "extra_gated_prompt": "Agree to the terms",
    }
    owner_card = "---\n" + yaml.safe_dump(owner_meta, sort_keys=False) + "---\n\n# Owner title\n\nIntro by the owner.\n"
    hub.commit_files("user/owned", {"README.md": owner_card.encode(), "fr/a.parquet": parquet_bytes(rows_table(3, 40))})

    table = rows_table(4, seed=41)
    folder = make_folder(tmp_path / "ds", {"train": (table, 10)})
    push_folder(folder, "user/owned", token=WRITE_TOKEN)
    card = hub.repo_files("user/owned")["README.md"].decode()
    meta = front_matter(card)
    local = front_matter((folder / "README.md").read_text())
    assert meta["annotations_creators"] == ["expert-generated"]
    assert meta["extra_gated_prompt"] == "Agree to the terms"
    assert meta["license"] == "apache-2.0"  # a key hfprep writes: the folder's card says so
    assert meta["configs"][1] == owner_meta["configs"][0]
    assert meta["configs"][0]["config_name"] == "default"
    assert meta["dataset_info"] == [{"config_name": "default", **local["dataset_info"]}, owner_meta["dataset_info"]]
    body = card.split("---\n", 2)[2]
    assert body.startswith("\n# Owner title\n\nIntro by the owner.\n\n<!-- hfprep:begin config=default -->\n# Test")
    assert visible_rows(hub, "user/owned") == {"train": table.to_pylist()}

    # The owner edits prose around hfprep's section; the next push replaces only the section, in place.
    edited = card.replace("<!-- hfprep:end config=default -->", "<!-- hfprep:end config=default -->\n\nOutro.")
    hub.commit_files("user/owned", {"README.md": edited.encode()})
    table2 = rows_table(2, seed=42)
    (folder / "README.md").unlink()
    folder2 = make_folder(tmp_path / "ds2", {"train": (table2, 10)})
    (folder2 / "README.md").write_text((folder2 / "README.md").read_text().replace("Prose survives.", "Second push."))
    push_folder(folder2, "user/owned", token=WRITE_TOKEN)
    card2 = hub.repo_files("user/owned")["README.md"].decode()
    assert card2.count("<!-- hfprep:begin config=default -->") == 1
    assert "Intro by the owner." in card2 and card2.rstrip().endswith("Outro.")
    assert "Second push." in card2 and "Prose survives." not in card2
    assert front_matter(card2)["extra_gated_prompt"] == "Agree to the terms"
    assert "fr/a.parquet" in hub.repo_files("user/owned")


def test_merge_card_hand_worked():
    local = (
        "---\nlicense: apache-2.0\ntags: [hfprep]\nconfigs:\n- config_name: default\n  data_files:\n"
        "  - split: train\n    path: data/train-*\ndataset_info:\n  splits:\n  - name: train\n    num_examples: 2\n"
        "hfprep:\n  seq_len: 8\n---\n\n# Ours\n\n![f](images/f.png)\n"
    )
    legacy = "---\ntags: [mine]\nconfigs:\n- config_name: default\n  data_files: data/train-*\nhfprep:\n  seq_len: 4\n---\n# Old\n"
    out = merge_card(local, legacy, config_name="fr", data_files=[{"split": "train", "path": "data/fr/x-train-*"}],
                     push_record={"id": "x"}, path_map={"images/f.png": "fr/images/f.png"})
    # The legacy card's single hfprep block was its default config's: both configs keep theirs. The repo-wide
    # license comes from the default config (the legacy card has none), not from the fr push; tags are merged.
    assert out == (
        "---\n"
        "tags:\n- mine\n- hfprep\n"
        "configs:\n- config_name: default\n  data_files: data/train-*\n"
        "- config_name: fr\n  data_files:\n  - split: train\n    path: data/fr/x-train-*\n"
        "hfprep:\n  configs:\n    default:\n      seq_len: 4\n    fr:\n      seq_len: 8\n"
        "  pushes:\n    fr:\n      id: x\n"
        "dataset_info:\n- config_name: fr\n  splits:\n  - name: train\n    num_examples: 2\n"
        "---\n\n"
        "<!-- hfprep:begin config=default -->\n# Old\n<!-- hfprep:end config=default -->\n\n"
        "<!-- hfprep:begin config=fr -->\n# Ours\n\n![f](fr/images/f.png)\n<!-- hfprep:end config=fr -->\n"
    )
    # No remote card: the folder's card, its body in markers, its configs entry pointed at the pushed files.
    fresh = merge_card(local, None, data_files=[{"split": "train", "path": "data/x-train-*"}])
    assert front_matter(fresh)["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/x-train-*"}]}
    ]
    assert fresh.endswith("\n<!-- hfprep:begin config=default -->\n# Ours\n\n![f](images/f.png)\n"
                          "<!-- hfprep:end config=default -->\n")


# --------------------------------------------------------------- atomicity: failures and concurrent commits


def shard_folder(path: Path, seed: int, n: int = 120) -> tuple[Path, list[dict]]:
    """``n`` one-row shards (a push of ``n + 1`` files: several commits of at most 50)."""
    table = rows_table(n, seed=seed)
    return make_folder(path, {"train": (table, 1)}, images=False), table.to_pylist()


def test_a_push_failing_at_any_commit_leaves_old_or_new_rows(hub_in_process, tmp_path):
    """Every state a reader can meet, checked with the reference reader (the 120-shard version through the real
    ``load_dataset`` is the next test); 12 shards and 5 operations per commit give the same 5-commit shape."""
    hub = hub_in_process
    folders = [shard_folder(tmp_path / "a", seed=50, n=12), shard_folder(tmp_path / "b", seed=51, n=12)]
    push_folder(folders[0][0], "user/atomic", token=WRITE_TOKEN, max_files_per_commit=5)
    assert visible_rows(hub, "user/atomic") == {"train": folders[0][1]}
    # From either state to the other: 12 shard uploads + the card, then 12 deletions -> 5 commits:
    # 5 adds | 5 adds | 2 adds + card + 2 deletions (the switch) | 5 deletions | 5 deletions.
    for k in range(1, 6):
        (_, old_rows), (new_folder, new_rows) = folders[(k + 1) % 2], folders[k % 2]
        start = len(hub.commit_log)
        hub.fail_commit_at(k)
        with pytest.raises(HubError) as excinfo:
            push_folder(new_folder, "user/atomic", token=WRITE_TOKEN, max_files_per_commit=5)
        assert_one_line_hub_error(excinfo, "500")
        assert len(hub.commit_log) - start == k - 1
        expected = old_rows if k <= 3 else new_rows
        assert visible_rows(hub, "user/atomic") == {"train": expected}, f"failed at commit {k}"
        for record in hub.commit_log[start:]:  # every state a reader could have met during the push
            assert visible_rows(hub, "user/atomic", revision=record.oid) in ({"train": old_rows}, {"train": new_rows})

        start = len(hub.commit_log)
        push_folder(new_folder, "user/atomic", token=WRITE_TOKEN, max_files_per_commit=5)  # finishes, cleans up
        for record in hub.commit_log[start:]:
            assert visible_rows(hub, "user/atomic", revision=record.oid) in ({"train": old_rows}, {"train": new_rows})
        assert visible_rows(hub, "user/atomic") == {"train": new_rows}
        remote = data_files(hub.repo_files("user/atomic"))
        assert len(remote) == 12 and len({p[:15] for p in remote}) == 1  # only the new push's shards are left
        assert all(c.num_operations <= 5 for c in hub.commit_log)


ATOMIC_CLIENT = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, sys.argv[2])
    from hub_server import HubServer

    hub = HubServer(tokens={"hf_atomic_token": ("user", "write")}).start()
    # The Hub client reads these at import: set them first.
    os.environ.update(HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1", HF_TOKEN="hf_atomic_token")
    import datasets
    from hfprep.errors import HubError
    from hfprep.output.hub import push_folder

    cfg = json.loads(sys.argv[1])
    datasets.disable_progress_bars()

    def rows(repo):
        try:
            return datasets.load_dataset(repo, split="train")["input_ids"][:]
        except Exception as e:  # what a reader meets: an error is not a mixed state
            return type(e).__name__

    out = {}
    folders = [cfg["a"], cfg["b"]]
    push_folder(folders[0], "user/atomic")
    out["start"] = rows("user/atomic")
    for k in range(1, 6):
        new = folders[k % 2]
        hub.fail_commit_at(k)
        try:
            push_folder(new, "user/atomic")
            out[f"fail{k}"] = "no error"
        except HubError:
            out[f"fail{k}"] = rows("user/atomic")
        push_folder(new, "user/atomic")
        out[f"retry{k}"] = rows("user/atomic")
    hub.fail_commit_at(2)
    try:
        push_folder(folders[0], "user/fresh")
    except HubError:
        out["fresh_fail2"] = rows("user/fresh")
    print("RESULT " + json.dumps(out))
    """
)


def test_load_dataset_sees_old_or_new_rows_whichever_commit_fails(tmp_path):
    """A 120-shard push failed at each of its 5 commits in turn (50 adds | 50 adds | 20 adds + card + 29 deletions
    | 50 deletions | 41 deletions), read with the real ``load_dataset`` after each; one subprocess, server included
    (the Hub client reads HF_ENDPOINT at import)."""
    a, rows_a = shard_folder(tmp_path / "a", seed=50)
    b, rows_b = shard_folder(tmp_path / "b", seed=51)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    proc = subprocess.run(
        [sys.executable, "-c", ATOMIC_CLIENT, json.dumps({"a": str(a), "b": str(b)}), str(Path(__file__).parent)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    ids = {"a": [r["input_ids"] for r in rows_a], "b": [r["input_ids"] for r in rows_b]}
    assert out["start"] == ids["a"]
    for k in range(1, 6):
        old, new = ("a", "b") if k % 2 else ("b", "a")
        assert out[f"fail{k}"] == ids[old if k <= 3 else new], f"failed at commit {k}"
        assert out[f"retry{k}"] == ids[new]
    # A new repo whose push fails half-way is unreadable (as it was empty before), never a partial dataset.
    assert isinstance(out["fresh_fail2"], str)


@pytest.mark.parametrize(("after", "state"), [(1, "readers still see the previous data"), (3, "new data is live")])
def test_a_concurrent_commit_is_a_one_line_error(hub_in_process, tmp_path, after, state):
    hub = hub_in_process
    # 12 one-row shards, 5 operations per commit: 5 | 5 | 2 + card + 2 deletions (the switch) | 5 | 5.
    (a, rows_a), (b, rows_b) = shard_folder(tmp_path / "a", 60, n=12), shard_folder(tmp_path / "b", 61, n=12)
    push_folder(a, "user/race", token=WRITE_TOKEN, max_files_per_commit=5)
    hub.after_commit(after, lambda h: h.commit_files("user/race", {"notes.txt": b"someone else"}))
    with pytest.raises(HubError) as excinfo:
        push_folder(b, "user/race", token=WRITE_TOKEN, max_files_per_commit=5)
    assert_one_line_hub_error(excinfo, "user/race@main changed", state, "re-run the push")
    assert visible_rows(hub, "user/race") == {"train": rows_a if after < 3 else rows_b}
    push_folder(b, "user/race", token=WRITE_TOKEN, max_files_per_commit=5)  # re-run on top of the other change
    files = hub.repo_files("user/race")
    assert files["notes.txt"] == b"someone else"
    assert visible_rows(hub, "user/race") == {"train": rows_b}
    assert len(data_files(files)) == 12


# -------------------------------------------------------------------------------- dry run, revision, CLI


def pushed_since(hub: HubServer, start: int) -> list[tuple[list[str], list[str]]]:
    return [(sorted(c.added), sorted(c.deleted)) for c in hub.commit_log[start:]]


def test_dry_run_lists_exactly_what_the_push_does(hub_in_process, tmp_path):
    hub = hub_in_process
    legacy_hfprep_repo(hub, "user/dry", rows_table(6, seed=70), rows_table(2, seed=71))
    steps = [
        (make_folder(tmp_path / "one", {"train": (rows_table(7, seed=72), 2)}), "default", None),
        (make_folder(tmp_path / "two", {"train": (rows_table(9, seed=73), 1)}, images=False), "default", None),
        (make_folder(tmp_path / "three", {"test": (rows_table(3, seed=74), 1)}), "code", None),
        (make_folder(tmp_path / "four", {"train": (rows_table(2, seed=75), 1)}), "default", "dev"),
        (tmp_path / "four", "default", "dev"),  # unchanged: nothing to do
    ]
    for folder, config, revision in steps:
        plan = plan_push(folder, "user/dry", config_name=config, revision=revision, token=WRITE_TOKEN,
                         max_files_per_commit=4)
        before = snapshot(folder)
        start = len(hub.commit_log)
        push_folder(folder, "user/dry", token=WRITE_TOKEN, config_name=config, revision=revision,
                    max_files_per_commit=4)
        done = pushed_since(hub, start)
        assert [(sorted(a), sorted(d)) for a, d in plan.commits] == done
        assert sorted({p for a, _ in done for p in a}) == sorted(plan.added)
        assert sorted(p for _, d in done for p in d) == sorted(plan.deleted)
        assert plan.lines() == [f"add {p}" for p in plan.added] + [f"delete {p}" for p in plan.deleted]
        assert snapshot(folder) == before
    assert plan.added == [] and plan.commits == []  # the last step re-pushes an unchanged folder
    # The dev branch was created from main; main itself did not change with the dev pushes.
    assert visible_rows(hub, "user/dry", revision="dev") == {"train": rows_table(2, seed=75).to_pylist()}
    assert visible_rows(hub, "user/dry") == {"train": rows_table(9, seed=73).to_pylist()}


def test_dry_run_of_a_new_repo_changes_nothing(hub_in_process, folder):
    plan = plan_push(folder, "user/not-yet", token=WRITE_TOKEN)
    assert plan.parent is None and plan.deleted == []
    assert plan.added[-1] == "README.md" and len(plan.added) == 5  # 3 shards, the image, the card
    assert hub_in_process.repos == {}


def make_recipe(folder: Path, tokenizer_path: str) -> Path:
    docs = [" ".join(["alpha", "beta", "gamma", "def"][(i + j) % 4] for j in range(1 + i % 9)) for i in range(30)]
    (folder / "docs.jsonl").write_text("".join(json.dumps({"content": d}) + "\n" for d in docs))
    path = folder / "r.yaml"
    path.write_text(yaml.safe_dump({
        "source": {"files": ["docs.jsonl"]},
        "tokenizer": {"name_or_path": tokenizer_path},
        "packing": {"seq_len": 32, "strategy": "no_incomplete", "num_reduce_chunks": 2},
        "output": {"folder": "out"},
    }))
    return path


def test_cli_push_validates_first_and_dry_run_lists(hub_in_process, tmp_path, tokenizer_path, capsys, monkeypatch):
    from hfprep.cli import main
    from hfprep.output.layout import write_parquet

    hub = hub_in_process
    monkeypatch.setenv("HF_TOKEN", WRITE_TOKEN)
    assert main(["run", str(make_recipe(tmp_path, tokenizer_path)), "--json"]) == 0
    out = tmp_path / "out"
    capsys.readouterr()

    assert main(["push", str(out), "--repo-id", "user/cli", "--config-name", "small", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert hub.repos == {}
    assert lines[-1].startswith("dry run: ") and "nothing was changed" in lines[-1]
    assert lines[-2] == "add README.md"
    expected = (r"add (data/small/[0-9a-f]{10}-\w+-\d{5}-of-\d{5}\.parquet|small/(images|tokenizer)/\S+|small/recipe\.yaml"
                r"|README\.md)")
    assert [line for line in lines[:-1] if not re.fullmatch(expected, line)] == []
    assert main(["push", str(out), "--repo-id", "user/cli", "--config-name", "small", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["event"] == "pushed"
    assert sorted(p for c in hub.commit_log for p in c.added) == sorted(line[4:] for line in lines[:-1])
    card = hub.repo_files("user/cli")["README.md"].decode()
    assert 'subfolder="small/tokenizer"' in card and "](small/images/" in card  # pointers follow the config

    # A folder that fails `hfprep validate` is refused before any request, unless --no-validate.
    shard = next((out / "data").glob("train-*.parquet"))
    rows = pq.read_table(shard).to_pylist()
    rows[0]["position_ids"][1] = 5
    write_parquet(pa.Table.from_pylist(rows, schema=tokenized_features().arrow_schema), shard, tokenized_features())
    n = len(hub.requests)
    assert main(["push", str(out), "--repo-id", "user/cli"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "fails validation" in err and "--no-validate" in err
    assert len(hub.requests) == n
    assert main(["push", str(out), "--repo-id", "user/cli", "--no-validate"]) == 0
    assert main(["push", str(out), "--repo-id", "user/cli", "--config-name", "a/b", "--no-validate"]) == 2
    assert "invalid config name 'a/b'" in capsys.readouterr().err


def test_config_push_to_a_repo_without_card_keeps_its_data_readable(hub_in_process, tmp_path):
    """A repo read by file-name conventions (no card): like push_to_hub, its shards become the default config."""
    hub = hub_in_process
    legacy = rows_table(4, seed=80)
    hub.create_repo({"type": "dataset", "name": "plain"}, ("user", "write"))
    hub.commit_files("user/plain", {"data/train-00000-of-00001.parquet": parquet_bytes(legacy)})
    start = len(hub.commit_log)
    table = rows_table(5, seed=81)
    push_folder(make_folder(tmp_path / "ds", {"train": (table, 1)}), "user/plain", token=WRITE_TOKEN,
                config_name="extra", max_files_per_commit=2)
    assert len(hub.commit_log) - start == 4  # placeholder card + 1 shard | 2 shards | 2 shards | image + card
    for record in hub.commit_log[start:]:
        assert visible_rows(hub, "user/plain", revision=record.oid) == {"train": legacy.to_pylist()}
        assert visible_rows(hub, "user/plain", revision=record.oid, config="extra") in (None, {"train": table.to_pylist()})
    assert visible_rows(hub, "user/plain", config="extra") == {"train": table.to_pylist()}
    assert "data/train-00000-of-00001.parquet" in hub.repo_files("user/plain")


def test_recipe_hub_config_name_pushes_that_config(hub_in_process, tmp_path, tokenizer_path, monkeypatch):
    from hfprep.recipe import RecipeError, load_recipe
    from hfprep.run import run_recipe

    monkeypatch.setenv("HF_TOKEN", WRITE_TOKEN)
    path = make_recipe(tmp_path, tokenizer_path)
    recipe = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**recipe, "hub": {"repo_id": "user/from-recipe", "config_name": "a/b"}}))
    with pytest.raises(RecipeError, match="hub.config_name"):
        load_recipe(path)
    path.write_text(yaml.safe_dump({**recipe, "hub": {"repo_id": "user/from-recipe", "config_name": "small"}}))
    summary = run_recipe(str(path))
    assert summary["pushed"].endswith("/datasets/user/from-recipe")
    files = hub_in_process.repo_files("user/from-recipe")
    assert any(re.fullmatch(rf"data/small/{PUSHED}-train-00000-of-00001\.parquet", p) for p in files)
    assert [c["config_name"] for c in front_matter(files["README.md"])["configs"]] == ["small"]
