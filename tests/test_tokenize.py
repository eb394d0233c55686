"""The seed notebook's tokenization asserts, ported to the tiny fixture tokenizer.

Expected ids are built here from ``tokenizer.encode`` of the pieces and the special-token ids looked up with
``convert_tokens_to_ids``, never from hfprep's output.
"""

from __future__ import annotations

import numpy as np
import pytest
from datasets import Dataset

from hfprep import (
    DataError,
    TokenizeConfig,
    TokenizerError,
    fim_processing,
    make_tokenize_fn,
    pretrain_processing,
    process_row,
    sft_processing,
    tokenize_batch,
    tokenized_features,
    train_tiny_tokenizer,
)
from hfprep.errors import ConfigError


def enc(tok, text):
    return tok.encode(text, add_special_tokens=False)


def sid(tok, token):
    i = tok.convert_tokens_to_ids(token)
    assert isinstance(i, int) and i != tok.unk_token_id
    return i


FIM_EXAMPLE = {"prefix": "import numpy as", "middle": "np", "suffix": "\nimport pandas as pd"}
SFT_EXAMPLE = {"content": [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "How can I help you?"}]}


def check_row(result, expected_ids, expected_mask):
    assert result["input_ids"].dtype == np.uint32
    assert result["position_ids"].dtype == np.uint32
    assert result["loss_mask"].dtype == np.bool_
    np.testing.assert_array_equal(result["input_ids"], np.array(expected_ids, dtype=np.uint32))
    np.testing.assert_array_equal(result["loss_mask"], np.array(expected_mask, dtype=np.bool_))
    np.testing.assert_array_equal(result["position_ids"], np.arange(len(expected_ids), dtype=np.uint32))


def test_pretrain_seed_assert(tokenizer):
    result = pretrain_processing({"content": "A sample text"}, tokenizer)
    expected = [*enc(tokenizer, "A sample text"), tokenizer.eos_token_id]
    check_row(result, expected, [True] * len(expected))


@pytest.mark.parametrize("fmt", ["psm", "spm"])
@pytest.mark.parametrize("only_middle", [False, True])
def test_fim_seed_asserts(tokenizer, fmt, only_middle):
    fp, fm, fs = sid(tokenizer, "<fim_prefix>"), sid(tokenizer, "<fim_middle>"), sid(tokenizer, "<fim_suffix>")
    pre, mid, suf = (enc(tokenizer, FIM_EXAMPLE[k]) for k in ("prefix", "middle", "suffix"))
    eos = tokenizer.eos_token_id
    if fmt == "psm":
        head = [fp, *pre, fs, *suf, fm]
    else:
        head = [fs, *suf, fp, *pre, fm]
    expected = [*head, *mid, eos]
    mask = [not only_middle] * len(head) + [True] * (len(mid) + 1)
    result = fim_processing(FIM_EXAMPLE, tokenizer, only_middle_not_masked=only_middle, fim_format=fmt)
    check_row(result, expected, mask)


def test_sft_seed_assert(tokenizer):
    u0, u1 = sid(tokenizer, "<user>"), sid(tokenizer, "</user>")
    a0, a1 = sid(tokenizer, "<assistant>"), sid(tokenizer, "</assistant>")
    user = [u0, *enc(tokenizer, "Hi!"), u1]
    asst = [a0, *enc(tokenizer, "How can I help you?"), a1, tokenizer.eos_token_id]
    result = sft_processing(SFT_EXAMPLE, tokenizer)
    check_row(result, user + asst, [False] * len(user) + [True] * len(asst))


def test_sft_multi_turn_with_system(tokenizer):
    conv = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": ""},
    ]
    expected, mask = [], []
    for turn in conv:
        r = turn["role"]
        piece = [sid(tokenizer, f"<{r}>"), *enc(tokenizer, turn["content"]), sid(tokenizer, f"</{r}>")]
        expected += piece
        mask += [r == "assistant"] * len(piece)
    expected.append(tokenizer.eos_token_id)
    mask.append(True)
    check_row(sft_processing({"content": conv}, tokenizer), expected, mask)


def test_process_row_dispatch(tokenizer):
    a = process_row({"content": "x y"}, tokenizer, "pretrain")
    b = pretrain_processing({"content": "x y"}, tokenizer)
    np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
    c = process_row(FIM_EXAMPLE, tokenizer, "fim", fim_format="psm")
    assert c["input_ids"][0] == sid(tokenizer, "<fim_prefix>")
    with pytest.raises(ConfigError, match="not supported"):
        process_row({"content": "x"}, tokenizer, "dpo")


