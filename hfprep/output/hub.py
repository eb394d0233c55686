"""Push a prepared dataset folder (Hub layout, see :mod:`hfprep.output.layout`) to a config of a Hugging Face Hub repo.

What a push changes on the Hub, and what it never touches:

* **Data**: the folder's ``data/<split>-XXXXX-of-YYYYY.parquet`` shards go to ``data/`` (the ``default`` config)
  or ``data/<config>/`` (``config_name=``), renamed ``<push id>-<split>-XXXXX-of-YYYYY.parquet``: the push id is
  a hash of the shards' content, so a new push never overwrites a shard that the live card points at, and an
  unchanged folder maps to the same names (nothing is re-uploaded, no commit is made).
* **Documents**: a folder with the ``documents`` config (:mod:`hfprep.output.documents`) pushes it in the same
  commits as config ``documents`` (``<config>-documents`` for a named config), shards under its own data folder,
  switched by the same card commit; a later push of the config without documents removes that config again.
* **Deletions**: only files the previous hfprep pushes of the *same config* wrote: shards of that config's folder
  named by hfprep (any push id, so leftovers of an interrupted push are cleaned up too), the older unsuffixed
  ``<split>-XXXXX-of-YYYYY.parquet`` shards of an hfprep card's ``default`` config, and the extra files recorded
  in the card's ``hfprep.pushes.<config>`` entry. Other configs' files and anything else stay.
* **Card**: the remote ``README.md`` is merged, not replaced (:func:`merge_card`): other configs' ``configs`` and
  ``dataset_info`` entries and ``hfprep`` blocks, YAML keys hfprep does not write, and the owner's prose outside
  hfprep's marked section (``<!-- hfprep:begin config=NAME -->`` ... ``<!-- hfprep:end config=NAME -->``) are
  kept. The section's load/train snippets are rendered for the repo id, config and revision pushed to
  (:func:`hub_card_target`); a card or ``recipe.yaml`` that names a folder of this machine is refused.
* **Atomicity**: commits hold at most 50 operations; new shards go first (no card pattern matches them yet), then
  the commit that switches the card (with the remaining uploads and the first deletions), then the rest of the
  deletions (of files no card points at any more). Whichever commit fails, ``load_dataset(repo)`` reads exactly
  the old or exactly the new rows. Every commit names its parent (``parent_commit``): a concurrent change to the
  branch is a one-line :class:`~hfprep.errors.HubError`, never a silent overwrite.

The token is only ever sent in the ``Authorization`` header: it is never written into the card, a commit message,
a log line or an error message, and a push refuses to upload a file that contains it.

Example:
    >>> import os, tempfile, pyarrow as pa
    >>> from hfprep.output.layout import write_split
    >>> folder = tempfile.mkdtemp()
    >>> _ = write_split(pa.table({"x": [1, 2, 3]}), folder, "train")
    >>> _ = open(os.path.join(folder, "README.md"), "w").write("---\\nlicense: mit\\n---\\n# demo\\n")
    >>> validate_folder_for_push(folder).files
    ['data/train-00000-of-00001.parquet', 'README.md']
    >>> plan_commits(["data/a.parquet", "README.md"], ["data/old.parquet"], max_files_per_commit=50)
    [(['data/a.parquet', 'README.md'], ['data/old.parquet'])]

    ``push_folder(folder, "user/my-dataset")`` then uploads it and returns the repo URL;
    ``plan_push(folder, "user/my-dataset")`` lists what it would add and delete without changing anything.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import huggingface_hub
import yaml
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status, validate_repo_id

from ..errors import ConfigError, DataError, HubError
from ..version import __version__
from .card import (
    FRONT_MATTER_RE,
    CardTarget,
    bundled_tokenizer_meta,
    card_snippets,
    dump_yaml,
    hfprep_block,
    hfprep_configs,
    kd_snippet,
    retarget_snippets,
    snippet_facts,
    split_front_matter,
)
from .documents import documents_config_name
from .layout import CARD_KEYS, CARD_NAME, DATA_DIR, DEFAULT_CONFIG, DOCUMENTS_DIR, RECIPE_NAME, SHARD_RE, file_sha256

logger = logging.getLogger(__name__)

MAX_FILES_PER_COMMIT = 50
REPO_TYPE = "dataset"
PUSH_ID_CHARS = 10
_PUSHED_SHARD_RE = re.compile(
    rf"^(?P<id>[0-9a-f]{{{PUSH_ID_CHARS}}})-(?P<split>.+)-(?P<index>\d{{5}})-of-(?P<count>\d{{5}})\.parquet$"
)
_CONFIG_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_SECTION_BEGIN = "<!-- hfprep:begin config={} -->"
_SECTION_END = "<!-- hfprep:end config={} -->"
# Keys of the card's YAML that describe the whole repo: a push of the default config (or of the repo's first
# config) sets them; a push of another config leaves them as they are. Tags and source datasets are merged: the
# repo holds every config's data.
_REPO_KEYS = ("license", "license_name", "pretty_name", "task_categories", "size_categories")
_MERGED_KEYS = ("source_datasets", "tags")
@dataclass(frozen=True)
class PushPlan:
    """What :func:`push_folder` will upload: relative POSIX paths, the card last, and the shards per split."""

    folder: Path
    files: list[str]
    shards: dict[str, list[str]]
    card_metadata: dict[str, Any]
    documents: dict[str, list[str]] = field(default_factory=dict)
    """The ``documents`` config's shards per split (:mod:`hfprep.output.documents`), pushed with the data."""


