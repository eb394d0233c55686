"""Tokenizer backends: map a batch of strings to flat token arrays, exactly as Hugging Face ``tokenizers`` does.

A backend only encodes (no special tokens added, exactly like ``tokenizer.encode(text, add_special_tokens=False)``;
added tokens that appear *in the text* are matched exactly as the HF path matches them; every document whole,
whatever truncation / padding ``tokenizer.json`` enables, see
:func:`~hfprep.tokenization.loading.encoding_tokenizer`); the strategies in
:mod:`hfprep.tokenization.stage` own everything else. Output is the Arrow-style pair
``(values: uint32[total], offsets: int64[n + 1])`` so nothing downstream builds per-row Python lists.

Backends:

* ``hf``: the Rust ``tokenizers`` library (``encode_batch_fast``). The reference.
* ``gigatoken``: the optional ``gigatoken`` package (``pip install 'hfprep[fast]'``), 15-30x faster on byte-level BPE.
  A normalizer it does not implement (e.g. NFKC) is applied before it with the tokenizer's own normalizer.
* ``auto``: ``gigatoken`` when it is installed, supports the tokenizer and passes the exactness guard; else ``hf``
  with a one-line warning saying why.

:func:`resolve_backend` runs the exactness guard (a deterministic sample of the input plus a built-in stress set,
both encoded by ``hf`` and by the fast backend, ids compared) and returns the backend with a JSON-able report.

Example:
    >>> backend, report = resolve_backend(tokenizer, "auto", ["some input text"])  # doctest: +SKIP
    >>> report["backend"], report["guard"]["mismatches"]  # doctest: +SKIP
    ('gigatoken', 0)
    >>> values, offsets = backend.encode_batch(["a b", "c"])  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from array import array
from collections.abc import Iterator, Sequence
from itertools import chain
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
from jaxtyping import Int64, UInt32

from ..errors import ConfigError, TokenizerError, warn_once
from .loading import backend_tokenizer, encoding_tokenizer, tokenizer_json

BACKENDS: tuple[str, ...] = ("auto", "hf", "gigatoken")
"""Names accepted by the ``backend`` setting."""

# Normalizers that leave every ASCII string unchanged: ASCII-only texts skip the Python-side normalizer call.
_ASCII_STABLE_NORMALIZERS = frozenset({"NFC", "NFD", "NFKC", "NFKD"})
# The guard compares at most this much sample text (the stress set, ~300k characters, comes on top): HF encodes
# it in ~0.1-0.2 s, small next to a run that is worth a fast backend.
GUARD_MAX_SAMPLE_CHARS = 500_000
GUARD_MAX_TEXT_CHARS = 2_000  # per sampled text: more texts, each a realistic prefix
# Look-alikes are generated for at most this many added tokens (some tokenizers carry thousands).
GUARD_MAX_ADDED_TOKENS = 64
FAST_BACKEND_MIN_BYTES = 4 * 2**20
"""``auto`` keeps ``hf`` for smaller inputs: building gigatoken for a 128k vocabulary and running the guard take ~1 s,
about what ``hf`` spends on 4 MiB of text on 2 cores."""


class BackendUnavailableError(ConfigError):
    """The requested backend's package is not installed."""


class BackendUnsupportedError(TokenizerError):
    """The fast backend cannot encode this tokenizer exactly (unsupported feature or a guard mismatch)."""


class TokenizerBackend(Protocol):
    """What a strategy needs from a tokenizer backend."""

    name: str

    def encode_batch(self, texts: Sequence[str]) -> tuple[UInt32[np.ndarray, " total"], Int64[np.ndarray, " n_plus_1"]]:
        """Encode ``texts`` without adding special tokens; return flat ids and offsets."""
        ...


def _empty() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(0, dtype=np.uint32), np.zeros(1, dtype=np.int64)


def lists_to_flat(lists: Sequence[Sequence[int]]) -> tuple[UInt32[np.ndarray, " total"], Int64[np.ndarray, " n_plus_1"]]:
    """Flatten a list of id lists into ``(values, offsets)`` with one C-level pass.

    Example:
        >>> values, offsets = lists_to_flat([[1, 2], [], [3]])
        >>> values.tolist(), offsets.tolist()
        ([1, 2, 3], [0, 2, 2, 3])
    """
    lengths = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
    offsets = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = np.fromiter(chain.from_iterable(lists), dtype=np.uint32, count=int(offsets[-1]))
    return values, offsets


