"""Loading tokenizers, looking up the special tokens a strategy needs, and training small local tokenizers.

Everything that touches the tokenizer's *identity* lives here (fingerprint, vocab size, special ids, the token
that ends a document), so cards, KD caches and validation all describe a tokenizer the same way.

hfprep encodes every document whole: a ``tokenizer.json`` may enable ``truncation`` / ``padding`` (many Hub
tokenizers do), which the Rust ``encode_batch`` calls apply silently. Every encoding hfprep does goes through
:func:`encoding_tokenizer`, the tokenizer with both off; :func:`load_tokenizer` switches them off on the object it
returns, and a tokenizer passed in from Python is copied instead (never changed). Either way one warning per run
says what was ignored.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ..errors import TokenizerError, warn_once

DEFAULT_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<fim_prefix>",
    "<fim_middle>",
    "<fim_suffix>",
    "<user>",
    "</user>",
    "<assistant>",
    "</assistant>",
    "<system>",
    "</system>",
)
"""Special tokens of the tokenizers hfprep trains: eos, the FIM triple and the seed's chat role tokens."""


def looks_like_path(name: str, base: str | os.PathLike | None = None) -> bool:
    """True when ``name`` means a local folder, not a Hub id: it exists, starts with ``/``, ``.`` (``./``, ``../``) or
    ``~``, or its parent folder exists (``tokenizers/mine`` next to an existing ``tokenizers/``). Relative names are
    looked up under ``base`` (default: the current folder).

    Example:
        >>> looks_like_path("./tok"), looks_like_path("/no/such/dir"), looks_like_path("Qwen/Qwen3-0.6B")
        (True, True, False)
    """
    if name.startswith(("/", ".", "~")) or os.path.isabs(name):
        return True
    local = Path(base or ".") / name
    return local.exists() or (Path(name).parent != Path(".") and local.parent.is_dir())


def check_tokenizer_folder(name_or_path: str, key: str = "tokenizer") -> None:
    """Refuse, in one line naming ``key``, a tokenizer value that is a local path (see :func:`looks_like_path`) but
    not a folder: no Hub is asked about a path.

    Example:
        >>> check_tokenizer_folder("./no-such-tokenizer", "tokenizer.name_or_path")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        hfprep.errors.TokenizerError: tokenizer.name_or_path: folder './no-such-tokenizer' does not exist; ...
    """
    if os.path.isdir(name_or_path) or not looks_like_path(name_or_path):
        return
    what = "is a file, not a folder" if os.path.exists(name_or_path) else "does not exist"
    raise TokenizerError(
        f"{key}: folder {name_or_path!r} {what}; fix the path (relative paths start at the recipe's folder) to the "
        "folder holding tokenizer.json"
    )


def load_tokenizer(name_or_path: str, revision: str | None = None, *, key: str = "tokenizer", **kwargs: Any):
    """Load a *fast* tokenizer by Hub id or local path (``key``: what error messages call the value).

    Example:
        >>> tok = load_tokenizer("path/to/tokenizer")  # doctest: +SKIP
        >>> tok.eos_token_id  # doctest: +SKIP
        0
    """
    check_tokenizer_folder(name_or_path, key)
    import transformers  # here, not at the top: commands that load no tokenizer (repack, export) skip ~0.35 s

    try:
        cls = transformers.PreTrainedTokenizerFast if _generic_local_tokenizer(name_or_path) else transformers.AutoTokenizer
        tok = cls.from_pretrained(name_or_path, revision=revision, **kwargs)
    except (OSError, ValueError, ImportError) as e:  # 4.x: ImportError when it tries a slow->fast conversion
        local = os.path.isdir(name_or_path)
        fix = "check that the folder holds tokenizer.json" if local else (
            "check the id and revision, or pass a local folder with tokenizer.json"
        )
        raise TokenizerError(
            f"could not load {key} {name_or_path!r} ({'local folder' if local else 'Hub id'}): "
            f"{str(e).splitlines()[0]} -- {fix}"
        ) from e
    if not getattr(tok, "is_fast", False):
        raise TokenizerError(
            f"tokenizer {name_or_path!r} is a slow (Python) tokenizer; hfprep needs a fast one (tokenizer.json)"
        )
    # hfprep's own object: its encoding settings may be switched off in place (no copy, see encoding_tokenizer).
    _ignore_length_settings(tok.backend_tokenizer, name_or_path)
    return tok


