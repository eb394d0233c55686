"""The files of a prepared dataset, wherever they are: a local folder or a Hub dataset repo at a revision.

``hfprep inspect`` reads a dataset through this one small interface, so a folder and a repo give the same report:
list the files, read the card, open a shard for reads at offsets (a Parquet footer and one row group: on the Hub
these are HTTP range requests, the rest of the shard is never fetched), and have a small folder (the bundled
tokenizer) on local disk for a moment. :func:`hfprep.output.hub.config_splits` finds a config's shards in the
listing.

Example:
    >>> import tempfile, pyarrow as pa
    >>> from hfprep.output.layout import write_split
    >>> folder = tempfile.mkdtemp()
    >>> _ = write_split(pa.table({"x": [1, 2]}), folder, "train")
    >>> files = LocalFiles(folder)
    >>> files.list()
    ['data/train-00000-of-00001.parquet']
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import quote

from huggingface_hub import HfFileSystem, constants

from ..errors import HfprepError, HubError
from ..scratch import ScratchDir


class DatasetFiles(Protocol):
    """What ``inspect`` needs from a prepared dataset's storage (relative POSIX paths throughout)."""

    label: str
    """How messages name the dataset (a folder path, ``user/name@revision``)."""

    def list(self) -> list[str]:
        """Every file, sorted (hidden files included; callers pick what they need)."""
        ...

    def read_text(self, rel: str) -> str | None:
        """A text file's content, or None when there is no such file."""
        ...

    def open(self, rel: str) -> contextlib.AbstractContextManager[BinaryIO]:
        """A seekable binary file object (reads at offsets; on the Hub, range requests)."""
        ...

    def where(self, rel: str) -> str:
        """How messages name one file (its path, or ``user/name@revision/path``)."""
        ...

    def folder(self, rel: str) -> contextlib.AbstractContextManager[Path]:
        """A local folder holding the files under ``rel`` while the block runs (a repo's: a scratch copy)."""
        ...


class LocalFiles:
    """A prepared dataset folder on disk."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.label = str(root)

    def list(self) -> list[str]:
        out = []
        for dirpath, _, filenames in os.walk(self.root):
            rel = Path(dirpath).relative_to(self.root)
            out += [(rel / name).as_posix() for name in filenames]
        return sorted(out)

    def read_text(self, rel: str) -> str | None:
        try:
            return (self.root / rel).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def open(self, rel: str) -> contextlib.AbstractContextManager[BinaryIO]:
        return open(self.root / rel, "rb")

    def where(self, rel: str) -> str:
        return str(self.root / rel)

    @contextlib.contextmanager
    def folder(self, rel: str) -> Iterator[Path]:
        yield self.root / rel


class HubFiles:
    """A dataset repo on the Hub (``HF_ENDPOINT``) at ``revision``, read through ``HfFileSystem``: a listing, the
    card, range requests into shards; nothing goes to the Hub cache. Errors are one-line
    :class:`~hfprep.errors.HubError` messages."""

    def __init__(self, repo_id: str, revision: str | None = None, token: str | None = None) -> None:
        self.repo_id = repo_id
        self.revision = revision or "main"
        self.label = repo_id if revision is None else f"{repo_id}@{revision}"
        # A fresh instance: fsspec caches file systems and their listings, and a repo may have changed since.
        self.fs = HfFileSystem(endpoint=constants.ENDPOINT, token=token, skip_instance_cache=True)
        self._root = f"datasets/{repo_id}@{quote(self.revision, safe='')}"

    def _path(self, rel: str) -> str:
        return f"{self._root}/{rel}"

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except HfprepError:
            raise
        except Exception as e:  # huggingface_hub / httpx / fsspec: many types, one line for the user
            text = " ".join(str(e).split()) or type(e).__name__
            if len(text) > 300:
                text = text[:300] + "..."
            raise HubError(
                f"could not load {self.repo_id!r} (revision {self.revision}) from the Hub: {text}; check the repo id, "
                "the revision, your network and HF_TOKEN, or inspect a local folder"
            ) from e

    def list(self) -> list[str]:
        with self._errors():
            found = self.fs.find(self._root, detail=False)
        cut = len(self._root) + 1
        return sorted(p[cut:] for p in found)

    def read_text(self, rel: str) -> str | None:
        with self._errors():
            try:
                return self.fs.read_text(self._path(rel), encoding="utf-8")
            except FileNotFoundError:
                return None

    @contextlib.contextmanager
    def open(self, rel: str) -> Iterator[BinaryIO]:
        with self._errors():
            # No read-ahead: each read pyarrow makes (the footer, a row group's column chunks) is one range request.
            f = self.fs.open(self._path(rel), "rb", cache_type="none")
        try:
            yield f
        finally:
            f.close()

    def where(self, rel: str) -> str:
        return f"{self.label}/{rel}"

    @contextlib.contextmanager
    def folder(self, rel: str) -> Iterator[Path]:
        prefix = rel.rstrip("/") + "/"
        with ScratchDir("hubfiles") as dest:
            with self._errors():
                for path in self.list():
                    if path.startswith(prefix):
                        target = dest / path[len(prefix) :]
                        target.parent.mkdir(parents=True, exist_ok=True)
                        self.fs.get_file(self._path(path), str(target))
            yield dest
