"""Tokenizer-family behaviour that needs no real model files: CodeLlama-style FIM tokens, the seed's SFT function
with a chat template present, and the batched map function without indices."""

from __future__ import annotations

import pytest
from datasets import Dataset

from hfprep.errors import TokenizerError
from hfprep.tokenization.loading import load_tokenizer, train_tiny_tokenizer
from hfprep.tokenization.stage import (
    TokenizeConfig,
    Tokenizer,
    make_tokenize_fn,
    sft_processing,
    tokenize_batch,
    tokenized_features,
)

CORPUS = ["def add(a, b):\n    return a + b\n", "print(add(1, 2))\n", "hello world, how are you?"] * 20
ROW = {"prefix": "def add(a, b):\n    ", "middle": "return a + b", "suffix": "\nprint(add(1, 2))\n"}


@pytest.fixture(scope="module")
def codellama_like(tmp_path_factory):
    path = tmp_path_factory.mktemp("codellama")
    specials = ["</s>", "▁<PRE>", "▁<MID>", "▁<SUF>", "▁<EOT>"]
    return train_tiny_tokenizer(CORPUS, path, vocab_size=300, special_tokens=specials, eos_token="</s>")


def _enc(tok, s):
    return tok.encode(s, add_special_tokens=False)


@pytest.mark.parametrize("fmt", ["psm", "spm"])
def test_codellama_fim_tokens_and_documented_order(codellama_like, fmt):
    tok = codellama_like
    pre, mid, suf, eot = (tok.convert_tokens_to_ids(t) for t in ("▁<PRE>", "▁<MID>", "▁<SUF>", "▁<EOT>"))
    n_before = len(tok)
    row = tokenize_batch({k: [v] for k, v in ROW.items()}, tok, TokenizeConfig(strategy="fim", fim_format=fmt)).row(0)
    p, m, s = _enc(tok, ROW["prefix"]), _enc(tok, ROW["middle"]), _enc(tok, ROW["suffix"])
    # CodeLlama (Rozière et al. 2023): PSM = <PRE> prefix <SUF> suffix <MID> middle <EOT>;
    # SPM = <PRE> <SUF> suffix <MID> prefix middle <EOT>.
    expected = [pre, *p, suf, *s, mid, *m, eot] if fmt == "psm" else [pre, suf, *s, mid, *p, *m, eot]
    assert row["input_ids"].tolist() == expected
    assert len(tok) == n_before
    only = TokenizeConfig(strategy="fim", fim_format=fmt, only_middle_not_masked=True)
    row = tokenize_batch({k: [v] for k, v in ROW.items()}, tok, only).row(0)
    assert row["loss_mask"].tolist() == [False] * (len(expected) - len(m) - 1) + [True] * (len(m) + 1)


def test_seed_fim_spelling_wins_and_tokens_are_never_added(tmp_path, tokenizer):
    # The session tokenizer has the seed's <fim_...> tokens: they stay the choice (seed asserts unchanged).
    specials = Tokenizer(tokenizer, TokenizeConfig(strategy="fim")).specials
    assert specials.fim_family == "StarCoder/seed"
    assert specials.fim_prefix == tokenizer.convert_tokens_to_ids("<fim_prefix>")
    plain = train_tiny_tokenizer(CORPUS, tmp_path, vocab_size=300, special_tokens=["<|endoftext|>"])
    with pytest.raises(TokenizerError, match="no FIM tokens") as e:
        Tokenizer(plain, TokenizeConfig(strategy="fim"))
    assert "add_special_tokens" not in str(e.value)


def test_sft_processing_keeps_seed_role_tokens_with_a_template(tokenizer_path):
    tok = load_tokenizer(tokenizer_path)
    conv = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello"}]
    before = sft_processing({"content": conv}, tok)
    tok.chat_template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
    after = sft_processing({"content": conv}, tok)
    expected = [*_enc(tok, "<user>"), *_enc(tok, "Hi!"), *_enc(tok, "</user>"),
                *_enc(tok, "<assistant>"), *_enc(tok, "Hello"), *_enc(tok, "</assistant>"), tok.eos_token_id]
    assert before["input_ids"].tolist() == after["input_ids"].tolist() == expected
    templated = sft_processing({"content": conv}, tok, chat_template="auto")
    assert templated["input_ids"].tolist() != expected  # asked for: the template


def test_make_tokenize_fn_works_without_indices(tokenizer):
    ds = Dataset.from_dict({"content": ["a b c", "hello world", "x"]})
    fn = make_tokenize_fn(tokenizer, TokenizeConfig(strategy="pretrain"))
    kw = dict(batched=True, remove_columns=["content"], features=tokenized_features())
    plain = ds.map(fn, **kw)
    indexed = ds.map(fn, with_indices=True, **kw)
    assert plain["input_ids"] == indexed["input_ids"]
    assert plain["input_ids"][1] == [*_enc(tokenizer, "hello world"), tokenizer.eos_token_id]