def _card_metadata(card_path: Path) -> dict[str, Any]:
    text = card_path.read_text(encoding="utf-8")
    if FRONT_MATTER_RE.match(text) is None:
        raise DataError(
            f"{card_path} has no YAML front matter (a block between '---' lines with configs/dataset_info); "
            "re-create the folder with `hfprep run` or add the metadata"
        )
    return _split_card(text, str(card_path))[0]


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

    shards = _complete_shards(root, files, DATA_DIR)
    if not shards:
        raise DataError(
            f"{root} has no data shards ({DATA_DIR}/<split>-XXXXX-of-YYYYY.parquet); "
            "re-create the folder with `hfprep run`"
        )
    documents = _complete_shards(root, files, DOCUMENTS_DIR)
    for pattern in _config_patterns(metadata, card):
        if not any(fnmatch.fnmatchcase(f, pattern) for f in files):
            raise DataError(f"{card}: configs pattern {pattern!r} matches no file in {root}; fix the card or the data")

    for rel in (CARD_NAME, RECIPE_NAME):
        if rel in files:
            _refuse_machine_paths(root, rel)

    # Shards first (data, then documents), other files (images...) next, the card last: see plan_commits.
    data = [f for f in files if f.startswith(f"{DATA_DIR}/")]
    docs = [f for paths in documents.values() for f in paths]
    others = [f for f in files if not f.startswith(f"{DATA_DIR}/") and f not in docs and f != CARD_NAME]
    return PushPlan(root, [*data, *docs, *others, CARD_NAME], shards, metadata, documents)


def _complete_shards(root: Path, files: list[str], data_dir: str) -> dict[str, list[str]]:
    """``{split: shard paths}`` of the ``<split>-XXXXX-of-YYYYY.parquet`` files directly in ``data_dir``; a split
    with mixed counts or a missing shard is a one-line :class:`~hfprep.errors.DataError`."""
    shards: dict[str, list[str]] = {}
    counts: dict[str, set[int]] = {}
    for rel in files:
        parent, _, name = rel.rpartition("/")
        m = SHARD_RE.match(name) if parent == data_dir else None
        if m is not None:
            shards.setdefault(m["split"], []).append(rel)
            counts.setdefault(m["split"], set()).add(int(m["count"]))
    for split, paths in shards.items():
        if len(counts[split]) != 1:
            raise DataError(
                f"{root}/{data_dir}: split {split!r} mixes shard counts {sorted(counts[split])}; "
                "remove the shards of the older run"
            )
        count = counts[split].pop()
        expected = [f"{data_dir}/{split}-{i:05d}-of-{count:05d}.parquet" for i in range(count)]
        missing = sorted(set(expected) - set(paths))
        if missing:
            raise DataError(f"{root}: shard {missing[0]} is missing ({len(missing)} of {count}); re-create the folder")
    return shards


def machine_paths(folder: Path) -> list[str]:
    """Folders of this machine a published file must not name: the dataset folder, the working folder, the home
    and temporary folders (longest first; the root ``/`` is no name)."""
    found = {str(folder.resolve()), str(folder.absolute()), os.getcwd(), str(Path.home()), tempfile.gettempdir()}
    return sorted({p.rstrip(os.sep) for p in found if len(p.rstrip(os.sep)) > 1}, key=len, reverse=True)


def _refuse_machine_paths(folder: Path, rel: str) -> None:
    """A card or recipe that hfprep publishes must not name a folder of this machine (hfprep writes them portable;
    a hand edit may not be)."""
    text = (folder / rel).read_text(encoding="utf-8", errors="replace")
    for path in machine_paths(folder):
        if re.search(r"(?<![\w./-])" + re.escape(path) + r"(?![\w.-])", text):
            raise DataError(
                f"refusing to push: {folder / rel} names the local path {path!r}, which would be published; "
                "re-create the folder with `hfprep run` (it writes portable paths) or remove the path from the file"
            )


def plan_commits(
    adds: list[str], deletes: list[str], max_files_per_commit: int = MAX_FILES_PER_COMMIT
) -> list[tuple[list[str], list[str]]]:
    """Split a push into commits: ``[(paths to add, paths to delete), ...]``, each with at most N operations.

    The operations run in this order: every addition but the card, the card, then the deletions; consecutive runs
    of at most N form the commits. So all new files are in place when the card switches to them, and nothing the
    old card points at is deleted before the card no longer points at it.

    Example:
        >>> plan_commits(["data/a", "data/b", "README.md"], ["data/y", "data/z"], max_files_per_commit=2)
        [(['data/a', 'data/b'], []), (['README.md'], ['data/y']), ([], ['data/z'])]
    """
    if max_files_per_commit < 1:
        raise ConfigError(f"max_files_per_commit must be >= 1, got {max_files_per_commit}")
    card = [f for f in adds if f == CARD_NAME]
    ops = [("add", f) for f in adds if f != CARD_NAME] + [("add", f) for f in card] + [("delete", p) for p in deletes]
    commits = []
    for start in range(0, len(ops), max_files_per_commit):
        chunk = ops[start : start + max_files_per_commit]
        commits.append(([p for k, p in chunk if k == "add"], [p for k, p in chunk if k == "delete"]))
    return commits


