"""Mixtures: budgets, the seeded whole-document choice, epochs, recipe errors, and end-to-end runs whose output is
recounted through the ``source`` column and compared with a plain-Python reference of the documented rules."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from hfprep.describe import format_summary
from hfprep.errors import ConfigError, DataError
from hfprep.mixture import choose_documents, plan_budgets
from hfprep.output.card import read_card_metadata
from hfprep.output.inspect_cmd import inspect_folder
from hfprep.output.validate import validate_folder
from hfprep.recipe import RecipeError, load_recipe, parse_recipe
from hfprep.run import run_recipe
from hfprep.tokenization.loading import load_tokenizer

WORDS = ["alpha", "beta", "gamma", "delta", "import", "numpy", "def", "return", "print", "the", "quick", "fox"]


# ----------------------------------------------------------------------------------------------- pure choice


def reference_choice(hashes: list[int], lengths: list[int], budget: int) -> tuple[list[list[int]], int]:
    """The documented rule, one document at a time: whole passes while the rest of the budget covers the whole
    source, then documents in (hash, position) order, stopping before or after the crossing one, whichever is
    closer (a tie stops before)."""
    total = sum(lengths)
    epochs: list[list[int]] = []
    got = 0
    while budget - got >= total:
        epochs.append(list(range(len(lengths))))
        got += total
    rest = budget - got
    order = sorted(range(len(lengths)), key=lambda i: (hashes[i], i))
    taken: list[int] = []
    acc = 0
    for i in order:
        if acc + lengths[i] <= rest:
            taken.append(i)
            acc += lengths[i]
            continue
        if (acc + lengths[i]) - rest < rest - acc:
            taken.append(i)
            acc += lengths[i]
        break
    if taken:
        epochs.append(sorted(taken))
    return epochs, got + acc


# Equal hashes mean equal content (so equal lengths): hashes are unique here.
docs_st = st.lists(
    st.tuples(st.integers(0, 2**64 - 1), st.integers(1, 300)), min_size=1, max_size=60, unique_by=lambda d: d[0]
)


@settings(max_examples=300, deadline=None)
@given(docs=docs_st, frac=st.floats(0.0, 3.999), seed=st.randoms(use_true_random=False))
def test_choice_is_within_one_document_of_the_budget_and_matches_the_reference(docs, frac, seed):
    hashes = [h for h, _ in docs]
    lengths = [n for _, n in docs]
    total = sum(lengths)
    budget = int(frac * total)
    sel = choose_documents(np.array(hashes, dtype=np.uint64), np.array(lengths), budget, 4, "sources[0] ('s')")
    want_epochs, want_tokens = reference_choice(hashes, lengths, budget)
    assert [e.tolist() for e in sel.epochs] == want_epochs
    assert sel.tokens == want_tokens == sum(lengths[i] for e in want_epochs for i in e)
    assert abs(sel.tokens - budget) <= max(lengths)  # within one document
    # Row order does not matter: permute the rows, the same (hash, length) documents are chosen.
    perm = list(range(len(docs)))
    seed.shuffle(perm)
    sel2 = choose_documents(
        np.array([hashes[i] for i in perm], dtype=np.uint64), np.array([lengths[i] for i in perm]), budget, 4, "s"
    )
    chosen = Counter((hashes[i], lengths[i]) for e in sel.epochs for i in e.tolist())
    chosen2 = Counter((hashes[perm[i]], lengths[perm[i]]) for e in sel2.epochs for i in e.tolist())
    assert chosen == chosen2


def test_epochs_and_the_max_epochs_error():
    lengths = np.array([10, 20, 30])  # 60 tokens
    hashes = np.array([3, 1, 2], dtype=np.uint64)
    sel = choose_documents(hashes, lengths, 150, 3, "w")
    # 60 + 60, then 30 to go: stop before doc 2 (at 20, 10 short) rather than after it (at 50, 20 over).
    assert [e.tolist() for e in sel.epochs] == [[0, 1, 2], [0, 1, 2], [1]]
    assert sel.tokens == 140 and sel.docs == 7
    with pytest.raises(ConfigError, match=r"sources\[2\] \('math'\): a budget of 150 tokens needs 3 epochs of its 60 "
                       r"tokens; set max_epochs: 3"):
        choose_documents(hashes, lengths, 150, 2, "sources[2] ('math')")


def test_epoch_lengths_may_differ_per_epoch():
    seen = []

    def lengths(e):
        seen.append(e)
        return np.array([10, 10]) if e == 0 else np.array([12, 12])

    sel = choose_documents(np.array([1, 2], dtype=np.uint64), lengths, 32, 2, "s")
    assert seen == [0, 1] and sel.tokens == 20 + 12  # epoch 1 takes the document with the smaller hash
    assert [e.tolist() for e in sel.epochs] == [[0, 1], [0]]


def test_budget_plans():
    p = plan_budgets(["a", "b", "c"], [0.5, 0.3, 0.2], [None] * 3, [1000, 1000, 1000], total=2000)
    assert p.budgets == [1000, 600, 400] and p.total == 2000 and p.notes == []
    # No total: the largest mixture that repeats nothing (b limits: 300 / 0.25 = 1200).
    p = plan_budgets(["a", "b"], [3, 1], [None, None], [5000, 300], total=None)
    assert p.budgets == [900, 300] and p.total == 1200
    assert p.notes == ["weights sum to 4, not 1: normalised to a 0.75, b 0.25"]
    p = plan_budgets(["a", "b", "c"], [1, None, 1], [None, 500, None], [10**6] * 3, total=1500)
    assert p.budgets == [500, 500, 500]
    p = plan_budgets(["a", "b"], [None, None], [70, 30], [100, 100], total=None)
    assert p.budgets == [70, 30] and p.total == 100


# ----------------------------------------------------------------------------------------------- recipe errors


BASE = {
    "tokenizer": {"name_or_path": "gpt2"},
    "packing": {"seq_len": 8},
    "output": {"folder": "out"},
}


def mix(*sources, **top):
    return {**BASE, "sources": list(sources), **top}


def src(name, **kw):
    return {"name": name, "files": [f"{name}.jsonl"], **kw}


@pytest.mark.parametrize(
    "data, message",
    [
        (mix(src("a", weight=1), src("b", weight=-1)), r"sources\[1\]\.weight: Input should be greater than 0"),
        (mix(src("a", weight=1), src("b")), r"sources\[1\]: give exactly one of 'weight' \(a share\) or 'tokens'"),
        (mix(src("a", weight=1), src("b", weight=1, tokens=5)), r"sources\[1\]: give exactly one of 'weight'"),
        (mix(src("a", weight=1), src("a", weight=1)), r"sources\[1\]\.name: 'a' is already the name of sources\[0\]"),
        (mix(src("a", weight=1, tokenize={"fim_rate": 2})), r"sources\[0\]\.tokenize\.fim_rate: Input should be less"),
        (mix(src("a", weight=1, tokenize={"typo": 1})), r"sources\[0\]\.tokenize\.typo: unknown key"),
        (mix(src("a", weight=1), src("b", tokens=5)), r"tokens: required when 'sources' mix 'weight' and 'tokens'"),
        (mix(src("a", tokens=5), src("b", tokens=5), tokens=11), r"tokens: 11 differs from the sum .* \(10\)"),
        (mix(src("a", weight=1), src("b", tokens=5), tokens=5), r"tokens: 5 leaves nothing for the weighted"),
        (mix(src("a", weight=1), max_epochs=0), r"max_epochs: Input should be greater than or equal to 1"),
        (mix(), r"sources: the list is empty"),
        ({**BASE}, r"source: required key is missing \(or give 'sources' for a mixture\)"),
        ({**mix(src("a", weight=1)), "source": {"files": ["x.jsonl"]}}, r"sources: give either 'source'"),
        ({**BASE, "source": {"files": ["x.jsonl"]}, "tokens": 5}, r"tokens: only applies to a mixture"),
        ({**BASE, "source": {"files": ["x.jsonl"]}, "source_column": True}, r"source_column: only applies"),
    ],
)
def test_recipe_errors_name_the_entry(data, message):
    with pytest.raises(RecipeError, match=r"^r\.yaml: " + message):
        parse_recipe(data, "r.yaml")


def test_mixture_recipe_resolves_every_source_path(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(mix(src("a", weight=1), {"name": "b", "text_dir": "{stdlib}", "weight": 1})))
    r = load_recipe(p)
    assert r.sources[0].files == [str(tmp_path / "a.jsonl")]
    assert Path(r.sources[1].text_dir).is_dir() and r.source is None


# ----------------------------------------------------------------------------------------------- end to end


def make_docs(n: int, seed: int, lo: int = 3, hi: int = 25) -> list[str]:
    rng = random.Random(seed)
    return [f"{seed}-{i} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))) for i in range(n)]


def write_jsonl(path: Path, docs: list[str]) -> None:
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))


@pytest.fixture()
def corpus(tmp_path):
    docs = {"web": make_docs(60, 1), "code": make_docs(40, 2), "math": make_docs(6, 3, lo=3, hi=10)}
    for name, d in docs.items():
        write_jsonl(tmp_path / f"{name}.jsonl", d)
    return docs


def mixture_recipe(folder: Path, tokenizer_path: str, out: str = "out", **over) -> Path:
    data = {
        "name": "tiny mix",
        "sources": [
            {"name": "web", "files": ["web.jsonl"], "columns": {"text": "content"}, "weight": 0.5},
            {"name": "code", "files": ["code.jsonl"], "columns": {"text": "content"}, "weight": 0.3,
             "tokenize": {"fim_rate": 0.5}},
            {"name": "math", "files": ["math.jsonl"], "columns": {"text": "content"}, "weight": 0.2},
        ],
        "tokens": 1500,
        "max_epochs": 10,
        "source_column": True,
        "tokenizer": {"name_or_path": tokenizer_path},
        "packing": {"seq_len": 256, "strategy": "no_incomplete", "num_reduce_chunks": 3},
        "output": {"folder": out},
        "seed": 7,
        **over,
    }
    p = folder / f"{out}.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def segments_by_source(folder: Path, split: str = "train") -> dict[int, list[tuple[int, ...]]]:
    """Every segment (position restarts at 0) of the output with its source index, padding left out."""
    t = pq.read_table(sorted((folder / "data").glob(f"{split}-*.parquet")))
    out: dict[int, list[tuple[int, ...]]] = {}
    for ids, pos, srcs in zip(t["input_ids"].to_pylist(), t["position_ids"].to_pylist(), t["source"].to_pylist()):
        seg: list[int] = []
        seg_src = None
        for tok, p, s in zip(ids, pos, srcs):
            if s == -1:
                continue
            if p == 0 and seg:
                out.setdefault(seg_src, []).append(tuple(seg))
                seg = []
            if seg:
                assert s == seg_src  # one source per segment
            seg.append(tok)
            seg_src = s
        if seg:
            out.setdefault(seg_src, []).append(tuple(seg))
    return out


def ref_hash(text: str, seed: int) -> int:
    """The documented choice hash of a one-column document: sha256 of ``hfprep-mixture:{seed}:`` + its UTF-8 text."""
    return int.from_bytes(hashlib.sha256(f"hfprep-mixture:{seed}:{text}".encode()).digest()[:8], "big")


def test_end_to_end_budgets_epochs_source_column_and_card(tmp_path, corpus, tokenizer_path):
    summary = run_recipe(mixture_recipe(tmp_path, tokenizer_path))
    folder = tmp_path / "out"
    tok = load_tokenizer(tokenizer_path)
    eos = tok.eos_token_id
    segs = segments_by_source(folder)
    meta = read_card_metadata(folder / "README.md")["hfprep"]["mixture"]
    rows = {r["name"]: r for r in meta["sources"]}
    assert meta["tokens"] == 1500 and [r["name"] for r in meta["sources"]] == ["web", "code", "math"]
    # Non-FIM sources: the reference choice over plain `encode + eos` documents, recounted from the output.
    for idx, (name, weight) in enumerate([("web", 0.5), ("code", 0.3), ("math", 0.2)]):
        docs = corpus[name]
        budget = round(1500 * weight)
        got = segs[idx]
        # The card's numbers equal counts recomputed from the source column (no_incomplete loses nothing here).
        assert rows[name]["tokens_out"] == sum(len(s) for s in got) == rows[name]["tokens_chosen"]
        assert rows[name]["docs_chosen"] == len(got)
        assert rows[name]["share_asked"] == pytest.approx(weight)
        assert abs(rows[name]["tokens_chosen"] - budget) <= max(len(tok.encode(d)) + 1 for d in docs)
        if name == "code":
            continue
        toks = [(*tok.encode(d, add_special_tokens=False), eos) for d in docs]
        epochs, tokens = reference_choice([ref_hash(d, 7) for d in docs], [len(t) for t in toks], budget)
        assert Counter(got) == Counter(toks[i] for e in epochs for i in e)
        assert rows[name]["epochs"] == pytest.approx(tokens / sum(map(len, toks)), abs=1e-4)
    total_out = sum(r["tokens_out"] for r in rows.values())
    for r in rows.values():
        assert r["share_delivered"] == pytest.approx(r["tokens_out"] / total_out, abs=1e-6)
    assert rows["math"]["epochs"] > 2  # the small source is repeated in whole epochs
    assert validate_folder(folder).ok
    card = (folder / "README.md").read_text()
    assert "## Mixture" in card and "| math |" in card and (folder / "images" / "mixture_shares.png").is_file()
    assert "| `source` | list of int16 |" in card  # the column table names the source column
    assert "mixture: 3 sources, budget 1,500 tokens" in inspect_folder(folder)["text"]
    assert summary["mixture"]["sources"][2]["name"] == "math"
    screen = format_summary(summary)
    assert "mixture: 3 sources, budget 1,500 tokens" in screen and "  math " in screen


def test_fim_is_drawn_again_in_every_epoch(tmp_path, corpus, tokenizer_path):
    """A FIM source repeated twice: each document's second copy uses the draw of seed + 1."""
    from hfprep.tokenization.stage import TokenizeConfig, Tokenizer

    recipe = mixture_recipe(
        tmp_path, tokenizer_path,
        sources=[{"name": "code", "files": ["code.jsonl"], "columns": {"text": "content"}, "tokens": 10**9,
                  "tokenize": {"fim_rate": 0.5}}],
        tokens=None, max_epochs=1,
    )
    with pytest.raises(ConfigError, match=r"sources\[0\] \('code'\): a budget of 1,000,000,000 tokens needs \d+ epochs"):
        run_recipe(recipe)
    docs = corpus["code"]
    tok = load_tokenizer(tokenizer_path)
    cfg = TokenizeConfig(fim_rate=0.5, fim_seed=7)
    first = Tokenizer(tok, cfg)({"content": docs})
    second = Tokenizer(tok, cfg.model_copy(update={"fim_seed": 8}))({"content": docs})
    size = int(first.doc_offsets[-1]) + int(second.doc_offsets[-1])  # both epochs whole
    recipe = mixture_recipe(
        tmp_path, tokenizer_path, out="out2",
        sources=[{"name": "code", "files": ["code.jsonl"], "columns": {"text": "content"}, "tokens": size,
                  "tokenize": {"fim_rate": 0.5}}],
        tokens=None, max_epochs=2,
    )
    run_recipe(recipe)
    want = Counter()
    for flat in (first, second):
        for i in range(flat.num_docs):
            want[tuple(flat.input_ids[flat.doc_offsets[i] : flat.doc_offsets[i + 1]].tolist())] += 1
    got = Counter(segments_by_source(tmp_path / "out2")[0])
    e0 = {tuple(first.input_ids[first.doc_offsets[i] : first.doc_offsets[i + 1]].tolist()) for i in range(first.num_docs)}
    e1 = {tuple(second.input_ids[second.doc_offsets[i] : second.doc_offsets[i + 1]].tolist()) for i in range(second.num_docs)}
    assert e0 != e1  # the draws differ between epochs
    assert got == want  # every document twice: once with each epoch's draw


