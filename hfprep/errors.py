"""Errors a user can cause. Each carries a one-line message naming the row/key/file and the fix."""

from __future__ import annotations


class HfprepError(Exception):
    """Base class for every error hfprep raises on purpose (bad config, bad data, unreachable Hub...).

    The CLI prints ``str(error)`` on one line and exits with code 1 (2 for usage errors), never a traceback.
    """


class ConfigError(HfprepError, ValueError):
    """A recipe or config value is invalid (unknown key, wrong type, out of range)."""


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
