"""The test Hub server itself, driven with raw HTTP (no huggingface_hub), so push tests rest on checked ground."""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from hub_server import HubServer, git_blob_oid

TOKEN = "hf_server_test_token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def call(
    url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None
) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.fixture(scope="module")
def hub():
    """A server with dataset ``user/d``: a regular ``notes.txt`` and an LFS ``data/x.parquet`` (26 bytes)."""
    with HubServer(tokens={TOKEN: ("user", "write")}) as server:
        base = server.url
        status, _, body = call(
            f"{base}/api/repos/create",
            "POST",
            json.dumps({"name": "d", "organization": None, "type": "dataset"}).encode(),
            {**AUTH, "Content-Type": "application/json"},
        )
        assert status == 200, body
        content = b"abcdefghijklmnopqrstuvwxyz"
        oid = hashlib.sha256(content).hexdigest()
        batch = {"operation": "upload", "transfers": ["basic"], "objects": [{"oid": oid, "size": len(content)}]}
        status, _, body = call(
            f"{base}/datasets/user/d.git/info/lfs/objects/batch", "POST", json.dumps(batch).encode(), AUTH
        )
        assert status == 200, body
        actions = json.loads(body)["objects"][0]["actions"]
        assert call(actions["upload"]["href"], "PUT", content)[0] == 200
        verify = json.dumps({"oid": oid, "size": len(content)}).encode()
        assert call(actions["verify"]["href"], "POST", verify)[0] == 200
        ndjson = [
            {"key": "header", "value": {"summary": "add files", "description": ""}},
            {
                "key": "file",
                "value": {"path": "notes.txt", "content": base64.b64encode(b"hello").decode(), "encoding": "base64"},
            },
            {"key": "lfsFile", "value": {"path": "data/x.parquet", "algo": "sha256", "oid": oid, "size": len(content)}},
        ]
        payload = b"".join(json.dumps(x).encode() + b"\n" for x in ndjson)
        status, _, body = call(f"{base}/api/datasets/user/d/commit/main", "POST", payload, AUTH)
        assert status == 200, body
        yield server


def test_resolve_full_and_byte_ranges(hub):
    url = f"{hub.url}/datasets/user/d/resolve/main/data/x.parquet"
    status, headers, body = call(url)
    assert (status, body) == (200, b"abcdefghijklmnopqrstuvwxyz")
    assert headers["X-Linked-Size"] == "26"
    assert headers["X-Linked-Etag"] == f'"{hashlib.sha256(body).hexdigest()}"'
    assert len(headers["X-Repo-Commit"]) == 40
    assert call(url, headers={"Range": "bytes=2-5"})[2] == b"cdef"
    status, headers, body = call(url, headers={"Range": "bytes=20-"})
    assert (status, body, headers["Content-Range"]) == (206, b"uvwxyz", "bytes 20-25/26")
    assert call(url, headers={"Range": "bytes=-3"})[2] == b"xyz"
    assert call(url, headers={"Range": "bytes=24-100"})[2] == b"yz"
    assert call(url, headers={"Range": "bytes=30-"})[0] == 416
    status, headers, body = call(url, "HEAD")
    assert (status, body, headers["Content-Length"]) == (200, b"", "26")


def test_resolve_errors_carry_hub_error_codes(hub):
    status, headers, _ = call(f"{hub.url}/datasets/user/d/resolve/main/missing.txt")
    assert (status, headers["X-Error-Code"]) == (404, "EntryNotFound")
    assert len(headers["X-Repo-Commit"]) == 40
    assert call(f"{hub.url}/datasets/user/nope/resolve/main/a")[1]["X-Error-Code"] == "RepoNotFound"
    assert call(f"{hub.url}/datasets/user/d/resolve/v9/notes.txt")[1]["X-Error-Code"] == "RevisionNotFound"
    status, headers, _ = call(
        f"{hub.url}/datasets/user/d/resolve/main/notes.txt", headers={"Authorization": "Bearer bad"}
    )
    assert (status, headers["X-Error-Message"]) == (401, "Invalid credentials in Authorization header")


