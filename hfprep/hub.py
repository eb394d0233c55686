"""Push a prepared dataset folder (Hub layout, see :mod:`hfprep.layout`) to the Hugging Face Hub.

The local folder is the single source of truth: its ``README.md`` is uploaded as the card, byte for byte (its YAML
``configs``/``dataset_info`` and any extra keys survive), its ``data/`` shards replace the remote ones, and remote
files under ``data/`` that the folder no longer has are deleted, so a second push with fewer shards leaves no stale
shards that ``load_dataset`` would pick up. Work is split into commits of at most 50 files (what the Hub and
``push_to_hub`` use); shards go first and the card last, so the final commit is the one that makes the new layout
visible. Unchanged files are not re-uploaded (``huggingface_hub`` skips them by content hash).

The token is only ever sent in the ``Authorization`` header: it is never written into the card, a commit message,
a log line or an error message, and a push refuses to upload a file that contains it.

Example:
    >>> import os, tempfile, pyarrow as pa
    >>> from hfprep.layout import write_split
    >>> folder = tempfile.mkdtemp()
    >>> _ = write_split(pa.table({"x": [1, 2, 3]}), folder, "train")
    >>> _ = open(os.path.join(folder, "README.md"), "w").write("---\\nlicense: mit\\n---\\n# demo\\n")
    >>> validate_folder_for_push(folder).files
    ['data/train-00000-of-00001.parquet', 'README.md']
    >>> plan_commits(["data/a.parquet", "README.md"], remote_data=["data/old.parquet"], max_files_per_commit=50)
    [(['data/a.parquet', 'README.md'], ['data/old.parquet'])]

    ``push_folder(folder, "user/my-dataset")`` then uploads it and returns the repo URL.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, DataError, HubError
from .layout import CARD_NAME, DATA_DIR

logger = logging.getLogger(__name__)

MAX_FILES_PER_COMMIT = 50
REPO_TYPE = "dataset"
_SHARD_RE = re.compile(r"^(?P<split>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.parquet$")
_FRONT_MATTER_RE = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(\r?\n|\Z)", re.S)


@dataclass(frozen=True)
class PushPlan:
    """What :func:`push_folder` will upload: relative POSIX paths, the card last, and the shards per split."""

    folder: Path
    files: list[str]
    shards: dict[str, list[str]]
    card_metadata: dict[str, Any]


def _card_metadata(card_path: Path) -> dict[str, Any]:
    text = card_path.read_text(encoding="utf-8")
    match = _FRONT_MATTER_RE.match(text)
    if match is None:
        raise DataError(
            f"{card_path} has no YAML front matter (a block between '---' lines with configs/dataset_info); "
            "re-create the folder with `hfprep run` or add the metadata"
        )
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError as e:
        problem = " ".join(str(e).split())
        raise DataError(f"{card_path}: invalid YAML front matter ({problem}); fix the card before pushing") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DataError(f"{card_path}: the YAML front matter must be a mapping, got {type(data).__name__}")
    return data


def _config_patterns(metadata: dict[str, Any], card_path: Path) -> list[str]:
    """The ``data_files`` patterns of every config in the card (``push_to_hub``'s layout and the short forms)."""
    configs = metadata.get("configs") or []
    if not isinstance(configs, list):
        raise DataError(f"{card_path}: 'configs' must be a list of {{config_name, data_files}} mappings")
    patterns: list[str] = []
    for i, config in enumerate(configs):
        data_files = config.get("data_files") if isinstance(config, dict) else None
        if data_files is None:
            raise DataError(f"{card_path}: configs[{i}] has no 'data_files'; point it at data/<split>-*")
        items = data_files if isinstance(data_files, list) else [data_files]
        for item in items:
            paths = item.get("path") if isinstance(item, dict) else item
            patterns.extend(paths if isinstance(paths, list) else [paths])
    return [str(p) for p in patterns]


def validate_folder_for_push(folder: str | os.PathLike) -> PushPlan:
    """Check that ``folder`` is a complete prepared dataset and list what a push uploads.

    Requires ``README.md`` with YAML front matter and at least one ``data/<split>-XXXXX-of-YYYYY.parquet`` shard;
    every split's shard set must be complete (indices ``0..YYYYY-1``, one count); every ``configs`` pattern of the
    card must match a local file. Hidden files and folders (temporary files, caches) are not uploaded.
    Raises :class:`~hfprep.errors.DataError` (or ``ConfigError`` for a missing folder) with the fix.

    Example:
        >>> import tempfile
        >>> validate_folder_for_push(tempfile.mkdtemp())  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        hfprep.errors.DataError: ... has no README.md (the dataset card); ...
    """
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"dataset folder {str(root)!r} does not exist; run `hfprep run RECIPE` first or fix the path")
    card = root / CARD_NAME
    if not card.is_file():
        raise DataError(f"{root} has no {CARD_NAME} (the dataset card); re-create the folder with `hfprep run`")
    metadata = _card_metadata(card)

    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(root)
        for name in sorted(filenames):
            if not name.startswith("."):
                files.append((rel_dir / name).as_posix())

    shards: dict[str, list[str]] = {}
    counts: dict[str, set[int]] = {}
    for rel in files:
        parent, _, name = rel.rpartition("/")
        if parent != DATA_DIR:
            continue
        m = _SHARD_RE.match(name)
        if m is None:
            continue
        shards.setdefault(m["split"], []).append(rel)
        counts.setdefault(m["split"], set()).add(int(m["count"]))
    if not shards:
        raise DataError(
            f"{root} has no data shards ({DATA_DIR}/<split>-XXXXX-of-YYYYY.parquet); "
            "re-create the folder with `hfprep run`"
        )
    for split, paths in shards.items():
        if len(counts[split]) != 1:
            raise DataError(
                f"{root}/{DATA_DIR}: split {split!r} mixes shard counts {sorted(counts[split])}; "
                "remove the shards of the older run"
            )
        count = counts[split].pop()
        expected = [f"{DATA_DIR}/{split}-{i:05d}-of-{count:05d}.parquet" for i in range(count)]
        missing = sorted(set(expected) - set(paths))
        if missing:
            raise DataError(f"{root}: shard {missing[0]} is missing ({len(missing)} of {count}); re-create the folder")
    for pattern in _config_patterns(metadata, card):
        if not any(fnmatch.fnmatchcase(f, pattern) for f in files):
            raise DataError(f"{card}: configs pattern {pattern!r} matches no file in {root}; fix the card or the data")

    # Shards first, other files (images...) next, the card last: see plan_commits.
    data = [f for f in files if f.startswith(f"{DATA_DIR}/")]
    others = [f for f in files if not f.startswith(f"{DATA_DIR}/") and f != CARD_NAME]
    return PushPlan(root, [*data, *others, CARD_NAME], shards, metadata)


