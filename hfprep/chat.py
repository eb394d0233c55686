"""SFT rows built with the tokenizer's chat template, with an assistant-only loss mask.

Used by the ``sft`` strategy when the tokenizer has a ``chat_template`` and ``TokenizeConfig.chat_template`` is
``auto`` (default) or ``always``; with ``never`` (or no template under ``auto``) the seed's role-token scheme
(``<user> text </user> <assistant> text </assistant> <eos>``) is used instead.

A conversation is a non-empty list of ``{"role", "content"}`` messages (``system`` / ``user`` / ``assistant`` and
whatever other roles the template accepts; extra keys such as ``tool_calls`` are passed to the template, keys
whose value is ``None`` are dropped as ``apply_chat_template`` does). The whole conversation is rendered once and
encoded once (the ids equal ``apply_chat_template(conversation)``); the loss mask marks the tokens that overlap the
*assistant spans* of the rendered text:

* **generation markers** (the template contains ``{% generation %}...{% endgeneration %}``): the spans are exactly
  what the template marks, as with ``apply_chat_template(..., return_assistant_tokens_mask=True)``. Templates
  normally wrap the assistant content *and* its end-of-turn token (e.g. ``<|im_end|>``), so both get loss and the
  role header does not.
* **offsets** (no markers): for assistant message ``i`` the span runs from the end of
  ``render(messages[:i], add_generation_prompt=True)`` (the prompt, which ends with the assistant header) to the
  point where ``render(messages[:i + 1])`` stops agreeing with the full rendering: the assistant content and what
  the template writes after it for that turn, i.e. the end-of-turn token(s); for the last turn also whatever the
  template appends at the end of a conversation (e.g. an eos). A token gets loss when its last character is in
  the span (so a token holding text of the next turn does not). The prompt must be a prefix of the full
  rendering; a template that rewrites earlier turns is reported with a clear error and needs generation markers.

Final tokens: if the rendered conversation does not already end with the eos token, eos is appended with loss, as
the seed's final eos (it ends the document for pretraining-style packing). System and user tokens, role headers
and template boilerplate never get loss.

Example:
    >>> tok.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}"  # doctest: +SKIP
    >>> flat = ChatTemplateEncoder(tok)([[{"role": "user", "content": "Hi"},
    ...                                  {"role": "assistant", "content": "Hello"}]])  # doctest: +SKIP
    >>> flat.loss_mask  # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from itertools import chain
from typing import Any, Literal

import numpy as np
from jaxtyping import Bool, Int64

from .errors import DataError, TokenizerError
from .tokenizer import backend_tokenizer, eos_token_id

GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


def tokenizer_chat_template(tokenizer) -> str | None:
    """The tokenizer's default chat template string, or ``None`` when it has none."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, Mapping):
        # Named templates (transformers' dict form): SFT uses the default one.
        template = template.get("default")
    return template or None


def chat_encoder_for(tokenizer, config: Any) -> ChatTemplateEncoder | None:
    """The encoder the ``sft`` strategy should use for ``config.chat_template`` (``None`` = the seed's role tokens).

    Example:
        >>> chat_encoder_for(tokenizer_without_template, TokenizeConfig(strategy="sft")) is None  # doctest: +SKIP
        True
    """
    mode = getattr(config, "chat_template", "auto")
    if mode == "never":
        return None
    template = tokenizer_chat_template(tokenizer)
    if template is None:
        if mode == "always":
            raise TokenizerError(
                "tokenize.chat_template: always, but the tokenizer has no chat_template; use a tokenizer whose "
                "tokenizer_config.json has one, or set tokenize.chat_template: auto / never for the "
                "<user>/<assistant> role tokens"
            )
        return None
    return ChatTemplateEncoder(tokenizer, template, text_column=getattr(config, "text_column", "content"))


