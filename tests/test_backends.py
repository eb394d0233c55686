"""Tokenizer backends: gigatoken gives the HF ids, the guard proves it, fallbacks are explicit."""

from __future__ import annotations

import importlib.util
import os
import pickle
import sys
import warnings

import numpy as np
import pytest
from conftest import CORPUS

from hfprep.errors import ConfigError
from hfprep.pack.transform import PrepareForTrainingTransform, PrepareForTrainingTransformConfig
from hfprep.tokenization import backends
from hfprep.tokenization.backends import (
    BackendUnavailableError,
    BackendUnsupportedError,
    GigatokenBackend,
    HFBackend,
    gather_rows,
    get_backend,
    resolve_backend,
    run_guard,
    sample_texts,
    stress_texts,
)
from hfprep.tokenization.loading import DEFAULT_SPECIAL_TOKENS, load_tokenizer

TRICKY = [
    "",
    "plain ascii text",
    "x <|endoftext|> y<|endoftext|><|endoftext|>",
    "<|endoftext|>\u0338 and >\u0338",  # NFKC of the whole text would eat the special token's '>'
    "＜|endoftext|＞ fullwidth look-alike",  # NFKC folds it into the special token's text
    "<|endoftext| <fim_prefix <user>hi</user>",
    "ﬁ ＡＢＣ Å e\u0301 ① ½ ｶﾀｶﾅ \u1100\u1161",
    "   \t\n\n  \u3000\u00a0 ",
    "👨\u200d👩\u200d👧 🇫🇷 🙂🙂",
    "def f(x):\n    return x * 2\n" * 50,
]

# The fast backend is an optional extra: tests that need it skip without it; the fallback tests always run.
requires_gigatoken = pytest.mark.skipif(
    importlib.util.find_spec("gigatoken") is None, reason="gigatoken (optional extra) is not installed"
)


def reference_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Independent reference: transformers' own encode, one text at a time."""
    return [tokenizer.encode(t, add_special_tokens=False) for t in texts]


def as_lists(values: np.ndarray, offsets: np.ndarray) -> list[list[int]]:
    return [values[offsets[i] : offsets[i + 1]].tolist() for i in range(len(offsets) - 1)]


