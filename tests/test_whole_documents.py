"""hfprep never cuts or pads a document silently, and ends pre-training documents with the end-of-text token.

Point 1: many Hub tokenizers enable ``truncation`` / ``padding`` in ``tokenizer.json``; the Rust ``encode_batch``
calls apply them. Here the real Llama 3.1 and Qwen3 files are copied with ``truncation: {max_length: 16}`` and
``padding: {Fixed: 64}`` turned on, every strategy / backend / ``add_bos`` mode is run on them, and the rows are
compared with what an *untouched* copy of the same tokenizer file gives (``tokenizers.Tokenizer.from_file``).

Point 2: with a chat model's tokenizer (Llama 3.1 instruct's eos ``<|eot_id|>``, Qwen3's ``<|im_end|>``) pretrain
and FIM documents end with the end-of-text token, ``tokenize.eos_token`` still decides, the summary and the card
say which token and why, and every warning of a run is printed once.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import tokenizers
import transformers
import yaml
from conftest import real_tokenizer
from fetch_tokenizers import family_dir
from test_real_tokenizers import CONVERSATIONS, _reference

import hfprep
from hfprep.output.card import parse_card_metadata
from hfprep.tokenization.backends import FAST_BACKEND_MIN_BYTES, HFBackend, resolve_backend
from hfprep.tokenization.loading import (
    LengthSettingsIgnoredWarning,
    load_tokenizer,
    tokenizer_fingerprint,
)
from hfprep.tokenization.stage import TokenizeConfig, Tokenizer

TRUNCATION = {"direction": "Right", "max_length": 16, "strategy": "LongestFirst", "stride": 0}
# Padding with each family's own pad token (an existing special token, as Hub files set it).
PAD_TOKEN = {"llama3_1": "<|reserved_special_token_2|>", "qwen3": "<|endoftext|>"}  # Llama: id 128004
NOTICE = "enables truncation (max_length 16) and padding (Fixed 64); hfprep encodes every document whole"
# Written out, not looked up: the end-of-text tokens of these families (their eos ends chat turns).
LLAMA_BOS, LLAMA_END_OF_TEXT, LLAMA_EOT = 128000, 128001, 128009
QWEN_END_OF_TEXT = 151643


def stdlib_texts(n: int = 12, max_chars: int = 4000) -> list[str]:
    """Real documents, each hundreds of tokens: the first ``n`` non-empty .py files of the running stdlib."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for p in sorted(root.glob("*.py")):
        text = p.read_text(encoding="utf-8", errors="replace")[:max_chars]
        if text.strip():
            out.append(text)
        if len(out) == n:
            break
    return [*out, "x = 1"]  # and one shorter than the truncation: padding must not reach it either


def with_length_settings(family: str, dest: Path, single_word: str | None = None) -> Path:
    """A copy of a real tokenizer folder whose tokenizer.json enables truncation 16 and padding Fixed 64 (and, to
    make the fast backend refuse it, ``single_word`` on the added token named ``single_word``)."""
    shutil.copytree(family_dir(family), dest)
    config = json.loads((dest / "tokenizer.json").read_text(encoding="utf-8"))
    pad_id = next(t["id"] for t in config["added_tokens"] if t["content"] == PAD_TOKEN[family])
    config["truncation"] = TRUNCATION
    config["padding"] = {"strategy": {"Fixed": 64}, "direction": "Right", "pad_to_multiple_of": None,
                         "pad_id": pad_id, "pad_type_id": 0, "pad_token": PAD_TOKEN[family]}
    (dest / "tokenizer.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    if single_word is not None:  # transformers rebuilds added tokens from the config's added_tokens_decoder
        for name in ("tokenizer.json", "tokenizer_config.json"):
            data = json.loads((dest / name).read_text(encoding="utf-8"))
            tokens = data["added_tokens"] if name == "tokenizer.json" else data["added_tokens_decoder"].values()
            for token in tokens:
                token["single_word"] = token["single_word"] or token["content"] == single_word
            (dest / name).write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return dest


def untouched(family: str) -> tokenizers.Tokenizer:
    """The same tokenizer file, read by the Rust library itself: no truncation, no padding."""
    raw = tokenizers.Tokenizer.from_file(str(family_dir(family) / "tokenizer.json"))
    assert raw.truncation is None and raw.padding is None
    return raw


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    real_tokenizer("llama3_1")  # skips (or fails under CI) when the files are not fetched
    return with_length_settings("llama3_1", tmp_path_factory.mktemp("whole") / "llama3_1")


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory) -> Path:
    real_tokenizer("qwen3")
    return with_length_settings("qwen3", tmp_path_factory.mktemp("whole") / "qwen3")


