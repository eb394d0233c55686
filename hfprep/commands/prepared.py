"""A prepared hfprep dataset to read from: a local output folder or a Hub dataset repo pinned to one commit.

:func:`open_prepared` reads the card (the ``hfprep`` block says how the rows were made) and lists the files;
:meth:`PreparedDataset.documents_shards` finds the ``documents`` config's shards of every split from the card's
``configs`` patterns, in order; :meth:`PreparedDataset.fetch` gives one shard as a local file: the folder's own
file, or for a Hub repo a download into a folder of the caller's (one shard at a time, deleted by the caller when
done), so a repo larger than the disk or the memory is read shard by shard. A Hub revision (branch, tag or
commit) is resolved to its commit once, so every shard comes from the same commit.

Example:
    >>> src = open_prepared("out/quickstart")  # doctest: +SKIP
    >>> src.documents_shards()  # doctest: +SKIP
    {'train': ['documents/train-00000-of-00001.parquet'], 'test': ['documents/test-00000-of-00001.parquet']}
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.parquet as pq
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

from ..engines.mapreduce import BYTES_PER_TOKEN_IN_GROUP
from ..errors import DataError, HubError
from ..output.card import hfprep_block, parse_card_metadata
from ..output.documents import DOCUMENTS_CONFIG
from ..output.hub import _transport_errors
from ..output.layout import CARD_NAME

REPO_TYPE = "dataset"
_SHARD_NAME = re.compile(r"^(?:[0-9a-f]{10}-)?(?P<name>(?P<split>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.parquet)$")
"""A documents shard as written (``<split>-XXXXX-of-YYYYY.parquet``) or as pushed (a 10-hex push id before it)."""


@dataclass
class PreparedDataset:
    """A prepared dataset: its card's metadata, its files, and where they are (``folder`` or ``repo_id``)."""

    where: str
    revision: str
    """The Hub commit read, or for a local folder ``card sha256:<hex>`` (the card names its data's stats)."""
    meta: dict[str, Any]
    files: list[str]
    folder: Path | None = None
    repo_id: str | None = None
    endpoint: str | None = None
    token: str | None = field(default=None, repr=False)

    @property
    def hfprep(self) -> dict[str, Any]:
        """The card's ``hfprep`` block (how the rows were made): a folder's own, or a repo's default config's."""
        return hfprep_block(self.meta)

    @property
    def label(self) -> str:
        """``where@revision``, as a card or a log line names the source."""
        return f"{self.where}@{self.revision}"

    def documents_block(self) -> dict[str, Any]:
        """The ``hfprep.documents`` block; a :class:`~hfprep.errors.DataError` when the dataset has none."""
        block = self.hfprep.get("documents")
        if not isinstance(block, dict):
            raise DataError(
                f"{self.where}: no documents config (its card has no hfprep.documents block); re-run its recipe "
                "with output.documents: true"
            )
        return block

    def documents_shards(self) -> dict[str, list[str]]:
        """``{split: shard paths}`` of the documents config, splits in the card's order and shards by index; a
        missing shard is a one-line :class:`~hfprep.errors.DataError`."""
        name = self.documents_block().get("config_name", DOCUMENTS_CONFIG)
        entry = next((c for c in self.meta.get("configs") or [] if isinstance(c, dict)
                      and str(c.get("config_name", "default")) == name), None)
        if entry is None:
            raise DataError(f"{self.where}/{CARD_NAME}: configs has no {name!r} entry; the documents config is missing")
        out: dict[str, list[str]] = {}
        for item in entry.get("data_files") or []:
            split, pattern = str(item["split"]), str(item["path"])
            found = sorted((int(m["index"]), int(m["count"]), f) for f in self.files if _seg_match(f, pattern)
                           for m in [_SHARD_NAME.match(f.rpartition("/")[2])] if m)
            counts = {c for _, c, _ in found}
            if not found or len(counts) != 1 or [i for i, _, _ in found] != list(range(counts.pop())):
                raise DataError(
                    f"{self.where}: the documents of split {split!r} ({pattern}) are incomplete: "
                    f"{len(found)} shard(s) found; push or re-create the dataset again"
                )
            out[split] = [f for _, _, f in found]
        return out

    @contextlib.contextmanager
    def fetch(self, rel: str, into: Path) -> Iterator[Path]:
        """One file as a local path while the block runs: the folder's own file, or for a Hub repo a download into
        ``into`` (removed when the block ends)."""
        if self.folder is not None:
            yield self.folder / rel
            return
        into.mkdir(parents=True, exist_ok=True)
        path = into / rel.rpartition("/")[2]
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            with _read_errors(self.where, self.endpoint), open(tmp, "wb") as f, get_session().stream(
                "GET", self._url(rel), headers=build_hf_headers(token=self.token), follow_redirects=True
            ) as response:
                hf_raise_for_status(response)
                for chunk in response.iter_bytes(1 << 20):  # to disk as it comes: memory stays one chunk
                    f.write(chunk)
            os.replace(tmp, path)
            yield path
        finally:
            tmp.unlink(missing_ok=True)
            path.unlink(missing_ok=True)

    def _url(self, rel: str) -> str:
        return f"{self.endpoint}/datasets/{self.repo_id}/resolve/{self.revision}/{quote(rel)}"

    def extra_prefix(self) -> str:
        """Where a push put the dataset's other files (``tokenizer/``...): the repo root for the default config,
        ``<config>/`` for a named one."""
        config = self.hfprep.get("config_name")
        return f"{config}/" if self.repo_id is not None and config else ""