@pytest.fixture(scope="module")
def nfkc_tokenizer(tmp_path_factory):
    """A second tokenizer type: byte-level BPE with an NFKC normalizer (gigatoken cannot load the normalizer)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        special_tokens=list(DEFAULT_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 20 + ["ﬁ ＡＢＣ café Å"] * 10, trainer=trainer)
    path = tmp_path_factory.mktemp("nfkc_tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(str(path))
    return load_tokenizer(str(path))


# ----------------------------------------------------------------------------------------------- equivalence


@requires_gigatoken
def test_gigatoken_matches_hf_on_fixture_tokenizer(tokenizer):
    texts = TRICKY + CORPUS + stress_texts(tokenizer)
    backend = GigatokenBackend(tokenizer)
    assert backend.normalizer_in_python is None
    assert as_lists(*backend.encode_batch(texts)) == reference_ids(tokenizer, texts)


@requires_gigatoken
def test_gigatoken_matches_hf_with_nfkc_applied_before_encoding(nfkc_tokenizer):
    texts = TRICKY + CORPUS + stress_texts(nfkc_tokenizer)
    backend, report = resolve_backend(nfkc_tokenizer, "gigatoken", CORPUS)
    assert report["backend"] == "gigatoken"
    assert report["normalizer_applied_before_encoding"] == "NFKC"
    assert as_lists(*backend.encode_batch(texts)) == reference_ids(nfkc_tokenizer, texts)
    # The normalizer really changes these texts (so the Python-side normalization was exercised) ...
    assert nfkc_tokenizer.encode("ﬁ", add_special_tokens=False) == nfkc_tokenizer.encode("fi", add_special_tokens=False)
    # ... and the look-alikes really differ from the special token (so the exact path mattered).
    assert 0 not in nfkc_tokenizer.encode("＜|endoftext|＞", add_special_tokens=False)


@requires_gigatoken
def test_guard_catches_naive_whole_text_normalization(nfkc_tokenizer):
    """Normalizing the whole text before gigatoken (ignoring where added tokens split it) is not exact; the
    stress set must expose that, or the guard would prove nothing about the normalizer path."""
    naive = GigatokenBackend(nfkc_tokenizer)
    naive._added_re = None  # treat every text as free of added tokens
    mismatches, first = run_guard(HFBackend(nfkc_tokenizer), naive, stress_texts(nfkc_tokenizer))
    assert mismatches > 0 and "encodes differently" in first


@requires_gigatoken
def test_backend_handles_empty_batches_and_strings(tokenizer):
    backend = GigatokenBackend(tokenizer)
    values, offsets = backend.encode_batch([])
    assert values.dtype == np.uint32 and len(values) == 0 and offsets.tolist() == [0]
    values, offsets = backend.encode_batch(["", "", ""])
    assert len(values) == 0 and offsets.tolist() == [0, 0, 0, 0]


@requires_gigatoken
def test_gigatoken_backend_pickles_and_encodes_sequentially(nfkc_tokenizer):
    backend = GigatokenBackend(nfkc_tokenizer)
    clone = pickle.loads(pickle.dumps(backend))
    clone.parallel = False
    assert as_lists(*clone.encode_batch(TRICKY)) == reference_ids(nfkc_tokenizer, TRICKY)


def test_gather_rows_matches_python_slices():
    rng = np.random.default_rng(1)
    source = rng.integers(0, 1000, 200).astype(np.uint32)
    starts = rng.integers(0, 150, 30)
    lengths = rng.integers(0, 50, 30)
    values, offsets = gather_rows(source, starts, lengths)
    assert as_lists(values, offsets) == [source[s : s + n].tolist() for s, n in zip(starts, lengths)]


# ----------------------------------------------------------------------------------------------- resolve + fallback


@requires_gigatoken
def test_resolve_reports_guard_result(tokenizer):
    backend, report = resolve_backend(tokenizer, "auto", CORPUS)
    assert backend.name == "gigatoken"
    assert report["requested"] == "auto" and report["backend"] == "gigatoken" and report["reason"] is None
    guard = report["guard"]
    assert guard["samples_checked"] == len(CORPUS)
    assert guard["stress_checked"] == len(stress_texts(tokenizer)) > 100
    assert guard["mismatches"] == 0 and guard["passed"] is True


@requires_gigatoken
def test_stress_set_is_encoded_once_per_tokenizer(tokenizer, monkeypatch):
    monkeypatch.setattr(backends, "_STRESS_PASSED", {})
    seen: list[int] = []
    real = backends.run_guard
    monkeypatch.setattr(backends, "run_guard", lambda ref, fast, texts: seen.append(len(texts)) or real(ref, fast, texts))
    resolve_backend(tokenizer, "auto", [])
    _, report = resolve_backend(tokenizer, "auto", ["a", "b"])
    n_stress = len(stress_texts(tokenizer))
    assert seen == [n_stress, n_stress, 2, 2]  # parallel + sequential pass each time
    assert report["guard"]["stress_checked"] == n_stress


def test_resolve_hf_and_unknown_name(tokenizer):
    backend, report = resolve_backend(tokenizer, "hf", CORPUS)
    assert isinstance(backend, HFBackend) and report["backend"] == "hf" and report["guard"] is None
    with pytest.raises(ConfigError, match="unknown tokenizer backend 'fastest'"):
        resolve_backend(tokenizer, "fastest", [])
    assert get_backend(tokenizer, "hf").name == "hf"


@requires_gigatoken
def test_get_backend_gigatoken_runs_the_stress_guard(tokenizer):
    assert get_backend(tokenizer, "gigatoken").name == "gigatoken"


def test_missing_package_auto_falls_back_explicit_errors(tokenizer, monkeypatch):
    monkeypatch.setitem(sys.modules, "gigatoken", None)  # makes `import gigatoken` raise ImportError
    with pytest.warns(UserWarning, match="falls back to 'hf'.*not installed"):
        backend, report = resolve_backend(tokenizer, "auto", CORPUS)
    assert backend.name == "hf" and report["backend"] == "hf" and "not installed" in report["reason"]
    with pytest.raises(BackendUnavailableError, match="gigatoken.*not installed"):
        resolve_backend(tokenizer, "gigatoken", CORPUS)


@pytest.fixture(scope="module")
def wordpiece_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS * 5, trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[UNK]", "<|endoftext|>"], show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


@requires_gigatoken
def test_unsupported_tokenizer_auto_falls_back_explicit_errors(wordpiece_tokenizer):
    with pytest.warns(UserWarning, match="falls back to 'hf'.*WordPiece"):
        backend, report = resolve_backend(wordpiece_tokenizer, "auto", CORPUS)
    assert backend.name == "hf" and "WordPiece" in report["reason"]
    with pytest.raises(BackendUnsupportedError, match="'gigatoken' cannot be used.*WordPiece"):
        resolve_backend(wordpiece_tokenizer, "gigatoken", CORPUS)


@requires_gigatoken
def test_single_word_added_token_is_rejected_before_encoding(tokenizer_path):
    from tokenizers import AddedToken

    tok = load_tokenizer(tokenizer_path)
    tok.add_tokens([AddedToken("hello", single_word=True)])
    with pytest.raises(BackendUnsupportedError, match="single_word"):
        resolve_backend(tok, "gigatoken", ["hello there"])


@requires_gigatoken
def test_guard_mismatch_auto_falls_back_explicit_errors(tokenizer, monkeypatch):
    real = GigatokenBackend.encode_batch

    def off_by_one_on_emoji(self, texts):
        values, offsets = real(self, texts)
        for i, t in enumerate(texts):
            if "🙂" in t and offsets[i + 1] > offsets[i]:
                values = values.copy()
                values[offsets[i]] += 1
        return values, offsets

    monkeypatch.setattr(GigatokenBackend, "encode_batch", off_by_one_on_emoji)
    monkeypatch.setattr(backends, "_STRESS_PASSED", {})  # forget stress sets passed by the real backend
    with pytest.warns(UserWarning, match="exactness guard found"):
        backend, report = resolve_backend(tokenizer, "auto", ["no emoji here", "one 🙂 here"])
    expected_bad = sum("🙂" in t for t in ["no emoji here", "one 🙂 here", *stress_texts(tokenizer)])
    assert backend.name == "hf"
    assert report["guard"]["mismatches"] == expected_bad and report["guard"]["passed"] is False
    assert "one 🙂 here" in report["guard"]["first_mismatch"]
    with pytest.raises(BackendUnsupportedError, match="exactness guard found"):
        resolve_backend(tokenizer, "gigatoken", [])


def test_sample_texts_is_deterministic_and_reads_conversations():
    from datasets import Dataset

    ds = Dataset.from_dict({"content": [f"doc {i}" for i in range(1000)]})
    picked = sample_texts(ds, ["content"], max_rows=5)
    assert picked == ["doc 0", "doc 250", "doc 500", "doc 749", "doc 999"]
    chats = Dataset.from_dict({"content": [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]]})
    assert sample_texts(chats, ["content"]) == ["hi", "yo"]


# ----------------------------------------------------------------------------------------------- whole pipeline


def _rows(strategy: str) -> list[dict]:
    texts = CORPUS + TRICKY[1:] + [f"document {i}: " + CORPUS[i % len(CORPUS)] * (i % 4 + 1) for i in range(40)]
    if strategy == "pretrain":
        return [{"content": t} for t in texts]
    if strategy == "fim":
        return [{"prefix": t[: len(t) // 3], "middle": t[len(t) // 3 : len(t) // 2], "suffix": t[len(t) // 2 :]} for t in texts]
    return [
        {"content": [{"role": "user", "content": t}, {"role": "assistant", "content": t[::-1] or "ok"}]} for t in texts
    ]


def _parquet_bytes(ds, path) -> bytes:
    from hfprep.output.layout import write_parquet

    write_parquet(ds.data.table, path, ds.features)
    return path.read_bytes()


def _prepare(tok, backend: str, strategy: str, num_proc: int | None):
    from datasets import Dataset

    cfg = PrepareForTrainingTransformConfig(
        processing_strategy=strategy,
        packing_strategy="dense" if strategy == "pretrain" else "no_incomplete",
        tokenizer_name="unused-a-tokenizer-object-is-passed",
        seq_len=64,
        num_reduce_chunks=3,
        backend=backend,
    )
    transform = PrepareForTrainingTransform(cfg, tokenizer=tok)
    out = transform.run(Dataset.from_list(_rows(strategy)), num_proc=num_proc, batch_size=16)
    return out, transform.backend_report


@pytest.mark.parametrize("strategy", ["pretrain", "fim", "sft"])
@requires_gigatoken
def test_prepared_dataset_byte_identical_whichever_backend_and_num_proc(tokenizer, strategy, tmp_path):
    ref, ref_report = _prepare(tokenizer, "hf", strategy, None)
    fast, fast_report = _prepare(tokenizer, "gigatoken", strategy, 2)
    assert ref_report["backend"] == "hf" and fast_report["backend"] == "gigatoken"
    assert fast_report["guard"]["samples_checked"] > 0 and fast_report["guard"]["mismatches"] == 0
    assert len(ref) > 0
    assert fast.data.table.equals(ref.data.table)
    assert _parquet_bytes(fast, tmp_path / "a.parquet") == _parquet_bytes(ref, tmp_path / "b.parquet")


@requires_gigatoken
def test_prepared_dataset_identical_with_nfkc_tokenizer(nfkc_tokenizer, tmp_path):
    ref, _ = _prepare(nfkc_tokenizer, "hf", "pretrain", 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto must not fall back here
        fast, report = _prepare(nfkc_tokenizer, "auto", "pretrain", 1)
    assert report["backend"] == "gigatoken" and report["normalizer_applied_before_encoding"] == "NFKC"
    assert _parquet_bytes(fast, tmp_path / "a.parquet") == _parquet_bytes(ref, tmp_path / "b.parquet")
    # Independent check against transformers' encode: dense packing keeps every token except each of the 3
    # groups' incomplete tail (< seq_len tokens), so the output is a sub-multiset missing < 3 * 64 tokens.
    from collections import Counter

    expected = Counter(
        tid for r in _rows("pretrain") for tid in [*nfkc_tokenizer.encode(r["content"], add_special_tokens=False), 0]
    )
    got = Counter(np.concatenate([np.asarray(r, np.uint32) for r in fast["input_ids"]]).tolist())
    assert not got - expected
    assert 0 <= expected.total() - got.total() < 3 * 64


def test_prepare_with_auto_works_without_the_package(tokenizer, monkeypatch, tmp_path):
    ref, _ = _prepare(tokenizer, "hf", "pretrain", None)
    monkeypatch.setitem(sys.modules, "gigatoken", None)
    with pytest.warns(UserWarning, match="not installed"):
        out, report = _prepare(tokenizer, "auto", "pretrain", None)
    assert report["backend"] == "hf" and report["requested"] == "auto" and "not installed" in report["reason"]
    assert _parquet_bytes(out, tmp_path / "a.parquet") == _parquet_bytes(ref, tmp_path / "b.parquet")


# ----------------------------------------------------------------------------------------------- hot path


@pytest.mark.parametrize("seed", range(6))
def test_assemble_pieces_matches_python_concatenation(seed):
    """Both gather paths (pieces in source order -> masks, any order -> index) against plain slicing."""
    from hfprep.tokenization.pieces import assemble_pieces

    rng = np.random.default_rng(seed)
    n_src = 300
    source = rng.integers(0, 50_000, n_src + 4).astype(np.uint32)
    n_docs = int(rng.integers(1, 12))
    pieces_per_doc = rng.integers(1, 6, n_docs)
    p = int(pieces_per_doc.sum())
    if seed % 2:  # in-order, disjoint text spans with specials (at the end of source) in between
        cuts = np.sort(rng.choice(np.arange(1, n_src), p - 1, replace=False))
        starts = np.r_[0, cuts]
        lens = np.diff(np.r_[starts, n_src]) * (rng.random(p) < 0.9)
        special = rng.random(p) < 0.3
        starts = np.where(special, n_src + rng.integers(0, 4, p), starts)
        lens = np.where(special, 1, lens)
    else:  # arbitrary, overlapping, out of order
        starts = rng.integers(0, n_src, p)
        lens = rng.integers(0, 40, p)
        lens = np.minimum(lens, n_src + 4 - starts)
    loss = rng.random(p) < 0.5
    ids, pos, mask, offsets = assemble_pieces(source, starts, lens, loss, pieces_per_doc)
    ends = np.cumsum(pieces_per_doc)
    expect_ids, expect_pos, expect_mask, expect_off = [], [], [], [0]
    for d in range(n_docs):
        doc = []
        for j in range(ends[d] - pieces_per_doc[d], ends[d]):
            doc += source[starts[j] : starts[j] + lens[j]].tolist()
            expect_mask += [bool(loss[j])] * int(lens[j])
        expect_ids += doc
        expect_pos += list(range(len(doc)))
        expect_off.append(expect_off[-1] + len(doc))
    assert ids.tolist() == expect_ids and ids.dtype == np.uint32
    assert pos.tolist() == expect_pos and pos.dtype == np.uint32
    assert mask.tolist() == expect_mask and offsets.tolist() == expect_off


def _c_getenv(name: str) -> bytes | None:
    import ctypes

    libc = ctypes.CDLL(None)
    libc.getenv.restype = ctypes.c_char_p
    return libc.getenv(name.encode())


@pytest.mark.parametrize("before", ["true", None])
def test_keep_tokenizers_parallelism_restores_the_c_environment(before, monkeypatch):
    """What the Rust tokenizers library reads (libc's environment) is back to its value after a num_proc map."""
    from datasets import Dataset

    from hfprep.tokenization.backends import keep_tokenizers_parallelism

    if before is None:
        monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    else:
        monkeypatch.setenv("TOKENIZERS_PARALLELISM", before)
    with keep_tokenizers_parallelism():
        Dataset.from_dict({"x": list(range(4))}).map(lambda b: b, batched=True, num_proc=2)
    assert _c_getenv("TOKENIZERS_PARALLELISM") == (before.encode() if before else None)
    assert os.environ.get("TOKENIZERS_PARALLELISM") == before


def test_tokenizers_threads_allowed_undoes_what_a_num_proc_map_left_behind(monkeypatch):
    """A run that maps in-process with HF's threads first undoes the ``false`` a num_proc map left in libc's
    environment; a ``false`` the process set itself is kept and reported."""
    from datasets import Dataset

    from hfprep.tokenization.backends import tokenizers_threads_allowed

    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    Dataset.from_dict({"x": list(range(4))}).map(lambda b: b, batched=True, num_proc=2)
    assert _c_getenv("TOKENIZERS_PARALLELISM") == b"false"  # datasets' leftover (what the Rust library reads)
    assert tokenizers_threads_allowed() is True
    assert _c_getenv("TOKENIZERS_PARALLELISM") is None
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    assert tokenizers_threads_allowed() is False
    assert _c_getenv("TOKENIZERS_PARALLELISM") == b"false"


# ----------------------------------------------------------------------------------------------- hf encode path


def _mixed_length_texts() -> list[str]:
    """Lengths far from sorted (long after short, empties in between), special tokens inside some texts."""
    rng = np.random.default_rng(7)
    texts = [(CORPUS[i % len(CORPUS)] + " ") * int(k) for i, k in enumerate(rng.integers(0, 40, 60))]
    texts[5] = ""
    texts[17] = "x <|endoftext|> y " * 30
    texts[30] = TRICKY[-1] * 4
    return texts


def test_hf_backend_equals_per_text_encode_in_input_order(tokenizer):
    """Flat ids + offsets equal transformers' own encode of each text, in input order, as a writable uint32 array."""
    texts = _mixed_length_texts()
    values, offsets = HFBackend(tokenizer).encode_batch(texts)
    assert values.dtype == np.uint32 and values.flags.writeable and offsets.dtype == np.int64
    assert as_lists(values, offsets) == reference_ids(tokenizer, texts)
    assert as_lists(*HFBackend(tokenizer).encode_batch(("", ""))) == [[], []]  # a tuple, only empty texts


def test_hf_stage_rows_equal_plain_python_reference(tokenizer):
    """The batched stage (Dataset.map, several batches) on the hf backend: each row is encode(text) + [eos],
    positions 0..n-1, loss everywhere, computed here one document at a time."""
    from datasets import Dataset

    from hfprep.tokenization.stage import TokenizeConfig, make_tokenize_fn, tokenized_features

    texts = [t for t in _mixed_length_texts() if t]
    ds = Dataset.from_dict({"content": texts})
    out = ds.map(
        make_tokenize_fn(tokenizer, TokenizeConfig(strategy="pretrain"), HFBackend(tokenizer)),
        batched=True,
        batch_size=25,
        with_indices=True,
        remove_columns=ds.column_names,
        features=tokenized_features(),
    )
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    expected = [[*tokenizer.encode(t, add_special_tokens=False), eos] for t in texts]
    assert out["input_ids"] == expected
    assert out["position_ids"] == [list(range(len(e))) for e in expected]
    assert out["loss_mask"] == [[True] * len(e) for e in expected]