# A fresh object per test: a transformers encode() call switches truncation off on its object, so a shared one
# would let one test pass for another.
@pytest.fixture
def llama(llama_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LengthSettingsIgnoredWarning)
        return load_tokenizer(str(llama_dir))


@pytest.fixture
def qwen(qwen_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LengthSettingsIgnoredWarning)
        return load_tokenizer(str(qwen_dir))


def rows(flat) -> list[list[int]]:
    return [flat.row(i)["input_ids"].tolist() for i in range(flat.num_docs)]


def backend_named(tok, name: str):
    if name == "hf":
        return HFBackend(tok)
    pytest.importorskip("gigatoken")
    backend, report = resolve_backend(tok, "gigatoken", stdlib_texts())
    assert report["backend"] == "gigatoken" and report["guard"]["passed"]
    return backend


# ----------------------------------------------------------------------------------------------- point 1


@pytest.mark.parametrize("backend", ["hf", "gigatoken"])
@pytest.mark.parametrize("add_bos", ["never", "always", "auto"])
def test_pretrain_encodes_whole_documents(llama, backend: str, add_bos: str) -> None:
    texts = stdlib_texts()
    raw = untouched("llama3_1")
    assert raw.encode("x").ids[0] == LLAMA_BOS  # Llama 3.1's encode adds its bos: what `auto` puts in front
    bos = {"never": [], "always": [LLAMA_BOS], "auto": [LLAMA_BOS]}[add_bos]
    expected = [[*bos, *raw.encode(t, add_special_tokens=False).ids, LLAMA_END_OF_TEXT] for t in texts]
    assert max(map(len, expected)) > 64  # the file's settings would cut these
    stage = Tokenizer(llama, TokenizeConfig(add_bos=add_bos), backend_named(llama, backend))
    assert rows(stage({"content": texts})) == expected


@pytest.mark.parametrize("backend", ["hf", "gigatoken"])
@pytest.mark.parametrize("fmt", ["psm", "spm"])
def test_fim_encodes_whole_parts(qwen, backend: str, fmt: str) -> None:
    texts = stdlib_texts(4)
    parts = {"prefix": texts[0], "middle": texts[1], "suffix": texts[2]}
    raw = untouched("qwen3")
    enc = {k: raw.encode(v, add_special_tokens=False).ids for k, v in parts.items()}
    p, m, s = (raw.token_to_id(t) for t in ("<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"))
    if fmt == "psm":
        expected = [p, *enc["prefix"], s, *enc["suffix"], m, *enc["middle"], QWEN_END_OF_TEXT]
    else:
        expected = [s, *enc["suffix"], p, *enc["prefix"], m, *enc["middle"], QWEN_END_OF_TEXT]
    stage = Tokenizer(qwen, TokenizeConfig(strategy="fim", fim_format=fmt), backend_named(qwen, backend))
    assert rows(stage({k: [v] for k, v in parts.items()})) == [expected]


def test_sft_chat_template_encodes_whole_conversations(qwen) -> None:
    reference_tok = real_tokenizer("qwen3")  # the untouched files: renders the template, maps offsets to spans
    raw = untouched("qwen3")
    long_answer = stdlib_texts(1)[0]
    convs = [*CONVERSATIONS, [{"role": "user", "content": "Show me a module."},
                              {"role": "assistant", "content": long_answer}]]
    flat = Tokenizer(qwen, TokenizeConfig(strategy="sft"))({"content": convs})
    for i, conv in enumerate(convs):
        text = reference_tok.apply_chat_template(conv, tokenize=False)
        ids, mask = _reference(reference_tok, conv, ["<|im_end|>"])
        assert ids == raw.encode(text, add_special_tokens=False).ids
        row = flat.row(i)
        assert row["input_ids"].tolist() == ids and row["loss_mask"].tolist() == mask
    assert len(flat.row(len(convs) - 1)["input_ids"]) > 64


