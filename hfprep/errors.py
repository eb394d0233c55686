"""Errors a user can cause. Each carries a one-line message naming the row/key/file and the fix; and the warnings
of a run, each issued once (:func:`warn_once`)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import pydantic


class HfprepError(Exception):
    """Base class for every error hfprep raises on purpose (bad config, bad data, unreachable Hub...).

    The CLI prints ``str(error)`` on one line and exits with code 1 (2 for usage errors), never a traceback.
    """


class ConfigError(HfprepError, ValueError):
    """A recipe or config value is invalid (unknown key, wrong type, out of range)."""


class RecipeError(ConfigError):
    """The recipe file is invalid (the CLI exits with code 2, a usage error)."""


class DataError(HfprepError, ValueError):
    """The input data does not fit the chosen strategy (missing column, wrong type, bad row)."""


class TokenizerError(HfprepError, ValueError):
    """The tokenizer lacks something the strategy needs (FIM or chat specials, an eos token...)."""


class OutputExistsError(HfprepError, FileExistsError):
    """The output path is taken: it exists and overwrite was not requested, or it is something ``--overwrite`` must
    not replace (a file, a folder hfprep did not write, one holding the run's inputs)."""


class OutputBusyError(HfprepError, RuntimeError):
    """Another hfprep process is writing the same output right now."""


class OutputError(HfprepError, OSError):
    """The output cannot be written (a parent path is a file, the disk is full, no permission...)."""


class HubError(HfprepError, RuntimeError):
    """The Hugging Face Hub could not be reached or refused the request."""


UNKNOWN_KEY = "unknown key (check the spelling; docs/recipes.md lists every key)"
"""What a recipe key that no model field matches gets (after ``file: key: ``)."""


def _loc(loc: tuple[Any, ...]) -> str:
    parts = []
    for p in loc:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        else:
            parts.append(("." if parts else "") + str(p))
    return "".join(parts) or "<top level>"


def format_validation_error(err: pydantic.ValidationError, where: str) -> str:
    """One line: ``file: key: message (got value)`` for each problem, ``;``-separated."""
    msgs = []
    for e in err.errors():
        # Skip pydantic's internal union/validator tags in the location (e.g. 'function-after[...]').
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and "[" in p))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = UNKNOWN_KEY
        elif e["type"] == "missing":
            msg = "required key is missing"
        got = e.get("input")
        suffix = f" (got {got!r:.60})" if e["type"] not in ("extra_forbidden", "missing") and not isinstance(got, dict) else ""
        msgs.append(f"{_loc(loc)}: {msg}{suffix}")
    return f"{where}: " + "; ".join(msgs)


_ISSUED: set[tuple[type[Warning], str]] = set()


def warn_once(message: str, category: type[Warning] = UserWarning, stacklevel: int = 2) -> bool:
    """Issue ``message`` as a warning unless this run (or, outside a run, this process) already issued it; returns
    whether it was issued.

    A run builds its tokenize stage several times (the transform, each split, each mixture source), and Python's
    own once-per-location rule forgets what it showed whenever a library touches the warning filters: hfprep's
    warnings go through here so each is printed once. :func:`warnings_scope` delimits a run.

    Example:
        >>> with warnings.catch_warnings(record=True) as caught, warnings_scope():
        ...     warnings.simplefilter("always")
        ...     [warn_once("tokenizer.json enables truncation") for _ in range(3)]
        [True, False, False]
        >>> len(caught)
        1
    """
    key = (category, message)
    if key in _ISSUED:
        return False
    _ISSUED.add(key)
    warnings.warn(message, category, stacklevel=stacklevel + 1)
    return True


@contextlib.contextmanager
def warnings_scope() -> Iterator[None]:
    """One run's worth of :func:`warn_once`: warnings issued before it may be issued again inside it, and what it
    issued is forgotten when it ends (a second run in the same process says everything again).

    Example:
        >>> with warnings_scope():
        ...     pass  # run_recipe(...)
    """
    before = set(_ISSUED)
    _ISSUED.clear()
    try:
        yield
    finally:
        _ISSUED.clear()
        _ISSUED.update(before)
