"""Data mixtures with exact token budgets: which documents of each source go into a mixed dataset.

A recipe with ``sources:`` (instead of ``source:``) names several sources, each with a ``weight`` (a share of the
mixture's tokens) or ``tokens`` (an absolute budget), and an optional top-level ``tokens:`` total::

    sources:
      - {name: code, text_dir: "{stdlib}", glob: "**/*.py", weight: 0.7, tokenize: {fim_rate: 0.5}}
      - {name: docs, files: [docs.jsonl], weight: 0.3}
    tokens: 2_000_000          # optional with weights: default = the largest mix that repeats nothing
    max_epochs: 2              # a source may be repeated up to twice to meet its budget

The rules, all pure functions of the documents' content and the recipe (never of row order, workers or engine):

* **Budgets** (:func:`plan_budgets`): ``tokens`` entries get their number; ``weight`` entries share what is left
  of the total in proportion to their weights (weights that do not sum to 1 are normalised, with a note).
* **Choice** (:func:`choose_documents`): each document gets a seeded hash of its content
  (:func:`content_hashes`: sha256 of the seed and the document's text). A source whose budget is at least its
  size is taken whole, epoch after epoch; the last (partial) epoch takes documents in ascending hash order until
  the budget is met, whichever of "stop before" or "stop after" the next document lands closer. So a source delivers its budget to within one
  document, with whole documents only. A budget that needs more than ``max_epochs`` epochs is an error naming
  the source and the epochs it would need.
* **Order** (:func:`mix_order`): chosen documents of all sources (and epochs) are laid out in the order of a hash
  of (content hash, epoch), so every packed row can hold documents of several sources; the map-reduce then keys
  and packs them like any tokenized documents.

Example:
    >>> import numpy as np
    >>> plan = plan_budgets(["web", "code"], weights=[3, 1], tokens=[None, None], available=[1000, 500], total=None)
    >>> plan.budgets, plan.total, plan.notes
    ([1000, 333], 1333, ['weights sum to 4, not 1: normalised to web 0.75, code 0.25'])
    >>> sel = choose_documents(np.array([5, 1, 9, 3], dtype=np.uint64), np.array([10, 20, 30, 40]), budget=160,
    ...                        max_epochs=2, where="sources[0] ('web')")
    >>> [e.tolist() for e in sel.epochs], sel.tokens
    ([[0, 1, 2, 3], [1, 3]], 160)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pydantic

from .errors import ConfigError, DataError, RecipeError, format_validation_error
from .schema import MAX_SOURCES
from .tokenization.stage import TokenizeConfig

# ----------------------------------------------------------------------------------------------- recipe checks


def check_mixture_recipe(recipe: Any, where: str) -> None:
    """Cross-field rules of ``source`` / ``sources`` / ``tokens`` / ``max_epochs`` (one :class:`RecipeError` line).

    Per-source ``tokenize`` sections are validated here, merged over the recipe's ``tokenize`` section, so their
    errors name the entry (``sources[1].tokenize.fim_rate: ...``).
    """
    def fail(key: str, msg: str) -> None:
        raise RecipeError(f"{where}: {key}: {msg}")

    if recipe.source is not None and recipe.sources is not None:
        fail("sources", "give either 'source' (one source) or 'sources' (a mixture), not both")
    if recipe.source is None and recipe.sources is None:
        fail("source", "required key is missing (or give 'sources' for a mixture)")
    if recipe.sources is None:
        for key in ("tokens", "max_epochs", "source_column"):
            if key in recipe.model_fields_set:
                fail(key, "only applies to a mixture ('sources:'); remove it or list the sources under 'sources'")
        return
    srcs = recipe.sources
    if not srcs:
        fail("sources", "the list is empty; give at least one source")
    if len(srcs) > MAX_SOURCES:
        fail("sources", f"{len(srcs)} sources; at most {MAX_SOURCES} can be mixed (the source column is a small int)")
    seen: dict[str, int] = {}
    for i, s in enumerate(srcs):
        if s.name in seen:
            fail(f"sources[{i}].name", f"{s.name!r} is already the name of sources[{seen[s.name]}]; names must be unique")
        seen[s.name] = i
        if s.tokenize is not None:
            source_tokenize_config(recipe, i, where)  # raises with the entry's location
    fixed = [s.tokens for s in srcs if s.tokens is not None]
    weighted = [s for s in srcs if s.weight is not None]
    if fixed and weighted and recipe.tokens is None:
        fail("tokens", "required when 'sources' mix 'weight' and 'tokens' entries (the weights share what is left)")
    if recipe.tokens is not None and fixed:
        if not weighted and sum(fixed) != recipe.tokens:
            fail("tokens", f"{recipe.tokens:,} differs from the sum of the sources' 'tokens' ({sum(fixed):,}); "
                 "remove the top-level 'tokens' or make them agree")
        if weighted and sum(fixed) >= recipe.tokens:
            fail("tokens", f"{recipe.tokens:,} leaves nothing for the weighted sources after the 'tokens' entries "
                 f"({sum(fixed):,}); raise it")


def source_tokenize_config(recipe: Any, i: int, where: str | None = None):
    """The :class:`~hfprep.tokenization.stage.TokenizeConfig` of ``sources[i]``: its ``tokenize`` keys over the recipe's."""
    where = where or recipe.where
    own = recipe.sources[i].tokenize or {}
    if "backend" in own:
        raise RecipeError(f"{where}: sources[{i}].tokenize.backend: set the backend under tokenizer.backend")
    base = recipe.tokenize.model_dump(exclude_unset=True)
    try:
        return TokenizeConfig.model_validate({**base, **own})
    except pydantic.ValidationError as e:
        msg = format_validation_error(e, where)
        head, _, rest = msg.partition(": ")
        raise RecipeError(f"{head}: sources[{i}].tokenize.{rest}") from None