def _check_conversation(conv: Any, row: int, column: str) -> list[dict[str, Any]]:
    if not isinstance(conv, list | tuple) or len(conv) == 0:
        what = "an empty conversation" if isinstance(conv, list | tuple) else f"a {type(conv).__name__}"
        raise DataError(
            f"row {row}: column {column!r} must be a non-empty list of {{'role', 'content'}} messages, got {what}"
        )
    out = []
    for t, msg in enumerate(conv):
        if not isinstance(msg, Mapping) or "role" not in msg or "content" not in msg:
            raise DataError(f"row {row}, turn {t}: a message must be a dict with 'role' and 'content'")
        if not isinstance(msg["role"], str):
            raise DataError(f"row {row}, turn {t}: 'role' must be a string, got {type(msg['role']).__name__}")
        if not isinstance(msg["content"], str):
            raise DataError(
                f"row {row}, turn {t}: 'content' must be a string, got {type(msg['content']).__name__}"
            )
        out.append({k: v for k, v in msg.items() if v is not None})
    return out


def spans_to_token_mask(
    token_starts: Int64[np.ndarray, " total"],
    token_ends: Int64[np.ndarray, " total"],
    span_starts: Int64[np.ndarray, " s"],
    span_ends: Int64[np.ndarray, " s"],
    num_chars: int,
    rule: Literal["overlap", "last_char"] = "overlap",
) -> Bool[np.ndarray, " total"]:
    """Which tokens fall in the character spans (all positions global, half-open).

    ``overlap``: the token's characters overlap a span (``apply_chat_template``'s rule for generation markers).
    ``last_char``: the token's last character lies in a span, so a token straddling a span's end (one that also
    holds text of the next turn) is left out, while one straddling its start is kept. A token with an empty
    character range (``start == end``) counts as covering the character at ``start``.

    Example:
        >>> spans_to_token_mask(np.array([0, 2, 4]), np.array([2, 4, 6]), np.array([3]), np.array([5]), 6).tolist()
        [False, True, True]
        >>> spans_to_token_mask(np.array([0, 2, 4]), np.array([2, 4, 6]), np.array([3]), np.array([5]), 6,
        ...                     rule="last_char").tolist()
        [False, True, False]
    """
    marks = np.zeros(num_chars + 2, dtype=np.int64)
    np.add.at(marks, np.asarray(span_starts, np.int64), 1)
    np.add.at(marks, np.asarray(span_ends, np.int64), -1)
    covered = np.cumsum(marks[: num_chars + 1]) > 0
    prefix = np.zeros(num_chars + 2, dtype=np.int64)
    np.cumsum(covered, out=prefix[1:])
    starts = np.asarray(token_starts, np.int64)
    ends = np.maximum(np.asarray(token_ends, np.int64), starts + 1)
    if rule == "last_char":
        return covered[np.minimum(ends - 1, num_chars)]
    return (prefix[ends] - prefix[starts]) > 0


