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
    """The output folder already exists and overwrite was not requested."""


class HubError(HfprepError, RuntimeError):
    """The Hugging Face Hub could not be reached or refused the request."""