# ----------------------------------------------------------------------------------------------- budgets


@dataclasses.dataclass
class BudgetPlan:
    """Token budget of every source, the mixture's total and the notes to show (normalised weights)."""

    budgets: list[int]
    total: int
    notes: list[str]


def plan_budgets(
    names: Sequence[str],
    weights: Sequence[float | None],
    tokens: Sequence[int | None],
    available: Sequence[int],
    total: int | None,
) -> BudgetPlan:
    """Each source's token budget.

    ``tokens`` entries get their number. ``weight`` entries share ``total`` minus those numbers in proportion to
    their (normalised) weights; without a ``total`` and with weights only, the total is the largest one that
    repeats no source: ``min(available[i] / share[i])``. Budgets are rounded to whole tokens.

    Example:
        >>> plan_budgets(["a", "b"], [None, 1.0], [100, None], [100, 900], total=1000).budgets
        [100, 900]
    """
    fixed = sum(t for t in tokens if t is not None)
    wsum = float(sum(w for w in weights if w is not None))
    notes: list[str] = []
    if wsum > 0 and not math.isclose(wsum, 1.0, rel_tol=1e-9, abs_tol=1e-12):
        shares = ", ".join(f"{n} {w / wsum:.4g}" for n, w in zip(names, weights) if w is not None)
        notes.append(f"weights sum to {wsum:.6g}, not 1: normalised to {shares}")
    if total is None:
        if wsum > 0:
            total = int(min(a / (w / wsum) for a, w in zip(available, weights) if w is not None))
        else:
            total = fixed
    rest = total - fixed
    budgets = [
        int(t) if t is not None else round(rest * (w or 0.0) / wsum) for t, w in zip(tokens, weights)
    ]
    return BudgetPlan(budgets, int(total), notes)


# ----------------------------------------------------------------------------------------------- hashes


CONTENT_HASH_RULE = "sha256(hfprep-mixture:{seed}: + utf-8 text, else canonical JSON)[:8]"
"""Names the rule of :func:`content_hashes`; change it whenever the rule changes (it keys cached tokenized sources)."""