GENERIC_TOKENIZER_CLASSES = frozenset({"PreTrainedTokenizerFast", "TokenizersBackend"})
"""``tokenizer_class`` values that name the plain ``tokenizer.json`` tokenizer, no model-specific class."""


def _generic_local_tokenizer(name_or_path: str) -> bool:
    """True for a local folder whose ``tokenizer.json`` is used as is (its config names a generic class): it is
    loaded with ``PreTrainedTokenizerFast`` directly, which gives what ``AutoTokenizer`` gives without importing
    torch through transformers' model registry (~1.5 s of a run's start-up)."""
    folder = Path(name_or_path)
    config = folder / "tokenizer_config.json"
    if not (folder / "tokenizer.json").is_file() or not config.is_file():
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class") in GENERIC_TOKENIZER_CLASSES
    except (OSError, ValueError):
        return False


def backend_tokenizer(tokenizer):
    """The Rust ``tokenizers.Tokenizer`` behind a transformers fast tokenizer (or the object itself)."""
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    inner = getattr(tokenizer, "backend_tokenizer", None)
    if inner is None:
        raise TokenizerError(f"{type(tokenizer).__name__} is not a fast tokenizer (no backend_tokenizer)")
    return inner


class LengthSettingsIgnoredWarning(UserWarning):
    """The tokenizer enables truncation or padding; hfprep encodes every document whole and ignores both."""


def length_settings(tokenizer) -> str | None:
    """The truncation / padding the tokenizer applies when encoding, in words, or ``None`` when it applies neither.

    Example:
        >>> tok = Tokenizer(models.WordLevel({"[PAD]": 0, "a": 1}, unk_token="[PAD]"))
        >>> tok.enable_truncation(16)
        >>> tok.enable_padding(length=64)
        >>> length_settings(tok)
        'truncation (max_length 16) and padding (Fixed 64)'
    """
    inner = backend_tokenizer(tokenizer)
    parts = []
    if inner.truncation is not None:
        parts.append(f"truncation (max_length {inner.truncation['max_length']})")
    if inner.padding is not None:
        pad = inner.padding
        how = f"Fixed {pad['length']}" if pad.get("length") is not None else "BatchLongest"
        if pad.get("pad_to_multiple_of"):
            how += f", multiple of {pad['pad_to_multiple_of']}"
        parts.append(f"padding ({how})")
    return " and ".join(parts) or None


def _ignore_length_settings(inner: Tokenizer, name: str) -> None:
    """Switch truncation and padding off on ``inner`` (an object hfprep may change) and say so, once per run."""
    what = length_settings(inner)
    if what is None:
        return
    inner.no_truncation()
    inner.no_padding()
    both = "both" if " and " in what else "it"
    warn_once(
        f"tokenizer {name!r}: tokenizer.json enables {what}; hfprep encodes every document whole and ignores {both}",
        LengthSettingsIgnoredWarning,
        stacklevel=3,
    )


_ENCODING_COPIES: weakref.WeakKeyDictionary[Tokenizer, Tokenizer] = weakref.WeakKeyDictionary()


def encoding_tokenizer(tokenizer) -> Tokenizer:
    """The Rust tokenizer every hfprep encoding goes through: ``tokenizer``'s own when it applies no truncation or
    padding (:func:`load_tokenizer`'s objects never do), else a copy with both off, made once per tokenizer object
    (~0.3 s for a 128k vocabulary) with a one-line :class:`LengthSettingsIgnoredWarning`. The caller's object is
    never changed.

    Example:
        >>> tok = Tokenizer(models.WordLevel({"[PAD]": 0, "a": 1}, unk_token="[PAD]"))
        >>> tok.pre_tokenizer = pre_tokenizers.Whitespace()
        >>> tok.enable_truncation(2)
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     enc = encoding_tokenizer(tok)
        >>> len(enc.encode("a a a").ids), len(tok.encode("a a a").ids)
        (3, 2)
    """
    inner = backend_tokenizer(tokenizer)
    if inner.truncation is None and inner.padding is None:
        return inner
    copy = _ENCODING_COPIES.get(inner)
    # A copy made before the caller added tokens to its tokenizer would encode them as text: make it again.
    if copy is None or copy.get_vocab_size(with_added_tokens=True) != inner.get_vocab_size(with_added_tokens=True):
        copy = Tokenizer.from_str(inner.to_str())
        _ignore_length_settings(copy, str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__))
        _ENCODING_COPIES[inner] = copy
    return copy