def test_tree_and_paths_info(hub):
    status, _, body = call(f"{hub.url}/api/datasets/user/d/tree/main?recursive=false&expand=false")
    top = json.loads(body)
    assert status == 200
    assert [(e["type"], e["path"]) for e in top] == [
        ("directory", "data"),
        ("file", ".gitattributes"),
        ("file", "notes.txt"),
    ]
    notes = next(e for e in top if e["path"] == "notes.txt")
    assert notes["oid"] == hashlib.sha1(b"blob 5\0hello").hexdigest() == git_blob_oid(b"hello")
    # The client quotes the folder with safe="": data%2F... must work as well as data/.
    body = call(f"{hub.url}/api/datasets/user/d/tree/main/data?recursive=true&expand=true")[2]
    (entry,) = json.loads(body)
    assert entry["path"] == "data/x.parquet" and entry["lfs"]["size"] == 26 and "lastCommit" in entry
    assert call(f"{hub.url}/api/datasets/user/d/tree/main/nothing")[1]["X-Error-Code"] == "EntryNotFound"
    form = b"paths=notes.txt&paths=data&paths=absent&expand=False"
    status, _, body = call(
        f"{hub.url}/api/datasets/user/d/paths-info/main",
        "POST",
        form,
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert [(e["type"], e["path"]) for e in json.loads(body)] == [("file", "notes.txt"), ("directory", "data")]


def test_repo_info_by_branch_and_commit(hub):
    info = json.loads(call(f"{hub.url}/api/datasets/user/d")[2])
    assert info["id"] == "user/d"
    assert sorted(s["rfilename"] for s in info["siblings"]) == [".gitattributes", "data/x.parquet", "notes.txt"]
    by_sha = json.loads(call(f"{hub.url}/api/datasets/user/d/revision/{info['sha']}")[2])
    assert by_sha["sha"] == info["sha"]


def test_writes_need_a_write_token_and_the_right_namespace(hub):
    body = json.dumps({"name": "e", "organization": "other", "type": "dataset"}).encode()
    assert call(f"{hub.url}/api/repos/create", "POST", body, AUTH)[0] == 403
    assert call(f"{hub.url}/api/repos/create", "POST", body)[0] == 401
    again = json.dumps({"name": "d", "organization": "user", "type": "dataset"}).encode()
    status, _, resp = call(f"{hub.url}/api/repos/create", "POST", again, AUTH)
    assert status == 409 and json.loads(resp)["url"].endswith("/datasets/user/d")
    header = json.dumps({"key": "header", "value": {"summary": "x"}}).encode() + b"\n"
    assert call(f"{hub.url}/api/datasets/user/d/commit/main", "POST", header)[0] == 401


def test_commit_rejects_unknown_lfs_objects_and_missing_deletes(hub):
    lines = [
        {"key": "header", "value": {"summary": "bad"}},
        {"key": "lfsFile", "value": {"path": "y.parquet", "algo": "sha256", "oid": "0" * 64, "size": 1}},
    ]
    payload = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    assert call(f"{hub.url}/api/datasets/user/d/commit/main", "POST", payload, AUTH)[0] == 422
    lines[1] = {"key": "deletedFile", "value": {"path": "not-there.txt"}}
    payload = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    status, headers, _ = call(f"{hub.url}/api/datasets/user/d/commit/main", "POST", payload, AUTH)
    assert (status, headers["X-Error-Code"]) == (404, "EntryNotFound")
    assert sorted(hub.repo_files("user/d")) == [".gitattributes", "data/x.parquet", "notes.txt"]


def test_lfs_upload_must_match_its_oid(hub):
    oid = hashlib.sha256(b"real").hexdigest()
    batch = {"operation": "upload", "objects": [{"oid": oid, "size": 4}]}
    body = call(f"{hub.url}/datasets/user/d.git/info/lfs/objects/batch", "POST", json.dumps(batch).encode(), AUTH)[2]
    href = json.loads(body)["objects"][0]["actions"]["upload"]["href"]
    assert call(href, "PUT", b"fake")[0] == 400
    assert oid not in hub.lfs_objects