def content_hashes(batch: dict[str, Sequence[Any]], columns: Sequence[str], seed: int) -> np.ndarray:
    """A seeded 64-bit hash of each row's content: the first 8 bytes of sha256 over ``hfprep-mixture:{seed}:``
    followed by the document's UTF-8 text (one text column, the usual case) or, for several columns or non-text
    values (FIM columns, chat turns), their canonical JSON.

    It depends only on the row's values, so every engine, worker count, row order and streaming choose the same
    documents. The text is hashed as it is (no JSON escaping pass over it): one sha256 per document, ~30 ms per
    20 MB here.

    Example:
        >>> h = content_hashes({"text": ["a", "b", "a"]}, ["text"], seed=0)
        >>> h.dtype, h[0] == h[2], h[0] == h[1]
        (dtype('uint64'), np.True_, np.False_)
        >>> import hashlib
        >>> int(h[1]) == int.from_bytes(hashlib.sha256(b"hfprep-mixture:0:b").digest()[:8], "big")
        True
    """
    n = len(batch[columns[0]]) if columns else 0
    out = np.empty(n, dtype=np.uint64)
    prefix = hashlib.sha256(f"hfprep-mixture:{seed}:".encode())
    values = batch[columns[0]] if len(columns) == 1 else None
    for i in range(n):
        v = values[i] if values is not None else None
        if isinstance(v, str):
            blob = v.encode("utf-8", "surrogatepass")
        else:
            blob = json.dumps(
                [batch[c][i] for c in columns], sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str
            ).encode("utf-8", "surrogatepass")
        h = prefix.copy()
        h.update(blob)
        out[i] = int.from_bytes(h.digest()[:8], "big")
    return out


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A bijective 64-bit mixer (splitmix64's finaliser), vectorised."""
    x = np.asarray(x, dtype=np.uint64).copy()
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def mix_order(hashes: np.ndarray, epochs: np.ndarray, sources: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The order in which chosen documents enter the map-reduce: by a hash of (content hash, epoch), so sources
    and epochs interleave; ties (identical documents) by source, then position. A permutation of ``0..n``.

    Example:
        >>> mix_order(np.array([7, 7], dtype=np.uint64), np.array([0, 0]), np.array([1, 0]), np.array([0, 0])).tolist()
        [1, 0]
    """
    with np.errstate(over="ignore"):
        key = _splitmix64(np.asarray(hashes, dtype=np.uint64) + np.asarray(epochs, dtype=np.uint64) * np.uint64(
            0x9E3779B97F4A7C15))
    return np.lexsort((np.asarray(positions), np.asarray(sources), key))


# ----------------------------------------------------------------------------------------------- choice


@dataclasses.dataclass
class Selection:
    """What :func:`choose_documents` picked: ascending document positions per epoch, and their token count."""

    epochs: list[np.ndarray]
    tokens: int
    available_tokens: int

    @property
    def docs(self) -> int:
        return int(sum(len(e) for e in self.epochs))

    @property
    def passes(self) -> float:
        """Epochs as a fraction (2.5 = two whole passes and half of the source's tokens again)."""
        return self.tokens / self.available_tokens if self.available_tokens else 0.0


def epochs_needed(budget: int, available: int) -> int:
    """Whole or partial passes over ``available`` tokens needed to reach ``budget`` (>= 1)."""
    return max(1, -(-budget // available)) if available > 0 else 1


def choose_documents(
    hashes: np.ndarray,
    lengths: np.ndarray | Callable[[int], np.ndarray],
    budget: int,
    max_epochs: int,
    where: str,
) -> Selection:
    """Whole documents whose token total is within one document of ``budget``.

    Args:
        hashes: content hash of every document (:func:`content_hashes`).
        lengths: token count of every document, or ``epoch -> lengths`` where epochs differ (raw-document FIM
            draws its split per epoch, which can change a document's token count).
        budget: tokens wanted.
        max_epochs: passes allowed over the source.
        where: names the source in errors (``sources[1] ('math')``).

    Returns:
        One array of ascending document positions per epoch: whole passes first, then the documents with the
        smallest hashes until the rest of the budget is met (stopping before or after the document that crosses
        it, whichever lands closer; a tie stops before).

    Raises:
        DataError: the source has no tokens.
        ConfigError: the budget needs more than ``max_epochs`` passes (the message says how many).
    """
    fixed = None if callable(lengths) else np.asarray(lengths)
    get = lengths if fixed is None else (lambda _e: fixed)
    first = np.asarray(get(0), dtype=np.int64)
    available = int(first.sum())
    if available <= 0:
        raise DataError(f"{where}: the source has no tokens after tokenization; check its rows and tokenize section")
    need = epochs_needed(budget, available)
    if need > max_epochs:
        raise ConfigError(
            f"{where}: a budget of {budget:,} tokens needs {need} epochs of its {available:,} tokens; "
            f"set max_epochs: {need} (or lower its weight/tokens)"
        )
    order = np.lexsort((np.arange(len(first)), np.asarray(hashes, dtype=np.uint64)))
    chosen: list[np.ndarray] = []
    total = 0
    for e in range(max_epochs):
        lens = first if e == 0 else np.asarray(get(e), dtype=np.int64)
        rest = budget - total
        if rest <= 0:
            break
        if int(lens.sum()) <= rest:
            chosen.append(np.arange(len(lens), dtype=np.int64))
            total += int(lens.sum())
            continue
        cs = np.cumsum(lens[order])
        k = int(np.searchsorted(cs, rest, side="right"))  # cs[k-1] <= rest < cs[k]
        below = int(cs[k - 1]) if k else 0
        if int(cs[k]) - rest < rest - below:
            k += 1
        if k:
            chosen.append(np.sort(order[:k]))
            total += int(cs[k - 1])
        break
    return Selection(chosen, total, available)
