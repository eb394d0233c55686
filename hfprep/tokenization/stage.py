"""Tokenize stage: raw rows -> ``input_ids`` (uint32), ``position_ids`` (uint32), ``loss_mask`` (bool).

Three strategies, one implementation each, usable three ways:

* the seed's row functions: :func:`pretrain_processing`, :func:`fim_processing`, :func:`sft_processing`,
  :func:`process_row`;
* a batched ``Dataset.map`` function: :func:`make_tokenize_fn` (one backend call per batch, Arrow output);
* the flat-array core every path goes through: :func:`tokenize_batch`.

Every strategy describes a document as a list of *pieces* (a special token or a span of encoded text, each with
a loss flag); :func:`assemble_pieces` turns the pieces of a whole batch into flat arrays without a per-token loop.

Example:
    >>> rows = tokenize_batch({"content": ["a b", "c"]}, tokenizer, TokenizeConfig(strategy="pretrain"))  # doctest: +SKIP
    >>> rows.input_ids, rows.doc_offsets  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pydantic

from ..errors import ConfigError, DataError, TokenizerError
from ..schema import Row, TokenizedRow, row_features
from .backends import TokenizerBackend, get_backend
from .chat import chat_encoder_for
from .fim import fim_pieces_to_flat, pretrain_with_fim
from .loading import (
    DocumentSeparator,
    backend_tokenizer,
    bos_prefix,
    document_separator,
    eos_token_id,
    fim_token_ids,
    single_token_id,
)
from .pieces import FlatRows, assemble_pieces, empty_flat, frame_documents, positions_from_offsets, with_prefix

ProcessingStrategy = Literal["pretrain", "fim", "sft"]
STRATEGIES: tuple[str, ...] = ("pretrain", "fim", "sft")


class FimTokens(pydantic.BaseModel):
    """The FIM token strings of a tokenizer (``tokenize.fim_tokens``); each must be one existing token.

    Attributes:
        prefix: the token before the prefix, e.g. ``<fim_prefix>`` or ``<|fim_prefix|>``.
        middle: the token before the middle (the part to fill in), e.g. ``<fim_middle>``.
        suffix: the token before the suffix, e.g. ``<fim_suffix>``.
    """

    model_config = pydantic.ConfigDict(extra="forbid")

    prefix: str
    middle: str
    suffix: str


class TokenizeConfig(pydantic.BaseModel):
    """How to turn raw rows into tokenized rows.

    Attributes:
        strategy: ``pretrain`` (text + eos), ``fim`` (prefix/middle/suffix columns) or ``sft`` (a list of turns).
        text_column: column with the text (pretrain) or the conversation (sft). Seed default ``content``.
        prefix_column, middle_column, suffix_column: fim only: the columns of a FIM row's three parts.
        fim_format: ``psm`` or ``spm`` (the seed's SPM: ``<fim_suffix> suffix <fim_prefix> prefix <fim_middle>``).
        only_middle_not_masked: FIM loss only on the middle tokens and the final eos.
        on_empty: what to do with an empty pretrain text: ``error`` (default) or ``drop`` (counted as dropped).
        backend: ``hf`` (the default here), ``gigatoken`` or ``auto``. The row-level entry points that take this
            config build their backend on each call and have no input sample for the exactness guard, so they stay
            on ``hf``; :class:`~hfprep.pack.transform.PrepareForTrainingTransformConfig` and recipes default to
            ``auto``, which is guarded on the run's input.
        fim_rate: pretrain only: probability that a document becomes a FIM row (0 = off), see :mod:`hfprep.tokenization.fim`.
        fim_spm_rate: probability that a raw-document FIM row uses SPM (else PSM).
        fim_seed: recipe seed of raw-document FIM; each document's draw is seeded by it + a hash of its text.
        chat_template: sft only: ``auto`` uses the tokenizer's chat template when it has one, ``always`` requires
            it, ``never`` uses the seed's role tokens; see :mod:`hfprep.tokenization.chat`.
        chat_template_path: sft only: a Jinja chat template file used instead of the tokenizer's own (e.g. for
            gpt-oss, whose tokenizer files ship no template).
        fim_tokens: ``{prefix, middle, suffix}`` token strings; default: detected in the vocabulary
            (:data:`hfprep.tokenization.loading.FIM_TOKEN_SETS`, the seed's ``<fim_...>`` first).
        add_bos: pretrain/fim: ``auto`` puts before each document what ``tokenizer.encode(text)`` adds (the seed's
            behaviour: a bos for Llama 3.1 / Gemma 3, nothing for Qwen3), ``always`` the bos token, ``never`` none.
        eos_token: the token that ends a pretrain/fim document (default: the tokenizer's eos, the seed's choice; its
            end-of-document token instead when the eos ends chat turns, e.g. ``<|end_of_text|>`` for Llama 3.1
            instruct, see :func:`~hfprep.tokenization.loading.document_separator`).
    """

    model_config = pydantic.ConfigDict(extra="forbid")

    strategy: ProcessingStrategy = "pretrain"
    text_column: str = "content"
    prefix_column: str = "prefix"
    middle_column: str = "middle"
    suffix_column: str = "suffix"
    fim_format: Literal["psm", "spm"] = "spm"
    only_middle_not_masked: bool = False
    on_empty: Literal["error", "drop"] = "error"
    backend: str = "hf"
    fim_rate: float = pydantic.Field(default=0.0, ge=0.0, le=1.0)
    fim_spm_rate: float = pydantic.Field(default=0.5, ge=0.0, le=1.0)
    fim_seed: int = 0
    chat_template: Literal["auto", "always", "never"] = "auto"
    chat_template_path: str | None = None
    fim_tokens: FimTokens | None = None
    add_bos: Literal["auto", "always", "never"] = "auto"
    eos_token: str | None = None

    def input_columns(self) -> list[str]:
        if self.strategy == "fim":
            return [self.prefix_column, self.middle_column, self.suffix_column]
        return [self.text_column]


# ----------------------------------------------------------------------------------------------- validation


def _column(batch: Mapping[str, Sequence[Any]], name: str, strategy: str) -> Sequence[Any]:
    if name not in batch:
        raise DataError(
            f"strategy {strategy!r} needs column {name!r}, but the data has columns {sorted(batch)}; "
            "set the column mapping (e.g. text_column) to the right name"
        )
    return batch[name]


def _check_strings(values: Sequence[Any], column: str, indices: Sequence[int]) -> list[str]:
    values = list(values)
    for i, v in enumerate(values):
        if not isinstance(v, str):
            fix = "set tokenize.on_empty: drop to skip null texts, or " if v is None else ""
            raise DataError(
                f"row {indices[i]}: column {column!r} must be a string, got {type(v).__name__} ({v!r:.60}); "
                f"{fix}clean or filter the source"
            )
    return values


# ----------------------------------------------------------------------------------------------- strategies


class _Specials:
    """The special ids one strategy needs, looked up once (with clear errors) per tokenizer."""

    def __init__(self, tokenizer, config: TokenizeConfig) -> None:
        self.eos = separator_for(tokenizer, config).token_id
        self.chat = None
        self.bos: list[int] = []
        self.fim_end: int | None = None
        self.fim_family: str | None = None
        uses_fim = config.strategy == "fim" or (config.strategy == "pretrain" and config.fim_rate > 0)
        if config.strategy in ("pretrain", "fim"):
            self.bos = bos_prefix(tokenizer, config.add_bos)
        if uses_fim:
            fim = fim_token_ids(tokenizer, config.fim_tokens.model_dump() if config.fim_tokens else None)
            self.fim_prefix, self.fim_middle, self.fim_suffix = fim["prefix"], fim["middle"], fim["suffix"]
            self.fim_end, self.fim_family = fim["end"], fim["family"]
        if config.strategy == "sft":
            self.chat = chat_encoder_for(tokenizer, config)
        if config.strategy == "sft" and self.chat is None:
            try:
                self.roles = {
                    "user": (single_token_id(tokenizer, "<user>", "SFT"), single_token_id(tokenizer, "</user>", "SFT")),
                    "assistant": (
                        single_token_id(tokenizer, "<assistant>", "SFT"),
                        single_token_id(tokenizer, "</assistant>", "SFT"),
                    ),
                }
            except TokenizerError as e:
                if config.chat_template == "never":
                    raise
                raise TokenizerError(
                    "the tokenizer has no chat_template and no <user>/<assistant> role tokens for SFT; give a Jinja "
                    "chat template with tokenize.chat_template_path"
                ) from e
            # System turns are optional; using one without the tokens is reported per row.
            with contextlib.suppress(TokenizerError):
                self.roles["system"] = (
                    single_token_id(tokenizer, "<system>", "SFT system turns"),
                    single_token_id(tokenizer, "</system>", "SFT system turns"),
                )


def separator_for(tokenizer, config: TokenizeConfig) -> DocumentSeparator:
    """The token that ends each document of ``config``'s strategy: pretrain / FIM documents end with
    :func:`~hfprep.tokenization.loading.document_separator` (the end-of-document token when the eos ends chat
    turns); SFT conversations with the tokenizer's eos (``tokenize.eos_token`` when set), the chat end-of-turn
    token being right there.

    Example:
        >>> separator_for(llama31_instruct, TokenizeConfig()).describe()  # doctest: +SKIP
        "documents end with '<|end_of_text|>' (id 128001): the tokenizer's eos '<|eot_id|>' ends chat turns"
    """
    if config.strategy in ("pretrain", "fim"):
        return document_separator(tokenizer, config.eos_token)
    eos = eos_token_id(tokenizer, config.eos_token)
    return DocumentSeparator(
        backend_tokenizer(tokenizer).id_to_token(eos) or "", eos, "eos_token" if config.eos_token else "eos"
    )


def document_specials(tokenizer, config: TokenizeConfig) -> dict[str, Any]:
    """The bos put before and the eos put after each document, as the card records them (ids and strings).

    ``bos_token`` is ``None`` when nothing is prepended (and for chat-template SFT, where the template decides);
    ``eos_token`` is the document separator (:func:`separator_for`).

    Example:
        >>> document_specials(tokenizer, TokenizeConfig())  # doctest: +SKIP
        {'bos_token': None, 'bos_token_id': None, 'eos_token': '<|endoftext|>', 'eos_token_id': 0}
    """
    inner = backend_tokenizer(tokenizer)
    sep = separator_for(tokenizer, config)
    bos = bos_prefix(tokenizer, config.add_bos) if config.strategy in ("pretrain", "fim") else []
    return {
        "bos_token": "".join(inner.id_to_token(t) or "" for t in bos) or None,
        "bos_token_id": (bos[0] if len(bos) == 1 else bos) if bos else None,
        "eos_token": sep.token,
        "eos_token_id": sep.token_id,
    }


def _arrow_texts(values: pa.Array | pa.ChunkedArray, config: TokenizeConfig, indices) -> tuple[Any, np.ndarray]:
    """An Arrow string column's non-empty texts (still Arrow: a fast backend reads them without Python strings) and
    their rows; nulls and empty strings follow ``tokenize.on_empty``, with the errors :func:`_check_strings` gives."""
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    column = config.text_column
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        raise DataError(
            f"row {indices[0] if len(indices) else 0}: column {column!r} must be a string, got {arr.type}; "
            "clean or filter the source"
        )
    empty = pc.fill_null(pc.equal(pc.binary_length(arr), 0), True).to_numpy(zero_copy_only=False)
    if arr.null_count and config.on_empty == "error":
        i = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(
            f"row {indices[i]}: column {column!r} must be a string, got NoneType (None); set tokenize.on_empty: drop "
            "to skip null texts, or clean or filter the source"
        )
    if not empty.any():
        return arr, np.arange(len(arr), dtype=np.int64)
    if config.on_empty == "error":
        first = int(np.flatnonzero(empty)[0])
        raise DataError(
            f"row {indices[first]}: column {column!r} is an empty string ({int(empty.sum())} empty in this batch); "
            "set tokenize.on_empty: drop to skip them (they are counted)"
        )
    kept = np.flatnonzero(~empty).astype(np.int64)
    return arr.filter(pa.array(~empty)), kept


def audit_ids(tokenizer, config: TokenizeConfig) -> dict[str, Any]:
    """What the loss audit must know about the documents this strategy writes: the keyword arguments of
    :class:`hfprep.output.audit.AuditRules` (token ids and the strategy's loss rules).

    Example:
        >>> audit_ids(tokenizer, TokenizeConfig(strategy="fim", only_middle_not_masked=True))  # doctest: +SKIP
        {'separator_ids': [0], 'fim_ids': [1, 2, 3], 'fim_every_document': True, 'context_ids': [1, 2, 3], ...}
    """
    sp = _Specials(tokenizer, config)  # its notices are the run's own, said once (warn_once)
    if config.strategy == "sft" and sp.chat is not None:
        header, trailing = sp.chat.assistant_header()
        return {
            "assistant_header_ids": list(header),
            "trailing_header": trailing,
            "end_of_turn_ids": list(sp.chat.end_of_turn_ids()),
            "assistant_loss": "some",
            "all_loss": "error",
            "document_end_loss": False,  # whitespace after a closing end-of-turn token has no loss
        }
    if config.strategy == "sft":
        context = [t for role in ("user", "system") if role in sp.roles for t in sp.roles[role]]
        return {
            "assistant_header_ids": [sp.roles["assistant"][0]],
            "end_of_turn_ids": [sp.roles["assistant"][1]],
            "assistant_loss": "every",
            "context_ids": sorted(context),
            "all_loss": "context",
        }
    out: dict[str, Any] = {"separator_ids": sorted({sp.eos} | ({sp.fim_end} if sp.fim_end is not None else set()))}
    if config.strategy == "fim" or config.fim_rate > 0:
        out["fim_ids"] = [sp.fim_prefix, sp.fim_middle, sp.fim_suffix]
        out["fim_every_document"] = config.strategy == "fim"
        if config.only_middle_not_masked:
            out["context_ids"] = sorted(out["fim_ids"])
            out["all_loss"] = "context"
    return out


def _pretrain_texts(batch, config: TokenizeConfig, indices) -> tuple[Any, np.ndarray]:
    """The batch's non-empty texts (Arrow when the batch holds Arrow) and their rows; empty ones follow
    ``tokenize.on_empty``."""
    values = _column(batch, config.text_column, "pretrain")
    if isinstance(values, pa.Array | pa.ChunkedArray):
        texts, kept = _arrow_texts(values, config, indices)
        if config.fim_rate > 0:  # raw-document FIM cuts the text in Python
            texts = texts.to_pylist()
        return texts, kept
    if config.on_empty == "drop":  # a null text is as empty as "" (JSON null, a missing Parquet value)
        values = ["" if v is None else v for v in values]
    texts = _check_strings(values, config.text_column, indices)
    kept = np.arange(len(texts), dtype=np.int64)
    if any(not t for t in texts):
        empty = [i for i, t in enumerate(texts) if not t]
        if config.on_empty == "error":
            raise DataError(
                f"row {indices[empty[0]]}: column {config.text_column!r} is an empty string "
                f"({len(empty)} empty in this batch); set tokenize.on_empty: drop to skip them (they are counted)"
            )
        keep_mask = np.array([bool(t) for t in texts])
        kept = kept[keep_mask]
        texts = [t for t in texts if t]
    return texts, kept


def _pretrain_ids(texts, specials: _Specials, backend: TokenizerBackend) -> tuple[np.ndarray, np.ndarray]:
    """``[bos] text [eos]`` per text (bos when the tokenizer's rule adds one): ``(ids, doc_offsets)``; every token
    has loss."""
    values, offsets = backend.encode_batch(texts)
    return frame_documents(values, offsets, specials.bos, [specials.eos])


def _pretrain(batch, config: TokenizeConfig, specials: _Specials, backend: TokenizerBackend, indices) -> FlatRows:
    texts, kept = _pretrain_texts(batch, config, indices)
    if not len(texts):
        return empty_flat()
    if config.fim_rate > 0:
        return with_prefix(pretrain_with_fim(texts, kept, config, specials, backend), specials.bos, True)
    ids, doc_offsets = _pretrain_ids(texts, specials, backend)
    return FlatRows(ids, positions_from_offsets(doc_offsets), np.ones(len(ids), np.bool_), doc_offsets, kept)


def _fim(batch, config: TokenizeConfig, specials: _Specials, backend: TokenizerBackend, indices) -> FlatRows:
    cols = {}
    for part, name in (("prefix", config.prefix_column), ("middle", config.middle_column), ("suffix", config.suffix_column)):
        cols[part] = _check_strings(_column(batch, name, "fim"), name, indices)
    n = len(cols["prefix"])
    if n == 0:
        return empty_flat()
    values, offsets = backend.encode_batch(cols["prefix"] + cols["middle"] + cols["suffix"])
    flat = fim_pieces_to_flat(
        values, offsets, n, specials, np.full(n, config.fim_format == "spm"), config.only_middle_not_masked
    )
    return with_prefix(flat, specials.bos, not config.only_middle_not_masked)


def _sft(batch, config: TokenizeConfig, specials: _Specials, backend: TokenizerBackend, indices) -> FlatRows:
    conversations = _column(batch, config.text_column, "sft")
    if specials.chat is not None:
        return specials.chat(conversations, indices)
    texts: list[str] = []
    roles: list[str] = []
    turns_per_doc = np.zeros(len(conversations), dtype=np.int64)
    for i, conv in enumerate(conversations):
        if not isinstance(conv, list | tuple) or len(conv) == 0:
            what = "an empty conversation" if isinstance(conv, list | tuple) else f"a {type(conv).__name__}"
            raise DataError(
                f"row {indices[i]}: column {config.text_column!r} must be a non-empty list of "
                f"{{'role', 'content'}} turns, got {what}"
            )
        for t, turn in enumerate(conv):
            if not isinstance(turn, Mapping) or "role" not in turn or "content" not in turn:
                raise DataError(f"row {indices[i]}, turn {t}: a turn must be a dict with 'role' and 'content'")
            role, content = turn["role"], turn["content"]
            if role not in specials.roles:
                known = sorted(specials.roles)
                hint = (
                    " (the tokenizer has no <system>/</system> tokens)"
                    if role == "system"
                    else ""
                )
                raise DataError(f"row {indices[i]}, turn {t}: unknown role {role!r}; expected one of {known}{hint}")
            if not isinstance(content, str):
                raise DataError(
                    f"row {indices[i]}, turn {t}: 'content' must be a string, got {type(content).__name__}"
                )
            texts.append(content)
            roles.append(role)
        turns_per_doc[i] = len(conv)
    if not len(conversations):
        return empty_flat()
    values, offsets = backend.encode_batch(texts)
    # Source = encoded turn texts, then every role's start/end token, then eos.
    role_names = sorted(specials.roles)
    role_tok = np.array([tok for r in role_names for tok in specials.roles[r]] + [specials.eos], np.uint32)
    source = np.concatenate([values, role_tok])
    base = len(values)
    role_idx = np.array([role_names.index(r) for r in roles], dtype=np.int64)
    is_asst = np.array([r == "assistant" for r in roles], dtype=np.bool_)
    nturns = len(texts)
    # Each turn is [start, text, end]; each document ends with one eos piece after its last turn.
    turn_start = np.stack([base + 2 * role_idx, offsets[:-1], base + 2 * role_idx + 1], 1)
    turn_len = np.stack([np.ones(nturns, np.int64), np.diff(offsets), np.ones(nturns, np.int64)], 1)
    turn_loss = np.repeat(is_asst[:, None], 3, axis=1)
    # Interleave the eos piece after each document's turns.
    doc_of_turn = np.repeat(np.arange(len(conversations)), turns_per_doc)
    last_turn = np.r_[doc_of_turn[1:] != doc_of_turn[:-1], True]
    pieces_per_turn = np.where(last_turn, 4, 3)
    total_pieces = int(pieces_per_turn.sum())
    piece_start = np.empty(total_pieces, np.int64)
    piece_len = np.empty(total_pieces, np.int64)
    piece_loss = np.empty(total_pieces, np.bool_)
    first = np.zeros(nturns + 1, np.int64)
    np.cumsum(pieces_per_turn, out=first[1:])
    for k in range(3):
        piece_start[first[:-1] + k] = turn_start[:, k]
        piece_len[first[:-1] + k] = turn_len[:, k]
        piece_loss[first[:-1] + k] = turn_loss[:, k]
    eos_slot = first[:-1][last_turn] + 3
    piece_start[eos_slot] = base + len(role_tok) - 1
    piece_len[eos_slot] = 1
    piece_loss[eos_slot] = True
    pieces_per_doc = np.bincount(doc_of_turn, weights=pieces_per_turn, minlength=len(conversations)).astype(np.int64)
    ids, pos, mask, doc_off = assemble_pieces(source, piece_start, piece_len, piece_loss, pieces_per_doc)
    return FlatRows(ids, pos, mask, doc_off, np.arange(len(conversations), dtype=np.int64))


_STRATEGY_FNS: dict[str, Callable[..., FlatRows]] = {"pretrain": _pretrain, "fim": _fim, "sft": _sft}


def _check_strategy(strategy: str) -> None:
    if strategy not in _STRATEGY_FNS:
        raise ConfigError(f"strategy {strategy!r} is not supported; choose one of {list(_STRATEGY_FNS)}")


class Tokenizer:
    """A strategy bound to a tokenizer and a backend: the reusable, picklable unit engines call.

    Example:
        >>> tk = Tokenizer(tokenizer, TokenizeConfig(strategy="pretrain"))  # doctest: +SKIP
        >>> flat = tk({"content": ["hello"]})  # doctest: +SKIP
    """

    def __init__(self, tokenizer, config: TokenizeConfig, backend: TokenizerBackend | None = None) -> None:
        _check_strategy(config.strategy)
        self.tokenizer = tokenizer
        self.config = config
        self.specials = _Specials(tokenizer, config)
        self.backend = backend if backend is not None else get_backend(tokenizer, config.backend)

    def __call__(self, batch: Mapping[str, Sequence[Any]], indices: Sequence[int] | None = None) -> FlatRows:
        n = len(next(iter(batch.values()))) if batch else 0
        if indices is None:
            indices = range(n)
        return _STRATEGY_FNS[self.config.strategy](batch, self.config, self.specials, self.backend, indices)

    def documents(
        self, batch: Mapping[str, Sequence[Any]], indices: Sequence[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The documents of :meth:`__call__` without what derives from them: ``(input_ids, doc_offsets, loss_mask
        or None when every token has loss)``; positions are ``0..n-1`` per document. Pre-training documents are
        built without a position or mask array at all (most of the stage's time after the backend's).

        Example:
            >>> ids, offsets, mask = tk.documents({"content": ["hello"]})  # doctest: +SKIP
        """
        config = self.config
        if config.strategy == "pretrain" and config.fim_rate == 0:
            if indices is None:
                indices = range(len(next(iter(batch.values()))) if batch else 0)
            texts, _ = _pretrain_texts(batch, config, indices)
            if not len(texts):
                return np.zeros(0, np.uint32), np.zeros(1, np.int64), None
            ids, doc_offsets = _pretrain_ids(texts, self.specials, self.backend)
            return ids, doc_offsets, None
        flat = self(batch, indices)
        return flat.input_ids, flat.doc_offsets, None if flat.loss_mask.all() else flat.loss_mask


def tokenize_batch(
    batch: Mapping[str, Sequence[Any]],
    tokenizer,
    config: TokenizeConfig,
    indices: Sequence[int] | None = None,
) -> FlatRows:
    """Tokenize a batch (a dict of columns) with one backend call; see :class:`Tokenizer` to reuse the setup."""
    return Tokenizer(tokenizer, config)(batch, indices)


def make_tokenize_fn(tokenizer, config: TokenizeConfig, backend: TokenizerBackend | None = None):
    """A ``Dataset.map(batched=True)`` function returning the tokenized Arrow table.

    ``with_indices=True`` is optional: with it, errors name the dataset row; without, the row within the batch.

    Example:
        >>> fn = make_tokenize_fn(tokenizer, TokenizeConfig(strategy="pretrain"))  # doctest: +SKIP
        >>> ds.map(fn, batched=True, remove_columns=ds.column_names, features=tokenized_features())  # doctest: +SKIP
    """
    tk = Tokenizer(tokenizer, config, backend)

    def tokenize_fn(batch: Mapping[str, Sequence[Any]], indices: Sequence[int] | None = None) -> pa.Table:
        return tk(batch, indices).to_arrow()

    return tokenize_fn


def tokenized_features():
    """``datasets.Features`` of tokenized rows (the row contract's, :func:`hfprep.schema.row_features`)."""
    return row_features()


# ----------------------------------------------------------------------------------------------- seed API


def _one(row: Row, tokenizer, config: TokenizeConfig) -> TokenizedRow:
    batch = {k: [v] for k, v in row.items()}
    flat = tokenize_batch(batch, tokenizer, config)
    if flat.num_docs == 0:
        raise DataError("the row was dropped by the strategy (empty text)")
    return flat.row(0)


def pretrain_processing(row: Row, tokenizer, text_column: str = "content") -> TokenizedRow:
    """Tokenize one pre-training row: ``tokenizer.encode(text) + [eos]``, positions ``arange``, loss everywhere.

    Automatic bos (``add_bos="auto"``, the seed's behaviour): the row starts with whatever ``tokenizer.encode``
    puts in front of a text, so a bos for tokenizers whose post-processor adds one (Llama 3.1, Gemma 3) and nothing
    for the others (Qwen3); the text itself is encoded without special tokens. :func:`tokenize_batch` with
    ``TokenizeConfig(add_bos="always" | "never")`` (recipes: ``tokenize.add_bos``) forces one or none. The eos is
    the tokenizer's (``TokenizeConfig(eos_token=...)`` names another end-of-document token).

    Example:
        >>> r = pretrain_processing({"content": "A sample text"}, tokenizer)  # doctest: +SKIP
        >>> r["input_ids"][-1] == tokenizer.eos_token_id  # doctest: +SKIP
        True
    """
    return _one(row, tokenizer, TokenizeConfig(strategy="pretrain", text_column=text_column))


def fim_processing(
    row: Row,
    tokenizer,
    only_middle_not_masked: bool = False,
    fim_format: Literal["spm", "psm"] = "spm",
) -> TokenizedRow:
    """Tokenize one FIM row (``prefix``, ``middle``, ``suffix``).

    PSM: ``<fim_prefix> prefix <fim_suffix> suffix <fim_middle> middle <eos>``;
    SPM: ``<fim_suffix> suffix <fim_prefix> prefix <fim_middle> middle <eos>``.
    With ``only_middle_not_masked`` the loss is only on the middle tokens and the final eos. The FIM tokens are
    found in the vocabulary (the seed's ``<fim_...>`` first, then Qwen's, DeepSeek's, CodeLlama's spellings). As in
    :func:`pretrain_processing`, the bos that ``tokenizer.encode`` adds (if any) starts the row (``add_bos="auto"``),
    with loss unless ``only_middle_not_masked``.

    Example:
        >>> r = fim_processing({"prefix": "a", "middle": "b", "suffix": "c"}, tokenizer, fim_format="psm")  # doctest: +SKIP
    """
    cfg = TokenizeConfig(strategy="fim", fim_format=fim_format, only_middle_not_masked=only_middle_not_masked)
    return _one(row, tokenizer, cfg)


def sft_processing(
    row: Row,
    tokenizer,
    text_column: str = "content",
    chat_template: Literal["auto", "always", "never"] = "never",
) -> TokenizedRow:
    """Tokenize one chat row: ``<user> text </user>`` / ``<assistant> text </assistant>`` turns, then eos.

    Loss on every token of assistant turns (role tokens included) and on the final eos. This is the seed's
    function: it keeps the seed's role tokens even when the tokenizer has a chat template; pass
    ``chat_template="auto"`` to use the template instead (see :mod:`hfprep.tokenization.chat`).

    Example:
        >>> conv = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello"}]
        >>> r = sft_processing({"content": conv}, tokenizer)  # doctest: +SKIP
    """
    return _one(row, tokenizer, TokenizeConfig(strategy="sft", text_column=text_column, chat_template=chat_template))


def process_row(row: Row, tokenizer, strategy: ProcessingStrategy, **kwargs: Any) -> TokenizedRow:
    """Dispatch one row to the strategy's row function (the seed's ``process_row``)."""
    if strategy == "pretrain":
        return pretrain_processing(row, tokenizer, **kwargs)
    if strategy == "fim":
        return fim_processing(row, tokenizer, **kwargs)
    if strategy == "sft":
        return sft_processing(row, tokenizer, **kwargs)
    raise ConfigError(f"strategy {strategy!r} is not supported; choose one of {list(STRATEGIES)}")
