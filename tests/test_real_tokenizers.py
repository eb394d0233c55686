"""hfprep on real model tokenizers (Qwen3, Llama 3 / 3.1, Gemma 3, DeepSeek V3, gpt-oss).

The files come from ``python tests/fetch_tokenizers.py`` (CI runs it first); without them these tests skip
(and fail under ``CI=true``). Expected rows are computed here independently of hfprep: the conversation is
rendered once by transformers' ``apply_chat_template``, each assistant message's text is found in the rendering
by character offsets and extended through the end-of-turn token this family is documented to close assistant
turns with, and the character spans are mapped to tokens through the tokenizer's own offsets.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import real_tokenizer

from hfprep.errors import DataError, TokenizerError
from hfprep.tokenization.backends import GigatokenBackend, HFBackend, resolve_backend
from hfprep.tokenization.stage import TokenizeConfig, Tokenizer, document_specials, tokenize_batch

# Documented end-of-turn text of each family's chat format (what the model emits to end an answer).
END_OF_TURN = {
    "qwen3": "<|im_end|>",
    "llama3_1": "<|eot_id|>",
    "llama3": "<|eot_id|>",
    "gemma3": "<end_of_turn>",
    "deepseek_v3": "<｜end▁of▁sentence｜>",
}
CHAT_FAMILIES = list(END_OF_TURN)

# gpt-oss ships no chat template in its tokenizer files; a harmony-style one (final channel only) is given by
# file. Earlier assistant turns end with <|end|>, the last one with <|return|>.
HARMONY = (
    "{% for m in messages %}"
    "{% if m.role == 'assistant' %}<|start|>assistant<|channel|>final<|message|>{{ m.content }}"
    "{% if loop.last %}<|return|>{% else %}<|end|>{% endif %}"
    "{% else %}<|start|>{{ m.role }}<|message|>{{ m.content }}<|end|>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|start|>assistant{% endif %}"
)

CONVERSATIONS = [
    [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "6, since 3+3 = 6."},
    ],
    [
        {"role": "system", "content": "Answer in code when asked.\nBe exact."},
        {"role": "user", "content": "Write f(x) = 2x in Python."},
        {"role": "assistant", "content": "def f(x):\n    return 2 * x"},
        {"role": "user", "content": "Now in one word: café or 東京?"},
        {"role": "assistant", "content": "東京 🙂"},
        {"role": "user", "content": "Thanks!"},
        {"role": "assistant", "content": "You're welcome."},
    ],
]


def _reference(tok, conv, end_of_turn, render=None) -> tuple[list[int], list[bool]]:
    """Render once, find each assistant text after the previous one, span it through the next end-of-turn text,
    map to tokens: a token gets loss when its characters overlap a span."""
    text = render(conv) if render else tok.apply_chat_template(conv, tokenize=False)
    spans, pos = [], 0
    for m in conv:
        content = m["content"]
        found = text.find(content, pos)
        if found < 0:
            content = content.strip()
            found = text.find(content, pos)
        assert found >= 0, (content, text)
        pos = found + len(content)
        if m["role"] != "assistant":
            continue
        ends = [(text.find(e, pos), e) for e in end_of_turn if text.find(e, pos) >= 0]
        at, e = min(ends)
        spans.append((found, at + len(e)))
        pos = at + len(e)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [any(a < se and b > ss for ss, se in spans) or (a == b and any(ss <= a < se for ss, se in spans))
            for a, b in enc["offset_mapping"]]
    return list(enc["input_ids"]), mask


def _decode_spans(tok, ids, mask) -> list[str]:
    out, cur = [], []
    for t, m in zip([*ids, -1], [*mask, False]):
        if m:
            cur.append(t)
        elif cur:
            out.append(tok.decode(cur))
            cur = []
    return out


@pytest.mark.parametrize("family", CHAT_FAMILIES)
def test_chat_sft_matches_reference_on_real_templates(family: str) -> None:
    tok = real_tokenizer(family)
    flat = tokenize_batch({"content": CONVERSATIONS}, tok, TokenizeConfig(strategy="sft"))
    for i, conv in enumerate(CONVERSATIONS):
        ids, mask = _reference(tok, conv, [END_OF_TURN[family]])
        row = flat.row(i)
        # Every conversation ends with an assistant turn closed by its end-of-turn token: no eos is appended.
        assert row["input_ids"].tolist() == ids
        assert row["loss_mask"].tolist() == mask
        answers = [m["content"] for m in conv if m["role"] == "assistant"]
        got = _decode_spans(tok, ids, row["loss_mask"].tolist())
        assert [g.strip() for g in got] == [a + END_OF_TURN[family] for a in answers]


def test_gpt_oss_needs_a_template_and_works_with_one(tmp_path) -> None:
    tok = real_tokenizer("gptoss")
    assert tok.chat_template is None
    with pytest.raises(TokenizerError, match="no chat_template.*tokenize.chat_template_path"):
        Tokenizer(tok, TokenizeConfig(strategy="sft"))
    path = tmp_path / "harmony.jinja"
    path.write_text(HARMONY)
    flat = tokenize_batch(
        {"content": CONVERSATIONS}, tok, TokenizeConfig(strategy="sft", chat_template_path=str(path))
    )
    from transformers.utils.chat_template_utils import render_jinja_template

    def render(conv):
        return render_jinja_template(conversations=[conv], chat_template=HARMONY)[0][0]

    for i, conv in enumerate(CONVERSATIONS):
        ids, mask = _reference(tok, conv, ["<|end|>", "<|return|>"], render=render)
        assert flat.row(i)["input_ids"].tolist() == ids
        assert flat.row(i)["loss_mask"].tolist() == mask
    assert _decode_spans(tok, flat.row(0)["input_ids"].tolist(), flat.row(0)["loss_mask"].tolist()) == [
        "4.<|end|>", "6, since 3+3 = 6.<|return|>"
    ]


def test_qwen3_reasoning_tool_calls_and_rewritten_history() -> None:
    tok = real_tokenizer("qwen3")
    conv = [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "<think>\nI should call the tool.\n</think>\n\nLet me check.",
         "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "22C and sunny"},
        {"role": "assistant", "content": "It is 22C and sunny."},
        {"role": "user", "content": "Thanks. Umbrella?"},
        {"role": "assistant", "content": "No need.", "reasoning_content": "Sunny means no rain."},
    ]
    flat = tokenize_batch({"content": [conv]}, tok, TokenizeConfig(strategy="sft"))
    row = flat.row(0)
    text = tok.apply_chat_template(conv, tokenize=False)
    assert row["input_ids"].tolist() == tok(text, add_special_tokens=False)["input_ids"]
    # Earlier turn: its inline reasoning is dropped by the template; the answer and the call get loss.
    # Last turn: the rendered reasoning_content and the answer get loss; the tool result never does.
    assert _decode_spans(tok, row["input_ids"].tolist(), row["loss_mask"].tolist()) == [
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
        "It is 22C and sunny.<|im_end|>",
        "Sunny means no rain.\n</think>\n\nNo need.<|im_end|>",
    ]
    assert "I should call the tool" not in text  # the template dropped the earlier turn's reasoning


def test_generation_markers_and_general_path_agree() -> None:
    tok = real_tokenizer("qwen3")
    body = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n"
        "{% if m.role == 'assistant' %}{% generation %}{{ m.content }}<|im_end|>{% endgeneration %}"
        "{% else %}{{ m.content }}<|im_end|>{% endif %}\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    plain = body.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    cfg = TokenizeConfig(strategy="sft")
    rows = {}
    for name, template in (("markers", body), ("general", plain)):
        copy = type(tok).from_pretrained(tok.name_or_path)
        copy.chat_template = template
        rows[name] = tokenize_batch({"content": CONVERSATIONS}, copy, cfg)
    np.testing.assert_array_equal(rows["markers"].input_ids, rows["general"].input_ids)
    np.testing.assert_array_equal(rows["markers"].loss_mask, rows["general"].loss_mask)
    assert rows["general"].loss_mask.sum() > 0


def test_content_the_template_rewrites_is_a_one_line_error() -> None:
    tok = type(real_tokenizer("qwen3")).from_pretrained(real_tokenizer("qwen3").name_or_path)
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content | upper }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(DataError, match=r"^row 5, turn 2: the assistant content \('4. ok'\) cannot be located") as e:
        tokenize_batch(
            {"content": [[*CONVERSATIONS[0][:2], {"role": "assistant", "content": "4. ok"}]]},
            tok, TokenizeConfig(strategy="sft"), indices=[5],
        )
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------------------------- FIM


FIM_ROW = {"prefix": "def add(a, b):\n    ", "middle": "return a + b", "suffix": "\n\nprint(add(1, 2))\n"}


@pytest.mark.parametrize(
    ("family", "tokens"),
    [
        ("qwen3", ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")),
        ("deepseek_v3", ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>")),
    ],
)
@pytest.mark.parametrize("fmt", ["psm", "spm"])
def test_fim_uses_the_models_own_tokens(family: str, tokens: tuple[str, str, str], fmt: str) -> None:
    tok = real_tokenizer(family)
    p, s, m = (tok.convert_tokens_to_ids(t) for t in tokens)
    n_before = len(tok)
    eos = "<|endoftext|>" if family == "qwen3" else None
    cfg = TokenizeConfig(strategy="fim", fim_format=fmt, eos_token=eos)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an explicit eos_token: no chat-eos warning
        row = tokenize_batch({k: [v] for k, v in FIM_ROW.items()}, tok, cfg).row(0)
    enc = {k: tok.encode(v, add_special_tokens=False) for k, v in FIM_ROW.items()}
    eos_id = tok.convert_tokens_to_ids(eos) if eos else tok.eos_token_id
    if fmt == "psm":
        expected = [p, *enc["prefix"], s, *enc["suffix"], m, *enc["middle"], eos_id]
    else:
        expected = [s, *enc["suffix"], p, *enc["prefix"], m, *enc["middle"], eos_id]
    assert row["input_ids"].tolist() == expected
    assert len(tok) == n_before  # nothing added


def test_fim_without_tokens_lists_the_sets_and_never_advises_adding() -> None:
    tok = real_tokenizer("llama3_1")
    warnings.simplefilter("ignore")  # the chat-eos warning is tested on its own
    with pytest.raises(TokenizerError) as e:
        Tokenizer(tok, TokenizeConfig(strategy="fim"))
    msg = str(e.value)
    for t in ("<fim_prefix>", "<|fim_prefix|>", "<｜fim▁begin｜>", "▁<PRE>", "tokenize.fim_tokens"):
        assert t in msg
    assert "add" not in msg.replace("address", "") and "\n" not in msg
    # Named explicitly (here: reserved tokens of the vocabulary), FIM works with them.
    cfg = TokenizeConfig(
        strategy="fim", fim_format="psm", add_bos="never",
        fim_tokens={"prefix": "<|reserved_special_token_0|>", "middle": "<|reserved_special_token_1|>",
                    "suffix": "<|reserved_special_token_2|>"},
    )
    row = tokenize_batch({k: [v] for k, v in FIM_ROW.items()}, tok, cfg).row(0)
    ids = [tok.convert_tokens_to_ids(f"<|reserved_special_token_{k}|>") for k in range(3)]
    assert row["input_ids"][0] == ids[0] and ids[2] in row["input_ids"] and ids[1] in row["input_ids"]
    bad = TokenizeConfig(
        strategy="fim", fim_tokens={"prefix": "<PRE_NOT_A_TOKEN>", "middle": "<|reserved_special_token_1|>",
                                    "suffix": "<|reserved_special_token_2|>"},
    )
    with pytest.raises(TokenizerError, match="tokenize.fim_tokens.prefix"):
        Tokenizer(tok, bad)


# ----------------------------------------------------------------------------------------------- bos / eos


# The token that ends a pre-training document in each family (its end-of-text token; written out here, not looked
# up): an instruct tokenizer's eos ends chat turns instead (Qwen3 <|im_end|>, Llama 3.1 <|eot_id|>, Gemma 3
# <end_of_turn>, gpt-oss <|return|>), DeepSeek V3's eos is its end-of-sentence token.
DOCUMENT_END = {
    "qwen3": ("<|endoftext|>", 151643),
    "llama3_1": ("<|end_of_text|>", 128001),
    "llama3": ("<|end_of_text|>", 128001),
    "gemma3": ("<eos>", 1),
    "deepseek_v3": ("<｜end▁of▁sentence｜>", 1),
    "gptoss": ("<|endoftext|>", 199999),
}


@pytest.mark.parametrize("family", ["qwen3", "llama3_1", "gemma3", "deepseek_v3", "gptoss"])
def test_pretrain_bos_follows_encode_and_options(family: str) -> None:
    tok = real_tokenizer(family)
    text = "The quick brown fox."
    token, eos = DOCUMENT_END[family]
    assert tok.convert_tokens_to_ids(token) == eos
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the separator is a default, not a warning
        auto = tokenize_batch({"content": [text]}, tok, TokenizeConfig()).row(0)["input_ids"].tolist()
        never = tokenize_batch({"content": [text]}, tok, TokenizeConfig(add_bos="never")).row(0)["input_ids"]
    # The seed: encode(text) + [end of document]; encode adds the bos where the tokenizer's post-processor does.
    assert auto == [*tok.encode(text), eos]
    assert never.tolist() == [*tok.encode(text, add_special_tokens=False), eos]
    if tok.bos_token_id is not None:
        always = tokenize_batch({"content": [text]}, tok, TokenizeConfig(add_bos="always")).row(0)["input_ids"]
        assert always.tolist() == [tok.bos_token_id, *tok.encode(text, add_special_tokens=False), eos]


def test_bos_is_added_where_encode_adds_it() -> None:
    # Llama 3.1 and Gemma 3 add a bos in encode(), Qwen3 does not (checked independently of hfprep here).
    assert real_tokenizer("llama3_1").encode("x")[0] == 128000
    assert real_tokenizer("gemma3").encode("x")[0] == real_tokenizer("gemma3").bos_token_id
    assert real_tokenizer("qwen3").encode("x") == real_tokenizer("qwen3").encode("x", add_special_tokens=False)


@pytest.mark.parametrize(
    ("family", "turn_eos", "strategy"),
    [("qwen3", "<|im_end|>", "pretrain"), ("llama3_1", "<|eot_id|>", "pretrain"), ("gemma3", "<end_of_turn>", "pretrain"),
     ("gptoss", "<|return|>", "pretrain"), ("qwen3", "<|im_end|>", "fim"), ("llama3_1", "<|eot_id|>", "fim")],
)
def test_chat_tokenizer_documents_end_with_end_of_text(family: str, turn_eos: str, strategy: str) -> None:
    tok = real_tokenizer(family)
    doc_eos, doc_id = DOCUMENT_END[family]
    assert tok.eos_token == turn_eos
    # Llama 3.1 has no FIM tokens: name three reserved ones (Qwen3's own are found).
    reserved = {r: f"<|reserved_special_token_{i}|>" for i, r in enumerate(("prefix", "middle", "suffix"))}
    fim_tokens = reserved if strategy == "fim" and family == "llama3_1" else None
    cfg = TokenizeConfig(strategy=strategy, add_bos="never", fim_tokens=fim_tokens)
    batch = {k: [v] for k, v in FIM_ROW.items()} if strategy == "fim" else {"content": ["hello"]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a default, said by the summary and the card: no warning
        row = Tokenizer(tok, cfg)(batch).row(0)["input_ids"]
    assert row[-1] == doc_id and turn_eos not in tok.convert_ids_to_tokens(row.tolist())
    specials = document_specials(tok, cfg)
    assert (specials["eos_token"], specials["eos_token_id"]) == (doc_eos, doc_id)
    # tokenize.eos_token still decides.
    override = cfg.model_copy(update={"eos_token": turn_eos})
    assert Tokenizer(tok, override)(batch).row(0)["input_ids"][-1] == tok.eos_token_id
    assert document_specials(tok, override)["eos_token"] == turn_eos


def test_sft_conversations_keep_the_chat_eos() -> None:
    # SFT rows end as the chat template closes a turn; the end-of-document default is for pretrain / FIM only.
    tok = real_tokenizer("llama3_1")
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    row = Tokenizer(tok, TokenizeConfig(strategy="sft"))({"content": [conv]}).row(0)["input_ids"].tolist()
    assert row == tok.apply_chat_template(conv)["input_ids"]  # ends with <|eot_id|>, closed by the template
    assert row[-1] == tok.eos_token_id == 128009 and 128001 not in row


# ----------------------------------------------------------------------------------------------- fast backend


@pytest.mark.parametrize("family", ["qwen3", "llama3_1", "llama3", "gemma3", "deepseek_v3", "gptoss"])
def test_fast_backend_exact_on_real_tokenizers(family: str) -> None:
    pytest.importorskip("gigatoken")
    tok = real_tokenizer(family)
    texts = [
        "def f(x):\n    return x ** 2\n", "Unicode: café, naïve, 東京 🙂", "  leading and trailing  ",
        "<|endoftext|> inside text", "a" * 3000, "Straße İstanbul ΣΑΣ", "\n\n\n\t x",
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backend, report = resolve_backend(tok, "auto", texts)
    # Every family here is one the fast backend reproduces exactly: a fallback would be a regression.
    assert report["backend"] == "gigatoken", report
    assert not [w for w in caught if "falls back" in str(w.message)]
    assert report["guard"]["passed"] and report["guard"]["mismatches"] == 0
    assert isinstance(backend, GigatokenBackend)
    ref = HFBackend(tok).encode_batch(texts)
    got = backend.encode_batch(texts)
    np.testing.assert_array_equal(ref[1], got[1])
    np.testing.assert_array_equal(ref[0], got[0])
    # Whole rows are byte-identical between the backends.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = TokenizeConfig()
        a = Tokenizer(tok, cfg, backend=HFBackend(tok))({"content": texts}).to_arrow()
        b = Tokenizer(tok, cfg, backend=backend)({"content": texts}).to_arrow()
    assert a.equals(b)


# ----------------------------------------------------------------------------------------------- whole runs


def _run(tmp_path, rows, tokenizer_dir, tokenize, extra_files=()):
    import json

    import yaml

    from hfprep.output.card import parse_card_metadata
    from hfprep.run import run_recipe

    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name, text in extra_files:
        (tmp_path / name).write_text(text)
    recipe = {
        "source": {"files": ["data.jsonl"]},
        "tokenizer": {"name_or_path": tokenizer_dir},
        "tokenize": tokenize,
        "packing": {"seq_len": 64, "strategy": "no_incomplete", "num_reduce_chunks": 1},
        "splits": {"heldout_fraction": 0.0},
        "output": {"folder": "out"},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    run_recipe(tmp_path / "r.yaml")
    meta = parse_card_metadata((tmp_path / "out" / "README.md").read_text())
    from datasets import load_dataset

    return meta["hfprep"], load_dataset(str(tmp_path / "out"), split="train")


def test_recipe_bos_eos_recorded_in_card(tmp_path) -> None:
    from fetch_tokenizers import family_dir

    tok = real_tokenizer("llama3_1")
    texts = ["First document.", "Second one, a bit longer."]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # eos_token given: no chat-eos warning
        hf, ds = _run(tmp_path, [{"content": t} for t in texts], str(family_dir("llama3_1")),
                      {"strategy": "pretrain", "add_bos": "auto", "eos_token": "<|end_of_text|>"})
    info = hf["tokenizer"]
    assert (info["bos_token"], info["bos_token_id"]) == ("<|begin_of_text|>", 128000)
    assert (info["eos_token"], info["eos_token_id"]) == ("<|end_of_text|>", 128001)
    docs = sorted(
        [[*tok.encode(t), 128001] for t in texts], key=len, reverse=True
    )
    got = []
    for row in ds:
        ids, pos = row["input_ids"], row["position_ids"]
        starts = [i for i, p in enumerate(pos) if p == 0]
        got += [ids[a:b] for a, b in zip(starts, [*starts[1:], len(ids)]) if ids[a] == 128000]
    assert sorted(got, key=len, reverse=True) == docs


def test_recipe_chat_template_path_for_gpt_oss(tmp_path) -> None:
    from fetch_tokenizers import family_dir

    tok = real_tokenizer("gptoss")
    _hf, ds = _run(tmp_path, [{"content": CONVERSATIONS[0]}], str(family_dir("gptoss")),
                  {"strategy": "sft", "chat_template_path": "harmony.jinja"}, [("harmony.jinja", HARMONY)])
    row = ds[0]
    spans = _decode_spans(tok, row["input_ids"], row["loss_mask"])
    assert spans == ["4.<|end|>", "6, since 3+3 = 6.<|return|>"]


# What each family's chat format writes around an assistant answer (read from its template): the header that opens
# the turn (no loss), the end-of-turn token after an earlier answer and after the last one (loss), and what the
# template writes before the last answer only (no loss).
LOSS_LAYOUT = {
    "qwen3": ("<|im_start|>assistant\n", "<|im_end|>", "<|im_end|>", "<think>\n\n</think>\n\n"),
    "llama3_1": ("<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>", "<|eot_id|>", ""),
    "llama3": ("<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>", "<|eot_id|>", ""),
    "gemma3": ("<start_of_turn>model\n", "<end_of_turn>", "<end_of_turn>", ""),
    "deepseek_v3": ("<｜Assistant｜>", "<｜end▁of▁sentence｜>", "<｜end▁of▁sentence｜>", ""),
    "gptoss": ("<|start|>assistant<|channel|>final<|message|>", "<|end|>", "<|return|>", ""),
}


@pytest.mark.parametrize("family", list(LOSS_LAYOUT))
def test_loss_probe_reads_each_family_s_mask(family: str, tmp_path) -> None:
    from hfprep.tokenization.loss_probe import LossLayout, probe_loss_layout

    tok = real_tokenizer(family)
    config = TokenizeConfig(strategy="sft")
    if family == "gptoss":
        (tmp_path / "harmony.jinja").write_text(HARMONY)
        config = TokenizeConfig(strategy="sft", chat_template_path=str(tmp_path / "harmony.jinja"))
    header, after, after_last, inserted = LOSS_LAYOUT[family]
    assert probe_loss_layout(tok, config) == LossLayout(header, "", after, after_last, inserted, system=True)
