"""Loading tokenizers, looking up the special tokens a strategy needs, and training small local tokenizers.

Everything that touches the tokenizer's *identity* lives here (fingerprint, vocab size, special ids), so cards,
KD caches and validation all describe a tokenizer the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import transformers  # its classes are resolved on use: AutoTokenizer alone imports torch (seconds)
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ..errors import TokenizerError

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
    try:
        tok = transformers.AutoTokenizer.from_pretrained(name_or_path, revision=revision, **kwargs)
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
    return tok


def backend_tokenizer(tokenizer):
    """The Rust ``tokenizers.Tokenizer`` behind a transformers fast tokenizer (or the object itself)."""
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    inner = getattr(tokenizer, "backend_tokenizer", None)
    if inner is None:
        raise TokenizerError(f"{type(tokenizer).__name__} is not a fast tokenizer (no backend_tokenizer)")
    return inner


def single_token_id(tokenizer, token: str, purpose: str) -> int:
    """Id of ``token`` if the tokenizer encodes it as exactly one token, else a clear :class:`TokenizerError`.

    This is the seed's ``len(tokenizer.encode("<fim_prefix>")) == 1`` check, with an error that says what to do.
    """
    ids = tokenizer.encode(token, add_special_tokens=False)
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
    ids = tokenizer.encode(token, add_special_tokens=False)
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
"""Spellings of the end-of-document token used in pre-training, looked for when the configured eos is a chat
end-of-turn token."""


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
    plain = tokenizer.encode(probe, add_special_tokens=False)
    full = tokenizer.encode(probe)
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
    """sha256 of the serialized ``tokenizer.json``: two tokenizers with the same fingerprint encode identically."""
    return hashlib.sha256(backend_tokenizer(tokenizer).to_str().encode()).hexdigest()


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