def config_data_dir(config_name: str) -> str:
    """The repo folder holding a config's shards: ``data`` for ``default`` (``push_to_hub``'s layout),
    ``data/<config>`` otherwise.

    Example:
        >>> config_data_dir("default"), config_data_dir("fr")
        ('data', 'data/fr')
    """
    check_config_name(config_name)
    return DATA_DIR if config_name == DEFAULT_CONFIG else f"{DATA_DIR}/{config_name}"


def config_prefix(config_name: str) -> str:
    """Where a config's files other than its shards (tokenizer, images, recipe) go in the repo: the root for
    ``default``, ``<config>/`` otherwise.

    Example:
        >>> config_prefix("default"), config_prefix("fr")
        ('', 'fr/')
    """
    check_config_name(config_name)
    return "" if config_name == DEFAULT_CONFIG else f"{config_name}/"


def hub_card_target(repo_id: str, config_name: str = DEFAULT_CONFIG, revision: str | None = None) -> CardTarget:
    """Where a card pushed as ``config_name`` of ``repo_id`` at ``revision`` is read (its snippets name it).

    Example:
        >>> hub_card_target("me/x", "sft", "main")
        CardTarget(name='me/x', config='sft', revision=None, prefix='sft/', data_dir='data/sft', on_hub=True)
    """
    return CardTarget(
        repo_id, config_name, None if revision in (None, "main") else revision, config_prefix(config_name),
        config_data_dir(config_name), on_hub=True,
    )


def check_config_name(config_name: str) -> str:
    """``config_name`` if it can name a config folder (letters, digits, ``.``, ``_``, ``-``), else ``ConfigError``."""
    if not isinstance(config_name, str) or not _CONFIG_NAME_RE.match(config_name) or config_name in (".", ".."):
        raise ConfigError(
            f"invalid config name {config_name!r}: use letters, digits, '.', '_' or '-' (e.g. 'fr' or 'code-v2')"
        )
    return config_name


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]])", r"[\1]", text)