def test_same_rows_for_any_num_proc_and_row_order(tmp_path, corpus, tokenizer_path):
    run_recipe(mixture_recipe(tmp_path, tokenizer_path, out="a"))
    run_recipe(mixture_recipe(tmp_path, tokenizer_path, out="b", engine={"name": "datasets", "num_proc": 2}))
    # The sources' rows in another order choose the same documents and give the same packed rows.
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    for name, d in corpus.items():
        d = list(d)
        random.Random(5).shuffle(d)
        write_jsonl(shuffled / f"{name}.jsonl", d)
    run_recipe(mixture_recipe(shuffled, tokenizer_path, out="c"))

    def table(folder):
        return pq.read_table(sorted((folder / "data").glob("*.parquet")))

    a = table(tmp_path / "a")
    assert a.equals(table(tmp_path / "b"))
    for rel in ("data/train-00000-of-00001.parquet", "images/mixture_shares.png"):  # byte-identical files
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    assert a.equals(table(shuffled / "c"))
    # Streaming sources (read once, first max_rows rows) give the same rows as loaded ones.
    run_recipe(mixture_recipe(tmp_path, tokenizer_path, out="d", sources=[
        {**s, "streaming": True, "max_rows": 1000} for s in yaml.safe_load((tmp_path / "a.yaml").read_text())["sources"]
    ]))
    assert a.equals(table(tmp_path / "d"))


