"""SFT rows built with the tokenizer's chat template, with an assistant-only loss mask, for any template.

Used by the ``sft`` strategy when the tokenizer has a ``chat_template`` (or ``TokenizeConfig.chat_template_path``
names one) and ``TokenizeConfig.chat_template`` is ``auto`` (default) or ``always``; with ``never`` (or no
template under ``auto``) the seed's role-token scheme (``<user> text </user> <assistant> text </assistant> <eos>``)
is used instead.

A conversation is a non-empty list of ``{"role", "content"}`` messages (``system`` / ``user`` / ``assistant`` /
``tool`` and whatever other roles the template accepts; extra keys such as ``tool_calls`` and
``reasoning_content`` are passed to the template, keys whose value is ``None`` are dropped as datasets fills
missing struct fields with ``None``; an assistant message with ``tool_calls`` may have ``content: None``). The
whole conversation is rendered once and encoded once (the ids equal ``apply_chat_template(conversation)``); a token
gets loss when its characters overlap an *assistant span* of the rendered text:

* **generation markers** (the template contains ``{% generation %}...{% endgeneration %}``): the spans are exactly
  what the template marks, as with ``apply_chat_template(..., return_assistant_tokens_mask=True)``.
* **any other template** (most real ones): for assistant message ``i``

  1. the *prompt* ``render(messages[:i], add_generation_prompt=True)`` must be a prefix of the full rendering
     (else a one-line error naming the row and turn): everything up to it, the turn's header included, is context;
  2. the message's text is *located* after the prompt: its ``content`` as written, or trimmed (Llama 3.1, Gemma
     trim), or the part after the last added token inside it (Qwen3 drops ``<think>...</think>`` from earlier
     turns); ``reasoning_content`` where the template renders it. Not found: a one-line error naming row and
     turn, never a guess. An empty ``content`` (e.g. only ``tool_calls``) starts after the text the template
     writes for an empty message (Qwen3's empty ``<think>\n\n</think>\n\n``);
  3. the span runs from the first located text to the end of the first *end-of-turn token* after it: the
     tokenizer's eos and the special tokens the template writes right after assistant content, learned once per
     template from a two-turn probe conversation (``<|im_end|>``, ``<|eot_id|>``, ``<end_of_turn>``,
     ``<｜end▁of▁sentence｜>``, ``<|end|>``/``<|return|>``...). Tool calls the template writes between the content
     and that token are inside the span; tool results, user and system text never are.

Text a template inserts before the content (Qwen3's empty think block, a channel header), text after the last
turn (a generation prompt some templates always append, a final eos) and whitespace after the end-of-turn token get
no loss. An eos (with loss) is appended only when the conversation does not end with an assistant turn closed by
its end-of-turn token (the seed's final eos: it ends the document).

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

from ..errors import DataError, TokenizerError
from .loading import encoding_tokenizer, eos_token_id, tokenizer_chat_template
from .pieces import FlatRows, empty_flat, positions_from_offsets

GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


def chat_encoder_for(tokenizer, config: Any) -> ChatTemplateEncoder | None:
    """The encoder the ``sft`` strategy should use for ``config.chat_template`` (``None`` = the seed's role tokens).

    ``config.chat_template_path`` (a Jinja file) replaces the tokenizer's own template, e.g. for gpt-oss, whose
    tokenizer files ship none (its harmony format is rendered by a separate library).

    Example:
        >>> chat_encoder_for(tokenizer_without_template, TokenizeConfig(strategy="sft")) is None  # doctest: +SKIP
        True
    """
    mode = getattr(config, "chat_template", "auto")
    if mode == "never":
        return None
    path = getattr(config, "chat_template_path", None)
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                template = f.read()
        except OSError as e:
            raise TokenizerError(
                f"tokenize.chat_template_path {path!r} cannot be read: {e.strerror or e}; give a Jinja chat template file"
            ) from e
    else:
        template = tokenizer_chat_template(tokenizer)
    if template is None:
        if mode == "always":
            raise TokenizerError(
                "tokenize.chat_template: always, but the tokenizer has no chat_template; set "
                "tokenize.chat_template_path (a Jinja file), use a tokenizer whose tokenizer_config.json has one, "
                "or set tokenize.chat_template: auto / never for the <user>/<assistant> role tokens"
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
        content = msg["content"]
        if not isinstance(content, str) and not (content is None and msg.get("tool_calls")):
            raise DataError(
                f"row {row}, turn {t}: 'content' must be a string, got {type(content).__name__}"
            )
        clean = {k: v for k, v in msg.items() if v is not None}
        if content is None:
            clean["content"] = None  # templates test `content is none` for tool-call-only turns
        out.append(clean)
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


PROBE_TURNS = ("hfprep probe user one", "hfprep probe answer one", "hfprep probe user two", "hfprep probe answer two")
"""The texts of the two-exchange probe conversation (user, assistant, user, assistant) that templates are learned on."""
PROBE_SYSTEM = "hfprep probe system"


def probe_conversation(system: bool) -> list[dict[str, str]]:
    """The probe conversation (:data:`PROBE_TURNS`), with a system turn first when ``system``.

    Example:
        >>> [m["role"] for m in probe_conversation(system=True)]
        ['system', 'user', 'assistant', 'user', 'assistant']
    """
    turns = [{"role": role, "content": text} for role, text in zip(("user", "assistant") * 2, PROBE_TURNS)]
    return [{"role": "system", "content": PROBE_SYSTEM}, *turns] if system else turns


def _count_runs(ids: Sequence[int], run: Sequence[int]) -> int:
    """How many times ``run`` occurs in ``ids`` (overlaps counted)."""
    n = len(run)
    return sum(1 for i in range(len(ids) - n + 1) if list(ids[i : i + n]) == list(run))


def _locate(text: str, needle: str, start: int) -> tuple[int, int] | None:
    if not needle:
        return None
    pos = text.find(needle, start)
    return None if pos < 0 else (pos, pos + len(needle))


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
                "the tokenizer has no chat_template; pass template=, set tokenize.chat_template_path, or set "
                "tokenize.chat_template: never to use the <user>/<assistant> role tokens"
            )
        self.template = template
        self.uses_generation_markers = bool(GENERATION_TAG.search(template))
        self.template_kwargs = dict(getattr(tokenizer, "special_tokens_map", {}) or {})
        self.eos = eos_token_id(tokenizer)
        self.text_column = text_column
        self._tok = encoding_tokenizer(tokenizer)  # whole conversations: no truncation or padding
        added = self._tok.get_added_tokens_decoder()
        self._added_re = None
        contents = sorted({t.content for t in added.values() if t.content}, key=len, reverse=True)
        if contents:
            self._added_re = re.compile("|".join(map(re.escape, contents)))
        special = {t.content for t in added.values() if t.special}
        self._special = frozenset(special)
        eos_str = self._tok.id_to_token(self.eos)
        self.end_of_turn: tuple[str, ...] = tuple(
            sorted({*self._probe_end_of_turn(special), *([eos_str] if eos_str else [])}, key=len, reverse=True)
        )
        self._eot_re = re.compile("|".join(map(re.escape, self.end_of_turn)))

    def _probe_end_of_turn(self, special: set[str]) -> set[str]:
        """The special tokens the template writes right after assistant content (two probe turns, so templates
        that close the last turn differently from earlier ones, like harmony's ``<|return|>`` / ``<|end|>``, show
        both). Empty when the template cannot render the probe or writes none."""
        _, a1, _, a2 = PROBE_TURNS
        found: set[str] = set()
        two = probe_conversation(system=False)
        system = probe_conversation(system=True)[0]
        for conv in (two, two[:2], [system, *two], [system, *two[:2]]):
            try:
                text, _ = self._render(conv, -1)
            except DataError:
                continue
            for answer in (a1, a2):
                pos = text.find(answer)
                if pos < 0:
                    continue
                rest = text[pos + len(answer) :]
                enc = self._tok.encode(rest, add_special_tokens=False)
                for tok in enc.tokens:
                    if tok in special:
                        found.add(tok)
                        break
            if found:
                break
        return found

    def end_of_turn_ids(self) -> tuple[int, ...]:
        """Ids of :attr:`end_of_turn` (the tokens that close an assistant turn, the eos included), ascending."""
        ids = (self._tok.token_to_id(t) for t in self.end_of_turn)
        return tuple(sorted({i for i in ids if i is not None}))

    def assistant_header(self) -> tuple[tuple[int, ...], bool]:
        """The token ids of the header the template writes before assistant content (its generation prompt, e.g.
        ``<|im_start|>assistant``) as they appear in an encoded conversation, and whether the template also writes
        it after the last message (Llama 3's template always appends its generation prompt); ``((), False)`` when
        it cannot be learned.

        Learned from the two-turn probe: the header's characters are what ``add_generation_prompt`` adds to the
        first user turn or, for a template that always appends it, the text between the first user message's
        end-of-turn token and the first answer. The tokens inside them in the encoded probe are kept, leading and
        trailing whitespace tokens dropped (neighbouring text may merge with them). A candidate is kept only if it
        occurs exactly once per assistant turn of the encoded probe (up to its last answer), so a header that other
        turns also produce gives none, and the loss audit skips its per-turn checks rather than guess.

        Example:
            >>> ChatTemplateEncoder(qwen3_tokenizer).assistant_header()  # doctest: +SKIP
            ((151644, 77091), False)
        """
        u1, a1, _, a2 = PROBE_TURNS
        for conv in (probe_conversation(system=False), probe_conversation(system=True)):
            first_user = conv[: len(conv) - 3]
            try:
                before, _ = self._render(first_user, -1)
                prompt, _ = self._render(first_user, -1, add_generation_prompt=True)
                full, _ = self._render(conv, -1)
            except DataError:
                continue
            spans = []
            if len(prompt) > len(before) and prompt.startswith(before) and full.startswith(prompt):
                spans.append((len(before), len(prompt)))
            user_end, answer = full.find(u1) + len(u1), full.find(a1)
            if len(u1) <= user_end < answer:
                closers = list(self._eot_re.finditer(full, user_end, answer))
                spans.append((closers[-1].end() if closers else user_end, answer))
            enc = self._tok.encode(full, add_special_tokens=False)
            last = full.find(a2) + len(a2)
            turns = [t for t, (_, b) in zip(enc.ids, enc.offsets, strict=True) if b <= last]
            after = [t for t, (_, b) in zip(enc.ids, enc.offsets, strict=True) if b > last]
            for lo, hi in spans:
                header = [t for t, (a, b) in zip(enc.ids, enc.offsets, strict=True) if a >= lo and b <= hi]
                while header and not self._tok.decode(header[-1:], skip_special_tokens=False).strip():
                    header.pop()
                while header and not self._tok.decode(header[:1], skip_special_tokens=False).strip():
                    header.pop(0)
                if header and _count_runs(turns, header) == 2:
                    return tuple(header), _count_runs(after, header) > 0
        return (), False

    # --- rendering ----------------------------------------------------------------------------------------

    def _render(self, messages: list[dict[str, Any]], row: int, **kwargs: Any) -> tuple[str, list[tuple[int, int]]]:
        from transformers.utils.chat_template_utils import render_jinja_template  # on use: see loading.load_tokenizer

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

    def _content_candidates(self, content: str) -> list[str]:
        """The forms a template may render ``content`` in, most faithful first."""
        out = [content, content.strip()]
        if self._added_re is not None:
            # Templates may drop a leading block that ends with an added token (Qwen3: `<think>...</think>`).
            ends = [m.end() for m in self._added_re.finditer(content)]
            out += [content[e:].strip() for e in reversed(ends)]
        return [c for i, c in enumerate(out) if c and c not in out[:i]]

    def _header_end(self, messages: list[dict[str, Any]], i: int, full: str, row: int, cursor: int) -> int:
        """Where assistant turn ``i``'s header ends in ``full``: the end of its prompt when the prompt is a prefix
        of the full rendering; else (a template that renders history differently once later turns exist, e.g.
        Qwen3 after tool calls) the first occurrence, after ``cursor`` (the end of the previous message), of the
        generation prompt the template appends to ``messages[:i]``."""
        prompt, _ = self._render(messages[:i], row, add_generation_prompt=True)
        if full.startswith(prompt):
            return len(prompt)
        before, _ = self._render(messages[:i], row)
        header = prompt[len(before) :] if prompt.startswith(before) else ""
        pos = full.find(header, cursor) if header else -1
        if pos < 0:
            raise TokenizerError(
                f"row {row}, turn {i}: the chat template renders the prompt of this assistant turn differently "
                "from the full conversation, so its span cannot be attributed; add "
                "{% generation %}...{% endgeneration %} around the assistant output in the template"
            )
        return pos + len(header)

    def _assistant_span(
        self, messages: list[dict[str, Any]], i: int, full: str, row: int, cursor: int = 0
    ) -> tuple[int, int, bool]:
        """``(start, end, closed)`` of assistant message ``i`` in ``full`` (see the module docstring)."""
        msg = messages[i]
        head = self._header_end(messages, i, full, row, cursor)
        content = msg.get("content") or ""
        start = end = None
        if content.strip():
            for cand in self._content_candidates(content):
                found = _locate(full, cand, head)
                # The content must sit inside this turn: no end-of-turn token between the prompt and it.
                if found is not None and self._eot_re.search(full, head, found[0]) is None:
                    start, end = found
                    break
            if start is None:
                raise DataError(
                    f"row {row}, turn {i}: the assistant content ({content[:40]!r}) cannot be located in the "
                    "chat template's rendering (the template rewrites it); fix the content or add "
                    "{% generation %}...{% endgeneration %} markers to the template"
                )
        else:
            # Skip what the template writes for an empty message (e.g. an empty think block).
            empty = [*messages[:i], {"role": "assistant", "content": ""}, *messages[i + 1 :]]
            etext, _ = self._render(empty, row)
            m = self._eot_re.search(etext, head) if etext[:head] == full[:head] else None
            filler = etext[head : m.start()] if m is not None else ""
            start = end = head + len(filler) if full.startswith(filler, head) else head
        reasoning = msg.get("reasoning_content")
        if isinstance(reasoning, str) and reasoning.strip():
            found = _locate(full[:start], reasoning.strip(), head)
            if found is not None and self._eot_re.search(full, head, found[0]) is None:
                start = found[0]
        m = self._eot_re.search(full, end)
        if m is not None and (i + 1 == len(messages) or self._next_text(messages, i + 1, full, end) >= m.end()):
            return start, m.end(), i == len(messages) - 1
        # A plain-text template closes turns with no special token: the content alone gets loss (and the eos
        # appended at the end teaches the stop). A special token right after the content that is not a known
        # end-of-turn token means the template closes turns in a way the probe did not learn: refuse.
        after = self._tok.encode(full[end : end + 64], add_special_tokens=False).tokens[:1]
        if after and after[0] in self._special:
            raise DataError(
                f"row {row}, turn {i}: the assistant content is followed by {after[0]!r}, not by a known "
                f"end-of-turn token ({', '.join(self.end_of_turn)}); add {{% generation %}}...{{% endgeneration %}} "
                "markers to the template"
            )
        return start, end, False

    def _next_text(self, messages: list[dict[str, Any]], j: int, full: str, start: int) -> int:
        """Where message ``j``'s text starts in ``full`` (searched from ``start``), or ``len(full)`` if not found."""
        content = messages[j].get("content")
        if isinstance(content, str):
            for cand in self._content_candidates(content):
                found = _locate(full, cand, start)
                if found is not None:
                    return found[0]
        return len(full)

    def render(self, messages: list[dict[str, Any]], row: int = 0) -> tuple[str, list[tuple[int, int]]]:
        """Rendered text of one conversation and its assistant character spans ``[(start, end), ...]``."""
        return self._render_spans(messages, row)[:2]

    def _render_spans(self, messages: list[dict[str, Any]], row: int) -> tuple[str, list[tuple[int, int]], bool]:
        """Text, assistant spans, and whether the last message is an assistant turn closed by an end-of-turn token."""
        if self.uses_generation_markers:
            text, spans = self._render(messages, row, return_assistant_tokens_mask=True)
            closed = False
            if messages[-1]["role"] == "assistant" and spans:
                last = text[spans[-1][0] : spans[-1][1]].rstrip()
                closed = any(last.endswith(t) for t in self.end_of_turn)
            return text, spans, closed
        full, _ = self._render(messages, row)
        spans = []
        closed = False
        cursor = 0  # end of the previous message's text in `full`
        for i, msg in enumerate(messages):
            if msg["role"] == "assistant":
                a, b, closed = self._assistant_span(messages, i, full, row, cursor)
                spans.append((a, b))
                cursor = b
            elif isinstance(msg.get("content"), str):
                for cand in self._content_candidates(msg["content"]):
                    found = _locate(full, cand, cursor)
                    if found is not None:
                        cursor = found[1]
                        break
        return full, spans, closed and messages[-1]["role"] == "assistant"

    # --- batch --------------------------------------------------------------------------------------------

    def __call__(self, conversations: Sequence[Any], indices: Sequence[int] | None = None):
        n = len(conversations)
        if n == 0:
            return empty_flat()
        indices = range(n) if indices is None else indices
        texts: list[str] = []
        span_lo: list[int] = []
        span_hi: list[int] = []
        closed = np.zeros(n, dtype=np.bool_)
        char_base = 0
        for i, conv in enumerate(conversations):
            messages = _check_conversation(conv, indices[i], self.text_column)
            text, spans, closed[i] = self._render_spans(messages, indices[i])
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
        )
        # Append eos (with loss, like the seed's final eos) unless the last assistant turn already ends the
        # conversation with its end-of-turn token.
        add = (~closed).astype(np.int64)
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
