"""What the loss mask of an SFT row covers, read off a probe conversation: the facts the dataset card states.

:func:`probe_loss_layout` runs the strategy the run used (:class:`hfprep.tokenization.stage.Tokenizer`, the same
code, options and template) on the probe conversation of :mod:`hfprep.tokenization.chat` (a system turn when the
template or the role tokens accept one, then two user/assistant exchanges) and reads the mask back around each
assistant answer: the text *with* loss right before it (the seed's ``<assistant>``) and right after it (an
end-of-turn token such as ``<|im_end|>``, the eos hfprep appends), and the text *without* loss that opens the turn
(the template's generation prompt, ``<|im_start|>assistant\\n``) or that the template inserts before the last answer
(Qwen3's empty ``<think>\\n\\n</think>\\n\\n``). The card's sentence about the mask is built from these strings, so
it says what the rows hold for any template.

Token texts come from decoding growing prefixes of the ids (exact for byte-level and SentencePiece-style
decoders on the ASCII probe); the cost is a few dozen decodes of a ~60-token row, once per run.

Example:
    >>> layout = probe_loss_layout(qwen3_tokenizer, TokenizeConfig(strategy="sft"))  # doctest: +SKIP
    >>> layout.header, layout.after  # doctest: +SKIP
    ('<|im_start|>assistant\\n', '<|im_end|>')
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DataError, TokenizerError
from .chat import PROBE_TURNS, probe_conversation
from .loading import backend_tokenizer
from .stage import TokenizeConfig, Tokenizer


@dataclass(frozen=True)
class LossLayout:
    """The text around assistant answers in an SFT row, split by loss (all strings exactly as decoded).

    Attributes:
        header: text without loss that opens an assistant turn, after the user turn's closing (the template's
            ``<|im_start|>assistant\\n``); "" when none (the seed's role tokens have loss).
        before: text with loss right before each answer (the seed's ``<assistant>``); "" when none.
        after: text with loss right after an answer that is not the last (its end-of-turn token).
        after_last: text with loss right after the last answer (end-of-turn token, the eos hfprep appends).
        inserted: text without loss that the last answer's turn has after the header and the first does not
            (Qwen3's empty ``<think>\\n\\n</think>\\n\\n``).
        system: whether the probe had a system turn (its text, like the user turns', gets no loss).
    """

    header: str
    before: str
    after: str
    after_last: str
    inserted: str
    system: bool


def _token_bounds(tokenizer, ids: list[int]) -> tuple[str, np.ndarray]:
    """The decoded row and the character offset where each token starts (``len(ids) + 1`` offsets)."""
    inner = backend_tokenizer(tokenizer)
    prefixes = [inner.decode(ids[:j], skip_special_tokens=False) for j in range(len(ids) + 1)]
    text = prefixes[-1]
    if all(text.startswith(p) for p in prefixes):
        return text, np.array([len(p) for p in prefixes], dtype=np.int64)
    # A decoder that rewrites earlier text when more tokens follow: fall back to per-token pieces.
    pieces = [inner.decode([i], skip_special_tokens=False) for i in ids]
    return "".join(pieces), np.concatenate([[0], np.cumsum([len(p) for p in pieces])]).astype(np.int64)


def _closing(chat, history: list[dict[str, str]], gap: str) -> int:
    """Where the user turn's closing ends in ``gap`` (the text between the user's text and the next answer): at
    its first end-of-turn token, or where the template's rendering of the conversation up to that user turn stops
    agreeing with the gap (a template whose user turns end with their own token, like ``</user>``), whichever
    comes first. What follows is the assistant turn's header."""
    rendered, _ = chat.render(history)
    user_text = history[-1]["content"]
    at = rendered.rfind(user_text)
    tail = rendered[at + len(user_text) :] if at >= 0 else ""
    eot = min((gap.find(t) + len(t) for t in chat.end_of_turn if t in gap), default=len(gap))
    agree = next((i for i, (a, b) in enumerate(zip(tail, gap)) if a != b), min(len(tail), len(gap)))
    return min(agree, eot)


def probe_loss_layout(tokenizer, config: TokenizeConfig) -> LossLayout:
    """Encode the probe conversation with the ``sft`` strategy of ``config`` and describe its loss mask.

    Raises :class:`~hfprep.errors.TokenizerError` when the strategy cannot encode the probe (it encoded the run's
    own conversations, so this means a template that rejects plain user/assistant turns) or loses the answers.
    """
    if config.strategy != "sft":
        raise TokenizerError(f"probe_loss_layout describes the sft strategy, not {config.strategy!r}")
    config = config.model_copy(update={"backend": "hf"})  # the chat path encodes with HF; no backend check needed
    tk = Tokenizer(tokenizer, config)
    for system in (True, False):
        messages = probe_conversation(system)
        try:
            flat = tk({config.text_column: [messages]})
            break
        except (DataError, TokenizerError):
            continue
    else:
        raise TokenizerError("the sft strategy cannot encode a plain user/assistant conversation to describe its mask")
    ids = [int(i) for i in flat.input_ids]
    mask = np.asarray(flat.loss_mask, dtype=bool)
    text, bounds = _token_bounds(tokenizer, ids)

    def token_at(char: int) -> int:
        return int(np.searchsorted(bounds, char, side="right")) - 1

    def loss_run(first: int, step: int) -> int:
        """The last index of the run of loss tokens that starts at ``first`` and goes in direction ``step``."""
        i = first
        while 0 <= i + step < len(ids) and mask[i + step]:
            i += step
        return i

    chat = tk.specials.chat
    cursor, user_end, found = 0, 0, []
    for k, content in enumerate(PROBE_TURNS):
        start = text.find(content, cursor)
        if start < 0:
            raise TokenizerError(f"the probe's turn {k} is not in the decoded SFT row; the card cannot describe the mask")
        cursor = start + len(content)
        if k % 2 == 1:  # an answer: where the user text before it ends, where it starts and ends, what precedes it
            found.append((user_end, start, cursor, messages[: len(messages) - 4 + k]))
        user_end = cursor

    parts = []
    for user_end, start, end, history in found:
        first, last = token_at(start), token_at(end - 1)
        run_start = loss_run(first, -1) if mask[first] else first
        run_end = loss_run(last, 1) if mask[last] else last
        opens = int(bounds[run_start]) if mask[run_start] else start
        before = text[opens:start]
        after = text[end : bounds[run_end + 1]] if mask[run_end] else ""
        gap = text[user_end:opens]  # no loss: the user turn's closing, then the assistant turn's header
        header = "" if chat is None else gap[_closing(chat, history, gap) :].lstrip()
        parts.append((header, before, after))
    (header, before, after), (last_header, _, after_last) = parts
    inserted = last_header[len(header) :] if last_header.startswith(header) else ""
    return LossLayout(header, before, after, after_last, inserted, system)
