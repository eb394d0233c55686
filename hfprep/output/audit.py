"""Loss audit: every document (segment) and row of a prepared dataset checked for a loss mask that trains on
nothing, on everything, or on a document that lost its structure.

TRL and Megatron users lose whole runs to masks that are silently all zero or all one ("trains on no assistant
tokens while looking healthy"). ``hfprep run`` audits the rows it writes (the card shows the table) and
``hfprep validate`` audits them again from the Parquet shards, with the same :class:`LossAudit`. A segment is what
training sees as a document: it starts at position 0 (or a row start) and ends at the next start or the padding.

Checks (``CHECKS``; each fails ``validate`` with one line naming its count and first row/segment):

* ``no_loss_document``: a document with no token with loss (every strategy gives the last token of a document
  loss: the eos, or an assistant turn's end-of-turn token);
* ``all_loss_document`` (SFT; FIM with ``only_middle_not_masked``): a document whose every token has loss, the
  context included: the template did not separate the roles. For the seed's role tokens and for FIM it is judged
  by the tokens that never have loss (``<user>``/``<system>`` role tokens, FIM sentinels), so an assistant-only
  conversation (all loss by the seed's rule) passes; for chat templates every whole document starts with context;
* ``assistant_content_no_loss`` / ``assistant_end_no_loss`` (SFT): an assistant turn, found by the assistant header
  ids the chat encoder learned (:meth:`~hfprep.tokenization.chat.ChatTemplateEncoder.assistant_header`, or the
  seed's ``<assistant>``), whose content has no loss (seed: a token of ``<assistant> ... </assistant>`` without
  loss), or whose end-of-turn token has none (or is missing): the model never learns to answer, or to stop;
* ``no_separator`` (pretrain, FIM): a document that does not end with the separator (the eos, or the FIM family's
  end token): documents run into each other;
* ``fim_sentinels`` (FIM): a document without each of the three sentinels exactly once (``fim``), or with some
  but not all of them (raw-document FIM, where plain documents have none); a sentinel twice is a source text that
  holds a sentinel string;
* ``no_loss_row``: a row with no token with loss (a batch of them divides zero by zero).

**Cut pieces.** Packers that cut documents make segments that are not whole documents, and those legitimately
fail some checks. The rows do not say which segments are pieces, so the audit uses where the packer puts them:

* a segment that fills its row to ``seq_len`` may be the head of a longer document (``dense``; ``bfd`` with
  ``overflow: split`` or ``truncate``): it may lack its separator, its end-of-turn token, its loss (a long prompt);
* a segment that starts a row may be the rest of a document cut before it (``dense``, ``bfd`` split): it may lack
  its sentinels or its context (all loss), or hold only text after the last end-of-turn token (no loss);
* a piece cut off a document's start can also sit inside a row: ``dense`` packs the reduce groups' leftover tails
  together at the end of a split (at most one such piece per group) and ``bfd`` places the last piece of a split
  document anywhere (one per split document). Such failures are allowed up to that bound (``num_reduce_chunks``,
  and the card's ``segments - (docs_in - docs_dropped)``: the pieces beyond each document's first); beyond it they
  are violations. ``no_incomplete`` and ``bfd`` with ``drop`` never cut: every segment is a whole document.

Failures explained by a cut are counted (the card's ``(+N cut)``), never reported as violations.

The rules (which ids mean what) are :class:`AuditRules`, recorded in the card's ``hfprep.loss_audit`` block by
the run and read back by ``validate``; a card without one (older hfprep) gets the checks that need no ids. The
decisions behind each rule are written out in ``docs/validate.md``.

Example:
    >>> import pyarrow as pa
    >>> t = pa.table({"input_ids": [[5, 6, 0, 7, 0]], "position_ids": [[0, 1, 2, 0, 1]],
    ...               "loss_mask": [[True, True, True, False, False]]})
    >>> audit = LossAudit(AuditRules(separator_ids=(0,)), seq_len=5, packing="no_incomplete")
    >>> audit.add(t)
    >>> audit.result().lines()
    ['loss audit: no_loss_document: 1 document(s) have no token with loss (first: row 0, segment 1); they train \
on nothing: check the strategy options (only_middle_not_masked, the chat template) or the source']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from ..schema import RowSegments, output_is_padded, padding_from_counts, row_segments, table_to_flat


@dataclasses.dataclass(frozen=True)
class Check:
    """One audit check: its card label, what a violation is (after a count) and what to do about it."""

    label: str
    problem: str
    fix: str


CHECKS: dict[str, Check] = {
    "no_loss_document": Check(
        "documents with no loss token", "document(s) have no token with loss",
        "they train on nothing: check the strategy options (only_middle_not_masked, the chat template) or the source",
    ),
    "all_loss_document": Check(
        "documents with loss on the context too", "document(s) have loss on every token, context included",
        "the roles were not separated: check the chat template (or add {% generation %} markers) and the role tokens",
    ),
    "assistant_content_no_loss": Check(
        "assistant turns with no loss on their content", "assistant turn(s) have no loss on their content",
        "the model never learns the answers: check the chat template's assistant spans",
    ),
    "assistant_end_no_loss": Check(
        "assistant turns whose end-of-turn token has no loss", "assistant turn(s) end without an end-of-turn token "
        "with loss", "the model never learns to stop: check the template's end-of-turn token",
    ),
    "no_separator": Check(
        "documents not ending with the separator", "document(s) do not end with the separator",
        "documents run into each other: check tokenize.eos_token and the packer",
    ),
    "fim_sentinels": Check(
        "FIM documents without each sentinel once", "document(s) do not hold each FIM sentinel exactly once",
        "a source text contains a sentinel string, or the sentinels are not single tokens: clean the source",
    ),
    "no_loss_row": Check(
        "rows with no loss token", "row(s) have no token with loss",
        "a batch of such rows has no loss to average: check the strategy options or the packing",
    ),
}


@dataclasses.dataclass(frozen=True)
class AuditRules:
    """What the audit must know about the documents a run writes (token ids; the card's ``hfprep.loss_audit``).

    Attributes:
        separator_ids: every document ends with one of them (pretrain, FIM); ``()``: not checked (SFT).
        fim_ids: the FIM sentinels ``(prefix, middle, suffix)``; ``()``: no FIM.
        fim_every_document: strategy ``fim`` (each document holds each sentinel once); else raw-document FIM
            (all three once, or none).
        assistant_header_ids: the tokens that open an assistant turn; ``()``: no per-turn checks.
        end_of_turn_ids: the tokens that close one.
        trailing_header: the template writes the header after the last message too (an always-on generation
            prompt, Llama 3): a segment's last header is not checked as a turn.
        assistant_loss: ``every`` (the seed's role tokens: every token from the header to the end-of-turn token
            has loss) or ``some`` (chat templates: some content token has loss; inserted text may have none).
        context_ids: tokens the strategy never gives loss (``<user>``/``<system>`` role tokens, FIM sentinels with
            ``only_middle_not_masked``).
        all_loss: ``allowed`` (pretrain, FIM with loss everywhere), ``context`` (an all-loss document is a violation
            when it holds a ``context_ids`` token) or ``error`` (chat templates: every whole document starts with
            context).
        document_end_loss: the last token of every document has loss (chat templates may leave whitespace after
            the closing end-of-turn token without).
    """

    separator_ids: tuple[int, ...] = ()
    fim_ids: tuple[int, ...] = ()
    fim_every_document: bool = False
    assistant_header_ids: tuple[int, ...] = ()
    end_of_turn_ids: tuple[int, ...] = ()
    trailing_header: bool = False
    assistant_loss: Literal["every", "some"] = "some"
    context_ids: tuple[int, ...] = ()
    all_loss: Literal["allowed", "context", "error"] = "allowed"
    document_end_loss: bool = True

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list | tuple):
                object.__setattr__(self, f.name, tuple(int(v) for v in value))

    def checks(self) -> list[str]:
        """The checks these rules allow, in :data:`CHECKS` order."""
        skip = set()
        if self.all_loss == "allowed" or (self.all_loss == "context" and not self.context_ids):
            skip.add("all_loss_document")
        if not self.assistant_header_ids:
            skip |= {"assistant_content_no_loss", "assistant_end_no_loss"}
        if not self.separator_ids:
            skip.add("no_separator")
        if not self.fim_ids:
            skip.add("fim_sentinels")
        return [c for c in CHECKS if c not in skip]

    def to_card(self) -> dict[str, Any]:
        """The card's ``hfprep.loss_audit`` block: the fields that differ from the defaults (ids as lists).

        Example:
            >>> AuditRules(separator_ids=(0,)).to_card()
            {'separator_ids': [0]}
        """
        default = AuditRules()
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self) if getattr(self, f.name) != getattr(default, f.name)
        }

    @classmethod
    def from_card(cls, block: Mapping[str, Any] | None) -> AuditRules:
        """Rules from a card's ``hfprep.loss_audit`` block; the defaults (checks that need no ids) without one."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (block or {}).items() if k in names})

    @classmethod
    def merge(cls, parts: Iterable[AuditRules]) -> AuditRules:
        """One set of rules for documents made by several tokenize configs (a mixture's sources): a check stays
        only where it holds for every part, so no part's documents can fail another part's rule.

        Example:
            >>> a = AuditRules(separator_ids=(0,), fim_ids=(1, 2, 3), fim_every_document=True)
            >>> AuditRules.merge([a, AuditRules(separator_ids=(0,))]).fim_every_document
            False
        """
        parts = list(parts)
        if len(set(parts)) <= 1:
            return parts[0] if parts else cls()
        fims = {p.fim_ids for p in parts if p.fim_ids}
        turn_fields = ("assistant_header_ids", "end_of_turn_ids", "trailing_header", "assistant_loss")
        headers = {tuple(getattr(p, f) for f in turn_fields) for p in parts}
        context = set.intersection(*(set(p.context_ids) for p in parts))
        modes = {p.all_loss for p in parts}
        return cls(
            separator_ids=tuple(sorted(set().union(*(p.separator_ids for p in parts))))
            if all(p.separator_ids for p in parts) else (),
            fim_ids=next(iter(fims)) if len(fims) == 1 else (),
            fim_every_document=all(p.fim_every_document for p in parts),
            **(dict(zip(turn_fields, next(iter(headers)), strict=True)) if len(headers) == 1 else {}),
            context_ids=tuple(sorted(context)),
            all_loss=modes.pop() if len(modes) == 1 else "context" if "allowed" not in modes else "allowed",
            document_end_loss=all(p.document_end_loss for p in parts),
        )


@dataclasses.dataclass(frozen=True)
class Cuts:
    """Where a packer may cut documents: ``end`` (a segment filling its row may be a document's head) and
    ``start`` (a segment may be the rest of a document cut before it).

    Example:
        >>> Cuts.of("dense"), Cuts.of("bfd", {"overflow": "truncate"}), Cuts.of("no_incomplete")
        (Cuts(end=True, start=True), Cuts(end=True, start=False), Cuts(end=False, start=False))
    """

    end: bool
    start: bool

    @classmethod
    def of(cls, packing: str | None, packing_kwargs: Mapping[str, Any] | None = None) -> Cuts:
        if packing == "no_incomplete":
            return cls(False, False)
        if packing == "bfd":
            overflow = (packing_kwargs or {}).get("overflow", "split")
            return cls(overflow in ("split", "truncate"), overflow == "split")
        return cls(True, True)  # dense, and any other packer: assume it may cut anywhere


def continuation_budget(
    packing: str | None, packing_kwargs: Mapping[str, Any] | None, num_reduce_chunks: int | None,
    stats: Mapping[str, Any] | None,
) -> int | None:
    """At most how many segments of a split can be pieces cut off a document's start that do not start a row
    (``None``: no bound known). ``stats``: the split's card stats (``segments``, ``docs_in``, ``docs_dropped``).

    Example:
        >>> continuation_budget("dense", {}, 4, {"segments": 120, "docs_in": 110, "docs_dropped": 1})
        4
        >>> continuation_budget("bfd", {}, 4, {"segments": 120, "docs_in": 110, "docs_dropped": 0})
        10
    """
    if not Cuts.of(packing, packing_kwargs).start:
        return 0
    stats = stats or {}
    pieces = None
    if all(k in stats for k in ("segments", "docs_in", "docs_dropped")):
        pieces = max(0, int(stats["segments"]) - (int(stats["docs_in"]) - int(stats["docs_dropped"])))
    if packing == "dense" and num_reduce_chunks:  # one leftover tail, so one mid-row piece, per reduce group
        return min(int(num_reduce_chunks), pieces) if pieces is not None else int(num_reduce_chunks)
    return pieces


@dataclasses.dataclass
class Tally:
    """One check over a split: ``errors`` (violations), ``cut`` (failures a packer's cut explains), ``budget``
    (failures a mid-row piece may explain, judged against :func:`continuation_budget` at the end)."""

    errors: int = 0
    cut: int = 0
    budget: int = 0
    first: str | None = None
    first_budget: str | None = None


@dataclasses.dataclass
class AuditResult:
    """A split's audit: per check (:data:`CHECKS` names) the violations, the allowed cut pieces and the first
    violation's place; plus how many documents, assistant turns and rows were checked."""

    checks: dict[str, dict[str, Any]]
    documents: int = 0
    turns: int = 0
    rows: int = 0
    pieces_inside_rows: int = 0
    """Segments inside a row that some check allows only as a piece cut off a document's start."""
    pieces_budget: int | None = None
    """At most that many such pieces the packing can make (:func:`continuation_budget`; None: no bound known)."""

    @property
    def ok(self) -> bool:
        return not any(c["errors"] for c in self.checks.values())

    def lines(self, split: str | None = None) -> list[str]:
        """One line per violated check: count, first place, fix (``validate``'s and the run's warnings)."""
        head = f"loss audit{f' of split {split!r}' if split else ''}"
        return [
            f"{head}: {name}: {c['errors']:,} {CHECKS[name].problem} (first: {c['first']}); {CHECKS[name].fix}"
            for name, c in self.checks.items() if c["errors"]
        ]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class LossAudit:
    """Accumulate the audit of a split batch by batch (:meth:`add`), then :meth:`result`.

    Vectorised: a handful of numpy passes per batch over the flat token arrays, a Python step per check, never
    per token or per segment. ``seq_len`` tells a segment that fills its row (a possible head piece).

    Example:
        >>> audit = LossAudit.from_card({"seq_len": 4, "packing": "dense", "tokenizer": {"pad_token_id": 0}})
        >>> audit.checks
        ['no_loss_document', 'no_loss_row']
    """

    def __init__(
        self,
        rules: AuditRules,
        *,
        seq_len: int | None,
        packing: str | None,
        packing_kwargs: Mapping[str, Any] | None = None,
        num_reduce_chunks: int | None = None,
        pad_token_id: int | None = None,
        padded: bool | None = None,
    ) -> None:
        self.rules = rules
        self.seq_len = seq_len
        self.packing, self.packing_kwargs = packing, dict(packing_kwargs or {})
        self.num_reduce_chunks = num_reduce_chunks
        self.pad_token_id = pad_token_id
        self.padded = output_is_padded(packing, packing_kwargs) if padded is None else padded
        self.cuts = Cuts.of(packing, packing_kwargs)
        self.checks = rules.checks()
        self.tallies = {c: Tally() for c in self.checks}
        self.documents = self.turns = self.rows = self.mid_row_pieces = 0

    @classmethod
    def from_card(cls, hf: Mapping[str, Any]) -> LossAudit:
        """The audit a card's ``hfprep`` block describes (rules, packing, seq_len, pad id)."""
        return cls(
            AuditRules.from_card(hf.get("loss_audit")),
            seq_len=hf.get("seq_len"),
            packing=hf.get("packing"),
            packing_kwargs=hf.get("packing_kwargs") or {},
            num_reduce_chunks=hf.get("num_reduce_chunks"),
            pad_token_id=(hf.get("tokenizer") or {}).get("pad_token_id"),
        )

    def fresh(self) -> LossAudit:
        """A new, empty audit with the same rules (one per split)."""
        return LossAudit(self.rules, seq_len=self.seq_len, packing=self.packing, packing_kwargs=self.packing_kwargs,
                         num_reduce_chunks=self.num_reduce_chunks, pad_token_id=self.pad_token_id, padded=self.padded)

    # --- one batch --------------------------------------------------------------------------------------------

    def add(self, table: pa.Table, row_base: int = 0, where: str = "") -> None:
        """Audit the rows of ``table`` (rows ``row_base...`` of the split; ``where`` names their file)."""
        ids, pos, mask, offsets = table_to_flat(table)
        measured = row_segments(ids, pos, mask, offsets, self.pad_token_id, self.padded)
        self.add_flat(ids, mask, offsets, measured, row_base, where)

    def add_flat(
        self, ids: np.ndarray, mask: np.ndarray, offsets: np.ndarray, measured: RowSegments, row_base: int = 0,
        where: str = "",
    ) -> None:
        """:meth:`add` on flat rows already measured by :func:`~hfprep.schema.row_segments` (the run measures each
        row group once)."""
        start, end, row = measured.seg_start, measured.seg_start + measured.seg_len, measured.seg_row
        keep = end > start  # a row of nothing but padding is validate's own violation
        start, end, row = start[keep], end[keep], row[keep]
        self.documents += len(start)
        self.rows += int(np.count_nonzero(np.diff(row))) + 1 if len(row) else 0
        if not len(start):
            return
        # Tokens between segments are padding (no loss) or rows of nothing but padding: sums from start to start.
        loss = np.add.reduceat(mask, start, dtype=np.int64)
        head = offsets[row]
        at_head = start == head
        fills_row = end == (head + self.seq_len if self.seq_len else offsets[row + 1])
        lacks_end = fills_row & self.cuts.end  # may be the head of a longer document
        lacks_start = at_head & self.cuts.start  # may be the rest of a document cut in the row before
        mid = ~at_head & self.cuts.start  # may be such a rest inside a row: within the split's budget
        seg_in_row = np.arange(len(start)) - np.searchsorted(row, row)

        def place(i: int) -> str:
            return f"{where + ' ' if where else ''}row {row_base + int(row[i])}, segment {int(seg_in_row[i])}"

        budgeted = np.zeros(len(start), dtype=np.bool_)  # segments some check allows only as a mid-row piece
        r = self.rules

        def tally(name: str, failed, explained=None, may_be_piece=None, at=None) -> None:
            """Count a check's failures (per segment, or per turn/row with their segment in ``at``): ``explained``
            by a cut, possibly a mid-row piece (``may_be_piece``, judged against the budget), or violations."""
            t = self.tallies[name]
            explained = np.zeros_like(failed) if explained is None else explained
            may_be_piece = np.zeros_like(failed) if may_be_piece is None else may_be_piece
            open_ = failed & ~explained
            hard, soft = open_ & ~may_be_piece, open_ & may_be_piece
            t.cut += int(np.count_nonzero(failed & explained))
            t.errors += int(np.count_nonzero(hard))
            t.budget += int(np.count_nonzero(soft))
            seg = np.arange(len(failed)) if at is None else at
            if t.first is None and hard.any():
                t.first = place(int(seg[np.argmax(hard)]))
            if soft.any():
                if t.first_budget is None:
                    t.first_budget = place(int(seg[np.argmax(soft)]))
                budgeted[seg[soft]] = True

        no_loss = loss == 0
        # A rest of a document has loss where documents end with a loss token; else it may be trailing context.
        rest_may_lack_loss = not r.document_end_loss
        no_loss_cut = lacks_end | (lacks_start & rest_may_lack_loss)
        tally("no_loss_document", no_loss, no_loss_cut, mid & rest_may_lack_loss)
        if "all_loss_document" in self.checks:
            all_loss = loss == end - start
            if r.all_loss == "context":
                tally("all_loss_document", all_loss & (_count_in(ids, r.context_ids, start, end).sum(axis=0) > 0))
            else:
                tally("all_loss_document", all_loss, lacks_start, mid)
        if "no_separator" in self.checks:
            tally("no_separator", ~np.isin(ids[end - 1], r.separator_ids), lacks_end)
        if "fim_sentinels" in self.checks:
            counts = _count_in(ids, r.fim_ids, start, end)
            present = (counts > 0).sum(axis=0)
            twice = (counts > 1).any(axis=0)
            missing = (present < len(r.fim_ids)) if r.fim_every_document else (present > 0) & (present < len(r.fim_ids))
            tally("fim_sentinels", twice | missing, missing & ~twice & (lacks_end | lacks_start), missing & ~twice & mid)
        if "assistant_content_no_loss" in self.checks:
            pad = padding_from_counts(measured.pad_per_row, offsets)
            self._turns(ids, mask, pad, start, end, lacks_end, tally)
        # Rows: a row with no loss is allowed only when each of its segments is a piece allowed to have none.
        local = row - row[0]
        n_rows = int(local[-1]) + 1
        row_loss = np.bincount(local, weights=loss, minlength=n_rows)
        has_segments = np.bincount(local, minlength=n_rows) > 0
        whole_no_loss = no_loss & ~(no_loss_cut | (mid & rest_may_lack_loss))
        only_pieces = np.bincount(local, weights=whole_no_loss, minlength=n_rows) == 0
        failed_rows = (row_loss == 0) & has_segments
        first_segment = np.minimum(np.searchsorted(local, np.arange(n_rows)), len(start) - 1)
        tally("no_loss_row", failed_rows, only_pieces, at=first_segment)
        self.mid_row_pieces += int(np.count_nonzero(budgeted))

    def _turns(self, ids, mask, pad, start, end, lacks_end, tally) -> None:
        """The assistant-turn checks: a turn runs from its header to the first end-of-turn token of its segment
        (or the next header: a template that closes turns with plain text)."""
        r = self.rules
        cum = np.zeros(len(mask) + 1, dtype=np.int64)
        np.cumsum(mask, out=cum[1:])
        header = np.asarray(r.assistant_header_ids, dtype=np.int64)
        n, h = len(ids), len(header)
        if n < h:
            return
        hit = ids[: n - h + 1] == header[0]
        for k in range(1, h):
            hit &= ids[k : n - h + 1 + k] == header[k]
        p = np.flatnonzero(hit)
        seg = np.searchsorted(start, p, side="right") - 1
        inside = (seg >= 0) & ~pad[p]  # the whole header inside one segment
        inside[inside] &= p[inside] + h <= end[seg[inside]]
        p, seg = p[inside], seg[inside]
        if r.trailing_header and len(p):
            # A document's last header is the template's closing prompt. A piece's last header may be a real turn
            # cut after it: it is left out too (a turn left unchecked, never a turn wrongly flagged).
            keep = np.append(seg[1:] == seg[:-1], False)
            p, seg = p[keep], seg[keep]
        self.turns += len(p)
        if not len(p):
            return
        body = p + h
        seg_end = end[seg]
        eot = np.append(np.flatnonzero(np.isin(ids, r.end_of_turn_ids) & ~pad), n)
        e = eot[np.searchsorted(eot, body)]
        next_header = np.append(p, n)[np.searchsorted(p, body)]
        closed = e < np.minimum(seg_end, next_header)
        runs_out = ~closed & (next_header >= seg_end)  # no end-of-turn token before the segment ends
        stop = np.where(closed, e, np.minimum(next_header, seg_end))
        cut = runs_out & lacks_end[seg]
        if r.assistant_loss == "every":
            content_bad = cum[stop] - cum[p] < stop - p
        else:
            content_bad = cum[stop] == cum[body]
        tally("assistant_content_no_loss", content_bad, content_bad & cut, at=seg)
        end_bad = (closed & ~mask[np.minimum(e, n - 1)]) | runs_out | (~closed & (r.assistant_loss == "every"))
        tally("assistant_end_no_loss", end_bad, end_bad & cut, at=seg)

    # --- the split --------------------------------------------------------------------------------------------

    def result(self, stats: Mapping[str, Any] | None = None) -> AuditResult:
        """The split's audit. ``stats``: its card stats, for the bound on mid-row pieces (:func:`continuation_budget`);
        failures that such pieces may explain are allowed up to it, and all count as violations beyond it."""
        budget = continuation_budget(self.packing, self.packing_kwargs, self.num_reduce_chunks, stats)
        over = budget is not None and self.mid_row_pieces > budget
        checks = {}
        for name, t in self.tallies.items():
            errors, cut, first = t.errors, t.cut, t.first
            if over:
                errors += t.budget
                first = first or t.first_budget
            else:
                cut += t.budget
            checks[name] = {"errors": errors, "cut": cut, "first": first}
        return AuditResult(checks, self.documents, self.turns, self.rows, self.mid_row_pieces, budget)


def _count_in(ids: np.ndarray, values: Iterable[int], start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """``(len(values), segments)``: how many tokens of each segment ``[start, end)`` are each of ``values``.

    Only the (rare) matching tokens are placed into segments, so the cost is one comparison pass per value.

    Example:
        >>> _count_in(np.array([1, 5, 1, 2, 1]), (1, 2), np.array([0, 3]), np.array([3, 5])).tolist()
        [[2, 1], [0, 1]]
    """
    values = list(values)
    out = np.zeros((len(values), len(start)), dtype=np.int64)
    for k, v in enumerate(values):
        at = np.flatnonzero(ids == v)
        seg = np.searchsorted(start, at, side="right") - 1
        inside = seg >= 0
        inside[inside] &= at[inside] < end[seg[inside]]
        out[k] = np.bincount(seg[inside], minlength=len(start))
    return out


# ----------------------------------------------------------------------------------------------- the card


def audit_section(results: Mapping[str, AuditResult]) -> str:
    """The card's ``## Loss audit`` section: one row per check, one column per split, and the status.

    Example:
        >>> r = AuditResult({"no_loss_row": {"errors": 0, "cut": 2, "first": None}}, documents=9, rows=4)
        >>> print(audit_section({"train": r}).splitlines()[-1])
        | rows with no loss token | 0 (+2 cut) | ok |
    """
    if not results:
        return ""
    splits = list(results)
    names = list(next(iter(results.values())).checks)
    lines = [
        "## Loss audit",
        "",
        "Every document (segment) and row was checked for a loss mask that trains on nothing, on everything, or on "
        "a document that lost its structure; `hfprep validate` repeats these checks on the files. `(+N cut)`: "
        "pieces of documents that the packer cut at a row boundary, which may lack what a whole document has.",
        "",
        "| check | " + " | ".join(f"`{s}`" for s in splits) + " | status |",
        "|---|" + "---:|" * len(splits) + "---|",
        "| documents (segments) checked | " + " | ".join(f"{results[s].documents:,}" for s in splits) + " | |",
    ]
    if any(results[s].turns for s in splits) or any(n.startswith("assistant") for n in names):
        lines.append("| assistant turns checked | " + " | ".join(f"{results[s].turns:,}" for s in splits) + " | |")
    for name in names:
        cells = []
        for s in splits:
            c = results[s].checks[name]
            cells.append(f"{c['errors']:,}" + (f" (+{c['cut']:,} cut)" if c["cut"] else ""))
        bad = any(results[s].checks[name]["errors"] for s in splits)
        lines.append(f"| {CHECKS[name].label} | " + " | ".join(cells) + f" | {'**error**' if bad else 'ok'} |")
    return "\n".join(lines) + "\n"