def test_batched_equals_row_functions(tokenizer):
    texts = ["A sample text", "import numpy as np", "x", "Unicode: café 🙂 <fim_prefix> literal"]
    flat = tokenize_batch({"content": texts}, tokenizer, TokenizeConfig(strategy="pretrain"))
    assert flat.num_docs == len(texts)
    for i, t in enumerate(texts):
        row = flat.row(i)
        ref = pretrain_processing({"content": t}, tokenizer)
        for k in ref:
            np.testing.assert_array_equal(row[k], ref[k])
        # independent: encode + eos
        np.testing.assert_array_equal(row["input_ids"], [*enc(tokenizer, t), tokenizer.eos_token_id])


def test_dataset_map_writes_uint32_and_bool(tokenizer):
    ds = Dataset.from_dict({"text": ["hello world", "def f(x): return x"], "other": [1, 2]})
    cfg = TokenizeConfig(strategy="pretrain", text_column="text")
    out = ds.map(
        make_tokenize_fn(tokenizer, cfg),
        batched=True,
        with_indices=True,
        remove_columns=ds.column_names,
        features=tokenized_features(),
    )
    schema = out.data.table.schema
    assert str(schema.field("input_ids").type) == "list<item: uint32>"
    assert str(schema.field("position_ids").type) == "list<item: uint32>"
    assert str(schema.field("loss_mask").type) == "list<item: bool>"
    assert out[1]["input_ids"] == [*enc(tokenizer, "def f(x): return x"), tokenizer.eos_token_id]


def test_one_backend_call_per_batch(tokenizer):
    from hfprep.tokenization.backends import HFBackend
    from hfprep.tokenization.stage import Tokenizer

    calls = []

    class Counting(HFBackend):
        def encode_batch(self, texts):
            calls.append(len(texts))
            return super().encode_batch(texts)

    for strategy, batch in [
        ("pretrain", {"content": ["a", "b", "c"]}),
        ("fim", {k: [v] * 3 for k, v in FIM_EXAMPLE.items()}),
        ("sft", {"content": [SFT_EXAMPLE["content"]] * 3}),
    ]:
        calls.clear()
        Tokenizer(tokenizer, TokenizeConfig(strategy=strategy), backend=Counting(tokenizer))(batch)
        assert len(calls) == 1, strategy


# ---------------------------------------------------------------------------------------------- bad input


def test_missing_column(tokenizer):
    with pytest.raises(DataError, match="'content'.*columns \\['text'\\]"):
        tokenize_batch({"text": ["a"]}, tokenizer, TokenizeConfig(strategy="pretrain"))


@pytest.mark.parametrize("bad", [None, 3, b"bytes"])
def test_non_string_text_names_row(tokenizer, bad):
    with pytest.raises(DataError, match="row 11: column 'content' must be a string"):
        tokenize_batch({"content": ["ok", bad]}, tokenizer, TokenizeConfig(strategy="pretrain"), indices=[10, 11])


def test_empty_string_errors_or_drops(tokenizer):
    with pytest.raises(DataError, match="row 1: .*empty string.*on_empty"):
        tokenize_batch({"content": ["a", ""]}, tokenizer, TokenizeConfig(strategy="pretrain"))
    flat = tokenize_batch({"content": ["a", "", "b"]}, tokenizer, TokenizeConfig(strategy="pretrain", on_empty="drop"))
    assert flat.num_docs == 2
    assert flat.kept.tolist() == [0, 2]


def test_tokenizer_without_specials(tmp_path):
    plain = train_tiny_tokenizer(["hello world"] * 5, tmp_path, vocab_size=300, special_tokens=["<|endoftext|>"])
    with pytest.raises(TokenizerError, match="<fim_prefix>.*FIM"):
        fim_processing(FIM_EXAMPLE, plain)
    with pytest.raises(TokenizerError, match="<user>.*SFT"):
        sft_processing(SFT_EXAMPLE, plain)
    # pretrain only needs eos
    assert pretrain_processing({"content": "hello"}, plain)["input_ids"][-1] == plain.eos_token_id


