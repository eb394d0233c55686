"""Raw-document FIM on the pretrain strategy: round trip, statistics, seeding independent of order/num_proc."""

from __future__ import annotations

import hashlib
import math
import random

import numpy as np
import pydantic
import pytest
from datasets import Dataset

from hfprep.errors import TokenizerError
from hfprep.tokenization.loading import train_tiny_tokenizer
from hfprep.tokenization.stage import TokenizeConfig, make_tokenize_fn, tokenize_batch, tokenized_features

CODE_DOCS = [
    "def f(x):\n    return x * 2\n",
    "import numpy as np\nimport pandas as pd\n\nprint(np.arange(3))\n",
    "Unicode: café, naïve, 東京, emoji 🙂. The quick brown fox.",
    "for i in range(10):\n    print(i)\n# done\n",
    "x",
    "A sample text. Hello, World! A test string. How can I help you?",
]


def _ids(tokenizer, name: str) -> int:
    return tokenizer.convert_tokens_to_ids(name)


def _random_docs(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    alphabet = "abcdefgh ijk\nxyz(){}=+é東"
    return [f"{i}:" + "".join(rng.choice(alphabet) for _ in range(rng.randint(5, 60))) for i in range(n)]


def _parse_fim_row(ids: list[int], tokenizer) -> tuple[str, str, str, str] | None:
    """Independent parser: split a row at the FIM specials, decode the pieces. None for a plain row."""
    fp, fm, fs, eos = (_ids(tokenizer, t) for t in ("<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<|endoftext|>"))
    if ids[0] not in (fp, fs):
        return None
    assert ids[-1] == eos and ids.count(fm) == 1 and ids.count(fp) == 1 and ids.count(fs) == 1
    i_fp, i_fs, i_fm = ids.index(fp), ids.index(fs), ids.index(fm)
    dec = tokenizer.decode
    if ids[0] == fp:  # PSM: <fp> prefix <fs> suffix <fm> middle <eos>
        assert i_fp < i_fs < i_fm
        return "psm", dec(ids[i_fp + 1 : i_fs]), dec(ids[i_fm + 1 : -1]), dec(ids[i_fs + 1 : i_fm])
    assert i_fs < i_fp < i_fm  # SPM: <fs> suffix <fp> prefix <fm> middle <eos>
    return "spm", dec(ids[i_fp + 1 : i_fm]), dec(ids[i_fm + 1 : -1]), dec(ids[i_fs + 1 : i_fp])


def _reference_draw(text: str, seed: int) -> tuple[float, float, int, int]:
    """The documented draw, recomputed with plain Python integers."""
    digest = hashlib.sha256(b"hfprep-fim\0" + seed.to_bytes(8, "little", signed=True) + text.encode()).digest()
    u = [(int.from_bytes(digest[8 * k : 8 * k + 8], "big") >> 11) / 2**53 for k in range(4)]
    n = len(text)
    a, b = sorted(min(n, math.floor(x * (n + 1))) for x in u[2:])
    return u[0], u[1], a, b


def test_fim_rate_zero_is_plain_pretrain(tokenizer) -> None:
    plain = tokenize_batch({"content": CODE_DOCS}, tokenizer, TokenizeConfig(strategy="pretrain"))
    off = tokenize_batch({"content": CODE_DOCS}, tokenizer, TokenizeConfig(strategy="pretrain", fim_rate=0.0))
    np.testing.assert_array_equal(plain.input_ids, off.input_ids)
    np.testing.assert_array_equal(plain.doc_offsets, off.doc_offsets)


@pytest.mark.parametrize("spm_rate", [0.0, 1.0, 0.5])
def test_every_fim_row_decodes_back_to_the_document(tokenizer, spm_rate: float) -> None:
    docs = CODE_DOCS + _random_docs(40, 1)
    cfg = TokenizeConfig(strategy="pretrain", fim_rate=1.0, fim_spm_rate=spm_rate, fim_seed=5)
    flat = tokenize_batch({"content": docs}, tokenizer, cfg)
    assert flat.num_docs == len(docs)
    formats = set()
    for i, text in enumerate(docs):
        row = flat.row(i)
        ids = row["input_ids"].tolist()
        fmt, prefix, middle, suffix = _parse_fim_row(ids, tokenizer)
        formats.add(fmt)
        assert prefix + middle + suffix == text
        # Ids equal an independent assembly from tokenizer.encode of the pieces.
        enc = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
        fp, fm, fs, eos = (_ids(tokenizer, t) for t in ("<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<|endoftext|>"))
        if fmt == "psm":
            expected = [fp, *enc(prefix), fs, *enc(suffix), fm, *enc(middle), eos]
        else:
            expected = [fs, *enc(suffix), fp, *enc(prefix), fm, *enc(middle), eos]
        assert ids == expected
        assert row["position_ids"].tolist() == list(range(len(ids)))
        assert row["loss_mask"].all()
        # The cut points are the documented ones.
        _, u1, a, b = _reference_draw(text, 5)
        assert (prefix, middle, suffix) == (text[:a], text[a:b], text[b:])
        assert fmt == ("spm" if u1 < spm_rate else "psm")
    assert formats == ({"psm"} if spm_rate == 0 else {"spm"} if spm_rate == 1 else {"psm", "spm"})


def test_only_middle_not_masked_applies_to_raw_fim(tokenizer) -> None:
    cfg = TokenizeConfig(strategy="pretrain", fim_rate=0.5, fim_seed=2, only_middle_not_masked=True)
    docs = _random_docs(60, 3)
    flat = tokenize_batch({"content": docs}, tokenizer, cfg)
    fm = _ids(tokenizer, "<fim_middle>")
    seen_fim = seen_plain = False
    for i in range(flat.num_docs):
        ids, mask = flat.row(i)["input_ids"].tolist(), flat.row(i)["loss_mask"].tolist()
        if _parse_fim_row(ids, tokenizer) is None:
            seen_plain = True
            assert all(mask)
        else:
            seen_fim = True
            k = ids.index(fm)
            assert mask == [False] * (k + 1) + [True] * (len(ids) - k - 1)
    assert seen_fim and seen_plain


def test_decisions_follow_the_documented_formula_and_mix_fim_and_plain(tokenizer) -> None:
    docs = _random_docs(300, 4)
    cfg = TokenizeConfig(strategy="pretrain", fim_rate=0.4, fim_spm_rate=0.3, fim_seed=11)
    flat = tokenize_batch({"content": docs}, tokenizer, cfg)
    eos = _ids(tokenizer, "<|endoftext|>")
    for i, text in enumerate(docs):
        u0, u1, a, b = _reference_draw(text, 11)
        ids = flat.row(i)["input_ids"].tolist()
        parsed = _parse_fim_row(ids, tokenizer)
        if u0 < 0.4:
            assert parsed == ("spm" if u1 < 0.3 else "psm", text[:a], text[a:b], text[b:])
        else:
            assert ids == [*tokenizer.encode(text, add_special_tokens=False), eos]


def test_statistics_within_tolerance(tokenizer) -> None:
    n, rate, spm_rate = 3000, 0.3, 0.4
    docs = _random_docs(n, 5)
    flat = tokenize_batch(
        {"content": docs}, tokenizer, TokenizeConfig(strategy="pretrain", fim_rate=rate, fim_spm_rate=spm_rate)
    )
    parsed = [_parse_fim_row(flat.row(i)["input_ids"].tolist(), tokenizer) for i in range(n)]
    fim = [(p, d) for p, d in zip(parsed, docs) if p is not None]
    # Binomial counts: 5 standard deviations (a failure by chance has probability < 1e-6).
    assert abs(len(fim) / n - rate) < 5 * math.sqrt(rate * (1 - rate) / n)
    n_spm = sum(p[0] == "spm" for p, _ in fim)
    assert abs(n_spm / len(fim) - spm_rate) < 5 * math.sqrt(spm_rate * (1 - spm_rate) / len(fim))
    # Middle length: for two independent uniform cuts in 0..L, E|X - Y| = L (L + 2) / (3 (L + 1)).
    frac = np.array([len(p[2]) / len(d) for p, d in fim])
    expected = np.array([(len(d) + 2) / (3 * (len(d) + 1)) for _, d in fim])
    assert abs(frac.mean() - expected.mean()) < 5 * frac.std() / math.sqrt(len(frac))


def _rows_by_text(ds: Dataset, texts: list[str]) -> dict[str, list[int]]:
    return {t: r for t, r in zip(texts, ds["input_ids"])}


def test_independent_of_num_proc_batch_size_and_order(tokenizer) -> None:
    docs = _random_docs(120, 6)
    cfg = TokenizeConfig(strategy="pretrain", fim_rate=0.5, fim_seed=3)
    fn = make_tokenize_fn(tokenizer, cfg)
    kw = dict(batched=True, with_indices=True, remove_columns=["content"], features=tokenized_features())
    ds = Dataset.from_dict({"content": docs})
    one = ds.map(fn, batch_size=7, num_proc=1, **kw)
    two = ds.map(fn, batch_size=13, num_proc=2, **kw)
    shuffled_docs = docs[::-1][60:] + docs[::-1][:60]
    shuffled = Dataset.from_dict({"content": shuffled_docs}).map(fn, batch_size=1000, **kw)
    ref = _rows_by_text(one, docs)
    assert _rows_by_text(two, docs) == ref
    assert _rows_by_text(shuffled, shuffled_docs) == ref
    assert sum(_parse_fim_row(r, tokenizer) is not None for r in ref.values()) > 0


def test_seed_changes_the_draw(tokenizer) -> None:
    docs = _random_docs(200, 7)
    a = tokenize_batch({"content": docs}, tokenizer, TokenizeConfig(strategy="pretrain", fim_rate=0.5, fim_seed=0))
    b = tokenize_batch({"content": docs}, tokenizer, TokenizeConfig(strategy="pretrain", fim_rate=0.5, fim_seed=1))
    assert not np.array_equal(a.input_ids, b.input_ids)


def test_empty_documents_dropped_and_kept_indices(tokenizer) -> None:
    docs = ["abc def", "", "ghi = 1\n", "", "x y z"]
    cfg = TokenizeConfig(strategy="pretrain", fim_rate=0.5, fim_seed=9, on_empty="drop")
    flat = tokenize_batch({"content": docs}, tokenizer, cfg)
    assert flat.kept.tolist() == [0, 2, 4]
    for j, i in enumerate(flat.kept.tolist()):
        ids = flat.row(j)["input_ids"].tolist()
        parsed = _parse_fim_row(ids, tokenizer)
        text = parsed[1] + parsed[2] + parsed[3] if parsed else tokenizer.decode(ids[:-1])
        assert text == docs[i]


def test_config_validation_and_missing_specials(tmp_path) -> None:
    with pytest.raises(pydantic.ValidationError):
        TokenizeConfig(strategy="pretrain", fim_rate=1.5)
    with pytest.raises(pydantic.ValidationError):
        TokenizeConfig(strategy="pretrain", fim_spm_rate=-0.1)
    plain_tok = train_tiny_tokenizer(["hello world"] * 5, tmp_path, vocab_size=270, special_tokens=["<|endoftext|>"])
    with pytest.raises(TokenizerError, match="fim_prefix"):
        tokenize_batch({"content": ["hello"]}, plain_tok, TokenizeConfig(strategy="pretrain", fim_rate=0.1))
    # FIM off: the same tokenizer works for pretrain.
    assert tokenize_batch({"content": ["hello"]}, plain_tok, TokenizeConfig(strategy="pretrain")).num_docs == 1