def test_heldout_split_holds_every_sources_heldout_documents_once(tmp_path, corpus, tokenizer_path):
    run_recipe(mixture_recipe(tmp_path, tokenizer_path, splits={"heldout_fraction": 0.25}, tokens=None,
                              max_epochs=1))
    tok = load_tokenizer(tokenizer_path)
    segs = segments_by_source(tmp_path / "out", "test")

    def heldout(d: str) -> bool:  # the documented split rule, written out
        blob = json.dumps([d], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return int.from_bytes(hashlib.sha256(blob.encode()).digest()[:8], "big") / 2.0**64 < 0.25

    for idx, name in enumerate(["web", "code", "math"]):
        held = [d for d in corpus[name] if heldout(d)]
        assert len(segs.get(idx, [])) == len(held) and held
        if name != "code":  # the FIM source's rows depend on the draw
            want = Counter((*tok.encode(d, add_special_tokens=False), tok.eos_token_id) for d in held)
            assert Counter(segs[idx]) == want
    # Weights only, no total: the largest mixture that repeats nothing, from the train side of every source.
    rows = read_card_metadata(tmp_path / "out" / "README.md")["hfprep"]["mixture"]["sources"]
    assert max(r["epochs"] for r in rows) == pytest.approx(1.0, abs=0.01)
    assert all(r["epochs"] <= 1.0 for r in rows)


def test_dense_packing_losses_per_source_and_no_source_column(tmp_path, corpus, tokenizer_path):
    run_recipe(mixture_recipe(tmp_path, tokenizer_path, source_column=False,
                              packing={"seq_len": 64, "strategy": "dense", "num_reduce_chunks": 3}))
    folder = tmp_path / "out"
    t = pq.read_table(sorted((folder / "data").glob("*.parquet")))
    assert t.column_names == ["input_ids", "position_ids", "loss_mask"]
    rows = read_card_metadata(folder / "README.md")["hfprep"]["mixture"]["sources"]
    lost = sum(r["tokens_lost"] for r in rows)
    chosen = sum(r["tokens_chosen"] for r in rows)
    assert sum(r["tokens_out"] for r in rows) == t.column("input_ids").combine_chunks().values.__len__()
    assert chosen - lost == sum(r["tokens_out"] for r in rows) and 0 <= lost < 64  # the run's last partial row
    for r in rows:
        assert r["tokens_lost"] == r["lost_dropped"] + r["lost_cut"]
    assert validate_folder(folder).ok


def test_documents_dropped_whole_are_reported_per_source(tmp_path, corpus, tokenizer_path):
    """no_incomplete drops documents longer than seq_len: per source, exactly the chosen documents over 24 tokens."""
    run_recipe(mixture_recipe(tmp_path, tokenizer_path, packing={"seq_len": 24, "strategy": "no_incomplete",
                                                                 "num_reduce_chunks": 2}))
    tok = load_tokenizer(tokenizer_path)
    rows = read_card_metadata(tmp_path / "out" / "README.md")["hfprep"]["mixture"]["sources"]
    for r, (name, weight) in zip(rows, [("web", 0.5), ("code", 0.3), ("math", 0.2)]):
        assert r["tokens_lost"] == r["lost_dropped"] and r["lost_cut"] == 0
        if name == "code":  # FIM rows: lengths depend on the draw
            continue
        docs = corpus[name]
        lens = [len(tok.encode(d, add_special_tokens=False)) + 1 for d in docs]
        epochs, _ = reference_choice([ref_hash(d, 7) for d in docs], lens, round(1500 * weight))
        assert r["lost_dropped"] == sum(lens[i] for e in epochs for i in e if lens[i] > 24) > 0


def test_mixture_errors_at_run_time(tmp_path, corpus, tokenizer_path):
    with pytest.raises(ConfigError, match=r"unknown engine 'spark'; choose 'datasets' or 'ray'"):
        run_recipe(mixture_recipe(tmp_path, tokenizer_path), engine="spark")
    bad = mixture_recipe(tmp_path, tokenizer_path, out="x", sources=[
        {"name": "web", "files": ["web.jsonl"], "weight": 1.0}])  # no rename: column 'text', not 'content'
    with pytest.raises(DataError, match=r"sources\[0\] \('web'\): strategy 'pretrain' needs column\(s\) \['content'\]"):
        run_recipe(bad)
    assert not (tmp_path / "x").exists()
    write_jsonl(tmp_path / "blank.jsonl", ["", ""])
    empty = mixture_recipe(tmp_path, tokenizer_path, out="y", sources=[
        {"name": "web", "files": ["web.jsonl"], "columns": {"text": "content"}, "weight": 0.5},
        {"name": "blank", "files": ["blank.jsonl"], "columns": {"text": "content"}, "weight": 0.5},
    ], tokenize={"on_empty": "drop"})
    with pytest.raises(DataError, match=r"sources\[1\] \('blank'\): the source has no tokens after tokenization"):
        run_recipe(empty)
    assert not (tmp_path / "y").exists()


def test_dense_mixture_packs_every_groups_tail_at_the_end(tmp_path, corpus, tokenizer_path):
    """Dense packing of a mixture with many reduce groups: tokens are conserved up to one partial row of the whole
    run (not one per group), that loss is reported (card stats and per source), and the source column still counts
    every written token; the same rows for num_proc 1 and 2 and streaming sources."""
    seq_len, chunks = 48, 16
    packing = {"seq_len": seq_len, "strategy": "dense", "num_reduce_chunks": chunks}
    run_recipe(mixture_recipe(tmp_path, tokenizer_path, packing=packing))
    folder = tmp_path / "out"
    t = pq.read_table(sorted((folder / "data").glob("*.parquet")))
    meta = read_card_metadata(folder / "README.md")["hfprep"]
    rows = meta["mixture"]["sources"]
    chosen = sum(r["tokens_chosen"] for r in rows)
    written = len(t.column("input_ids").combine_chunks().values)
    assert written % seq_len == 0 and all(len(r) == seq_len for r in t.column("input_ids").to_pylist())
    lost = chosen - written
    assert 0 <= lost < seq_len  # at most one partial row dropped in the whole run
    assert lost == sum(r["tokens_lost"] for r in rows) == int(meta["stats"]["train"]["tokens_dropped"])
    assert validate_folder(folder).ok  # hfprep validate recounts the card's table from the source column
    src = Counter(s for row in t.column("source").to_pylist() for s in row)
    for i, r in enumerate(rows):
        assert src[i] == r["tokens_out"] == r["tokens_chosen"] - r["tokens_lost"]
        assert r["tokens_lost"] == r["lost_dropped"] + r["lost_cut"]
    # Token conservation, recounted independently for the non-FIM sources: every chosen token id is written,
    # except at most seq_len - 1 of them.
    tok = load_tokenizer(tokenizer_path)
    eos = tok.eos_token_id
    ids_by_src: dict[int, Counter] = {}
    for ids, srcs in zip(t.column("input_ids").to_pylist(), t.column("source").to_pylist()):
        for x, s in zip(ids, srcs):
            ids_by_src.setdefault(s, Counter())[x] += 1
    for idx, name, weight in [(0, "web", 0.5), (2, "math", 0.2)]:
        toks = [(*tok.encode(d, add_special_tokens=False), eos) for d in corpus[name]]
        epochs, _ = reference_choice([ref_hash(d, 7) for d in corpus[name]], [len(x) for x in toks],
                                     round(1500 * weight))
        want = Counter(x for e in epochs for i in e for x in toks[i])
        missing = want - ids_by_src[idx]
        assert not (ids_by_src[idx] - want) and sum(missing.values()) == rows[idx]["tokens_lost"]
    table = lambda f: pq.read_table(sorted((f / "data").glob("*.parquet")))  # noqa: E731
    run_recipe(mixture_recipe(tmp_path, tokenizer_path, out="b", packing=packing,
                              engine={"name": "datasets", "num_proc": 2}))
    assert table(tmp_path / "b").equals(t)
    streamed = [{**s, "streaming": True} for s in yaml.safe_load((tmp_path / "out.yaml").read_text())["sources"]]
    run_recipe(mixture_recipe(tmp_path, tokenizer_path, out="c", packing=packing, sources=streamed))
    assert table(tmp_path / "c").equals(t)


def test_card_shows_no_local_folder_and_source_tokenize_paths_follow_the_recipe(tmp_path, tokenizer_path, monkeypatch):
    """Sources outside the recipe's folder (a file given by absolute path, a text folder) appear in the card as file
    names with sha256 / relative paths, never as this machine's folders; a per-source chat_template_path is read
    relative to the recipe, whatever the current folder."""
    outside = tmp_path / "elsewhere" / "deep"
    (outside / "texts").mkdir(parents=True)
    for i in range(4):
        (outside / "texts" / f"t{i}.txt").write_text(" ".join(WORDS[i:] * 3))
    write_jsonl(outside / "web.jsonl", make_docs(20, 1))
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "chat.jsonl").write_text("".join(
        json.dumps({"content": [{"role": "user", "content": f"q {w}"}, {"role": "assistant", "content": f"a {w}"}]})
        + "\n" for w in WORDS))
    (proj / "tmpl.jinja").write_text(
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}{% endfor %}")
    recipe = mixture_recipe(proj, tokenizer_path, sources=[
        {"name": "web", "files": [str(outside / "web.jsonl")], "columns": {"text": "content"}, "weight": 0.4},
        {"name": "txt", "text_dir": str(outside / "texts"), "glob": "*.txt", "columns": {"text": "content"},
         "weight": 0.3},
        {"name": "chat", "files": ["chat.jsonl"], "weight": 0.3,
         "tokenize": {"strategy": "sft", "chat_template_path": "tmpl.jinja"}},
    ], tokens=None, max_epochs=1)
    monkeypatch.chdir(tmp_path / "elsewhere")
    run_recipe(recipe)
    card = (proj / "out" / "README.md").read_text()
    assert str(tmp_path) not in card
    sha = hashlib.sha256((outside / "web.jsonl").read_bytes()).hexdigest()[:16]
    assert f"`web.jsonl` (sha256 {sha})" in card and "4 text files under `texts`" in card
    # The chat source went through the template (its role markers), which only the recipe's folder holds.
    tok = load_tokenizer(tokenizer_path)
    segs = segments_by_source(proj / "out")
    texts = [tok.decode(list(s)) for s in segs[2]]
    assert len(texts) == len(WORDS) and all(t.startswith("[user] q ") and "[assistant] a " in t for t in texts)


def test_a_changed_hash_rule_never_reuses_cached_tokenized_sources(tmp_path, corpus, tokenizer_path, monkeypatch):
    """datasets keys a cached map by the map function's attributes, not its code: the hash rule is one of them, so
    a cache written under another rule (an older hfprep) is not reused and the choice follows the rule in force."""
    import hfprep.mixture_run as mixture_run

    def chosen(out: str) -> list[int]:
        run_recipe(mixture_recipe(tmp_path, tokenizer_path, out=out, tokens=400, max_epochs=1))
        rows = read_card_metadata(tmp_path / out / "README.md")["hfprep"]["mixture"]["sources"]
        return [r["tokens_chosen"] for r in rows]

    first = chosen("a")
    assert chosen("b") == first  # same rule: same choice (cached or not)
    reverse = mixture_run.content_hashes
    monkeypatch.setattr(mixture_run, "content_hashes", lambda b, c, s: ~reverse(b, c, s))  # the opposite order
    monkeypatch.setattr(mixture_run, "CONTENT_HASH_RULE", "reversed, for this test")
    assert chosen("c") != first