def single_token_id(tokenizer, token: str, purpose: str) -> int:
    """Id of ``token`` if the tokenizer encodes it as exactly one token, else a clear :class:`TokenizerError`.

    This is the seed's ``len(tokenizer.encode("<fim_prefix>")) == 1`` check, with an error that says what to do.
    """
    ids = encoding_tokenizer(tokenizer).encode(token, add_special_tokens=False).ids
    if len(ids) != 1:
        raise TokenizerError(
            f"tokenizer has no single-token {token!r} (it encodes to {len(ids)} tokens), needed for {purpose}; "
            f"use a tokenizer that has {token!r} as a special token"
        )
    return int(ids[0])


FIM_TOKEN_SETS: tuple[tuple[str, str, str, str, str | None], ...] = (
    # (family, prefix, middle, suffix, end of the middle or None = eos); the seed's spelling first.
    ("StarCoder/seed", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", None),
    ("Qwen", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", None),
    ("DeepSeek", "<｜fim▁begin｜>", "<｜fim▁end｜>", "<｜fim▁hole｜>", None),
    ("CodeLlama", "▁<PRE>", "▁<MID>", "▁<SUF>", "▁<EOT>"),
)
"""FIM token sets hfprep recognises in a vocabulary, in the order it looks for them (DeepSeek's ``fim▁begin`` /
``fim▁end`` / ``fim▁hole`` play the prefix / middle / suffix roles of its documented PSM prompt; CodeLlama ends
the middle with ``▁<EOT>``)."""


def _existing_token_id(tokenizer, token: str) -> int | None:
    """Id of ``token`` when it is one existing vocabulary entry (never added here), else ``None``."""
    tid = backend_tokenizer(tokenizer).token_to_id(token)
    if tid is not None:
        return int(tid)
    ids = encoding_tokenizer(tokenizer).encode(token, add_special_tokens=False).ids
    return int(ids[0]) if len(ids) == 1 else None


def fim_token_ids(tokenizer, override: dict[str, str] | None = None) -> dict[str, Any]:
    """The FIM tokens of this tokenizer: ``{"family", "prefix", "middle", "suffix", "end", "tokens"}`` (ids; ``end``
    is ``None`` when the middle ends with the eos).

    ``override`` (``tokenize.fim_tokens``: ``{prefix, middle, suffix}``) names them explicitly; otherwise the
    vocabulary is searched for the sets of :data:`FIM_TOKEN_SETS`, the seed's ``<fim_...>`` first. Every token
    must be a single existing token: hfprep never adds tokens (their embeddings would be untrained).

    Example:
        >>> fim_token_ids(qwen_tokenizer)["family"]  # doctest: +SKIP
        'Qwen'
    """
    if override:
        out: dict[str, Any] = {"family": "tokenize.fim_tokens", "end": None, "tokens": dict(override)}
        for role in ("prefix", "middle", "suffix"):
            tok = override[role]
            tid = _existing_token_id(tokenizer, tok)
            if tid is None:
                raise TokenizerError(
                    f"tokenize.fim_tokens.{role} {tok!r} is not a single token of this tokenizer; name a token "
                    "that exists in its vocabulary"
                )
            out[role] = tid
        return out
    for family, prefix, middle, suffix, end in FIM_TOKEN_SETS:
        ids = [_existing_token_id(tokenizer, t) for t in (prefix, middle, suffix)]
        if None in ids:
            continue
        end_id = _existing_token_id(tokenizer, end) if end else None
        return {
            "family": family, "prefix": ids[0], "middle": ids[1], "suffix": ids[2], "end": end_id,
            "tokens": {"prefix": prefix, "middle": middle, "suffix": suffix, **({"end": end} if end_id is not None else {})},
        }
    looked = "; ".join(f"{f}: {p} {s} {m}" for f, p, m, s, _ in FIM_TOKEN_SETS)
    raise TokenizerError(
        f"the tokenizer has no FIM tokens (looked for {looked}); use a tokenizer trained with FIM tokens or name "
        "its own with tokenize.fim_tokens: {prefix, middle, suffix}"
    )


END_OF_DOCUMENT_TOKENS: tuple[str, ...] = (
    "<|endoftext|>", "<|end_of_text|>", "<eos>", "</s>", "<｜end▁of▁sentence｜>",
)
"""Spellings of the end-of-document token used in pre-training, looked for when the tokenizer's eos is a chat
end-of-turn token."""

CHAT_END_OF_TURN_TOKENS: tuple[str, ...] = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|return|>")
"""Eos spellings that end chat turns even where the tokenizer files ship no chat template (gpt-oss: ``<|return|>``)."""


def tokenizer_chat_template(tokenizer) -> str | None:
    """The tokenizer's default chat template string, or ``None`` when it has none."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, Mapping):
        # Named templates (transformers' dict form): SFT uses the default one.
        template = template.get("default")
    return template or None


@dataclass(frozen=True)
class DocumentSeparator:
    """The token that ends every pretrain / FIM document, and why that one.

    ``why``: ``eos_token`` (set by ``tokenize.eos_token``), ``eos`` (the tokenizer's eos) or ``chat_eos`` (the
    tokenizer's eos, ``tokenizer_eos``, ends chat turns, so the end-of-document token is used instead).
    """

    token: str
    token_id: int
    why: Literal["eos_token", "eos", "chat_eos"]
    tokenizer_eos: str | None = None

    def describe(self, quote: Callable[[str], str] = repr) -> str:
        """One line for summaries and cards (``quote`` formats a token: ``repr``, or backticks for Markdown).

        Example:
            >>> DocumentSeparator("<|end_of_text|>", 128001, "chat_eos", "<|eot_id|>").describe()
            "documents end with '<|end_of_text|>' (id 128001): the tokenizer's eos '<|eot_id|>' ends chat turns"
        """
        head = f"documents end with {quote(self.token)} (id {self.token_id})"
        if self.why == "eos_token":
            return f"{head}: set by tokenize.eos_token"
        if self.why == "chat_eos":
            return f"{head}: the tokenizer's eos {quote(self.tokenizer_eos)} ends chat turns"
        return f"{head}: the tokenizer's eos"


def document_separator(tokenizer, token: str | None = None) -> DocumentSeparator:
    """The token that ends a pretrain / FIM document: ``token`` (``tokenize.eos_token``) when given; else the
    tokenizer's end-of-document token (one of :data:`END_OF_DOCUMENT_TOKENS` that the chat template does not use)
    when its eos is a chat end-of-turn token (it appears in the chat template, or it is one of
    :data:`CHAT_END_OF_TURN_TOKENS`): Llama 3.1 instruct's ``<|eot_id|>`` -> ``<|end_of_text|>``, Qwen3's
    ``<|im_end|>`` -> ``<|endoftext|>``, gpt-oss's ``<|return|>`` -> ``<|endoftext|>``; else the tokenizer's eos.

    Example:
        >>> document_separator(llama31_instruct).token  # doctest: +SKIP
        '<|end_of_text|>'
    """
    inner = backend_tokenizer(tokenizer)
    eos = eos_token_id(tokenizer, token)
    eos_str = inner.id_to_token(eos) or ""
    if token is not None:
        return DocumentSeparator(eos_str, eos, "eos_token")
    template = tokenizer_chat_template(tokenizer) or ""
    if eos_str and ((template and eos_str in template) or eos_str in CHAT_END_OF_TURN_TOKENS):
        for doc in END_OF_DOCUMENT_TOKENS:
            tid = inner.token_to_id(doc)
            if tid is not None and tid != eos and doc not in template:
                return DocumentSeparator(doc, int(tid), "chat_eos", eos_str)
    return DocumentSeparator(eos_str, eos, "eos")


def bos_prefix(tokenizer, mode: str = "auto") -> list[int]:
    """Ids to put before every document: ``auto`` = what ``tokenizer.encode(text)`` adds in front (the seed calls
    ``encode``: Llama 3.1 and Gemma 3 add their bos, Qwen3 nothing), ``always`` = the bos token, ``never`` = none.

    Example:
        >>> bos_prefix(tokenizer, "never")  # doctest: +SKIP
        []
    """
    if mode == "never":
        return []
    bos = getattr(tokenizer, "bos_token_id", None)
    if mode == "always":
        if bos is None:
            raise TokenizerError("tokenize.add_bos: always, but the tokenizer has no bos_token; use auto or never")
        return [int(bos)]
    probe = "hfprep probe"
    enc = encoding_tokenizer(tokenizer)  # transformers' encode() would switch the caller's truncation off
    plain = enc.encode(probe, add_special_tokens=False).ids
    full = enc.encode(probe).ids
    for k in range(len(full) - len(plain) + 1):
        if full[k : k + len(plain)] == plain:
            return [int(t) for t in full[:k]]
    return []


def eos_token_id(tokenizer, token: str | None = None) -> int:
    """The id of ``token`` (``tokenize.eos_token``) or of the tokenizer's eos; a clear error when there is none."""
    if token is not None:
        tid = _existing_token_id(tokenizer, token)
        if tid is None:
            raise TokenizerError(
                f"tokenize.eos_token {token!r} is not a single token of this tokenizer; name one from its vocabulary"
            )
        return tid
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise TokenizerError(
            "tokenizer has no eos_token; every strategy ends a document with eos -- use a tokenizer whose "
            "tokenizer_config.json sets eos_token, or add one with tokenizer.add_special_tokens({'eos_token': ...})"
        )
    return int(eos)


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the serialized ``tokenizer.json`` with truncation and padding off: two tokenizers with the same
    fingerprint encode identically in hfprep. The two settings are left out because hfprep ignores them (see
    :func:`encoding_tokenizer`): a tokenizer loaded with them on, or with them switched off by a transformers
    ``encode`` call, has the fingerprint of the one hfprep prepared the data with."""
    return hashlib.sha256(tokenizer_json(tokenizer).encode()).hexdigest()


def tokenizer_json(tokenizer) -> str:
    """:func:`encoding_tokenizer`'s ``tokenizer.json`` text (what the fast backend is built from and the fingerprint
    hashes). Inside :func:`serialize_once` each tokenizer is serialized once (~0.2 s for a 128k vocabulary)."""
    inner = encoding_tokenizer(tokenizer)
    if not _SERIALIZED:
        return inner.to_str()
    memo = _SERIALIZED[-1]
    hit = memo.get(id(inner))
    if hit is None or hit[0] is not inner:
        hit = memo[id(inner)] = (inner, inner.to_str())
    return hit[1]


@contextlib.contextmanager
def serialize_once() -> Iterator[None]:
    """A block (a run) that does not change its tokenizers once loaded: :func:`tokenizer_json` serializes each one
    once inside it. Outside, every call serializes again, so a tokenizer changed between calls is seen as it is.

    Example:
        >>> tok = Tokenizer(models.WordLevel({"[PAD]": 0, "a": 1}, unk_token="[PAD]"))
        >>> with serialize_once():
        ...     tokenizer_json(tok) is tokenizer_json(tok)
        True
        >>> tokenizer_json(tok) is tokenizer_json(tok)
        False
    """
    _SERIALIZED.append({})
    try:
        yield
    finally:
        _SERIALIZED.pop()


_SERIALIZED: list[dict[int, tuple[Tokenizer, str]]] = []


def vocab_size(tokenizer) -> int:
    """Number of ids the tokenizer can emit, added tokens included (``len(tokenizer)``)."""
    return len(tokenizer)


def train_tiny_tokenizer(
    texts: Iterable[str],
    output_dir: str | os.PathLike,
    vocab_size: int = 1024,
    special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
    eos_token: str = "<|endoftext|>",
    chat_template: str | None = None,
):
    """Train a byte-level BPE tokenizer on ``texts`` in seconds and save it as a transformers tokenizer folder.

    Used by the offline quickstart and the tests: the real loading code (``AutoTokenizer.from_pretrained``) runs
    on the saved folder. Special tokens get the first ids, in order (``<|endoftext|>`` = 0).

    Example:
        >>> import tempfile
        >>> tok = train_tiny_tokenizer(["hello world"] * 10, tempfile.mkdtemp(), vocab_size=300)
        >>> tok.decode(tok.encode("hello world"))
        'hello world'
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    import transformers  # on use, as in load_tokenizer

    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos_token)
    if chat_template is not None:
        fast.chat_template = chat_template
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    _portable_tokenizer_class(out)
    return load_tokenizer(str(out))


PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"
"""The class name written into a saved tokenizer's config: transformers 4.x and 5.x both load it (5.x writes
``TokenizersBackend``, which 4.x does not know)."""


def _portable_tokenizer_class(folder: Path) -> None:
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("tokenizer_class") != PORTABLE_TOKENIZER_CLASS:
        config["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