def _common_prefix_len(a: str, b: str) -> int:
    """Length of the longest common prefix of two strings (bisection on slices: C-speed comparisons)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class ChatTemplateEncoder:
    """Render conversations with a chat template, encode them in one call, derive the assistant-only loss mask.

    See the module docstring for the exact semantics. Instances are picklable (engines ship them to workers).

    Example:
        >>> enc = ChatTemplateEncoder(tokenizer)  # doctest: +SKIP
        >>> flat = enc([[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]])  # doctest: +SKIP
    """

    def __init__(self, tokenizer, template: str | None = None, text_column: str = "content") -> None:
        template = template if template is not None else tokenizer_chat_template(tokenizer)
        if template is None:
            raise TokenizerError(
                "the tokenizer has no chat_template; pass template=, use a tokenizer that has one, or set "
                "tokenize.chat_template: never to use the <user>/<assistant> role tokens"
            )
        self.template = template
        self.uses_generation_markers = bool(GENERATION_TAG.search(template))
        self.template_kwargs = dict(getattr(tokenizer, "special_tokens_map", {}) or {})
        self.eos = eos_token_id(tokenizer)
        self.text_column = text_column
        self._tok = backend_tokenizer(tokenizer)

    # --- rendering ----------------------------------------------------------------------------------------

    def _render(self, messages: list[dict[str, Any]], row: int, **kwargs: Any) -> tuple[str, list[tuple[int, int]]]:
        from transformers.utils.chat_template_utils import render_jinja_template

        try:
            texts, spans = render_jinja_template(
                conversations=[messages], chat_template=self.template, **kwargs, **self.template_kwargs
            )
        except Exception as e:  # a Jinja error or the template's raise_exception(): name the row
            raise DataError(
                f"row {row}: the chat template failed on this conversation: {type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''} -- fix the conversation or the template"
            ) from e
        return texts[0], [tuple(s) for s in spans[0]] if spans else []

    def render(self, messages: list[dict[str, Any]], row: int = 0) -> tuple[str, list[tuple[int, int]]]:
        """Rendered text of one conversation and its assistant character spans ``[(start, end), ...]``."""
        if self.uses_generation_markers:
            return self._render(messages, row, return_assistant_tokens_mask=True)
        full, _ = self._render(messages, row)
        spans = []
        for i, msg in enumerate(messages):
            if msg["role"] != "assistant":
                continue
            prompt, _ = self._render(messages[:i], row, add_generation_prompt=True)
            through, _ = self._render(messages[: i + 1], row)
            if not (through.startswith(prompt) and full.startswith(prompt)):
                raise TokenizerError(
                    f"row {row}, turn {i}: the chat template does not render conversation prefixes as prefixes "
                    "of the full conversation, so assistant spans cannot be found from offsets; add "
                    "{% generation %}...{% endgeneration %} around the assistant output in the template"
                )
            # The turn ends where the conversation-so-far stops agreeing with the full rendering: text a
            # template writes only at the very end (a final eos) belongs to the last turn only.
            spans.append((len(prompt), _common_prefix_len(through, full)))
        return full, spans

    # --- batch --------------------------------------------------------------------------------------------

    def __call__(self, conversations: Sequence[Any], indices: Sequence[int] | None = None):
        from .tokenize import FlatRows, _empty_flat, positions_from_offsets

        n = len(conversations)
        if n == 0:
            return _empty_flat()
        indices = range(n) if indices is None else indices
        texts: list[str] = []
        span_lo: list[int] = []
        span_hi: list[int] = []
        char_base = 0
        for i, conv in enumerate(conversations):
            messages = _check_conversation(conv, indices[i], self.text_column)
            text, spans = self.render(messages, indices[i])
            texts.append(text)
            for a, b in spans:
                if b > a:
                    span_lo.append(char_base + a)
                    span_hi.append(char_base + b)
            char_base += len(text)
        encodings = self._tok.encode_batch(texts, add_special_tokens=False)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=n)
        tok_off = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=tok_off[1:])
        total = int(tok_off[-1])
        ids = np.fromiter(chain.from_iterable(e.ids for e in encodings), dtype=np.uint32, count=total)
        char_off = np.fromiter(
            chain.from_iterable(chain.from_iterable(e.offsets for e in encodings)), dtype=np.int64, count=2 * total
        ).reshape(total, 2)
        doc_char_base = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, texts), dtype=np.int64, count=n), out=doc_char_base[1:])
        shift = np.repeat(doc_char_base[:-1], lengths)
        mask = spans_to_token_mask(
            char_off[:, 0] + shift, char_off[:, 1] + shift, np.array(span_lo, np.int64), np.array(span_hi, np.int64),
            int(doc_char_base[-1]),
            rule="overlap" if self.uses_generation_markers else "last_char",
        )
        # Append eos (with loss, like the seed's final eos) to documents that do not already end with it.
        ends_with_eos = np.zeros(n, dtype=np.bool_)
        nonempty = lengths > 0
        ends_with_eos[nonempty] = ids[tok_off[1:][nonempty] - 1] == self.eos
        add = (~ends_with_eos).astype(np.int64)
        out_off = tok_off + np.concatenate([[0], np.cumsum(add)])
        out_ids = np.empty(int(out_off[-1]), dtype=np.uint32)
        out_mask = np.empty(int(out_off[-1]), dtype=np.bool_)
        eos_slots = out_off[1:][add.astype(bool)] - 1
        is_eos_slot = np.zeros(len(out_ids), dtype=np.bool_)
        is_eos_slot[eos_slots] = True
        out_ids[is_eos_slot] = self.eos
        out_mask[is_eos_slot] = True
        out_ids[~is_eos_slot] = ids
        out_mask[~is_eos_slot] = mask
        return FlatRows(out_ids, positions_from_offsets(out_off), out_mask, out_off, np.arange(n, dtype=np.int64))
