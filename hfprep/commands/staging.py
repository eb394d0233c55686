"""The resumable work folder of a repack or an export: ``.<output name>.partial`` next to the output.

A command that reads a source shard by shard writes what each shard gives into this folder (every file atomically)
and then records the shard in ``manifest.json`` (written with a rename, so it names only complete files). A run
that is killed or fails keeps the folder; the same command run again finds the manifest, checks that it was made
for the same source, revision and parameters (the *identity*), and continues after the last recorded shard, so
the output ends byte-identical to an uninterrupted run. The output itself appears only at the end, whole; then the
folder is removed. A folder made for other parameters is refused in one line unless ``overwrite`` (then it is
started over), as ``hfprep kd-cache`` does with its own.

Example:
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "export"
    >>> st = Staging(out, {"source": "a", "seq_len": 8}, overwrite=False)
    >>> st.finish_shard("train", {"shard": 0, "tokens": 10})
    >>> Staging(out, {"source": "a", "seq_len": 8}, overwrite=False).done("train")
    [{'shard': 0, 'tokens': 10}]
    >>> st.remove(); st.path.exists()
    False
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import ConfigError, OutputExistsError
from ..output.layout import output_errors

MANIFEST = "manifest.json"


class Staging:
    """``.<name>.partial`` next to ``final``, holding ``manifest.json``: the identity and the finished shards."""

    def __init__(self, final: str | os.PathLike, identity: dict[str, Any], overwrite: bool) -> None:
        final = Path(final).absolute()
        self.final = final
        self.path = final.parent / f".{final.name}.partial"
        self.identity = json.loads(json.dumps(identity))  # as the manifest stores it (tuples become lists)
        self.manifest: dict[str, Any] = {"identity": self.identity, "done": {}}
        self.resumed = False
        if self.path.exists() or self.path.is_symlink():
            old = self._read()
            if old is None:
                raise OutputExistsError(
                    f"{str(self.path)!r} is in the way of the resumable work folder and hfprep did not write it (no "
                    f"{MANIFEST}); move it away or pick another output"
                )
            if old.get("identity") != self.identity:
                if not overwrite:
                    raise ConfigError(
                        f"{str(self.path)!r} holds unfinished work of another source, revision or parameters; "
                        "re-run that command to finish it, or pass --overwrite to start over"
                    )
                shutil.rmtree(self.path)
            else:
                self.manifest = old
                self.resumed = any(self.manifest["done"].values())
        with output_errors(final):
            self.path.mkdir(parents=True, exist_ok=True)
            self._write()

    def _read(self) -> dict[str, Any] | None:
        try:
            data = json.loads((self.path / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and isinstance(data.get("done"), dict) else None

    def _write(self) -> None:
        tmp = self.path / f".{MANIFEST}.tmp"
        tmp.write_text(json.dumps(self.manifest, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.path / MANIFEST)

    def done(self, split: str) -> list[dict[str, Any]]:
        """The records of ``split``'s finished shards, in order."""
        return list(self.manifest["done"].get(split, []))

    def finish_shard(self, split: str, record: dict[str, Any]) -> None:
        """Record one more finished shard of ``split`` (its files must be complete before this is called)."""
        with output_errors(self.final):
            self.manifest["done"].setdefault(split, []).append(json.loads(json.dumps(record)))
            self._write()

    def file(self, name: str) -> Path:
        """A path inside the work folder."""
        return self.path / name

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """On an error (Ctrl-C too) the folder stays for the next run, unless no shard was finished: then it holds
        nothing worth resuming and goes."""
        if exc_type is not None and not any(self.manifest["done"].values()):
            self.remove()
