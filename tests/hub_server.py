"""A small in-memory server speaking the Hugging Face Hub's HTTP protocol, for offline push/load tests.

It implements the routes the unmodified ``huggingface_hub`` client (and ``datasets`` on top of it) uses to
create a repo, upload files over the legacy LFS protocol, commit, list and download:

* ``POST /api/repos/create``, ``GET /api/whoami-v2``, ``POST /api/validate-yaml``
* ``GET /api/{type}s/{ns}/{name}[/revision/{rev}]`` (repo info), ``POST .../branch/{branch}``
* ``POST .../preupload/{rev}``, ``POST .../commit/{rev}`` (NDJSON), ``GET .../tree/{rev}[/{path}]``,
  ``POST .../paths-info/{rev}``
* ``POST /{prefix}{ns}/{name}.git/info/lfs/objects/batch`` + ``PUT`` upload + ``POST`` verify
* ``GET``/``HEAD /{prefix}{ns}/{name}/resolve/{rev}/{path}`` with byte ranges

Faults for tests: :meth:`HubServer.fail_next` (a route's next request), :meth:`HubServer.fail_commit_at` (the Nth
commit), :meth:`HubServer.after_commit` + :meth:`HubServer.commit_files` (another user's commit between two of a
client's), :meth:`HubServer.hold_next_commit` (a commit request kept waiting, so a client can be stopped while it
is in flight). A commit naming a ``parentCommit`` that is not the branch head gets the Hub's 412.

Clients must run with ``HF_ENDPOINT=<server.url>`` and ``HF_HUB_DISABLE_XET=1`` set before
``huggingface_hub`` is imported. Tokens are ``{token: (user, role)}`` with role ``"write"`` or ``"read"``;
a request carrying an unknown token gets the Hub's 401 "Invalid credentials in Authorization header".

Every request is recorded (``server.requests``), every file body sent too (``server.served``: repo id, path and
bytes, so tests can prove a reader fetched a range and not a whole file), every commit (``server.commit_log``), and
every request body is checked for the known tokens (``server.token_leaks``), so tests can prove a token never travelled
inside uploaded content.

Example:
    >>> with HubServer(tokens={"hf_test": ("user", "write")}) as hub:
    ...     hub.url.startswith("http://127.0.0.1:")
    True

Run standalone (e.g. to try ``hfprep push`` by hand): ``python tests/hub_server.py --port 8765``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as _dt
import hashlib
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_TOKENS: dict[str, tuple[str, str]] = {"hf_test_write_token": ("user", "write")}
REPO_TYPES = ("model", "dataset", "space")
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
# Mirrors the Hub's default .gitattributes: these go through LFS whatever their size.
LFS_SUFFIXES = (".parquet", ".arrow", ".png", ".jpg", ".jpeg", ".bin", ".safetensors", ".pt", ".npy", ".zst", ".gz")
LFS_MIN_SIZE = 10 * 2**20
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
GITATTRIBUTES = b"".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n".encode() for s in LFS_SUFFIXES)


def git_blob_oid(content: bytes) -> str:
    """The git object id of a blob (what the Hub reports as a regular file's ``oid``)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclass
class FileEntry:
    """One file in a commit's tree; LFS files keep their content in the server's object store."""

    size: int
    content: bytes | None = None  # regular files only
    lfs_sha256: str | None = None

    @property
    def oid(self) -> str:
        if self.lfs_sha256 is not None:
            return git_blob_oid(lfs_pointer(self.lfs_sha256, self.size))
        assert self.content is not None
        return git_blob_oid(self.content)

    @property
    def etag(self) -> str:
        return self.lfs_sha256 if self.lfs_sha256 is not None else self.oid


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    description: str
    date: str
    files: dict[str, FileEntry]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        if re.fullmatch(r"[0-9a-f]{40}", revision) and revision in self.commits:
            return self.commits[revision]
        return None


@dataclass
class CommitRecord:
    """What one ``/commit`` call did, for tests (e.g. "no commit has more than 50 operations")."""

    repo_id: str
    revision: str
    oid: str
    title: str
    added: list[str]
    deleted: list[str]

    @property
    def num_operations(self) -> int:
        return len(self.added) + len(self.deleted)


class HubHTTPError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.extra = extra or {}


@dataclass
class CommitHold:
    """A commit request held by :meth:`HubServer.hold_next_commit`: ``reached`` is set when it arrives; it waits
    for ``release()``, is then applied (or refused) as usual, and ``finished`` is set."""

    reached: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)

    def release(self, timeout: float = 30) -> bool:
        """Let the held request go on; True when it is done (or never arrived)."""
        self.released.set()
        return not self.reached.is_set() or self.finished.wait(timeout)