def test_a_tokenizer_passed_in_is_copied_not_changed(llama_dir) -> None:
    texts = stdlib_texts(3)
    user = transformers.AutoTokenizer.from_pretrained(str(llama_dir))  # the user's object: settings on
    raw = untouched("llama3_1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for add_bos in ("auto", "never"):  # the stage is built twice: one copy, one notice
            got = rows(Tokenizer(user, TokenizeConfig(add_bos=add_bos))({"content": texts}))
            bos = [LLAMA_BOS] if add_bos == "auto" else []
            assert got == [[*bos, *raw.encode(t, add_special_tokens=False).ids, LLAMA_END_OF_TEXT] for t in texts]
    notices = [str(w.message) for w in caught if issubclass(w.category, LengthSettingsIgnoredWarning)]
    assert len(notices) == 1 and NOTICE in notices[0] and "\n" not in notices[0]
    # hfprep encoded with its own copy: the caller's tokenizer still truncates and pads as configured.
    assert user.backend_tokenizer.truncation["max_length"] == 16
    assert user.backend_tokenizer.padding["length"] == 64


def test_fingerprint_ignores_length_settings(llama_dir, llama) -> None:
    plain = tokenizer_fingerprint(real_tokenizer("llama3_1"))
    user = transformers.AutoTokenizer.from_pretrained(str(llama_dir))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LengthSettingsIgnoredWarning)
        before = tokenizer_fingerprint(user)
    user("transformers' own call switches truncation and padding off on its object")
    assert user.backend_tokenizer.truncation is None
    assert tokenizer_fingerprint(llama) == before == tokenizer_fingerprint(user) == plain


def test_kd_cache_records_the_tokenizer_a_student_loads(tmp_path, llama_dir, llama) -> None:
    from hfprep.kd.builder import build_kd_cache
    from hfprep.kd.config import config_from_dict
    from hfprep.kd.example import save_tiny_teacher, write_prepared
    from hfprep.kd.format import read_meta
    from hfprep.kd.readers import RBTopKIterableDataset

    texts = [t[:300] for t in stdlib_texts(4)]
    prepared = write_prepared(llama, tmp_path / "prepared", texts, seq_len=48)
    teacher = save_tiny_teacher(tmp_path / "teacher", len(llama), hidden=8, layers=1, heads=2)
    cfg = config_from_dict({
        "input": {"folder": str(prepared)}, "teacher": {"name_or_path": teacher},
        "tokenizer": {"name_or_path": str(llama_dir)}, "output": {"folder": str(tmp_path / "kd")}, "k": 4,
    })
    with pytest.warns(LengthSettingsIgnoredWarning, match="truncation"):  # the build says so too
        build_kd_cache(cfg, progress=False)
    kd = tmp_path / "kd"
    meta = read_meta(pq.read_schema(next((kd / "data").glob("*.parquet"))))
    assert meta["tokenizer"]["fingerprint"] == tokenizer_fingerprint(real_tokenizer("llama3_1"))
    student = transformers.AutoTokenizer.from_pretrained(str(llama_dir))
    student("a student tokenizer that was used before")  # transformers switched its settings off
    RBTopKIterableDataset(str(kd / "data" / "train-*.parquet"), student_tokenizer=student, k=4)


# ----------------------------------------------------------------------------------------------- point 2