def plan_commits(
    files: list[str], remote_data: list[str], max_files_per_commit: int = MAX_FILES_PER_COMMIT
) -> list[tuple[list[str], list[str]]]:
    """Split a push into commits: ``[(paths to add, paths to delete), ...]``, each with at most N operations.

    ``files`` is the upload order (shards first, card last); remote files under ``data/`` that are not in
    ``files`` are deleted after all additions and before (or with) the card, so the last commit both removes
    stale shards and publishes the card that describes the new ones.

    Example:
        >>> plan_commits(["data/a", "data/b", "README.md"], ["data/a", "data/z"], max_files_per_commit=2)
        [(['data/a', 'data/b'], []), (['README.md'], ['data/z'])]
    """
    if max_files_per_commit < 1:
        raise ConfigError(f"max_files_per_commit must be >= 1, got {max_files_per_commit}")
    local = set(files)
    stale = sorted(p for p in remote_data if p.startswith(f"{DATA_DIR}/") and p not in local)
    card = [f for f in files if f == CARD_NAME]
    ops = [("add", f) for f in files if f != CARD_NAME] + [("delete", p) for p in stale] + [("add", f) for f in card]
    commits = []
    for start in range(0, len(ops), max_files_per_commit):
        chunk = ops[start : start + max_files_per_commit]
        commits.append(([p for k, p in chunk if k == "add"], [p for k, p in chunk if k == "delete"]))
    return commits


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Network-level exception classes of whichever HTTP client this huggingface_hub uses."""
    out: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module in ("httpx2", "httpx", "requests"):
        try:
            mod = __import__(module)
        except ImportError:
            continue
        for name in ("TransportError", "ConnectionError", "Timeout"):
            cls = getattr(mod, name, None) or getattr(getattr(mod, "exceptions", None), name, None)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                out.append(cls)
    return tuple(out)


def _one_line(text: str, secret: str | None) -> str:
    if secret:
        text = text.replace(secret, "***")
    lines = [" ".join(line.split()) for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else ""


def _server_message(err: Exception) -> str:
    msg = getattr(err, "server_message", None)
    if msg:
        return str(msg)
    response = getattr(err, "response", None)
    return (response.headers.get("X-Error-Message") or "") if response is not None else ""


@contextmanager
def _hub_errors(repo_id: str, endpoint: str, token: str | None) -> Iterator[None]:
    """Turn huggingface_hub / network exceptions into one-line :class:`HubError` messages (token scrubbed)."""
    from huggingface_hub.errors import (
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    namespace = repo_id.split("/")[0] if "/" in repo_id else "your user"
    try:
        yield
    except HubError:
        raise
    except OfflineModeIsEnabled as e:
        raise HubError(f"cannot push {repo_id}: offline mode is on (HF_HUB_OFFLINE=1); unset it and retry") from e
    except RepositoryNotFoundError as e:
        status = e.response.status_code if e.response is not None else 404
        raise HubError(
            f"repository {repo_id!r} not found or not writable on {endpoint} ({status}); check the repo id and "
            "that the token has write access"
        ) from e
    except RevisionNotFoundError as e:
        raise HubError(f"revision not found in {repo_id!r} on {endpoint}; check --revision") from e
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        detail = _one_line(_server_message(e), token)
        if status == 401:
            raise HubError(
                f"the Hub at {endpoint} rejected the token (401 {detail or 'unauthorized'}); use a valid write "
                "token: set HF_TOKEN or run `hf auth login`"
            ) from e
        if status == 403:
            raise HubError(
                f"the token may not write to {repo_id!r} on {endpoint} (403 {detail or 'forbidden'}); use a token "
                f"with write access to namespace {namespace!r}"
            ) from e
        if status == 400 and "README" in str(e):
            raise HubError(f"the Hub at {endpoint} rejected README.md ({detail}); fix the card's YAML") from e
        raise HubError(f"push to {repo_id!r} on {endpoint} failed ({status} {detail or 'error'}); retry later") from e
    except _transport_errors() as e:
        detail = f"{type(e).__name__}: {_one_line(str(e), token)}"
        if "xet" in str(e).lower():
            # hf_xet uploads need the Hub's Xet storage; other endpoints only speak the LFS protocol.
            raise HubError(
                f"Xet upload to {endpoint} failed ({detail}); set HF_HUB_DISABLE_XET=1 for endpoints without Xet"
            ) from e
        raise HubError(f"cannot reach the Hub at {endpoint} ({detail}); check the network or HF_ENDPOINT") from e
    except (RuntimeError, ValueError) as e:
        # huggingface_hub wraps LFS upload failures in RuntimeError/ValueError; name the cause, not the traceback.
        cause = e.__cause__ or e
        raise HubError(
            f"push to {repo_id!r} on {endpoint} failed: {_one_line(str(e), token)} "
            f"({type(cause).__name__}: {_one_line(str(cause), token)})"
        ) from e


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    endpoint: str | None = None,
    max_files_per_commit: int = MAX_FILES_PER_COMMIT,
) -> str:
    """Upload a prepared dataset folder to the Hub dataset repo ``repo_id``; returns the repo URL.

    Creates the repo (``private`` only applies then) and, for a ``revision`` other than ``main``, the branch.
    Uploads every non-hidden file (card last, at most ``max_files_per_commit`` files per commit) and deletes remote
    files under ``data/`` the folder does not have. ``token`` defaults to the logged-in token / ``HF_TOKEN``;
    ``endpoint`` to ``HF_ENDPOINT`` / huggingface.co. The local folder is only read.

    Raises :class:`~hfprep.errors.HubError` (unreachable Hub, rejected token, no permission, refused upload) and
    ``DataError``/``ConfigError`` for an incomplete folder or a bad repo id, each as one line.

    Example:
        >>> push_folder("out/quickstart", "me/quickstart", private=True)  # doctest: +SKIP
        'https://huggingface.co/datasets/me/quickstart'
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants, get_token
    from huggingface_hub.errors import EntryNotFoundError, HFValidationError
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils import validate_repo_id

    from . import __version__

    plan = validate_folder_for_push(folder)
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ConfigError(f"invalid repo id {repo_id!r}: use 'namespace/name' (letters, digits, '-', '_', '.')") from e
    endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
    token = token or get_token()
    if not token:
        raise HubError("no Hugging Face token found: set HF_TOKEN or run `hf auth login` (a write token)")
    for rel in plan.files:
        # Shards are written from token ids; the card, images and other files could carry a pasted token.
        if not rel.startswith(f"{DATA_DIR}/") and token.encode() in (plan.folder / rel).read_bytes():
            raise HubError(f"refusing to push: {plan.folder / rel} contains the Hub token; remove it from the file")

    api = HfApi(endpoint=endpoint, token=token, library_name="hfprep", library_version=__version__)
    message = commit_message or f"Upload {plan.folder.name} with hfprep {__version__}"
    with _hub_errors(repo_id, endpoint, token):
        url = api.create_repo(repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True)
        repo_id = url.repo_id or repo_id
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, repo_type=REPO_TYPE, exist_ok=True)
        try:
            remote = [
                entry.path
                for entry in api.list_repo_tree(
                    repo_id, path_in_repo=DATA_DIR, recursive=True, repo_type=REPO_TYPE, revision=revision
                )
                if isinstance(entry, RepoFile)
            ]
        except EntryNotFoundError:
            remote = []  # a new repo has no data/ folder yet
        commits = plan_commits(plan.files, remote, max_files_per_commit)
        logger.info(
            "pushing %d files to %s (%d commits, %d stale shards to delete)",
            len(plan.files),
            repo_id,
            len(commits),
            sum(len(d) for _, d in commits),
        )
        for i, (adds, deletes) in enumerate(commits):
            operations: list[Any] = [
                CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(plan.folder / p)) for p in adds
            ]
            operations += [CommitOperationDelete(path_in_repo=p) for p in deletes]
            title = message if len(commits) == 1 else f"{message} (part {i + 1}/{len(commits)})"
            api.create_commit(repo_id, operations, commit_message=title, repo_type=REPO_TYPE, revision=revision)
    return str(url)