def _git_blob_sha1(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _split_card(text: str, where: str) -> tuple[dict[str, Any], str]:
    """``(front matter, body)`` of a card; a card without front matter is all body."""
    try:
        parts = split_front_matter(text)
    except yaml.YAMLError as e:
        problem = " ".join(str(e).split())
        raise DataError(f"{where}: invalid YAML front matter ({problem}); fix the card before pushing") from e
    if parts is None:
        return {}, text
    data, body = parts
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise DataError(f"{where}: the YAML front matter must be a mapping, got {type(data).__name__}")
    return data, body


def _entry_patterns(entry: Any) -> list[str]:
    data_files = entry.get("data_files") if isinstance(entry, dict) else None
    items = data_files if isinstance(data_files, list) else [data_files] if data_files else []
    out: list[str] = []
    for item in items:
        paths = item.get("path") if isinstance(item, dict) else item
        out.extend(str(p) for p in (paths if isinstance(paths, list) else [paths]) if p)
    return out


def _glob_match(path: str, pattern: str) -> bool:
    """Does ``path`` match a ``data_files`` glob the way the Hub's file system does (``*``/``?``/``[..]`` stay
    inside one folder, ``**`` crosses folders)?

    Example:
        >>> _glob_match("data/train-0.parquet", "data/train-*"), _glob_match("data/fr/train-0.parquet", "data/*")
        (True, False)
    """
    regex: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            regex.append(".*")
            i += 2
        elif pattern[i] in "*?":
            regex.append("[^/]*" if pattern[i] == "*" else "[^/]")
            i += 1
        elif pattern[i] == "[" and (end := pattern.find("]", i + 2)) > 0:
            body = pattern[i + 1 : end]
            body = "^" + body[1:] if body.startswith("!") else body
            regex.append("[" + body.replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            regex.append(re.escape(pattern[i]))
            i += 1
    return re.fullmatch("".join(regex), path) is not None


def _config_name_of(entry: Any) -> str | None:
    return str(entry.get("config_name", DEFAULT_CONFIG)) if isinstance(entry, dict) else None


def config_names(meta: Mapping[str, Any]) -> list[str]:
    """The config names a card's ``configs`` lists, in card order (``[]`` without ``configs``)."""
    configs = meta.get("configs")
    if not isinstance(configs, list):
        return []
    return [name for name in map(_config_name_of, configs) if name is not None]


def config_splits(
    meta: Mapping[str, Any], files: list[str], config: str | None, where: str = "the dataset"
) -> tuple[str, dict[str, list[str]]]:
    """``(config name, {split: [shard paths]})`` of ``config`` (default: ``default``, else the only config).

    With ``configs`` in the card, each split's files are those its ``data_files`` patterns match (in the card's
    split order); without, the ``data/<split>-XXXXX-of-YYYYY.parquet`` shards (config ``default``). A missing or
    ambiguous config, or one whose patterns match nothing, is a one-line :class:`~hfprep.errors.DataError`.

    Example:
        >>> meta = {"configs": [{"config_name": "fr", "data_files": [{"split": "train", "path": "data/fr/*"}]}]}
        >>> config_splits(meta, ["data/fr/a-train-00000-of-00001.parquet", "README.md"], None)
        ('fr', {'train': ['data/fr/a-train-00000-of-00001.parquet']})
    """
    names = config_names(meta)
    if not names:
        if config not in (None, DEFAULT_CONFIG):
            raise DataError(f"{where} has no configs (its card lists none), so no config {config!r}; drop --config")
        splits: dict[str, list[str]] = {}
        for rel in files:
            parent, _, name = rel.rpartition("/")
            m = SHARD_RE.match(name)
            if parent == DATA_DIR and m is not None:
                splits.setdefault(m["split"], []).append(rel)
        return DEFAULT_CONFIG, dict(sorted(splits.items()))
    if config is None:
        if DEFAULT_CONFIG not in names and len(names) > 1:
            raise DataError(
                f"{where} has configs {names} and none is 'default'; choose one with --config NAME (or TARGET:NAME)"
            )
        config = DEFAULT_CONFIG if DEFAULT_CONFIG in names else names[0]
    if config not in names:
        raise DataError(f"{where} has no config {config!r}; its configs are {names}")
    entry = next(c for c in meta["configs"] if _config_name_of(c) == config)
    items = entry.get("data_files")
    items = items if isinstance(items, list) else [items]
    out: dict[str, list[str]] = {}
    for item in items:
        split = str(item.get("split", "train")) if isinstance(item, dict) else "train"
        patterns = _entry_patterns({"data_files": [item]})
        out.setdefault(split, [])
        out[split] += [f for f in files if f.endswith(".parquet") and any(_glob_match(f, p) for p in patterns)]
    empty = [s for s, paths in out.items() if not paths]
    if empty:
        raise DataError(f"{where}: config {config!r} split {empty[0]!r} matches no Parquet file; is the dataset complete?")
    return config, {s: sorted(set(paths)) for s, paths in out.items()}


def merge_card(
    local_text: str,
    remote_text: str | None,
    *,
    config_name: str = DEFAULT_CONFIG,
    data_files: list[dict[str, str]] | None = None,
    push_record: dict[str, Any] | None = None,
    path_map: dict[str, str] | None = None,
    target: CardTarget | None = None,
    documents: tuple[str, list[dict[str, str]]] | None = None,
    drop_configs: tuple[str, ...] = (),
) -> str:
    """The card a push writes: the folder's card (``local_text``) merged into the repo's card (``remote_text``).

    Replaced: the ``configs`` entry and the ``dataset_info`` of ``config_name`` (pointed at ``data_files``), that
    config's ``hfprep`` (and ``hfprep_kd``) block under ``hfprep.configs.NAME`` (``hfprep.pushes`` keeps what each
    config's last push wrote), and the Markdown between ``<!-- hfprep:begin config=NAME -->`` and
    ``<!-- hfprep:end ... -->``. The repo-wide keys (``license``, ``pretty_name``, ``task_categories``,
    ``size_categories``) come from the default config, or from the repo's first config while it has no default;
    ``tags`` and ``source_datasets`` are merged. Kept: every other config's entries and blocks, every other YAML
    key, and the rest of the prose (a card written by an older hfprep, which had no markers, counts as the
    ``default`` config's section; its single ``hfprep`` block as its ``config_name``'s). ``path_map`` rewrites the
    local card's links to files that the push stores elsewhere in the repo; ``target`` (where the pushed card is
    read: :func:`hub_card_target`) renders the section's snippets and the bundled tokenizer's location again.

    ``documents``: ``(config name, data_files)`` of the folder's ``documents`` config in the repo (its entry is
    replaced like the data's, and ``hfprep.documents.config_name`` names it); ``drop_configs``: entries of an
    earlier push of this config that the folder no longer has (a documents config), removed.

    Example:
        >>> local = "---\\nconfigs:\\n- config_name: default\\n  data_files: data/train-*\\n---\\n# Mine\\n"
        >>> remote = "---\\nconfigs:\\n- config_name: fr\\n  data_files: data/fr/*\\nowner: kept\\n---\\nHello\\n"
        >>> card = merge_card(local, remote, data_files=[{"split": "train", "path": "data/x-train-*"}])
        >>> meta, body = _split_card(card, "card")
        >>> [c["config_name"] for c in meta["configs"]], meta["owner"]
        (['default', 'fr'], 'kept')
        >>> body.splitlines()
        ['', 'Hello', '', '<!-- hfprep:begin config=default -->', '# Mine', '<!-- hfprep:end config=default -->']
    """
    check_config_name(config_name)
    local_meta, local_body = _split_card(local_text, "local card")
    remote_meta, remote_body = _split_card(remote_text, "remote card") if remote_text is not None else ({}, "")
    meta: dict[str, Any] = dict(remote_meta)

    # configs: ours replaces the entry of the same name (default first, like push_to_hub), others stay as they are.
    local_entry = next(
        (c for c in local_meta.get("configs") or [] if _config_name_of(c) == DEFAULT_CONFIG),
        {"config_name": DEFAULT_CONFIG},
    )
    ours = {**local_entry, "config_name": config_name}
    if data_files is not None:
        ours["data_files"] = data_files
    remote_configs = meta.get("configs") if isinstance(meta.get("configs"), list) else []
    configs = [c for c in remote_configs if _config_name_of(c) not in drop_configs]
    names = [_config_name_of(c) for c in configs]
    if config_name in names:
        configs[names.index(config_name)] = ours
    elif config_name == DEFAULT_CONFIG:
        configs.insert(0, ours)
    else:
        configs.append(ours)
    if documents is not None:
        doc_name, doc_files = documents
        names = [_config_name_of(c) for c in configs]
        entry = {"config_name": doc_name, "data_files": doc_files}
        if doc_name in names:
            configs[names.index(doc_name)] = entry
        else:
            configs.insert(names.index(config_name) + 1, entry)

    if _config_name_of(configs[0]) == config_name:
        # The repo's own fields: this config speaks for the repo (the default config, or the first one).
        for key in _REPO_KEYS:
            if key in local_meta:
                meta[key] = local_meta[key]
            elif key == "license_name" and "license" in local_meta:
                meta.pop(key, None)  # a Hub license id needs no name; a stale one would contradict it
    for key in _MERGED_KEYS:
        if key in local_meta:
            old, new = meta.get(key), local_meta[key]
            both = isinstance(old, list) and isinstance(new, list)
            meta[key] = list(dict.fromkeys([*old, *new])) if both else new
    meta["configs"] = configs

    # dataset_info: a mapping for one config, a list of mappings with config_name for several (the Hub's forms).
    info = local_meta.get("dataset_info")
    if info is not None:
        infos = meta.get("dataset_info")
        entries = [] if infos is None else [dict(i) for i in (infos if isinstance(infos, list) else [infos])]
        entries = [e for e in entries if str(e.get("config_name", DEFAULT_CONFIG)) != config_name]
        mine = {"config_name": config_name, **{k: v for k, v in info.items() if k != "config_name"}}
        if config_name == DEFAULT_CONFIG and not entries:
            meta["dataset_info"] = info
        else:
            for e in entries:
                e.setdefault("config_name", DEFAULT_CONFIG)
            meta["dataset_info"] = sorted([*entries, mine], key=lambda e: e["config_name"] != DEFAULT_CONFIG)

    # hfprep / hfprep_kd: one block per config; hfprep.pushes: what each config's last push wrote (what the next
    # push may delete).
    for key in sorted(CARD_KEYS):
        blocks = hfprep_configs(remote_meta, key)
        block = hfprep_block(local_meta, key=key) or None  # a folder's card has one
        if block is None:
            blocks.pop(config_name, None)  # this config's rows are no longer the ones that block described
        else:
            if key == "hfprep" and documents is not None and isinstance(block.get("documents"), dict):
                block["documents"] = {**block["documents"], "config_name": documents[0]}
            if target is not None and isinstance(block.get("tokenizer"), dict) and "subfolder" in block["tokenizer"]:
                where = bundled_tokenizer_meta(target)
                block["tokenizer"] = {**where, **{k: v for k, v in block["tokenizer"].items() if k not in where}}
            if config_name == DEFAULT_CONFIG:
                blocks = {config_name: block, **{k: v for k, v in blocks.items() if k != config_name}}
            else:
                blocks[config_name] = block
        merged: dict[str, Any] = {"configs": blocks} if blocks else {}
        if key == "hfprep":
            remote_block = remote_meta.get(key) if isinstance(remote_meta.get(key), dict) else {}
            pushes = dict(remote_block.get("pushes") or {}) if isinstance(remote_block.get("pushes"), dict) else {}
            if push_record is not None:
                pushes[config_name] = push_record
            if pushes:
                merged["pushes"] = pushes
        if merged:
            meta[key] = merged
        else:
            meta.pop(key, None)

    section_body = local_body.strip("\n")
    if target is not None:
        split_rows, tokenizer_dir = snippet_facts(local_meta)
        if split_rows:
            section_body = retarget_snippets(section_body, card_snippets(target, split_rows, tokenizer_dir))
        kd = local_meta.get("hfprep_kd")
        if isinstance(kd, Mapping) and "k" in kd:
            info = local_meta.get("dataset_info")
            splits = [s.get("name") for s in info.get("splits", [])] if isinstance(info, Mapping) else []
            split = "train" if "train" in splits or not splits else str(splits[0])
            pattern = next((f["path"] for f in data_files or [] if f.get("split") == split), None)
            section_body = retarget_snippets(section_body, {"kd": kd_snippet(target, split, int(kd["k"]), pattern)})
    for src, dst in (path_map or {}).items():
        section_body = section_body.replace(f"]({src})", f"]({dst})").replace(f"]({src} ", f"]({dst} ")
    begin, end = _SECTION_BEGIN.format(config_name), _SECTION_END.format(config_name)
    section = f"{begin}\n{section_body}\n{end}"
    body = remote_body
    if remote_text is not None and "hfprep" in remote_meta and "<!-- hfprep:begin config=" not in body:
        # A card pushed by an hfprep without section markers: all its prose was the default config's section.
        body = f"{_SECTION_BEGIN.format(DEFAULT_CONFIG)}\n{body.strip(chr(10))}\n{_SECTION_END.format(DEFAULT_CONFIG)}\n"
    start, stop = body.find(begin), body.find(end)
    if start >= 0 and stop > start:
        body = body[:start] + section + body[stop + len(end) :]
    else:
        body = (body.rstrip("\n") + "\n\n" if body.strip() else "") + section + "\n"
    body = body if body.endswith("\n") else body + "\n"
    return f"---\n{dump_yaml(meta)}---\n\n{body.lstrip(chr(10))}"


@dataclass
class RemotePlan:
    """What a push of a folder to ``repo_id`` at ``revision`` changes: :func:`plan_push`'s answer.

    ``added``/``deleted`` are repo paths (the card last among ``added``); ``commits`` the split into commits;
    ``parent`` the commit the plan was made against (None for a repo or branch that does not exist yet).
    """

    repo_id: str
    revision: str
    config_name: str
    push_id: str
    parent: str | None
    added: list[str]
    deleted: list[str]
    commits: list[tuple[list[str], list[str]]]
    local_paths: dict[str, Path] = field(repr=False, default_factory=dict)
    card_text: str = field(repr=False, default="")
    placeholder_card: str | None = field(repr=False, default=None)

    def lines(self) -> list[str]:
        """``add PATH`` / ``delete PATH`` lines, in commit order (what ``hfprep push --dry-run`` prints)."""
        return [f"add {p}" for p in self.added] + [f"delete {p}" for p in self.deleted]


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


def _split_order(plan: PushPlan, shards: dict[str, list[str]] | None = None) -> list[str]:
    """The splits of ``shards`` (default: the data's) in the order of the folder card's ``default`` config (the
    order ``load_dataset`` shows)."""
    shards = plan.shards if shards is None else shards
    entry = next((c for c in plan.card_metadata.get("configs") or [] if _config_name_of(c) == DEFAULT_CONFIG), {})
    items = entry.get("data_files") if isinstance(entry, dict) else None
    ordered = [str(i["split"]) for i in items or [] if isinstance(i, dict) and str(i.get("split")) in shards]
    return list(dict.fromkeys([*ordered, *shards]))


def _remote_state(api: Any, repo_id: str, revision: str) -> tuple[str | None, dict[str, Any], str | None]:
    """``(commit sha, {path: RepoFile}, card text)`` of the branch (or of ``main`` for a branch not made yet);
    ``(None, {}, None)`` for a repo that does not exist."""
    try:
        sha = api.repo_info(repo_id, repo_type=REPO_TYPE, revision=revision).sha
    except RepositoryNotFoundError:
        return None, {}, None
    except RevisionNotFoundError:
        if revision == "main":
            raise
        sha = api.repo_info(repo_id, repo_type=REPO_TYPE, revision="main").sha  # the branch will start there
    files = {
        e.path: e
        for e in api.list_repo_tree(repo_id, recursive=True, repo_type=REPO_TYPE, revision=sha)
        if isinstance(e, RepoFile)
    }
    card = None
    if CARD_NAME in files:
        # Read at the exact commit, straight from the endpoint (no cache: the plan must see this commit's card).
        url = f"{api.endpoint}/datasets/{repo_id}/resolve/{sha}/{CARD_NAME}"
        response = get_session().get(url, headers=build_hf_headers(token=api.token), follow_redirects=True)
        hf_raise_for_status(response)
        card = response.content.decode("utf-8")
    return sha, files, card


def _same_content(entry: Any, local: Path, sha256: str) -> bool:
    lfs = getattr(entry, "lfs", None)
    if lfs is not None:
        return getattr(lfs, "sha256", None) == sha256
    return entry.size == local.stat().st_size and entry.blob_id == _git_blob_sha1(local)


def plan_push(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    config_name: str = DEFAULT_CONFIG,
    revision: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    max_files_per_commit: int = MAX_FILES_PER_COMMIT,
    api: Any = None,
) -> RemotePlan:
    """What :func:`push_folder` would add and delete in ``repo_id`` (read-only: nothing is created or changed).

    Reads the branch's current files and card; a repo or branch that does not exist yet is planned as empty (a new
    branch starts from ``main``). See the module docstring for which files a push adds, deletes and keeps.

    Example:
        >>> plan = plan_push("out/quickstart", "me/quickstart", config_name="fr")  # doctest: +SKIP
        >>> print("\\n".join(plan.lines()))  # doctest: +SKIP
        add data/fr/3f9a0c1d2e-train-00000-of-00001.parquet
        add README.md
    """
    plan = validate_folder_for_push(folder)
    check_config_name(config_name)
    revision = revision or "main"
    if api is None:
        endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
        api = HfApi(endpoint=endpoint, token=token)
    data_dir = config_data_dir(config_name)

    doc_config = documents_config_name(config_name)
    doc_dir = config_data_dir(doc_config)
    digests = {rel: file_sha256(plan.folder / rel) for rel in plan.files if rel != CARD_NAME}
    shard_key = sorted((rel, digests[rel]) for group in (plan.shards, plan.documents) for paths in group.values()
                       for rel in paths)
    push_id = hashlib.sha256(json.dumps(shard_key).encode()).hexdigest()[:PUSH_ID_CHARS]
    targets: dict[str, str] = {}  # repo path -> local path (relative to the folder)
    for split in _split_order(plan):
        for rel in plan.shards[split]:
            targets[f"{data_dir}/{push_id}-{rel.rpartition('/')[2]}"] = rel
    doc_shards = {rel for paths in plan.documents.values() for rel in paths}
    for split in _split_order(plan, plan.documents):
        for rel in plan.documents[split]:
            targets[f"{doc_dir}/{push_id}-{rel.rpartition('/')[2]}"] = rel
    path_map = {}
    for rel in plan.files:
        if rel != CARD_NAME and not rel.startswith(f"{DATA_DIR}/") and rel not in doc_shards:
            dest = config_prefix(config_name) + rel
            targets[dest] = rel
            if dest != rel:
                path_map[rel] = dest
    extras = sorted(p for p, rel in targets.items() if not rel.startswith(f"{DATA_DIR}/") and rel not in doc_shards)

    parent, remote, remote_card = _remote_state(api, repo_id, revision)
    remote_meta, _ = _split_card(remote_card, f"{repo_id}/{CARD_NAME}") if remote_card is not None else ({}, "")
    remote_configs = remote_meta.get("configs") if isinstance(remote_meta.get("configs"), list) else []
    old_entry = next((c for c in remote_configs if _config_name_of(c) == config_name), None)
    old_patterns = _entry_patterns(old_entry)
    # What hfprep wrote for this config before: its named shards (any push id), the unsuffixed shards of an older
    # hfprep card's default config, and the extra files its last push recorded. Nothing else is ever deleted.
    remote_block = remote_meta.get("hfprep") if isinstance(remote_meta.get("hfprep"), dict) else None
    pushes = (remote_block or {}).get("pushes")
    record = pushes.get(config_name) if isinstance(pushes, dict) else None
    recorded = set(record.get("files") or []) if isinstance(record, dict) else set()
    had_documents = isinstance(record, dict) and record.get("documents") == doc_config
    shard_dirs = {data_dir: old_patterns}
    if plan.documents or had_documents:  # the documents config of this config is replaced (or removed) with it
        doc_entry = next((c for c in remote_configs if _config_name_of(c) == doc_config), None)
        shard_dirs[doc_dir] = _entry_patterns(doc_entry)
    for path in targets:
        folder = path.rpartition("/")[0]
        if folder in shard_dirs and path not in remote:
            clash = next((p for p in shard_dirs[folder] if _glob_match(path, p)), None)
            if clash is not None:
                name = config_name if folder == data_dir else doc_config
                raise HubError(
                    f"{repo_id}/{CARD_NAME}: config {name!r} reads {clash!r}, which would also match the new "
                    f"shard {path} and mix old and new rows during the push; narrow that pattern or use another "
                    "config name"
                )
    old_splits = {
        str(i.get("split"))
        for i in (old_entry or {}).get("data_files") or []
        if isinstance(i, dict) and "split" in i
    }
    deletes = []
    for path in sorted(remote):
        if path in targets or path == CARD_NAME:
            continue
        parent_dir, _, name = path.rpartition("/")
        ours = path in recorded
        if parent_dir in shard_dirs and _PUSHED_SHARD_RE.match(name):
            ours = True
        legacy = SHARD_RE.match(name)
        if (
            parent_dir == data_dir
            and legacy
            and remote_block is not None
            and config_name == DEFAULT_CONFIG
            and legacy["split"] in old_splits
            and any(_glob_match(path, p) for p in old_patterns)
        ):
            ours = True
        if ours:
            deletes.append(path)

    data_files = [
        {"split": split, "path": f"{data_dir}/{push_id}-{_glob_escape(split)}-?????-of-?????.parquet"}
        for split in _split_order(plan)
    ]
    if not remote_configs and config_name != DEFAULT_CONFIG:
        # Like push_to_hub: a repo read by file-name conventions keeps its default config once configs exist.
        legacy_splits = sorted(
            {m["split"] for p in remote if p.count("/") == 1 and p.startswith(f"{DATA_DIR}/")
             for m in [SHARD_RE.match(p.rpartition("/")[2])] if m}
        )
        if legacy_splits:
            remote_meta["configs"] = [
                {"config_name": DEFAULT_CONFIG, "data_files": [{"split": s, "path": f"{DATA_DIR}/{s}-*"} for s in legacy_splits]}
            ]
    push_record = {"id": push_id, "splits": {s: len(plan.shards[s]) for s in _split_order(plan)}, "files": extras}
    documents = None
    if plan.documents:
        push_record["documents"] = doc_config
        documents = (doc_config, [
            {"split": split, "path": f"{doc_dir}/{push_id}-{_glob_escape(split)}-?????-of-?????.parquet"}
            for split in _split_order(plan, plan.documents)
        ])
    local_card = (plan.folder / CARD_NAME).read_text(encoding="utf-8")
    base_card = remote_card
    if remote_meta.get("configs") and not remote_configs:
        body = _split_card(remote_card, CARD_NAME)[1] if remote_card is not None else ""
        base_card = f"---\n{dump_yaml(remote_meta)}---\n{body}"
    target = hub_card_target(repo_id, config_name, revision)
    card_text = merge_card(
        local_card, base_card, config_name=config_name, data_files=data_files, push_record=push_record,
        path_map=path_map, target=target, documents=documents,
        drop_configs=(doc_config,) if had_documents and not documents else (),
    )

    adds = [
        path for path, rel in targets.items()
        if path not in remote or not _same_content(remote[path], plan.folder / rel, digests[rel])
    ]
    if remote_card is None or card_text != remote_card:
        adds.append(CARD_NAME)
    commits = plan_commits(adds, deletes, max_files_per_commit)
    placeholder = None
    if len(commits) > 1 and CARD_NAME not in commits[0][0] and not remote_configs:
        # No card configs yet: the Hub would read the first commits' shards by file-name conventions (a partial
        # dataset). A first card whose patterns match nothing keeps the repo unreadable until the switch commit.
        pending = [{**d, "path": d["path"] + ".pending"} for d in data_files]
        pending_docs = (documents[0], [{**d, "path": d["path"] + ".pending"} for d in documents[1]]) if documents else None
        placeholder = merge_card(local_card, base_card, config_name=config_name, data_files=pending, target=target,
                                 documents=pending_docs)
        commits = plan_commits(["\0placeholder", *adds], deletes, max_files_per_commit)
        commits = [([CARD_NAME if p == "\0placeholder" else p for p in a], d) for a, d in commits]
    return RemotePlan(
        repo_id=repo_id,
        revision=revision,
        config_name=config_name,
        push_id=push_id,
        parent=parent,
        added=adds,
        deleted=deletes,
        commits=commits,
        local_paths={p: plan.folder / rel for p, rel in targets.items()},
        card_text=card_text,
        placeholder_card=placeholder,
    )


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
    config_name: str = DEFAULT_CONFIG,
) -> str:
    """Upload a prepared dataset folder as config ``config_name`` of the Hub dataset repo ``repo_id``; returns the
    repo URL.

    Creates the repo (``private`` only applies then) and, for a ``revision`` other than ``main``, the branch (from
    ``main``). Adds the folder's shards under push-unique names, merges the card, and deletes only what earlier
    hfprep pushes of the same config wrote (see the module docstring); whichever commit fails, readers see exactly
    the old or the new data. ``token`` defaults to the logged-in token / ``HF_TOKEN``; ``endpoint`` to
    ``HF_ENDPOINT`` / huggingface.co. The local folder is only read.

    Raises :class:`~hfprep.errors.HubError` (unreachable Hub, rejected token, no permission, refused upload, a
    concurrent change to the branch) and ``DataError``/``ConfigError`` for an incomplete folder or a bad repo id or
    config name, each as one line.

    Example:
        >>> push_folder("out/quickstart", "me/quickstart", private=True)  # doctest: +SKIP
        'https://huggingface.co/datasets/me/quickstart'
    """
    plan = validate_folder_for_push(folder)
    check_config_name(config_name)
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ConfigError(f"invalid repo id {repo_id!r}: use 'namespace/name' (letters, digits, '-', '_', '.')") from e
    endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
    token = token or huggingface_hub.get_token()  # looked up when called, so a replaced get_token is seen
    if not token:
        raise HubError("no Hugging Face token found: set HF_TOKEN or run `hf auth login` (a write token)")
    for rel in plan.files:
        # Shards are written from token ids; the card, images and other files could carry a pasted token.
        if not rel.startswith(f"{DATA_DIR}/") and token.encode() in (plan.folder / rel).read_bytes():
            raise HubError(f"refusing to push: {plan.folder / rel} contains the Hub token; remove it from the file")

    api = HfApi(endpoint=endpoint, token=token, library_name="hfprep", library_version=__version__)
    message = commit_message or f"Upload {plan.folder.name} with hfprep {__version__}"
    if config_name != DEFAULT_CONFIG and commit_message is None:
        message += f" (config {config_name})"
    branch = revision or "main"
    with _hub_errors(repo_id, endpoint, token):
        url = api.create_repo(repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True)
        repo_id = url.repo_id or repo_id
        if branch != "main":
            api.create_branch(repo_id, branch=branch, repo_type=REPO_TYPE, exist_ok=True)
        rp = plan_push(
            folder, repo_id, config_name=config_name, revision=branch, max_files_per_commit=max_files_per_commit,
            api=api,
        )
        logger.info(
            "pushing %s to %s (config %s, revision %s): %d files to add, %d to delete, %d commits",
            plan.folder, repo_id, config_name, branch, len(rp.added), len(rp.deleted), len(rp.commits),
        )
        parent = rp.parent
        switched = False
        for i, (adds, deletes) in enumerate(rp.commits):
            operations: list[Any] = []
            for p in adds:
                if p == CARD_NAME:
                    text = rp.placeholder_card if (i == 0 and rp.placeholder_card is not None) else rp.card_text
                    operations.append(CommitOperationAdd(path_in_repo=p, path_or_fileobj=text.encode("utf-8")))
                else:
                    operations.append(CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(rp.local_paths[p])))
            operations += [CommitOperationDelete(path_in_repo=p) for p in deletes]
            title = message if len(rp.commits) == 1 else f"{message} (part {i + 1}/{len(rp.commits)})"
            try:
                with warnings.catch_warnings():
                    # huggingface_hub's LFS upload passes the file as httpx's `data=` (deprecated there for raw
                    # bytes); only endpoints without Xet take that path. Not ours to fix; keep it out of users' logs.
                    warnings.filterwarnings(
                        "ignore", message=r"Use 'content=<\.\.\.>' to upload raw bytes", category=DeprecationWarning
                    )
                    info = api.create_commit(
                        repo_id, operations, commit_message=title, repo_type=REPO_TYPE, revision=branch,
                        parent_commit=parent,
                    )
            except HfHubHTTPError as e:
                if e.response is not None and e.response.status_code in (409, 412):
                    state = (
                        "the new data is live and some old shards are left, unreferenced (a re-run deletes them)"
                        if switched
                        else "readers still see the previous data"
                    )
                    raise HubError(
                        f"{repo_id}@{branch} changed on {endpoint} while hfprep was pushing (a commit hfprep did not "
                        f"make, after {str(parent)[:8]}); {state}; re-run the push to apply it on top of that change"
                    ) from e
                raise
            parent = info.oid
            switched = switched or (CARD_NAME in adds and not (i == 0 and rp.placeholder_card is not None))
    return str(url)