def _run_in_process(tmp_path: Path, tokenizer_dir: str, tokenize: dict) -> tuple[dict, str, list[list[int]]]:
    from hfprep.run import run_recipe

    texts = stdlib_texts(6)
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"content": t}) + "\n" for t in texts))
    recipe = {
        "source": {"files": ["docs.jsonl"]}, "tokenizer": {"name_or_path": tokenizer_dir},
        "tokenize": {"strategy": "pretrain", "add_bos": "never", **tokenize},
        "packing": {"seq_len": 4096, "strategy": "bfd", "num_reduce_chunks": 1},
        "splits": {"heldout_fraction": 0.0}, "output": {"folder": "out", "plots": False},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    summary = run_recipe(tmp_path / "r.yaml")
    table = pq.read_table(next((tmp_path / "out" / "data").glob("train-*.parquet")))
    docs = []
    columns = (table.column(c).to_pylist() for c in ("input_ids", "position_ids", "loss_mask"))
    for ids, pos, loss in zip(*columns):
        starts = [i for i, p in enumerate(pos) if p == 0] + [len(ids)]
        # pretrain: every document token has loss; padding (position 0, no loss) is not a document
        docs += [ids[a:b] for a, b in itertools.pairwise(starts) if all(loss[a:b])]
    return summary, (tmp_path / "out" / "README.md").read_text(), docs


@pytest.mark.parametrize(
    ("family", "eos_token", "end", "line", "card_row"),
    [
        ("qwen3", None, QWEN_END_OF_TEXT,
         "documents end with '<|endoftext|>' (id 151643): the tokenizer's eos '<|im_end|>' ends chat turns",
         r"| document separator | documents end with `<\|endoftext\|>` (id 151643): the tokenizer's eos "
         r"`<\|im_end\|>` ends chat turns |"),
        ("qwen3", "<|im_end|>", 151645, "documents end with '<|im_end|>' (id 151645): set by tokenize.eos_token",
         r"| document separator | documents end with `<\|im_end\|>` (id 151645): set by tokenize.eos_token |"),
        ("llama3_1", None, LLAMA_END_OF_TEXT,
         "documents end with '<|end_of_text|>' (id 128001): the tokenizer's eos '<|eot_id|>' ends chat turns",
         r"| document separator | documents end with `<\|end_of_text\|>` (id 128001): the tokenizer's eos "
         r"`<\|eot_id\|>` ends chat turns |"),
    ],
)
def test_summary_and_card_say_which_token_ends_documents(tmp_path, family, eos_token, end, line, card_row) -> None:
    real_tokenizer(family)
    tokenize = {"eos_token": eos_token} if eos_token else {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default separator is said by the summary and the card, not warned
        summary, card, docs = _run_in_process(tmp_path, str(family_dir(family)), tokenize)
    assert summary["document_separator"] == line
    assert {d[-1] for d in docs} == {end} and all(end not in d[:-1] for d in docs)
    assert card_row in card.splitlines()
    hf = parse_card_metadata(card)["hfprep"]["tokenizer"]
    assert hf["eos_token_id"] == end
    assert hf["pad_token_id"] == real_tokenizer(family).eos_token_id  # the pad default stays the tokenizer's eos


def test_cli_run_warns_once_and_keeps_every_token(tmp_path) -> None:
    """A chat tokenizer whose tokenizer.json truncates and pads, with a feature the fast backend refuses, run as a
    new user would: ``--num-proc 2``, a held-out split. Each warning is one line, printed once."""
    real_tokenizer("llama3_1")
    tok_dir = with_length_settings("llama3_1", tmp_path / "llama3_1", single_word="<|reserved_special_token_5|>")
    texts = stdlib_texts(40, max_chars=1500)
    # Past FAST_BACKEND_MIN_BYTES: for a smaller input 'auto' keeps 'hf' without trying (and refusing) the fast one.
    texts = texts * (FAST_BACKEND_MIN_BYTES // sum(len(t.encode()) for t in texts) + 1)
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    recipe = {
        "source": {"files": ["docs.jsonl"], "columns": {"text": "content"}},
        "tokenizer": {"name_or_path": str(tok_dir), "backend": "auto"},
        "tokenize": {"strategy": "pretrain"},
        "packing": {"seq_len": 256, "strategy": "bfd", "num_reduce_chunks": 2},
        "splits": {"heldout_fraction": 0.25}, "output": {"folder": "out", "plots": False},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_DATASETS_CACHE=str(tmp_path / "ds_cache"),
               PYTHONPATH=os.pathsep.join([str(Path(hfprep.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-m", "hfprep", "run", "r.yaml", "--num-proc", "2"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    warned = [ln for ln in proc.stderr.splitlines() if "warning:" in ln]
    assert len(warned) == 2, warned
    assert NOTICE in warned[0] or NOTICE in warned[1]
    assert sum("falls back to 'hf'" in w and "single_word" in w for w in warned) == 1
    assert not [w for w in warned if "ends chat turns" in w]
    assert "documents end with '<|end_of_text|>' (id 128001): the tokenizer's eos '<|eot_id|>' ends chat turns" in (
        proc.stdout
    )
    # Every token of every document is written (bos + text + end of text), counted with the untouched file.
    raw = untouched("llama3_1")
    expected = sum(len(raw.encode(t, add_special_tokens=False).ids) + 2 for t in texts)
    written = 0
    for f in (tmp_path / "out" / "data").glob("*.parquet"):
        mask = pq.read_table(f).column("loss_mask").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        written += int(np.count_nonzero(mask))
    assert written == expected
