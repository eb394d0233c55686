"""SFT via the tokenizer's chat template: ids, assistant-only loss mask (generation markers and offsets), fallback."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from datasets import Dataset

from hfprep.errors import DataError, TokenizerError
from hfprep.tokenization.chat import spans_to_token_mask
from hfprep.tokenization.loading import load_tokenizer
from hfprep.tokenization.stage import TokenizeConfig, Tokenizer, make_tokenize_fn, tokenize_batch, tokenized_features

# Role delimiters are special tokens, so encoding the rendered text equals encoding its pieces one by one.
TEMPLATE_GEN = (
    "{% for m in messages %}"
    "{% if m.role == 'assistant' %}<assistant>{% generation %}{{ m.content }}</assistant>{% endgeneration %}"
    "{% else %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
TEMPLATE_PLAIN = (
    "{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
TEMPLATE_EOS = TEMPLATE_PLAIN + "{% if not add_generation_prompt %}{{ eos_token }}{% endif %}"
TEMPLATE_STRICT = (
    "{% for m in messages %}"
    "{% if m.role not in ['system', 'user', 'assistant'] %}{{ raise_exception('unknown role ' + m.role) }}{% endif %}"
    "<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
# Rewrites earlier turns depending on the conversation length: prefixes are not prefixes of the full rendering.
TEMPLATE_NOT_PREFIX = "<system>{{ messages | length }}</system>" + TEMPLATE_PLAIN

CONVERSATIONS = [
    [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello, how can I help you?"}],
    [
        {"role": "system", "content": "Be nice."},
        {"role": "user", "content": "How are you?"},
        {"role": "assistant", "content": "I am fine, thanks."},
        {"role": "user", "content": "import numpy as np"},
        {"role": "assistant", "content": "def f(x):\n    return x * 2\n"},
    ],
    [{"role": "user", "content": "Unicode: café, 東京"}, {"role": "assistant", "content": "naïve 🙂 emoji"}],
]


@pytest.fixture
def chat_tok(tokenizer_path):
    """A fresh copy of the session tokenizer (templates are set per test; the shared one stays untouched)."""
    return load_tokenizer(tokenizer_path)


def _enc(tok, s: str) -> list[int]:
    return tok.encode(s, add_special_tokens=False)


def _expected(tok, conv, eos_appended: bool | None = None) -> tuple[list[int], list[bool]]:
    """Independent reference: assistant content + </assistant> get loss; headers, system and user turns do not.

    The eos is appended (with loss) only when the conversation does not end with an assistant turn, whose
    ``</assistant>`` already closes it.
    """
    if eos_appended is None:
        eos_appended = conv[-1]["role"] != "assistant"
    ids, mask = [], []
    for m in conv:
        head, body, tail = _enc(tok, f"<{m['role']}>"), _enc(tok, m["content"]), _enc(tok, f"</{m['role']}>")
        is_asst = m["role"] == "assistant"
        ids += head + body + tail
        mask += [False] * len(head) + [is_asst] * (len(body) + len(tail))
    if eos_appended:
        ids.append(tok.eos_token_id)
        mask.append(True)
    return ids, mask


@pytest.mark.parametrize("template", [TEMPLATE_GEN, TEMPLATE_PLAIN], ids=["generation-markers", "offsets"])
def test_ids_and_assistant_mask_match_independent_reference(chat_tok, template: str) -> None:
    chat_tok.chat_template = template
    flat = tokenize_batch({"content": CONVERSATIONS}, chat_tok, TokenizeConfig(strategy="sft"))
    assert flat.num_docs == len(CONVERSATIONS)
    for i, conv in enumerate(CONVERSATIONS):
        row = flat.row(i)
        ids, mask = _expected(chat_tok, conv)
        assert row["input_ids"].tolist() == ids
        assert row["loss_mask"].tolist() == mask
        assert row["position_ids"].tolist() == list(range(len(ids)))


def test_agrees_with_transformers_assistant_masks(chat_tok) -> None:
    chat_tok.chat_template = TEMPLATE_GEN
    flat = tokenize_batch({"content": CONVERSATIONS[:2]}, chat_tok, TokenizeConfig(strategy="sft"))
    for i, conv in enumerate(CONVERSATIONS[:2]):
        out = chat_tok.apply_chat_template(conv, return_dict=True, return_assistant_tokens_mask=True)
        row = flat.row(i)
        # The last assistant turn ends with its end-of-turn token: no eos is appended.
        assert row["input_ids"].tolist() == list(out["input_ids"])
        assert row["loss_mask"].astype(int).tolist() == list(out["assistant_masks"])


def test_template_ending_with_eos_gets_no_second_eos(chat_tok) -> None:
    chat_tok.chat_template = TEMPLATE_EOS
    flat = tokenize_batch({"content": CONVERSATIONS}, chat_tok, TokenizeConfig(strategy="sft"))
    for i, conv in enumerate(CONVERSATIONS):
        ids, mask = _expected(chat_tok, conv, eos_appended=False)
        row = flat.row(i)
        # Offsets mode: </assistant> closes the last turn; the template's eos after it is text after the last
        # turn (no loss), as with generation markers below.
        assert row["input_ids"].tolist() == [*ids, chat_tok.eos_token_id]
        assert row["loss_mask"].tolist() == [*mask, False]
    # With generation markers only the marked text gets loss: the template's eos outside them does not.
    chat_tok.chat_template = TEMPLATE_GEN + "{% if not add_generation_prompt %}{{ eos_token }}{% endif %}"
    flat = tokenize_batch({"content": CONVERSATIONS}, chat_tok, TokenizeConfig(strategy="sft"))
    for i, conv in enumerate(CONVERSATIONS):
        ids, mask = _expected(chat_tok, conv, eos_appended=False)
        assert flat.row(i)["input_ids"].tolist() == [*ids, chat_tok.eos_token_id]
        assert flat.row(i)["loss_mask"].tolist() == [*mask, False]


def test_never_uses_seed_role_tokens_and_auto_falls_back(chat_tok, tokenizer) -> None:
    conv = CONVERSATIONS[1]
    seed_rows = tokenize_batch({"content": [conv]}, tokenizer, TokenizeConfig(strategy="sft"))  # no template
    # Seed scheme: role tokens of assistant turns also get loss.
    ids, mask = [], []
    for m in conv:
        body = _enc(tokenizer, m["content"])
        role = [*_enc(tokenizer, f"<{m['role']}>"), *body, *_enc(tokenizer, f"</{m['role']}>")]
        ids += role
        mask += [m["role"] == "assistant"] * len(role)
    assert seed_rows.row(0)["input_ids"].tolist() == [*ids, tokenizer.eos_token_id]
    assert seed_rows.row(0)["loss_mask"].tolist() == [*mask, True]
    chat_tok.chat_template = TEMPLATE_GEN
    never = tokenize_batch({"content": [conv]}, chat_tok, TokenizeConfig(strategy="sft", chat_template="never"))
    np.testing.assert_array_equal(never.input_ids, seed_rows.input_ids)
    np.testing.assert_array_equal(never.loss_mask, seed_rows.loss_mask)
    auto = tokenize_batch({"content": [conv]}, chat_tok, TokenizeConfig(strategy="sft"))
    assert not np.array_equal(auto.loss_mask, seed_rows.loss_mask)  # headers lose their loss under the template


def test_always_without_template_is_a_clear_error(tokenizer) -> None:
    with pytest.raises(TokenizerError, match="no chat_template"):
        Tokenizer(tokenizer, TokenizeConfig(strategy="sft", chat_template="always"))


def test_bad_conversations_name_the_row(chat_tok) -> None:
    chat_tok.chat_template = TEMPLATE_STRICT
    good = CONVERSATIONS[0]
    with pytest.raises(DataError, match="row 1.*non-empty list"):
        tokenize_batch({"content": [good, []]}, chat_tok, TokenizeConfig(strategy="sft"))
    with pytest.raises(DataError, match="row 1, turn 0: 'content' must be a string"):
        tokenize_batch({"content": [good, [{"role": "user", "content": 3}]]}, chat_tok, TokenizeConfig(strategy="sft"))
    with pytest.raises(DataError, match="row 7: the chat template failed.*unknown role tool"):
        tokenize_batch(
            {"content": [[{"role": "tool", "content": "x"}]]}, chat_tok, TokenizeConfig(strategy="sft"), indices=[7]
        )


def test_template_that_rewrites_history_is_attributed_by_its_generation_prompt(chat_tok) -> None:
    # The prompt of turn i is not a prefix of the full rendering (the system line counts the messages): the turn's
    # header is found as the generation prompt after the previous message, and the rows are still exact.
    chat_tok.chat_template = TEMPLATE_NOT_PREFIX
    conv = CONVERSATIONS[1]
    flat = tokenize_batch({"content": [conv]}, chat_tok, TokenizeConfig(strategy="sft"))
    ids, mask = _expected(chat_tok, conv)
    head = _enc(chat_tok, f"<system>{len(conv)}</system>")
    assert flat.row(0)["input_ids"].tolist() == head + ids
    assert flat.row(0)["loss_mask"].tolist() == [False] * len(head) + mask


def test_unattributable_turn_is_a_one_line_error_naming_row_and_turn(chat_tok) -> None:
    # Its generation prompt never appears in the full rendering: nothing to anchor the turn on.
    chat_tok.chat_template = TEMPLATE_NOT_PREFIX.replace("{% if add_generation_prompt %}<assistant>", "{% if add_generation_prompt %}BOT:")
    with pytest.raises(TokenizerError, match=r"^row 3, turn 1: .*generation") as e:
        tokenize_batch({"content": CONVERSATIONS[:1]}, chat_tok, TokenizeConfig(strategy="sft"), indices=[3])
    assert "\n" not in str(e.value)


def test_none_valued_keys_are_dropped_like_apply_chat_template(chat_tok) -> None:
    chat_tok.chat_template = TEMPLATE_GEN
    conv = [{**m, "tool_calls": None} for m in CONVERSATIONS[0]]  # what datasets yields for a missing struct field
    a = tokenize_batch({"content": [conv]}, chat_tok, TokenizeConfig(strategy="sft"))
    b = tokenize_batch({"content": [CONVERSATIONS[0]]}, chat_tok, TokenizeConfig(strategy="sft"))
    np.testing.assert_array_equal(a.input_ids, b.input_ids)
    np.testing.assert_array_equal(a.loss_mask, b.loss_mask)


def test_picklable_and_same_rows_with_num_proc(chat_tok) -> None:
    chat_tok.chat_template = TEMPLATE_PLAIN
    tk = Tokenizer(chat_tok, TokenizeConfig(strategy="sft"))
    again = pickle.loads(pickle.dumps(tk))
    np.testing.assert_array_equal(tk({"content": CONVERSATIONS}).input_ids, again({"content": CONVERSATIONS}).input_ids)
    ds = Dataset.from_dict({"content": CONVERSATIONS * 4})
    fn = make_tokenize_fn(chat_tok, TokenizeConfig(strategy="sft"))
    kw = dict(batched=True, with_indices=True, remove_columns=["content"], features=tokenized_features())
    one, two = ds.map(fn, batch_size=3, **kw), ds.map(fn, batch_size=5, num_proc=2, **kw)
    assert one["input_ids"] == two["input_ids"] and one["loss_mask"] == two["loss_mask"]
    assert one["loss_mask"][1] == _expected(chat_tok, CONVERSATIONS[1])[1]


def test_last_turn_from_user_and_assistant_only_mask(chat_tok) -> None:
    chat_tok.chat_template = TEMPLATE_PLAIN
    conv = [*CONVERSATIONS[0], {"role": "user", "content": "Thanks"}]
    flat = tokenize_batch({"content": [conv]}, chat_tok, TokenizeConfig(strategy="sft"))
    ids, mask = _expected(chat_tok, conv)
    assert flat.row(0)["input_ids"].tolist() == ids
    assert flat.row(0)["loss_mask"].tolist() == mask


def test_spans_to_token_mask_overlap_rule() -> None:
    # tokens [0,2) [2,4) [4,6) [6,6) [6,9); spans [3,5) and [8,9)
    starts, ends = np.array([0, 2, 4, 6, 6]), np.array([2, 4, 6, 6, 9])
    got = spans_to_token_mask(starts, ends, np.array([3, 8]), np.array([5, 9]), 9)
    assert got.tolist() == [False, True, True, False, True]
    got = spans_to_token_mask(starts, ends, np.array([3, 8]), np.array([5, 9]), 9, rule="last_char")
    assert got.tolist() == [False, True, False, False, True]


def test_loss_probe_tells_the_seed_scheme_from_a_template(chat_tok, tokenizer) -> None:
    """The same role tokens, two masks: the seed's scheme gives <assistant> loss (DESIGN: loss on every token of
    assistant turns, role tokens included, and the final eos); a template's generation prompt <assistant> gets none.
    The card's sentence follows the probe, not the strategy's name."""
    from hfprep.output.card import sft_loss_note
    from hfprep.tokenization.loss_probe import LossLayout, probe_loss_layout

    seed = probe_loss_layout(tokenizer, TokenizeConfig(strategy="sft", chat_template="never"))
    assert seed == LossLayout(header="", before="<assistant>", after="</assistant>",
                              after_last="</assistant><|endoftext|>", inserted="", system=True)
    assert sft_loss_note(seed) == (
        " (each assistant answer, the `<assistant>` before it and the `</assistant>` after it, and the "
        "`<\\|endoftext\\|>` after the last one; no loss on system and user turns)"
    )
    chat_tok.chat_template = TEMPLATE_PLAIN
    templated = probe_loss_layout(chat_tok, TokenizeConfig(strategy="sft"))
    assert templated == LossLayout(header="<assistant>", before="", after="</assistant>", after_last="</assistant>",
                                   inserted="", system=True)
    assert sft_loss_note(templated) == (
        " (each assistant answer and the `</assistant>` after it; no loss on system and user turns or on the "
        "`<assistant>` that opens each assistant turn)"
    )