def document_batches(path: str | os.PathLike, budget: int, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """The rows of a documents shard in batches of about ``budget`` bytes once decoded and worked on: rows per batch
    from the token count the file's footer gives for each row group (``BYTES_PER_TOKEN_IN_GROUP`` per token, twice:
    the decoded batch and the arrays made from it).

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "d.parquet")
        >>> pq.write_table(pa.table({"input_ids": [[1, 2], [3]]}), path)
        >>> [t.num_rows for t in document_batches(path, budget=40)]
        [1, 1]
    """
    pf = pq.ParquetFile(path)
    meta = pf.metadata
    leaf = next(i for i in range(meta.num_columns) if meta.schema.column(i).path.split(".")[0] == "input_ids")
    per_row = max((meta.row_group(g).column(leaf).num_values / max(1, meta.row_group(g).num_rows)
                   for g in range(meta.num_row_groups)), default=1.0)
    rows = int(max(1, min(65536, budget // max(1.0, 2 * BYTES_PER_TOKEN_IN_GROUP * per_row))))
    for batch in pf.iter_batches(batch_size=rows, columns=columns):
        yield pa.Table.from_batches([batch])


def documents_shard_name(rel: str) -> str:
    """The local name of a documents shard (``<split>-XXXXX-of-YYYYY.parquet``, without a push id).

    Example:
        >>> documents_shard_name("data/documents/0123456789-train-00000-of-00002.parquet")
        'train-00000-of-00002.parquet'
    """
    m = _SHARD_NAME.match(rel.rpartition("/")[2])
    if m is None:
        raise DataError(f"{rel}: not a documents shard name (<split>-XXXXX-of-YYYYY.parquet)")
    return m["name"]


def open_prepared(src: str | os.PathLike, revision: str | None = None, token: str | None = None) -> PreparedDataset:
    """A prepared dataset: ``src`` is a local output folder, or else a Hub dataset repo id (``user/name``) read at
    ``revision`` (default ``main``, resolved to its commit).

    Raises :class:`~hfprep.errors.DataError` for a folder that is no prepared dataset and
    :class:`~hfprep.errors.HubError` for a repo that cannot be read, each in one line.
    """
    where = str(src)
    if os.path.isdir(src):
        if revision is not None:
            raise DataError(f"{where}: a local folder has no revisions; drop --revision (or give a Hub repo id)")
        folder = Path(src)
        card = folder / CARD_NAME
        if not card.is_file():
            raise DataError(f"{where}: no {CARD_NAME} (dataset card); give a folder that `hfprep run` wrote")
        text = card.read_text(encoding="utf-8")
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(folder).parts))
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        return PreparedDataset(where, f"card sha256:{digest}", _card(text, where), files, folder=folder)
    if os.path.exists(src) or where.count("/") != 1:
        raise DataError(f"{where}: not a prepared dataset folder nor a Hub repo id (user/name)")
    endpoint = constants.ENDPOINT.rstrip("/")
    api = HfApi(endpoint=endpoint, token=token)
    with _read_errors(where, endpoint):
        sha = api.repo_info(where, repo_type=REPO_TYPE, revision=revision or "main").sha
        files = sorted(e.path for e in api.list_repo_tree(where, recursive=True, repo_type=REPO_TYPE, revision=sha)
                       if isinstance(e, RepoFile))
        if CARD_NAME not in files:
            raise DataError(f"{where}@{sha}: no {CARD_NAME} (dataset card); is it a dataset hfprep prepared?")
        found = PreparedDataset(where, sha, {}, files, repo_id=where, endpoint=endpoint, token=token)
        response = get_session().get(found._url(CARD_NAME), headers=build_hf_headers(token=token),
                                     follow_redirects=True)
        hf_raise_for_status(response)
    found.meta = _card(response.content.decode("utf-8"), f"{where}@{sha}")
    return found


def _card(text: str, where: str) -> dict[str, Any]:
    try:
        return parse_card_metadata(text)
    except ValueError as e:
        raise DataError(f"{where}/{CARD_NAME}: {e}; give a dataset that `hfprep run` wrote") from None


def _seg_match(path: str, pattern: str) -> bool:
    """A ``data_files`` glob as the Hub reads it: ``*``, ``?`` and ``[..]`` stay inside one folder."""
    a, b = path.split("/"), pattern.split("/")
    return len(a) == len(b) and all(fnmatch.fnmatchcase(x, y) for x, y in zip(a, b))


@contextlib.contextmanager
def _read_errors(where: str, endpoint: str | None) -> Iterator[None]:
    """huggingface_hub's read errors as one-line :class:`~hfprep.errors.HubError` messages."""
    try:
        yield
    except (HubError, DataError):
        raise
    except OfflineModeIsEnabled as e:
        raise HubError(f"cannot read {where}: offline mode is on (HF_HUB_OFFLINE=1); unset it and retry") from e
    except RepositoryNotFoundError as e:
        raise HubError(f"dataset repo {where!r} not found on {endpoint} (or private: set HF_TOKEN)") from e
    except RevisionNotFoundError as e:
        raise HubError(f"revision not found in {where!r} on {endpoint}; check --revision") from e
    except EntryNotFoundError as e:
        raise HubError(f"{where}: a file the repo lists is not there ({e.__class__.__name__}); retry") from e
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        raise HubError(f"reading {where!r} from {endpoint} failed ({status}); retry later") from e
    except _transport_errors() as e:  # the push's list of network errors, for whichever HTTP client is in use
        raise HubError(f"cannot reach the Hub at {endpoint} to read {where!r} ({type(e).__name__}); retry") from e