def _ids_to_flat(per_doc: Sequence[array]) -> tuple[UInt32[np.ndarray, " total"], Int64[np.ndarray, " n_plus_1"]]:
    """``array('I')`` id rows -> ``(values, offsets)`` with one byte join (writable, like every backend's output).

    Example:
        >>> values, offsets = _ids_to_flat([array("I", [1, 2]), array("I"), array("I", [3])])
        >>> values.tolist(), offsets.tolist()
        ([1, 2, 3], [0, 2, 2, 3])
    """
    lengths = np.fromiter(map(len, per_doc), dtype=np.int64, count=len(per_doc))
    offsets = np.zeros(len(per_doc) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if not offsets[-1]:
        return np.zeros(0, dtype=np.uint32), offsets
    return np.frombuffer(bytearray().join(per_doc), dtype=np.uint32), offsets


def _as_list(texts: Sequence[str] | pa.Array) -> list[str]:
    if isinstance(texts, pa.Array):
        return texts.to_pylist()
    return texts if isinstance(texts, list) else list(texts)


def _arrow_to_awkward(texts: pa.Array) -> Any:
    """An Arrow string array as the awkward array of strings gigatoken reads without copying the text (it needs
    64-bit offsets: only the offsets are converted)."""
    import awkward as ak  # comes with gigatoken, the only consumer

    if texts.null_count:
        raise ValueError("null texts cannot be encoded")
    buffers = texts.buffers()
    width = np.int64 if pa.types.is_large_string(texts.type) else np.int32
    offsets = np.frombuffer(buffers[1], dtype=width)[texts.offset : texts.offset + len(texts) + 1].astype(np.int64)
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.zeros(0, np.uint8)
    chars = ak.contents.NumpyArray(data, parameters={"__array__": "char"})
    layout = ak.contents.ListOffsetArray(ak.index.Index64(offsets), chars, parameters={"__array__": "string"})
    return ak.Array(layout)


def gather_rows(
    source: UInt32[np.ndarray, " src"], starts: Int64[np.ndarray, " n"], lengths: Int64[np.ndarray, " n"]
) -> tuple[UInt32[np.ndarray, " total"], Int64[np.ndarray, " n_plus_1"]]:
    """Rows ``source[starts[i] : starts[i] + lengths[i]]`` laid end to end, with one gather (no per-row loop).

    Example:
        >>> v, o = gather_rows(np.arange(10, dtype=np.uint32), np.array([5, 0]), np.array([2, 3]))
        >>> v.tolist(), o.tolist()
        ([5, 6, 0, 1, 2], [0, 2, 5])
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    index = np.arange(int(offsets[-1]), dtype=np.int64) + np.repeat(np.asarray(starts, np.int64) - offsets[:-1], lengths)
    return source[index], offsets


class HFBackend:
    """The Rust ``tokenizers`` library through ``encode_batch_fast`` (no offsets or strings built).

    Example:
        >>> backend = HFBackend(tokenizer)  # doctest: +SKIP
        >>> values, offsets = backend.encode_batch(["a b", "c"])  # doctest: +SKIP
    """

    name = "hf"

    def __init__(self, tokenizer) -> None:
        self._tok = encoding_tokenizer(tokenizer)

    def encode_batch(self, texts: Sequence[str] | pa.Array) -> tuple[np.ndarray, np.ndarray]:
        if not len(texts):
            return _empty()
        texts = _as_list(texts)
        encodings = self._tok.encode_batch_fast(texts, add_special_tokens=False)
        # array('I') straight from each Encoding's id list: half the time of keeping the lists and flattening them
        # with np.fromiter (this runs on one core after HF's threads are done).
        return _ids_to_flat([array("I", e.ids) for e in encodings])


@contextlib.contextmanager
def keep_tokenizers_parallelism() -> Iterator[None]:
    """Undo what ``Dataset.map(num_proc=N)`` leaves behind in this process's C environment.

    datasets sets ``TOKENIZERS_PARALLELISM=false`` before forking its workers (right for them) and then restores
    ``os.environ`` by swapping in a copy, which never calls ``unsetenv``: the Rust ``tokenizers`` library keeps
    reading ``false`` and encodes on one thread (2-3x slower on 2 cores) for the rest of the process.

    Example:
        >>> with keep_tokenizers_parallelism():
        ...     pass  # ds.map(..., num_proc=2)
    """
    name = "TOKENIZERS_PARALLELISM"
    before = os.environ.get(name)
    try:
        yield
    finally:
        if before is None:
            os.unsetenv(name)
            os.environ.pop(name, None)
        else:
            os.environ[name] = before  # putenv, whichever mapping object os.environ is now


def tokenizers_threads_allowed() -> bool:
    """Whether HF tokenizers may use its thread pool in this process, after undoing a ``TOKENIZERS_PARALLELISM``
    that an earlier ``Dataset.map(num_proc=N)`` left in the C environment (see :func:`keep_tokenizers_parallelism`).

    What the process itself set (``os.environ``) wins: ``false`` there keeps HF on one thread.

    Example:
        >>> isinstance(tokenizers_threads_allowed(), bool)
        True
    """
    name = "TOKENIZERS_PARALLELISM"
    value = os.environ.get(name)
    if value is None:
        os.unsetenv(name)
    else:
        os.environ[name] = value
    return (value or "true").strip().lower() not in ("false", "0", "off", "no")


def _import_gigatoken():
    try:
        # Imported when the fast backend is first chosen: it has no wheel on some platforms (then `auto` uses hf).
        import gigatoken
    except ImportError as e:
        raise BackendUnavailableError(
            "the 'gigatoken' package is not installed; pip install 'hfprep[fast]' (or gigatoken) to use it"
        ) from e
    return gigatoken


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _normalizer_types(spec: dict | None) -> list[str]:
    if spec is None:
        return []
    if spec.get("type") == "Sequence":
        return [t for sub in spec.get("normalizers", []) for t in _normalizer_types(sub)]
    return [str(spec.get("type"))]


def _static_check(hf) -> None:
    """Reject tokenizer features the fast backend is known to mishandle, before any encoding (read off the Rust
    tokenizer: parsing its 10 MB of JSON again would cost more than the check; truncation and padding never reach
    it: the backends encode with :func:`~hfprep.tokenization.loading.encoding_tokenizer`)."""
    single = sorted(t.content for t in hf.get_added_tokens_decoder().values() if t.single_word)
    if single:
        raise BackendUnsupportedError(
            f"added token {single[0]!r} has single_word=True, which gigatoken does not implement"
        )


def _awkward_to_flat(arr: Any) -> tuple[np.ndarray, np.ndarray]:
    """The flat ids + offsets of gigatoken's awkward ``var * uint32`` result (zero-copy in the usual layout)."""
    layout = arr.layout
    offsets = getattr(layout, "offsets", None)
    content = getattr(layout, "content", None)
    if offsets is not None and content is not None and hasattr(content, "data"):
        offsets = np.asarray(offsets.data, dtype=np.int64)
        values = np.asarray(content.data)
        if len(offsets) and (offsets[0] != 0 or len(values) != offsets[-1]):
            values = values[offsets[0] : offsets[-1]]
            offsets = offsets - offsets[0]
    else:  # any other layout awkward may hand back: go through its public API
        import awkward as ak  # comes with gigatoken, the only producer of these arrays

        lengths = ak.to_numpy(ak.num(arr, axis=1)).astype(np.int64)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        values = ak.to_numpy(ak.flatten(arr, axis=1))
    return np.ascontiguousarray(values, dtype=np.uint32), offsets


_BUILT: dict[int, tuple[Any, Any]] = {}  # id(HF Rust tokenizer) -> (it, the GigatokenBackend built for it)
_BY_FINGERPRINT: dict[str, Any] = {}  # tokenizer.json sha256 -> gigatoken tokenizer built in this process


def gigatoken_backend(tokenizer, parallel: bool | None = None) -> GigatokenBackend:
    """A :class:`GigatokenBackend` for ``tokenizer``, built once per process and tokenizer (serialising the
    tokenizer and loading a 128k vocabulary into gigatoken takes ~1 s); worker processes forked afterwards
    inherit it instead of building their own.

    Example:
        >>> gigatoken_backend(tokenizer)._tokenizer() is gigatoken_backend(tokenizer)._tokenizer()  # doctest: +SKIP
        True
    """
    _import_gigatoken()  # raises BackendUnavailableError where the package is missing
    hf = backend_tokenizer(tokenizer)
    hit = _BUILT.get(id(hf))
    if hit is None or hit[0] is not hf:
        if len(_BUILT) >= 4:  # a process rarely holds more than a couple of tokenizers: drop the oldest
            _BUILT.pop(next(iter(_BUILT)))
        hit = _BUILT[id(hf)] = (hf, GigatokenBackend(tokenizer))
    backend = GigatokenBackend.__new__(GigatokenBackend)
    backend.__dict__.update(hit[1].__dict__)  # not copy.copy: pickling state drops the built tokenizer
    backend.parallel = parallel
    return backend


class GigatokenBackend:
    """The ``gigatoken`` package behind the same contract as :class:`HFBackend` (same ids, uint32 + offsets).

    The tokenizer is loaded from its own ``tokenizer.json`` (never from the Hub). When gigatoken rejects the
    tokenizer's normalizer (e.g. NFKC), the normalizer is dropped from gigatoken's copy and applied before
    encoding with the tokenizer's *own* normalizer object, so the normalized text is byte-for-byte what HF
    feeds its pre-tokenizer. That is exact only where HF normalizes the whole text as one piece, i.e. when
    neither the raw nor the normalized text contains an added token's content; the (rare) other rows are
    encoded by HF itself, inside the same call. :func:`resolve_backend` proves the rest with the guard.

    Picklable: the Rust object is rebuilt lazily in each ``Dataset.map(num_proc=N)`` worker, where gigatoken
    encodes on the calling thread (one process per core instead of oversubscribed thread pools).

    Example:
        >>> backend = GigatokenBackend(tokenizer)  # doctest: +SKIP
        >>> values, offsets = backend.encode_batch(["a b", "c"])  # doctest: +SKIP
    """

    name = "gigatoken"

    def __init__(self, tokenizer, parallel: bool | None = None) -> None:
        self._hf = encoding_tokenizer(tokenizer)
        self.parallel = parallel
        _static_check(self._hf)
        text = tokenizer_json(tokenizer)
        self.fingerprint = hashlib.sha256(text.encode()).hexdigest()
        gigatoken = _import_gigatoken()
        self.normalizer_in_python: str | None = None
        self._added_re: re.Pattern[str] | None = None
        self._ascii_stable = False
        try:
            self._gt = gigatoken.Tokenizer.from_json(text)
        except Exception as e:  # gigatoken reports unsupported configurations as RuntimeError/ValueError
            config = json.loads(text)
            if config.get("normalizer") is None or "normalizer" not in str(e).lower():
                raise BackendUnsupportedError(f"gigatoken cannot load this tokenizer: {_first_line(e)}") from e
            kinds = _normalizer_types(config["normalizer"])
            config["normalizer"] = None
            text = json.dumps(config, ensure_ascii=False)
            try:
                self._gt = gigatoken.Tokenizer.from_json(text)
            except Exception as e2:
                raise BackendUnsupportedError(f"gigatoken cannot load this tokenizer: {_first_line(e2)}") from e2
            self.normalizer_in_python = "+".join(kinds)
            self._ascii_stable = bool(kinds) and set(kinds) <= _ASCII_STABLE_NORMALIZERS
            added = sorted({t["content"] for t in config.get("added_tokens") or [] if t["content"]}, key=len, reverse=True)
            self._added_re = re.compile("|".join(map(re.escape, added))) if added else None
        self._json = text
        _BY_FINGERPRINT.setdefault(self.fingerprint, self._gt)

    # The Rust tokenizer is not picklable: ship the tokenizer.json text and rebuild it on first use. The HF
    # tokenizer is only needed for the Python-side normalizer; unpickling it costs ~0.5 s for a 65k vocab.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_gt"] = None
        if self.normalizer_in_python is None:
            state["_hf"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def _tokenizer(self):
        if self._gt is None:
            built = _BY_FINGERPRINT.get(self.fingerprint)  # inherited from the parent process (fork)
            self._gt = built if built is not None else _import_gigatoken().Tokenizer.from_json(self._json)
        _BY_FINGERPRINT.setdefault(self.fingerprint, self._gt)
        return self._gt

    def _prenormalize(self, texts: list[str]) -> tuple[list[str], list[int]]:
        """Apply the tokenizer's normalizer where that is exact; return the texts and the rows HF must encode."""
        normalize = self._hf.normalizer.normalize_str
        added = self._added_re
        out = texts
        via_hf: list[int] = []
        for i, t in enumerate(texts):
            # ASCII text under a Unicode normal form: every piece between added tokens is unchanged, so
            # gigatoken's own added-token matching on the raw text is what HF does.
            if self._ascii_stable and t.isascii():
                continue
            if added is not None and added.search(t) is not None:
                via_hf.append(i)
                continue
            n = normalize(t)
            if n is t or n == t:
                continue
            if added is not None and added.search(n) is not None:
                via_hf.append(i)
                continue
            if out is texts:
                out = list(texts)
            out[i] = n
        return out, via_hf

    def encode_batch(self, texts: Sequence[str] | pa.Array) -> tuple[np.ndarray, np.ndarray]:
        if not len(texts):
            return _empty()
        if isinstance(texts, pa.Array) and self.normalizer_in_python is None:
            # Arrow strings go to gigatoken as they are: no Python string per document.
            return _awkward_to_flat(self._tokenizer().encode_batch(_arrow_to_awkward(texts), parallel=self.parallel))
        original = _as_list(texts)
        texts, via_hf = original, []
        if self.normalizer_in_python is not None:
            texts, via_hf = self._prenormalize(original)
            if via_hf:
                texts = list(texts)
                for i in via_hf:
                    texts[i] = ""  # encoded by HF below; an empty string costs gigatoken nothing
        values, offsets = _awkward_to_flat(self._tokenizer().encode_batch(texts, parallel=self.parallel))
        if not via_hf:
            return values, offsets
        # Splice the HF-encoded rows in with one gather over [gigatoken ids | HF ids].
        hf_values, hf_offsets = HFBackend(self._hf).encode_batch([original[i] for i in via_hf])
        starts = offsets[:-1].copy()
        lengths = np.diff(offsets)
        rows = np.asarray(via_hf, dtype=np.int64)
        starts[rows] = hf_offsets[:-1] + len(values)
        lengths[rows] = np.diff(hf_offsets)
        return gather_rows(np.concatenate([values, hf_values]), starts, lengths)


# ----------------------------------------------------------------------------------------------- exactness guard


def _fullwidth(s: str) -> str:
    """ASCII -> the fullwidth forms NFKC folds back to ASCII (the classic special-token look-alike)."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in s)


def _random_unicode(rng: np.random.Generator, n: int) -> str:
    # Blocks that stress byte-level BPE and normalizers: ASCII, Latin-1 + combining marks, Greek/Cyrillic,
    # CJK + fullwidth, Hangul syllables + jamo, emoji, ligatures, whitespace/format characters.
    blocks = [
        (0x20, 0x7E), (0xA0, 0x17F), (0x300, 0x36F), (0x370, 0x45F), (0x3000, 0x30FF), (0x4E00, 0x4FFF),
        (0xFF01, 0xFF5E), (0xAC00, 0xACFF), (0x1100, 0x1175), (0x1F300, 0x1F64F), (0xFB00, 0xFB06),
        (0x2000, 0x206F), (0x2100, 0x218F),
    ]
    which = rng.integers(0, len(blocks), n)
    lo = np.array([b[0] for b in blocks])[which]
    hi = np.array([b[1] for b in blocks])[which]
    return "".join(map(chr, (lo + rng.integers(0, 1 << 30, n) % (hi - lo + 1)).tolist()))


def stress_texts(tokenizer) -> list[str]:
    """The guard's built-in stress set: unicode normalisation cases, whitespace runs, special-token look-alikes,
    emoji, long lines and empty strings. Deterministic for a given tokenizer.

    Example:
        >>> texts = stress_texts(tokenizer)  # doctest: +SKIP
        >>> "" in texts  # doctest: +SKIP
        True
    """
    texts = [
        "", " ", "  ", "\n", "\t", "\r\n", "a", "é", "e\u0301", "ﬁ ﬂ ﬃ", "ＡＢＣ １２３", "① ½ x² ℌ ǅ", "Å \u212b \u2126",
        "ｶﾀｶﾅ ﾟ", "가 \u1100\u1161 \u1100\u1161\u11a8", "Straße İstanbul ΣΑΣ σας", "Привет, мир", "مرحبا بالعالم",
        "שלום", "你好，世界。", "日本語のテキスト", "हिन्दी", "\u00a0\u2009\u202f\u3000", "\u200b\u200c\u200d\ufeff",
        "\u2028\u2029\x0b\x0c\x85", "\x00 \x01 \x7f \x1b[31mred\x1b[0m", "🙂", "👨\u200d👩\u200d👧\u200d👦", "🇫🇷🇯🇵",
        "👍🏽 ❤️ ✔︎", "🙂" * 64, "def f(x):\n    return x ** 2\n", "if (a<b && c>d) { return; }",
        "    \n\n\n    \t\t  x  \n", "  trailing   ", "a \n\n\n b", "x" + " " * 200 + "y",
        "0123456789" * 300, "a" * 20_000, "ab " * 7_000, "=" * 20_000, "word, " * 20_000, "é" * 5_000 + "\n" + "e\u0301" * 5_000,
        "\n".join(f"line {i}: {'x' * (i % 97)}" for i in range(3_000)),
    ]
    texts += [" " * k + "x" + "\t" * (k % 5) + "\n" * (k % 3) for k in (1, 2, 3, 4, 7, 8, 15, 16, 17, 31, 64, 100)]
    rng = np.random.default_rng(0)
    texts += [_random_unicode(rng, int(n)) for n in rng.integers(1, 400, 48)]
    hf = backend_tokenizer(tokenizer)
    added = sorted(hf.get_added_tokens_decoder().items())[:GUARD_MAX_ADDED_TOKENS]
    for _, token in added:
        t = token.content
        if not t:
            continue
        texts += [
            t, f" {t} ", f"x{t}y", f"x {t}\ny", t + t, f"{t}\n{t}", t[:-1], t[1:], t[:-1] + " " + t[-1:],
            t.upper(), t.lower(), _fullwidth(t), t + "\u0338", t + "\u0301", t[: len(t) // 2] + "\u200b" + t[len(t) // 2 :],
            f"<{t}>", f"{t}{t[:-1]}", f"text before {t}text after",
        ]
    return texts


def _cap_sample(sample_texts: Sequence[str]) -> list[str]:
    out: list[str] = []
    budget = GUARD_MAX_SAMPLE_CHARS
    for t in sample_texts:
        if budget <= 0:
            break
        if not isinstance(t, str):
            continue
        t = t[:GUARD_MAX_TEXT_CHARS]
        out.append(t)
        budget -= len(t)
    return out


def _describe_mismatch(texts: list[str], ref: tuple[np.ndarray, np.ndarray], got: tuple[np.ndarray, np.ndarray]) -> tuple[int, str]:
    (rv, ro), (gv, go) = ref, got
    bad = []
    for i in range(len(texts)):
        a, b = rv[ro[i] : ro[i + 1]], gv[go[i] : go[i + 1]]
        if len(a) != len(b) or not np.array_equal(a, b):
            bad.append(i)
    if not bad:
        return 0, ""
    i = bad[0]
    a, b = rv[ro[i] : ro[i + 1]], gv[go[i] : go[i + 1]]
    k = next((j for j in range(min(len(a), len(b))) if a[j] != b[j]), min(len(a), len(b)))
    return len(bad), (
        f"text {texts[i][:40]!r} encodes differently at token {k} "
        f"(hf {a[k : k + 4].tolist()} vs gigatoken {b[k : k + 4].tolist()})"
    )


def run_guard(
    reference: TokenizerBackend | tuple[np.ndarray, np.ndarray], fast: TokenizerBackend, texts: Sequence[str]
) -> tuple[int, str]:
    """Encode ``texts`` with both backends (``reference`` may be its encoding already); return ``(mismatching
    texts, description of the first one)``."""
    texts = list(texts)
    ref = reference if isinstance(reference, tuple) else reference.encode_batch(texts)
    got = fast.encode_batch(texts)
    if np.array_equal(ref[1], got[1]) and np.array_equal(ref[0], got[0]):
        return 0, ""
    return _describe_mismatch(texts, ref, got)


_STRESS_PASSED: dict[str, int] = {}  # tokenizer fingerprint -> size of the stress set it passed


class BackendFallbackWarning(UserWarning):
    """``backend: auto`` uses ``hf`` instead of the fast backend; the message (one line) says why."""


def resolve_backend(
    tokenizer, requested: str, sample_texts: Sequence[str] = (), input_bytes: int | None = None,
    timings: dict[str, float] | None = None,
) -> tuple[TokenizerBackend, dict[str, Any]]:
    """Pick the backend for a run and prove it exact on this input: ``(backend, report)``.

    ``requested`` is ``hf``, ``gigatoken`` or ``auto``. For a fast backend, the exactness guard encodes
    ``sample_texts`` (a deterministic sample of the run's input; capped at 500k characters) plus
    :func:`stress_texts` with both ``hf`` and the fast backend and requires identical ids. On an unsupported
    tokenizer feature, a missing package or any mismatch, ``auto`` falls back to ``hf`` with a one-line warning
    and ``gigatoken`` raises :class:`BackendUnsupportedError` / :class:`BackendUnavailableError`. With ``auto`` and
    ``input_bytes`` (the input's size, when the engine knows it) below :data:`FAST_BACKEND_MIN_BYTES`, ``hf`` is
    used without building the fast backend: building it and running the guard cost more than it saves there.
    ``timings``, when given, receives ``guard_seconds`` (kept out of the report, which must be deterministic).

    The report (JSON-able, deterministic) is what summaries and dataset cards record::

        {"requested": "auto", "backend": "gigatoken", "reason": None,
         "guard": {"samples_checked": 256, "stress_checked": 310, "mismatches": 0, "passed": True,
                   "first_mismatch": None},
         "normalizer_applied_before_encoding": "NFKC"}

    Example:
        >>> backend, report = resolve_backend(tokenizer, "auto", ["def f(): pass"])  # doctest: +SKIP
        >>> report["backend"] in ("gigatoken", "hf")  # doctest: +SKIP
        True
    """
    if requested not in BACKENDS:
        raise ConfigError(f"unknown tokenizer backend {requested!r}; choose one of {list(BACKENDS)}")
    hf = HFBackend(tokenizer)
    report: dict[str, Any] = {
        "requested": requested,
        "backend": "hf",
        "reason": None,
        "guard": None,
        "normalizer_applied_before_encoding": None,
    }
    if requested == "hf":
        report["reason"] = "requested"
        return hf, report
    if requested == "auto" and input_bytes is not None and input_bytes < FAST_BACKEND_MIN_BYTES:
        report["reason"] = (
            f"input of {input_bytes:,} bytes: hf is faster below {FAST_BACKEND_MIN_BYTES // 2**20} MiB "
            "(the fast backend's start-up)"
        )
        return hf, report

    def fall_back(reason: str, error: type[Exception], cause: Exception | None = None):
        report["reason"] = reason
        if requested == "gigatoken":
            raise error(f"tokenizer backend 'gigatoken' cannot be used: {reason}; use backend: auto or hf") from cause
        one_line = " ".join(reason.split())  # a guard mismatch quotes texts that may hold line breaks
        if len(one_line) > 300:
            one_line = one_line[:300] + "..."
        warn_once(f"tokenizer backend 'auto' falls back to 'hf': {one_line}", BackendFallbackWarning, stacklevel=3)
        return hf, report

    try:
        fast = gigatoken_backend(tokenizer)
    except BackendUnavailableError as e:
        return fall_back(str(e), BackendUnavailableError, e)
    except BackendUnsupportedError as e:
        return fall_back(str(e), BackendUnsupportedError, e)
    report["normalizer_applied_before_encoding"] = fast.normalizer_in_python
    sample = _cap_sample(sample_texts)
    stress = stress_texts(tokenizer)
    # The stress set is fixed per tokenizer: once it passed (e.g. when a transform was built), only the sample
    # of the input needs checking.
    texts = sample if _STRESS_PASSED.get(fast.fingerprint) == len(stress) else sample + stress
    started = time.perf_counter()
    reference = hf.encode_batch(texts)  # once: the slow side of the comparison
    mismatches, first = run_guard(reference, fast, texts)
    if not mismatches:
        # gigatoken encodes sequentially inside map workers and in parallel in the driver: check both agree.
        mismatches, first = run_guard(reference, gigatoken_backend(tokenizer, parallel=False), texts)
    if timings is not None:
        timings["guard_seconds"] = time.perf_counter() - started
    if not mismatches:
        _STRESS_PASSED[fast.fingerprint] = len(stress)
    report["guard"] = {
        "samples_checked": len(sample),
        "stress_checked": len(stress),
        "mismatches": mismatches,
        "passed": mismatches == 0,
        "first_mismatch": first or None,
    }
    if mismatches:
        return fall_back(
            f"exactness guard found {mismatches} of {len(texts)} texts encoded differently; first: {first}",
            BackendUnsupportedError,
        )
    report["backend"] = fast.name
    return fast, report


def get_backend(tokenizer, backend: str = "hf") -> TokenizerBackend:
    """Return the backend named ``backend`` for ``tokenizer``: ``hf``, or ``gigatoken`` / ``auto`` after the guard
    on the built-in stress set (use :func:`resolve_backend` to also check a sample of the input and get a report).

    Example:
        >>> get_backend(tokenizer, "hf").name  # doctest: +SKIP
        'hf'
    """
    if backend == "hf":
        return HFBackend(tokenizer)
    return resolve_backend(tokenizer, backend)[0]


def sample_texts(data, columns: Sequence[str], max_rows: int = 256) -> list[str]:
    """A deterministic sample of the strings in ``columns`` of ``data`` (evenly spaced rows), for the guard.

    ``data`` is a ``datasets.Dataset``, a ``pyarrow.Table`` or a batch (a dict of column lists): every engine
    samples its input the same way. String cells are taken as they are; list cells (chat conversations) contribute
    every turn's ``content``.

    Example:
        >>> from datasets import Dataset
        >>> sample_texts(Dataset.from_dict({"content": ["a", "b", "c"]}), ["content"], max_rows=2)
        ['a', 'c']
        >>> sample_texts({"content": ["a", "b", "c"], "n": [1, 2, 3]}, ["content"], max_rows=2)
        ['a', 'c']
    """
    names = list(data.keys()) if isinstance(data, dict) else list(data.column_names)
    columns = [c for c in columns if c in names]
    n = max((len(data[c]) for c in columns), default=0) if isinstance(data, dict) else len(data)
    if not n or not columns:
        return []
    rows = sample_rows(n, max_rows)
    if isinstance(data, dict):
        picked = {c: [data[c][i] for i in rows if i < len(data[c])] for c in columns}
    elif hasattr(data, "take") and not hasattr(data, "select_columns"):  # a pyarrow.Table
        picked = data.select(columns).take(rows).to_pydict()
    else:
        picked = data.select_columns(columns).select(rows).to_dict()
    out: list[str] = []
    for c in columns:
        for cell in picked[c]:
            if isinstance(cell, str):
                out.append(cell)
            elif isinstance(cell, list | tuple):
                out.extend(t["content"] for t in cell if isinstance(t, dict) and isinstance(t.get("content"), str))
    return out


def sample_rows(n: int, max_rows: int = 256) -> list[int]:
    """The rows :func:`sample_texts` reads out of ``n``: up to ``max_rows`` evenly spaced, first and last included.

    Example:
        >>> sample_rows(10, 4)
        [0, 3, 6, 9]
    """
    return np.unique(np.linspace(0, n - 1, min(n, max_rows)).round().astype(np.int64)).tolist() if n else []