class HubServer:
    """In-memory Hub on ``127.0.0.1`` (ephemeral port by default), served from a background thread."""

    def __init__(self, tokens: dict[str, tuple[str, str]] | None = None, host: str = "127.0.0.1", port: int = 0):
        self.tokens = dict(DEFAULT_TOKENS if tokens is None else tokens)
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, int]] = []
        self.served: list[tuple[str, str, int]] = []
        self.commit_log: list[CommitRecord] = []
        self.token_leaks: list[str] = []
        self.failures: dict[str, tuple[int, str]] = {}
        self._commit_fault: list[Any] | None = None
        self._after_commit: list[Any] | None = None
        self._commit_hold: CommitHold | None = None
        self.lock = threading.RLock()
        self._upload_secret = uuid.uuid4().hex
        self._httpd = ThreadingHTTPServer((host, port), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def client_env(self, base: dict[str, str], token: str, hf_home: str) -> dict[str, str]:
        """``base`` without any ``HF_*``/``HUGGINGFACE_*`` setting, plus what a client process needs for this Hub."""
        env = {k: v for k, v in base.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
        env.update(
            HF_ENDPOINT=self.url,
            HF_HUB_DISABLE_XET="1",
            HF_TOKEN=token,
            HF_HOME=hf_home,
            HF_HUB_DISABLE_TELEMETRY="1",
        )
        return env

    def start(self) -> HubServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fail_next(self, route: str, status: int = 500, message: str = "Internal Error") -> None:
        """Make the next request to ``route`` fail with ``status`` (routes: create, preupload, lfs-batch, upload,
        verify, commit, tree, paths-info, resolve, info)."""
        self.failures[route] = (status, message)

    def fail_commit_at(self, n: int, status: int = 500, message: str = "Internal Error") -> None:
        """Make the ``n``-th next ``/commit`` request (1 = the next one) fail with ``status``; nothing is committed."""
        with self.lock:
            self._commit_fault = [n, status, message]

    def after_commit(self, n: int, callback: Callable[[HubServer], None]) -> None:
        """Call ``callback(server)`` right after the ``n``-th next successful commit (e.g. to commit concurrently
        with :meth:`commit_files` between two commits of a client)."""
        with self.lock:
            self._after_commit = [n, callback]

    def hold_next_commit(self) -> CommitHold:
        """Keep the next ``/commit`` request waiting, before it is applied, until ``release()``. The Hub applies a
        commit it received whole even when the client has gone meanwhile, and so does this server on release."""
        with self.lock:
            self._commit_hold = CommitHold()
            return self._commit_hold

    def commit_files(
        self,
        repo_id: str,
        files: dict[str, bytes | None],
        revision: str = "main",
        title: str = "edit",
        repo_type: str = "dataset",
    ) -> str:
        """Commit directly on the server, as another user would: ``{path: content}`` (``None`` deletes); returns the
        commit id."""
        with self.lock:
            repo = self.repos[(repo_type, repo_id)]
            tree = dict(self.get_commit(repo, revision).files)
            for path, content in files.items():
                if content is None:
                    del tree[path]
                elif path.endswith(LFS_SUFFIXES):
                    oid = hashlib.sha256(content).hexdigest()
                    self.lfs_objects[oid] = content
                    tree[path] = FileEntry(size=len(content), lfs_sha256=oid)
                else:
                    tree[path] = FileEntry(size=len(content), content=content)
            commit = self._add_commit(repo, revision, title, "", tree)
            self.commit_log.append(
                CommitRecord(
                    repo_id, revision, commit.oid, title, [p for p, c in files.items() if c is not None],
                    [p for p, c in files.items() if c is None],
                )
            )
            return commit.oid

    def maybe_fail(self, route: str) -> None:
        with self.lock:
            failure = self.failures.pop(route, None)
        if failure is not None:
            raise HubHTTPError(failure[0], failure[1])

    # ---- inspection helpers for tests -------------------------------------------------------------------------

    def repo_files(self, repo_id: str, repo_type: str = "dataset", revision: str = "main") -> dict[str, bytes]:
        """``{path: content}`` of a repo at ``revision`` (LFS files resolved to their content)."""
        with self.lock:
            commit = self.repos[(repo_type, repo_id)].resolve(revision)
            assert commit is not None, f"no revision {revision!r} in {repo_id}"
            return {p: self._content(e) for p, e in sorted(commit.files.items())}

    def stored_blobs(self) -> Iterator[bytes]:
        """Every byte string the server holds: file contents, LFS objects, commit messages."""
        with self.lock:
            yield from self.lfs_objects.values()
            for repo in self.repos.values():
                for commit in repo.commits.values():
                    yield commit.title.encode() + b"\n" + commit.description.encode()
                    for entry in commit.files.values():
                        if entry.content is not None:
                            yield entry.content

    def _content(self, entry: FileEntry) -> bytes:
        if entry.lfs_sha256 is not None:
            return self.lfs_objects[entry.lfs_sha256]
        assert entry.content is not None
        return entry.content

    # ---- auth --------------------------------------------------------------------------------------------------

    def user_for(self, authorization: str | None) -> tuple[str, str] | None:
        """``(user, role)`` for a ``Bearer`` header, None when anonymous; unknown tokens are a 401."""
        if not authorization:
            return None
        token = authorization.split(" ", 1)[1] if " " in authorization else authorization
        if token not in self.tokens:
            raise HubHTTPError(401, INVALID_CREDENTIALS)
        return self.tokens[token]

    def get_repo(self, repo_type: str, repo_id: str, who: tuple[str, str] | None) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and (who is None or who[0] != repo_id.split("/")[0])):
            raise HubHTTPError(404, "Repository not found", "RepoNotFound")
        return repo

    def check_write(self, repo: Repo, who: tuple[str, str] | None) -> None:
        if who is None:
            raise HubHTTPError(401, "You must be authenticated to write", "RepoNotFound")
        if who[0] != repo.repo_id.split("/")[0] or who[1] != "write":
            raise HubHTTPError(403, f"You don't have the rights to write to {repo.repo_id}")

    def get_commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubHTTPError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    # ---- repo state changes ------------------------------------------------------------------------------------

    def create_repo(self, payload: dict[str, Any], who: tuple[str, str] | None) -> dict[str, Any]:
        if who is None:
            raise HubHTTPError(401, "You must be authenticated to create a repo")
        repo_type = payload.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise HubHTTPError(400, f"Invalid repo type {repo_type!r}")
        name = payload.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise HubHTTPError(400, f"Invalid repo name {name!r}")
        namespace = payload.get("organization") or who[0]
        repo_id = f"{namespace}/{name}"
        url = f"{self.url}/{URL_PREFIXES[repo_type]}{repo_id}"
        if namespace != who[0] or who[1] != "write":
            raise HubHTTPError(
                403, f'You don\'t have the rights to create a {repo_type} under the namespace "{namespace}"'
            )
        with self.lock:
            if (repo_type, repo_id) in self.repos:
                raise HubHTTPError(409, f"You already created this {repo_type} repo", extra={"url": url})
            repo = Repo(
                repo_type, repo_id, payload.get("visibility") == "private" or bool(payload.get("private")), _now()
            )
            files = {".gitattributes": FileEntry(size=len(GITATTRIBUTES), content=GITATTRIBUTES)}
            self._add_commit(repo, "main", "initial commit", "", files)
            self.repos[(repo_type, repo_id)] = repo
        return {"url": url, "name": repo_id, "id": uuid.uuid4().hex[:24]}

    def _add_commit(self, repo: Repo, branch: str, title: str, description: str, files: dict[str, FileEntry]) -> Commit:
        parent = repo.branches.get(branch)
        seed = json.dumps([parent, title, sorted((p, e.oid) for p, e in files.items()), uuid.uuid4().hex]).encode()
        commit = Commit(hashlib.sha1(seed).hexdigest(), parent, title, description, _now(), files)
        repo.commits[commit.oid] = commit
        repo.branches[branch] = commit.oid
        return commit

    def commit(self, repo: Repo, revision: str, body: bytes, create_pr: bool) -> dict[str, Any]:
        with self.lock:
            hold, self._commit_hold = self._commit_hold, None
        if hold is None:
            return self._commit(repo, revision, body, create_pr)
        hold.reached.set()
        hold.released.wait()
        try:
            return self._commit(repo, revision, body, create_pr)
        finally:
            hold.finished.set()

    def _commit(self, repo: Repo, revision: str, body: bytes, create_pr: bool) -> dict[str, Any]:
        if create_pr:
            raise HubHTTPError(400, "This test server does not implement pull requests")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubHTTPError(400, "The first NDJSON line must be the commit header")
        header = lines[0]["value"]
        with self.lock:
            if self._commit_fault is not None:
                self._commit_fault[0] -= 1
                if self._commit_fault[0] == 0:
                    _, status, message = self._commit_fault
                    self._commit_fault = None
                    raise HubHTTPError(status, message)
            head = self.get_commit(repo, revision)
            if revision not in repo.branches:
                raise HubHTTPError(400, f"Can only commit to a branch, not {revision!r}")
            if header.get("parentCommit") and header["parentCommit"] != head.oid:
                raise HubHTTPError(412, "A commit has happened since the parent commit you specified")
            files = dict(head.files)
            added: list[str] = []
            deleted: list[str] = []
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value", {})
                path = value.get("path", "")
                if not path or path.startswith("/") or ".." in path.split("/"):
                    raise HubHTTPError(400, f"Invalid path {path!r}")
                if key == "file":
                    if value.get("encoding") != "base64":
                        raise HubHTTPError(400, "Only base64 encoding is supported")
                    content = base64.b64decode(value["content"])
                    files[path] = FileEntry(size=len(content), content=content)
                    added.append(path)
                elif key == "lfsFile":
                    oid = value.get("oid")
                    if oid not in self.lfs_objects:
                        raise HubHTTPError(422, f"LFS object {oid} for {path!r} was never uploaded")
                    files[path] = FileEntry(size=len(self.lfs_objects[oid]), lfs_sha256=oid)
                    added.append(path)
                elif key == "deletedFile":
                    if path not in files:
                        raise HubHTTPError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                    del files[path]
                    deleted.append(path)
                elif key == "deletedFolder":
                    prefix = path.rstrip("/") + "/"
                    gone = [p for p in files if p.startswith(prefix)]
                    if not gone:
                        raise HubHTTPError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                    for p in gone:
                        del files[p]
                    deleted.extend(gone)
                else:
                    raise HubHTTPError(400, f"Unknown commit operation {key!r}")
            if "README.md" in added:
                self.validate_yaml(self._content(files["README.md"]).decode("utf-8", "replace"))
            commit = self._add_commit(repo, revision, header.get("summary", ""), header.get("description", ""), files)
            self.commit_log.append(CommitRecord(repo.repo_id, revision, commit.oid, commit.title, added, deleted))
            callback = None
            if self._after_commit is not None:
                self._after_commit[0] -= 1
                if self._after_commit[0] == 0:
                    callback, self._after_commit = self._after_commit[1], None
            if callback is not None:
                callback(self)
        url = f"{self.url}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}/commit/{commit.oid}"
        return {"success": True, "commitOid": commit.oid, "commitUrl": url, "pullRequestUrl": None}

    @staticmethod
    def validate_yaml(content: str) -> dict[str, Any]:
        """The card's front matter must be a YAML mapping (what the Hub checks before accepting a README.md)."""
        import yaml

        match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, re.S)
        if match is None:
            return {}
        try:
            data = yaml.safe_load(match.group(1))
        except yaml.YAMLError as e:
            raise HubHTTPError(400, f"Invalid YAML in README.md: {e}") from e
        if data is not None and not isinstance(data, dict):
            raise HubHTTPError(400, "README.md metadata must be a YAML mapping")
        return data or {}

    # ---- listings ----------------------------------------------------------------------------------------------

    def tree_entries(self, commit: Commit, path: str, recursive: bool, expand: bool) -> list[dict[str, Any]]:
        path = path.strip("/")
        prefix = f"{path}/" if path else ""
        if path and path not in self._folders(commit) and path not in commit.files:
            raise HubHTTPError(404, f"{path} does not exist on {commit.oid}", "EntryNotFound")
        if path in commit.files:
            return [self.entry(commit, path, expand)]
        out = []
        for folder in sorted(self._folders(commit)):
            if folder.startswith(prefix) and (recursive or "/" not in folder[len(prefix) :]):
                out.append(self.entry(commit, folder, expand))
        for p in sorted(commit.files):
            if p.startswith(prefix) and (recursive or "/" not in p[len(prefix) :]):
                out.append(self.entry(commit, p, expand))
        return out

    @staticmethod
    def _folders(commit: Commit) -> set[str]:
        out = set()
        for p in commit.files:
            parts = p.split("/")[:-1]
            out.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        return out

    def entry(self, commit: Commit, path: str, expand: bool) -> dict[str, Any]:
        last = {"id": commit.oid, "title": commit.title, "date": commit.date}
        if path in commit.files:
            e = commit.files[path]
            out: dict[str, Any] = {"type": "file", "oid": e.oid, "size": e.size, "path": path}
            if e.lfs_sha256 is not None:
                pointer = lfs_pointer(e.lfs_sha256, e.size)
                out["lfs"] = {"oid": e.lfs_sha256, "size": e.size, "pointerSize": len(pointer)}
        else:
            out = {"type": "directory", "oid": hashlib.sha1(f"{commit.oid}:{path}".encode()).hexdigest(), "size": 0}
            out["path"] = path
        if expand:
            out["lastCommit"] = last
        return out

    def repo_info(self, repo: Repo, commit: Commit) -> dict[str, Any]:
        card: dict[str, Any] = {}
        if "README.md" in commit.files:
            try:
                card = self.validate_yaml(self._content(commit.files["README.md"]).decode("utf-8", "replace"))
            except HubHTTPError:
                card = {}
        info: dict[str, Any] = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.oid,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": list(card.get("tags") or []) if isinstance(card.get("tags"), list) else [],
            "createdAt": repo.created_at,
            "lastModified": commit.date,
            "siblings": [{"rfilename": p} for p in sorted(commit.files)],
        }
        if card:
            info["cardData"] = card
        return info