def test_sft_bad_conversations(tokenizer):
    cfg = TokenizeConfig(strategy="sft")
    with pytest.raises(DataError, match="row 0, turn 0: unknown role 'tool'"):
        tokenize_batch({"content": [[{"role": "tool", "content": "x"}]]}, tokenizer, cfg)
    with pytest.raises(DataError, match="row 1: .*empty conversation"):
        tokenize_batch({"content": [SFT_EXAMPLE["content"], []]}, tokenizer, cfg)
    with pytest.raises(DataError, match="row 0, turn 1: 'content' must be a string"):
        tokenize_batch({"content": [[{"role": "user", "content": "a"}, {"role": "assistant", "content": 5}]]}, tokenizer, cfg)
    with pytest.raises(DataError, match="row 0: .*got a str"):
        tokenize_batch({"content": ["just text"]}, tokenizer, cfg)


def test_unknown_strategy_config():
    with pytest.raises(ValueError):
        TokenizeConfig(strategy="dpo")
    with pytest.raises(ValueError):
        TokenizeConfig(strategy="pretrain", bogus_key=1)


@pytest.mark.parametrize("long_docs", [False, True])
def test_frame_documents_matches_a_plain_python_reference(long_docs):
    """Both copy paths (short documents: one scatter; long: a slice each) against list concatenation."""
    from hfprep.tokenization.pieces import frame_documents

    rng = np.random.default_rng(long_docs)
    for _ in range(100):
        n = int(rng.integers(0, 12))
        lengths = rng.integers(100 if long_docs else 0, 300 if long_docs else 8, n)
        lead = int(rng.integers(0, 4))  # offsets need not start at 0
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64) + lead
        values = rng.integers(0, 1000, int(offsets[-1]) + 2).astype(np.uint32)
        prefix = rng.integers(1000, 2000, int(rng.integers(0, 3))).tolist()
        suffix = rng.integers(1000, 2000, int(rng.integers(0, 3))).tolist()
        ids, doc_offsets = frame_documents(values, offsets, prefix, suffix)
        expected, bounds = [], [0]
        for i in range(n):
            expected += prefix + values[offsets[i] : offsets[i + 1]].tolist() + suffix
            bounds.append(len(expected))
        assert ids.dtype == np.uint32 and ids.tolist() == expected
        assert doc_offsets.tolist() == bounds


@pytest.mark.parametrize("strategy", ["pretrain", "fim", "sft"])
def test_documents_are_the_stage_rows_without_positions(tokenizer, strategy):
    """``Tokenizer.documents`` (what the direct engine keeps) gives the ids, document bounds and loss mask of the
    full stage call; None stands for an all-true mask."""
    from hfprep.tokenization.stage import Tokenizer

    batches = {
        "pretrain": {"content": ["A sample text", "", "import numpy as np", "x"]},
        "fim": {k: [FIM_EXAMPLE[k]] * 2 for k in FIM_EXAMPLE},
        "sft": {"content": [SFT_EXAMPLE["content"]] * 2},
    }
    config = TokenizeConfig(strategy=strategy, on_empty="drop")
    tk = Tokenizer(tokenizer, config)
    flat = tk(batches[strategy])
    ids, doc_offsets, mask = tk.documents(batches[strategy])
    np.testing.assert_array_equal(ids, flat.input_ids)
    np.testing.assert_array_equal(doc_offsets, flat.doc_offsets)
    full_mask = np.ones(len(ids), np.bool_) if mask is None else mask
    np.testing.assert_array_equal(full_mask, flat.loss_mask)
    assert (mask is None) == bool(flat.loss_mask.all())


def test_tokenizer_json_is_serialized_once_per_run_scope_only(tokenizer):
    """Inside ``serialize_once`` (a run) the text is made once; outside, a tokenizer changed between two calls is
    serialized as it is now (no stale fingerprint in a long-lived process)."""
    import copy

    from hfprep.tokenization.loading import serialize_once, tokenizer_fingerprint, tokenizer_json

    tok = copy.deepcopy(tokenizer)
    with serialize_once():
        first = tokenizer_json(tok)
        assert tokenizer_json(tok) is first
    before = tokenizer_fingerprint(tok)
    tok.add_tokens(["<brand_new_token>"])
    assert tokenizer_fingerprint(tok) != before
    assert "<brand_new_token>" in tokenizer_json(tok) and "<brand_new_token>" not in first