def _make_handler(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    repo_re = r"(?P<ns>[^/]+)/(?P<name>[^/]+)"
    api_re = re.compile(rf"^/api/(?P<type>models|datasets|spaces)/{repo_re}(?P<rest>(/.*)?)$")
    lfs_re = re.compile(rf"^/(?P<prefix>datasets/|spaces/)?{repo_re}\.git/info/lfs/objects/batch$")
    resolve_re = re.compile(rf"^/(?P<prefix>datasets/|spaces/)?{repo_re}/resolve/(?P<rest>.+)$")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "hfprep-test-hub/1.0"

        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            pass

        # -- plumbing --

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        break
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                body = b"".join(chunks)
            else:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            for token in hub.tokens:
                if token.encode() in body:
                    hub.token_leaks.append(f"{self.command} {self.path}")
            return body

        def _send(
            self,
            status: int,
            body: bytes = b"",
            content_type: str = "application/json",
            headers: dict[str, str] | None = None,
            head: bool = False,
        ) -> None:
            # Recorded before the reply goes out: a client that has its answer finds its request counted (a test
            # that waits for a new request must not mistake a late record of an earlier one for it).
            with hub.lock:
                hub.requests.append((self.command, self.path, status))
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a client stopped mid-request
                self.end_headers()
                if not head:
                    self.wfile.write(body)

        def _json(self, status: int, data: Any, headers: dict[str, str] | None = None, ctype: str = "application/json"):
            self._send(status, json.dumps(data).encode(), ctype, headers)

        def _error(self, e: HubHTTPError, head: bool = False) -> None:
            headers = {"X-Error-Message": e.message, **e.headers}
            if e.code:
                headers["X-Error-Code"] = e.code
            self._send(e.status, json.dumps({"error": e.message, **e.extra}).encode(), headers=headers, head=head)

        def _dispatch(self) -> None:
            head = self.command == "HEAD"
            try:
                body = self._body() if self.command in ("POST", "PUT") else b""
                self._route(urlsplit(self.path), body, head)
            except HubHTTPError as e:
                self._error(e, head)
            except (json.JSONDecodeError, KeyError, ValueError) as e:
                self._error(HubHTTPError(400, f"Bad request: {e}"), head)

        do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

        # -- routes --

        def _route(self, url: Any, body: bytes, head: bool) -> None:
            path, query = url.path, parse_qs(url.query)
            method = self.command
            if path.startswith("/__lfs/"):
                return self._lfs_object(path, body)
            who = hub.user_for(self.headers.get("Authorization"))
            if path == "/api/whoami-v2" and method == "GET":
                if who is None:
                    raise HubHTTPError(401, "You must be authenticated")
                role = who[1]
                return self._json(
                    200,
                    {
                        "type": "user",
                        "name": who[0],
                        "orgs": [],
                        "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": role}},
                    },
                )
            if path == "/api/repos/create" and method == "POST":
                hub.maybe_fail("create")
                return self._json(200, hub.create_repo(json.loads(body or b"{}"), who))
            if path == "/api/validate-yaml" and method == "POST":
                hub.validate_yaml(json.loads(body).get("content", ""))
                return self._json(200, {"errors": [], "warnings": []})
            if m := lfs_re.match(path):
                repo_type = "dataset" if m["prefix"] == "datasets/" else ("space" if m["prefix"] else "model")
                repo = hub.get_repo(repo_type, f"{m['ns']}/{m['name']}", who)
                hub.check_write(repo, who)
                hub.maybe_fail("lfs-batch")
                return self._lfs_batch(json.loads(body))
            if m := resolve_re.match(path):
                repo_type = "dataset" if m["prefix"] == "datasets/" else ("space" if m["prefix"] else "model")
                repo = hub.get_repo(repo_type, f"{m['ns']}/{m['name']}", who)
                rev, _, file_path = m["rest"].partition("/")
                hub.maybe_fail("resolve")
                return self._resolve(repo, unquote(rev), unquote(file_path), head)
            if m := api_re.match(path):
                repo = hub.get_repo(m["type"][:-1], f"{m['ns']}/{m['name']}", who)
                return self._repo_api(repo, m["rest"], method, query, body, who)
            raise HubHTTPError(404, f"No route for {method} {path}")

        def _repo_api(self, repo: Repo, rest: str, method: str, query: dict, body: bytes, who: Any) -> None:
            parts = rest.lstrip("/").split("/") if rest.strip("/") else []
            hub.maybe_fail("info" if not parts or parts[0] == "revision" else parts[0])
            if not parts and method == "GET":
                return self._json(200, hub.repo_info(repo, hub.get_commit(repo, "main")))
            verb, args = parts[0], parts[1:]
            if verb == "revision" and method == "GET" and args:
                rev = unquote("/".join(args))
                return self._json(200, hub.repo_info(repo, hub.get_commit(repo, rev)))
            if verb == "tree" and method == "GET" and args:
                commit = hub.get_commit(repo, unquote(args[0]))
                sub = unquote("/".join(args[1:]))
                flag = {k: v[-1].lower() == "true" for k, v in query.items() if k in ("recursive", "expand")}
                return self._json(
                    200, hub.tree_entries(commit, sub, flag.get("recursive", False), flag.get("expand", False))
                )
            if verb == "paths-info" and method == "POST" and args:
                commit = hub.get_commit(repo, unquote("/".join(args)))
                form = parse_qs(body.decode())
                expand = form.get("expand", ["False"])[-1].lower() == "true"
                out = []
                for p in form.get("paths", []):
                    p = p.strip("/")
                    if p in commit.files or p in hub._folders(commit):
                        out.append(hub.entry(commit, p, expand))
                return self._json(200, out)
            if verb == "preupload" and method == "POST" and args:
                hub.check_write(repo, who)
                commit = hub.get_commit(repo, unquote("/".join(args)))
                return self._json(200, {"files": [self._preupload(commit, f) for f in json.loads(body)["files"]]})
            if verb == "commit" and method == "POST" and args:
                hub.check_write(repo, who)
                create_pr = query.get("create_pr", ["0"])[-1] == "1"
                return self._json(200, hub.commit(repo, unquote("/".join(args)), body, create_pr))
            if verb == "branch" and method == "POST" and args:
                hub.check_write(repo, who)
                branch = unquote("/".join(args))
                start = json.loads(body or b"{}").get("startingPoint") or "main"
                with hub.lock:
                    if branch in repo.branches:
                        raise HubHTTPError(409, f"Branch {branch} already exists")
                    repo.branches[branch] = hub.get_commit(repo, start).oid
                return self._json(200, {})
            if verb == "refs" and method == "GET":
                branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": c} for b, c in repo.branches.items()]
                return self._json(200, {"branches": branches, "converts": [], "tags": []})
            raise HubHTTPError(404, f"No route for {method} {rest}")

        def _preupload(self, commit: Commit, f: dict[str, Any]) -> dict[str, Any]:
            path, size, sample = f["path"], int(f["size"]), base64.b64decode(f.get("sample", ""))
            lfs = path.lower().endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE or b"\0" in sample
            existing = commit.files.get(path)
            oid = None if existing is None else (existing.lfs_sha256 or existing.oid)
            return {"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}

        def _lfs_batch(self, payload: dict[str, Any]) -> None:
            if payload.get("operation") != "upload":
                raise HubHTTPError(400, "Only the upload operation is supported")
            objects = []
            for obj in payload["objects"]:
                oid, size = obj["oid"], int(obj["size"])
                out: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
                if oid not in hub.lfs_objects:
                    base = f"{hub.url}/__lfs/{hub._upload_secret}"
                    out["actions"] = {
                        "upload": {"href": f"{base}/upload/{oid}/{size}"},
                        "verify": {"href": f"{base}/verify"},
                    }
                objects.append(out)
            self._json(200, {"transfer": "basic", "objects": objects}, ctype="application/vnd.git-lfs+json")

        def _lfs_object(self, path: str, body: bytes) -> None:
            parts = path.split("/")  # ['', '__lfs', secret, action, ...]
            if len(parts) < 4 or parts[2] != hub._upload_secret:
                raise HubHTTPError(403, "Bad upload URL")
            hub.maybe_fail(parts[3])
            if parts[3] == "upload" and self.command == "PUT" and len(parts) == 6:
                oid, size = parts[4], int(parts[5])
                if hashlib.sha256(body).hexdigest() != oid or len(body) != size:
                    raise HubHTTPError(400, f"Uploaded content does not match oid {oid} / size {size}")
                with hub.lock:
                    hub.lfs_objects[oid] = body
                return self._send(200, b"", headers={"ETag": f'"{oid}"'})
            if parts[3] == "verify" and self.command == "POST":
                obj = json.loads(body)
                stored = hub.lfs_objects.get(obj["oid"])
                if stored is None or len(stored) != int(obj["size"]):
                    raise HubHTTPError(404, f"LFS object {obj['oid']} not found")
                return self._json(200, {"success": True})
            raise HubHTTPError(404, "No such LFS action")

        def _resolve(self, repo: Repo, revision: str, path: str, head: bool) -> None:
            commit = hub.get_commit(repo, revision)
            entry = commit.files.get(path)
            if entry is None:
                raise HubHTTPError(404, "Entry not found", "EntryNotFound", headers={"X-Repo-Commit": commit.oid})
            content = hub._content(entry)
            headers = {
                "X-Repo-Commit": commit.oid,
                "ETag": f'"{entry.etag}"',
                "Accept-Ranges": "bytes",
            }
            if entry.lfs_sha256 is not None:
                headers["X-Linked-Etag"] = f'"{entry.lfs_sha256}"'
                headers["X-Linked-Size"] = str(entry.size)
            status, body = 200, content
            rng = self.headers.get("Range")
            if rng:
                m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
                if m is None or (not m[1] and not m[2]):
                    raise HubHTTPError(416, f"Unsupported range {rng!r}")
                total = len(content)
                if m[1]:
                    start = int(m[1])
                    end = min(int(m[2]), total - 1) if m[2] else total - 1
                else:  # suffix range: the last N bytes
                    start, end = max(0, total - int(m[2])), total - 1
                if start >= total or end < start:
                    raise HubHTTPError(416, "Range not satisfiable", headers={"Content-Range": f"bytes */{total}"})
                status, body = 206, content[start : end + 1]
                headers["Content-Range"] = f"bytes {start}-{end}/{total}"
            if not head:
                with hub.lock:
                    hub.served.append((repo.repo_id, path, len(body)))
            self._send(status, body, "application/octet-stream", headers, head=head)

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve an in-memory Hugging Face Hub on 127.0.0.1 (for tests).")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token", action="append", default=[], help="TOKEN:USER[:read|write] (repeatable)")
    args = parser.parse_args()
    tokens = {}
    for spec in args.token:
        token, user, *role = spec.split(":")
        tokens[token] = (user, role[0] if role else "write")
    hub = HubServer(tokens=tokens or None, port=args.port)
    print(f"HF_ENDPOINT={hub.url} HF_HUB_DISABLE_XET=1 HF_TOKEN={next(iter(hub.tokens))}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        hub._httpd.serve_forever()


if __name__ == "__main__":
    main()
