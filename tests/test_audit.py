"""Loss audit: every check on hand-broken outputs (``hfprep validate`` exits 1 with one line naming the check, its
count and its first row/segment), the vectorised audit against a slow plain-Python reference on rows packed by
every packer, real chat templates, and the shipped offline recipes.

Expected counts come from :func:`reference_audit`, which walks rows, segments and tokens one at a time following
the rules written in ``docs/validate.md``; it shares no code with :mod:`hfprep.output.audit`.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from hfprep.cli import main
from hfprep.output.audit import AuditRules, LossAudit
from hfprep.output.card import read_card_metadata
from hfprep.output.layout import write_parquet
from hfprep.output.validate import validate_folder
from hfprep.pack.packers import PACKERS, pack_dense_flat, pack_dense_tails_flat
from hfprep.run import run_recipe
from hfprep.tokenization.loading import load_tokenizer
from hfprep.tokenization.stage import tokenized_features

SHARD = "data/train-00000-of-00001.parquet"
CHECK_NAMES = ("no_loss_document", "all_loss_document", "assistant_content_no_loss", "assistant_end_no_loss",
               "no_separator", "fim_sentinels", "no_loss_row")
DEFAULT_RULES = {"separator_ids": [], "fim_ids": [], "fim_every_document": False, "assistant_header_ids": [],
                 "end_of_turn_ids": [], "trailing_header": False, "assistant_loss": "some", "context_ids": [],
                 "all_loss": "allowed", "document_end_loss": True}


# ----------------------------------------------------------------------------------------------- the reference


def reference_cuts(packing: str, kwargs: dict) -> tuple[bool, bool]:
    """(may a segment lack its end, may it lack its start), from the packers' documented behaviour."""
    if packing == "no_incomplete":
        return False, False
    if packing == "bfd":
        overflow = kwargs.get("overflow", "split")
        return overflow != "drop", overflow == "split"
    return True, True


def reference_audit(rows, block, *, packing, kwargs=None, seq_len, pad_id, num_reduce_chunks=None, stats=None):
    """{check: (violations, cut pieces, first "row R, segment S" or None)}, one token at a time."""
    rules = {**DEFAULT_RULES, **block}
    kwargs = kwargs or {}
    cut_end, cut_start = reference_cuts(packing, kwargs)
    padded = packing != "dense" and kwargs.get("pad", True)
    sep, fims, header = rules["separator_ids"], rules["fim_ids"], rules["assistant_header_ids"]
    names = ["no_loss_document"]
    if rules["all_loss"] == "error" or (rules["all_loss"] == "context" and rules["context_ids"]):
        names.append("all_loss_document")
    if header:
        names += ["assistant_content_no_loss", "assistant_end_no_loss"]
    names += (["no_separator"] if sep else []) + (["fim_sentinels"] if fims else []) + ["no_loss_row"]
    tally = {n: {"errors": 0, "cut": 0, "soft": 0, "first": None, "first_soft": None} for n in names}

    def note(name, outcome, where):
        t = tally[name]
        t[{"error": "errors", "cut": "cut", "soft": "soft"}[outcome]] += 1
        key = {"error": "first", "soft": "first_soft"}.get(outcome)
        if key and t[key] is None:
            t[key] = where

    soft_segments = segments = 0
    for r, row in enumerate(rows):
        ids, pos, mask = list(row["input_ids"]), list(row["position_ids"]), list(row["loss_mask"])
        real = len(ids)
        while padded and real and ids[real - 1] == pad_id and pos[real - 1] == 0 and not mask[real - 1]:
            real -= 1
        starts = [i for i in range(real) if i == 0 or pos[i] == 0]
        whole_without_loss = False
        for s, (a, b) in enumerate(zip(starts, [*starts[1:], real], strict=True)):
            segments += 1
            where = f"row {r}, segment {s}"
            lacks_end, lacks_start, inside = cut_end and b == seq_len, cut_start and a == 0, cut_start and a > 0
            soft = False

            def judge(name, may_lack_end, may_lack_start, may_be_inside, where=where):
                nonlocal soft
                if may_lack_end or may_lack_start:
                    note(name, "cut", where)
                elif may_be_inside:
                    note(name, "soft", where)
                    soft = True
                else:
                    note(name, "error", where)

            seg, seg_mask = ids[a:b], mask[a:b]
            if not any(seg_mask):
                rest_may_lack = not rules["document_end_loss"]
                judge("no_loss_document", lacks_end, lacks_start and rest_may_lack, inside and rest_may_lack)
                whole_without_loss |= not (lacks_end or (lacks_start and rest_may_lack) or (inside and rest_may_lack))
            if "all_loss_document" in names and all(seg_mask):
                if rules["all_loss"] == "context":
                    if any(t in rules["context_ids"] for t in seg):
                        note("all_loss_document", "error", where)
                else:
                    judge("all_loss_document", False, lacks_start, inside)
            if sep and seg[-1] not in sep:
                judge("no_separator", lacks_end, False, False)
            if fims:
                counts = [seg.count(f) for f in fims]
                present = sum(c > 0 for c in counts)
                if any(c > 1 for c in counts):
                    note("fim_sentinels", "error", where)
                elif present < 3 and (rules["fim_every_document"] or present > 0):
                    judge("fim_sentinels", lacks_end, lacks_start, inside)
            if header:
                h, eot = len(header), rules["end_of_turn_ids"]
                heads = [i for i in range(a, b - h + 1) if ids[i : i + h] == header]
                if rules["trailing_header"]:
                    heads = heads[:-1]
                for p in heads:
                    body = p + h
                    nxt = next((q for q in heads if q >= body), b)
                    limit = min(b, nxt)
                    e = next((j for j in range(body, limit) if ids[j] in eot), None)
                    runs_out = e is None and nxt >= b
                    stop = e if e is not None else limit
                    cut = runs_out and lacks_end
                    if rules["assistant_loss"] == "every":
                        content_bad = not all(mask[p:stop])
                    else:
                        content_bad = not any(mask[body:stop])
                    end_bad = (e is not None and not mask[e]) or runs_out or (e is None and rules["assistant_loss"] == "every")
                    if content_bad:
                        note("assistant_content_no_loss", "cut" if cut else "error", where)
                    if end_bad:
                        note("assistant_end_no_loss", "cut" if cut else "error", where)
            soft_segments += soft
        if real and not any(mask[:real]):
            note("no_loss_row", "error" if whole_without_loss else "cut", f"row {r}, segment 0")
    budget = None
    if not cut_start:
        budget = 0
    else:
        st = {**(stats or {}), "segments": segments}
        pieces = max(0, st["segments"] - (st["docs_in"] - st["docs_dropped"])) if "docs_in" in st else None
        budget = (min(num_reduce_chunks, pieces) if pieces is not None else num_reduce_chunks) if packing == "dense" \
            else pieces
    over = budget is not None and soft_segments > budget
    out = {}
    for n, t in tally.items():
        if over:
            out[n] = (t["errors"] + t["soft"], t["cut"], t["first"] or t["first_soft"])
        else:
            out[n] = (t["errors"], t["cut"] + t["soft"], t["first"])
    return out


def audit_of(result) -> dict[str, tuple]:
    """An :class:`~hfprep.output.audit.AuditResult` in the reference's shape (places without the file name)."""
    return {
        n: (c["errors"], c["cut"], c["first"].split(".parquet ")[-1] if c["first"] else None)
        for n, c in result.checks.items()
    }


# ----------------------------------------------------------------------------------------------- synthetic documents

EOS, PRE, MID, SUF = 0, 1, 2, 3
USER, END_USER, ASST, END_ASST = 4, 5, 6, 7
HEAD, EOT, NL = (20, 21), 22, 24


def text(rng, lo, hi) -> list[int]:
    return [rng.randrange(30, 60) for _ in range(rng.randint(lo, hi))]


def make_doc(kind: str, rng: random.Random) -> tuple[list[int], list[bool]]:
    """One well-formed document of ``kind`` (its ids and loss mask), as hfprep's strategies lay them out."""
    if kind == "pretrain":
        ids = [*text(rng, 0, 30), EOS]
        return ids, [True] * len(ids)
    if kind == "fim":  # PSM, only_middle_not_masked
        pre, suf, mid = text(rng, 0, 8), text(rng, 0, 8), text(rng, 1, 8)
        ids = [PRE, *pre, SUF, *suf, MID, *mid, EOS]
        return ids, [False] * (len(ids) - len(mid) - 1) + [True] * (len(mid) + 1)
    if kind == "fim_raw":  # plain or FIM, loss everywhere
        if rng.random() < 0.5:
            ids = [*text(rng, 1, 20), EOS]
        else:
            ids = [SUF, *text(rng, 0, 6), PRE, *text(rng, 0, 6), MID, *text(rng, 0, 6), EOS]
        return ids, [True] * len(ids)
    if kind == "sft":  # the seed's role tokens
        ids, mask = [], []
        for _ in range(rng.randint(1, 3)):
            u, a = text(rng, 1, 8), text(rng, 1, 8)
            ids += [USER, *u, END_USER, ASST, *a, END_ASST]
            mask += [False] * (len(u) + 2) + [True] * (len(a) + 2)
        return [*ids, EOS], [*mask, True]
    if kind == "chat":  # a header template: [HEAD] content <eot> "\n", whitespace after the last eot without loss
        ids, mask = [9], [False]  # a bos-like opener
        for _ in range(rng.randint(1, 3)):
            u, a = text(rng, 1, 8), text(rng, 1, 8)
            ids += [23, *u, EOT, NL, *HEAD, NL, *a, EOT, NL]
            mask += [False] * (len(u) + 3 + len(HEAD) + 1) + [True] * (len(a) + 1) + [False]
        return ids, mask
    raise AssertionError(kind)


RULES = {
    "pretrain": {"separator_ids": [EOS]},
    "fim": {"separator_ids": [EOS], "fim_ids": [PRE, MID, SUF], "fim_every_document": True,
            "context_ids": [PRE, MID, SUF], "all_loss": "context"},
    "fim_raw": {"separator_ids": [EOS], "fim_ids": [PRE, MID, SUF]},
    "sft": {"assistant_header_ids": [ASST], "end_of_turn_ids": [END_ASST], "assistant_loss": "every",
            "context_ids": [USER, END_USER], "all_loss": "context"},
    "chat": {"assistant_header_ids": list(HEAD), "end_of_turn_ids": [EOT], "all_loss": "error",
             "document_end_loss": False},
}


def break_doc(ids: list[int], mask: list[bool], rng: random.Random) -> None:
    """Break one document in place, one of the ways a real pipeline breaks them."""
    how = rng.choice(["zero", "all", "last", "twice", "drop_sentinel", "eot"])
    if how == "zero":
        mask[:] = [False] * len(mask)
    elif how == "all":
        mask[:] = [True] * len(mask)
    elif how == "last":
        ids[-1] = 40
    elif how == "twice" and len(ids) > 2:
        ids[rng.randrange(1, len(ids) - 1)] = rng.choice([PRE, MID, SUF])
    elif how == "drop_sentinel":
        for i, t in enumerate(ids):
            if t in (PRE, MID, SUF, ASST, HEAD[0]):
                ids[i] = 41
                break
    else:
        ends = [i for i, t in enumerate(ids) if t in (END_ASST, EOT)]
        if ends:
            mask[rng.choice(ends)] = False


def packed_rows(kind, packing, kwargs, seq_len, seed, broken=0.15, groups=3):
    """Synthetic documents packed by hfprep's own packers as the engines call them; dense packs ``groups`` reduce
    groups and then their tails together. Returns (rows, stats)."""
    rng = random.Random(seed)
    docs = []
    for _ in range(rng.randint(20, 60)):
        ids, mask = make_doc(kind, rng)
        if rng.random() < broken:
            break_doc(ids, mask, rng)
        docs.append((ids, mask))

    def flat(part):
        lens = [len(d[0]) for d in part]
        off = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        ids = np.array([t for d in part for t in d[0]], np.uint32)
        mask = np.array([m for d in part for m in d[1]], bool)
        pos = np.concatenate([np.arange(n) for n in lens]).astype(np.uint32) if lens else np.zeros(0, np.uint32)
        return ids, pos, mask, off

    if packing != "dense":
        packed = PACKERS[packing](*flat(docs), seq_len, EOS, **kwargs)
        parts, stats = [packed], packed.stats
    else:
        parts, tails = [], []
        size = -(-len(docs) // groups)
        for g in range(groups):
            ids, pos, mask, off = flat(docs[g * size : (g + 1) * size])
            p = pack_dense_flat(ids, pos, mask, off, seq_len)
            parts.append(p)
            cut = p.stats.tokens_out
            bounds = sorted({cut, *[int(o) for o in off if cut < o <= off[-1]]})
            if len(bounds) > 1:  # the rest of the straddling document, then the documents after it
                tails.append((ids[cut:], pos[cut:], mask[cut:], np.array(bounds, np.int64) - cut))
        ids = np.concatenate([t[0] for t in tails])
        pos = np.concatenate([t[1] for t in tails])
        mask = np.concatenate([t[2] for t in tails])
        shifts = np.cumsum([0] + [len(t[0]) for t in tails[:-1]])
        off = np.concatenate([[0]] + [t[3][1:] + s for t, s in zip(tails, shifts, strict=True)])
        last = pack_dense_tails_flat(ids, pos, mask, off, seq_len)
        parts.append(last)
        stats = last.stats
        stats.docs_in = len(docs)  # every document starts in some group; only the tail pass drops whole ones
    rows = []
    for p in parts:
        rows += [{k: list(v.tolist()) for k, v in r.items()} for r in p.rows()]
    return rows, {"docs_in": stats.docs_in, "docs_dropped": stats.docs_dropped}


CASES = [
    ("dense", {}), ("no_incomplete", {}), ("bfd", {}), ("bfd", {"overflow": "truncate"}),
    ("bfd", {"overflow": "drop"}), ("bfd", {"pad": False}),
]


@pytest.mark.parametrize("kind", list(RULES))
@pytest.mark.parametrize(("packing", "kwargs"), CASES, ids=lambda c: str(c))
def test_vectorised_audit_equals_the_reference(kind, packing, kwargs):
    """Every check, violations and allowed cut pieces and the first place, on rows of every packer: healthy and
    broken documents, several seeds and row lengths, rows fed in uneven batches."""
    seen = {"errors": 0, "cut": 0}
    for seed in range(4):
        seq_len = (16, 24, 48, 96)[seed]
        rows, stats = packed_rows(kind, packing, kwargs, seq_len, seed)
        audit = LossAudit(AuditRules(**RULES[kind]), seq_len=seq_len, packing=packing, packing_kwargs=kwargs,
                          num_reduce_chunks=3, pad_token_id=EOS)
        table = pa.Table.from_pylist(rows, schema=tokenized_features().arrow_schema)
        for a, b in ((0, 3), (3, 4), (4, len(rows))):
            audit.add(table.slice(a, max(0, b - a)), row_base=a)
        expected = reference_audit(rows, RULES[kind], packing=packing, kwargs=kwargs, seq_len=seq_len, pad_id=EOS,
                                   num_reduce_chunks=3, stats=stats)
        segments = audit.documents
        got = audit_of(audit.result({**stats, "segments": segments}))
        assert got == expected, (seed, rows)
        seen["errors"] += sum(v[0] for v in got.values())
        seen["cut"] += sum(v[1] for v in got.values())
    assert seen["errors"] > 0  # the broken documents were found...
    if reference_cuts(packing, kwargs)[0]:
        assert seen["cut"] > 0  # ...and cut pieces were told apart from them


def test_healthy_documents_pass_every_packer():
    for kind in RULES:
        for packing, kwargs in CASES:
            rows, stats = packed_rows(kind, packing, kwargs, 24, seed=7, broken=0.0)
            got = reference_audit(rows, RULES[kind], packing=packing, kwargs=kwargs, seq_len=24, pad_id=EOS,
                                  num_reduce_chunks=3, stats=stats)
            assert all(v[0] == 0 for v in got.values()), (kind, packing, kwargs, got)
            audit = LossAudit(AuditRules(**RULES[kind]), seq_len=24, packing=packing, packing_kwargs=kwargs,
                              num_reduce_chunks=3, pad_token_id=EOS)
            audit.add(pa.Table.from_pylist(rows, schema=tokenized_features().arrow_schema))
            assert audit.result({**stats, "segments": audit.documents}).ok


def test_mid_row_pieces_beyond_the_packers_bound_are_violations():
    """bfd places a split document's last piece anywhere: one such piece per split document may lack the FIM
    sentinels; a second segment without them in the same split is more than the packer can have cut."""
    rng = random.Random(3)
    long_doc = [SUF, *text(rng, 30, 30), PRE, *text(rng, 5, 5), MID, *text(rng, 5, 5), EOS]  # 44 tokens: 32 + 12
    whole = [SUF, 31, PRE, *[32] * 12, MID, 33, 34, EOS]  # 19 tokens: bfd puts the 12-token piece after it
    short = [SUF, 31, PRE, 32, MID, 33, EOS]
    docs = [long_doc, whole, short, short]
    ids = np.array([t for d in docs for t in d], np.uint32)
    off = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
    pos = np.concatenate([np.arange(len(d)) for d in docs]).astype(np.uint32)
    packed = PACKERS["bfd"](ids, pos, np.ones(len(ids), bool), off, 32, EOS)
    rows = [{k: list(v.tolist()) for k, v in r.items()} for r in packed.rows()]
    stats = {"docs_in": 4, "docs_dropped": 0}

    def run(rows):
        audit = LossAudit(AuditRules(**RULES["fim_raw"]), seq_len=32, packing="bfd", pad_token_id=EOS)
        audit.add(pa.Table.from_pylist(rows, schema=tokenized_features().arrow_schema))
        return audit.result({**stats, "segments": audit.documents})

    ok = run(rows)
    assert [len(segments_of(r)) for r in rows] == [1, 2, 2]  # the 12-token piece sits inside row 1, not at its end
    assert ok.ok and ok.checks["fim_sentinels"]["cut"] == 2 and (ok.pieces_inside_rows, ok.pieces_budget) == (1, 1)
    # Drop the first sentinel of a short document: now two segments inside rows lack sentinels, the bound is one.
    broken = json.loads(json.dumps(rows))
    assert broken[2]["input_ids"][7:14] == short
    broken[2]["input_ids"][7] = 40
    bad = run(broken)
    expected = reference_audit(broken, RULES["fim_raw"], packing="bfd", seq_len=32, pad_id=EOS, stats=stats)
    assert expected["fim_sentinels"][0] == 2 and audit_of(bad) == expected


# ----------------------------------------------------------------------------------------------- hand-broken outputs


def _project(root: Path, tokenizer_path: str, kind: str, packing: dict) -> Path:
    rng = random.Random(11)
    words = ["alpha", "beta", "gamma", "import", "def", "fox", "lazy", "(x)", "="]

    def words_(lo, hi):
        return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))

    if kind == "pretrain":
        rows = [{"content": words_(1, 10)} for _ in range(40)]
        tokenize = {"strategy": "pretrain"}
    elif kind == "fim":
        rows = [{"prefix": words_(1, 5), "middle": words_(1, 4), "suffix": words_(1, 5)} for _ in range(30)]
        tokenize = {"strategy": "fim", "fim_format": "psm", "only_middle_not_masked": True}
    else:
        rows = [{"messages": [{"role": "user", "content": words_(1, 6)}, {"role": "assistant", "content": words_(1, 6)}]
                 * rng.randint(1, 2)} for _ in range(30)]
        tokenize = {"strategy": "sft", "text_column": "messages", "chat_template": "never"}
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "r.yaml").write_text(yaml.safe_dump({
        "source": {"files": ["data.jsonl"]}, "tokenizer": {"name_or_path": tokenizer_path}, "tokenize": tokenize,
        "packing": {"num_reduce_chunks": 2, **packing}, "output": {"folder": "out", "plots": False},
    }))
    run_recipe(root / "r.yaml")
    return root / "out"


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, tokenizer_path) -> dict[str, Path]:
    """Good outputs to break: pretrain, FIM (only the middle has loss) and role-token SFT, no_incomplete 48."""
    return {
        kind: _project(tmp_path_factory.mktemp(kind), tokenizer_path, kind,
                       {"seq_len": 48, "strategy": "no_incomplete"})
        for kind in ("pretrain", "fim", "sft")
    }


def rewrite(folder: Path, edit) -> list[dict]:
    """Edit the rows of the shard in place and keep the card's loss-token count true (plain Python), so that only
    the loss audit can see the damage."""
    rows = pq.read_table(folder / SHARD).to_pylist()
    edit(rows)
    write_parquet(pa.Table.from_pylist(rows, schema=tokenized_features().arrow_schema), folder / SHARD,
                  tokenized_features())
    card = folder / "README.md"
    text = card.read_text()
    meta = read_card_metadata(card)
    meta["hfprep"]["stats"]["train"]["loss_tokens"] = sum(sum(r["loss_mask"]) for r in rows)
    card.write_text("---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n" + text.split("\n---\n", 1)[1])
    return rows


def segments_of(row: dict) -> list[tuple[int, int]]:
    """(start, end) of the segments of a padded row, by hand: starts at position 0, padding stripped."""
    ids, pos, mask = row["input_ids"], row["position_ids"], row["loss_mask"]
    real = len(ids)
    while real and ids[real - 1] == ids[-1] and pos[real - 1] == 0 and not mask[real - 1]:
        real -= 1
    starts = [i for i in range(real) if pos[i] == 0]
    return list(zip(starts, [*starts[1:], real], strict=True))


def pick(rows: list[dict], want) -> tuple[int, int, int, int]:
    """The first (row, segment, start, end) with at least two segments in its row that ``want(row, a, b)`` likes."""
    for r, row in enumerate(rows):
        segs = segments_of(row)
        for s, (a, b) in enumerate(segs):
            if s > 0 and want(row, a, b):
                return r, s, a, b
    raise AssertionError("no such segment")


def validate_lines(folder: Path, capsys) -> tuple[int, list[str]]:
    code = main(["validate", str(folder)])
    err = capsys.readouterr().err
    return code, [ln.strip() for ln in err.splitlines() if ln.startswith("  ")]


def expect_failures(folder: Path, rows: list[dict], block: dict, capsys) -> dict:
    """validate exits 1 with exactly one line per check the reference finds violated, each naming its count and
    first row/segment (and the shard); returns the reference's findings."""
    meta = read_card_metadata(folder / "README.md")["hfprep"]
    expected = reference_audit(rows, block, packing=meta["packing"], kwargs=meta.get("packing_kwargs") or {},
                               seq_len=meta["seq_len"], pad_id=meta["tokenizer"]["pad_token_id"],
                               num_reduce_chunks=meta["num_reduce_chunks"], stats=meta["stats"]["train"])
    bad = {n: v for n, v in expected.items() if v[0]}
    code, lines = validate_lines(folder, capsys)
    assert code == 1 and bad
    assert len(lines) == len(bad), lines  # nothing but the audit's lines: one per violated check
    for (name, (count, _, first)), line in zip(bad.items(), lines, strict=True):
        assert line.startswith(f"loss audit of split 'train': {name}: {count:,} ")
        assert f"(first: {SHARD} {first});" in line
    return bad


def ids_of(tokenizer_path: str, *tokens: str) -> list[int]:
    tok = load_tokenizer(tokenizer_path)
    return [tok.convert_tokens_to_ids(t) for t in tokens]


def test_good_outputs_pass_and_record_their_rules(outputs, tokenizer_path, capsys):
    eos, pre, mid, suf, user, end_user, asst, end_asst, system, end_system = ids_of(
        tokenizer_path, "<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<user>", "</user>",
        "<assistant>", "</assistant>", "<system>", "</system>")
    expected = {
        "pretrain": {"separator_ids": [eos]},
        "fim": {"separator_ids": [eos], "fim_ids": [pre, mid, suf], "fim_every_document": True,
                "context_ids": sorted([pre, mid, suf]), "all_loss": "context"},
        "sft": {"assistant_header_ids": [asst], "end_of_turn_ids": [end_asst], "assistant_loss": "every",
                "context_ids": sorted([user, end_user, system, end_system]), "all_loss": "context"},
    }
    for kind, folder in outputs.items():
        assert read_card_metadata(folder / "README.md")["hfprep"]["loss_audit"] == expected[kind]
        code, lines = validate_lines(folder, capsys)
        assert code == 0 and not lines
        rows = pq.read_table(folder / SHARD).to_pylist()
        ref = reference_audit(rows, expected[kind], packing="no_incomplete", seq_len=48, pad_id=eos)
        assert all(v[0] == 0 for v in ref.values())
        card = (folder / "README.md").read_text()
        assert "## Loss audit" in card and "**error**" not in card


@pytest.fixture()
def broken(outputs, tmp_path):
    def copy(kind: str) -> Path:
        dst = tmp_path / kind
        shutil.copytree(outputs[kind], dst)
        return dst

    return copy


def test_zeroed_document_mask_is_a_document_with_no_loss(broken, tokenizer_path, capsys):
    folder = broken("pretrain")
    rows = pq.read_table(folder / SHARD).to_pylist()
    r, s, a, b = pick(rows, lambda row, a, b: True)

    def edit(rows):
        rows[r]["loss_mask"][a:b] = [False] * (b - a)

    rows = rewrite(folder, edit)
    bad = expect_failures(folder, rows, {"separator_ids": ids_of(tokenizer_path, "<|endoftext|>")}, capsys)
    assert bad == {"no_loss_document": (1, 0, f"row {r}, segment {s}")}


def test_a_row_with_no_loss_token(broken, tokenizer_path, capsys):
    folder = broken("pretrain")
    rows = pq.read_table(folder / SHARD).to_pylist()
    r, _, _, _ = pick(rows, lambda row, a, b: True)
    n_segments = len(segments_of(rows[r]))

    def edit(rows):
        rows[r]["loss_mask"] = [False] * len(rows[r]["loss_mask"])

    rows = rewrite(folder, edit)
    bad = expect_failures(folder, rows, {"separator_ids": ids_of(tokenizer_path, "<|endoftext|>")}, capsys)
    assert bad == {"no_loss_document": (n_segments, 0, f"row {r}, segment 0"),
                   "no_loss_row": (1, 0, f"row {r}, segment 0")}


def test_a_pretrain_document_without_its_eos(broken, tokenizer_path, capsys):
    folder = broken("pretrain")
    [eos] = ids_of(tokenizer_path, "<|endoftext|>")
    rows = pq.read_table(folder / SHARD).to_pylist()
    r, s, _, b = pick(rows, lambda row, a, b: b - a > 1)

    def edit(rows):
        rows[r]["input_ids"][b - 1] = rows[r]["input_ids"][b - 2] if rows[r]["input_ids"][b - 2] != eos else 5

    rows = rewrite(folder, edit)
    bad = expect_failures(folder, rows, {"separator_ids": [eos]}, capsys)
    assert bad == {"no_separator": (1, 0, f"row {r}, segment {s}")}


def test_a_duplicated_fim_sentinel(broken, tokenizer_path, capsys):
    folder = broken("fim")
    eos, pre, mid, suf = ids_of(tokenizer_path, "<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>")
    rows = pq.read_table(folder / SHARD).to_pylist()
    # A text token of the prefix (between <fim_prefix> and <fim_suffix>) becomes a second <fim_suffix>.
    r, s, a, _ = pick(rows, lambda row, a, b: row["input_ids"].index(suf, a) - a > 1)

    def edit(rows):
        rows[r]["input_ids"][a + 1] = suf

    rows = rewrite(folder, edit)
    block = {"separator_ids": [eos], "fim_ids": [pre, mid, suf], "fim_every_document": True,
             "context_ids": [pre, mid, suf], "all_loss": "context"}
    bad = expect_failures(folder, rows, block, capsys)
    assert bad == {"fim_sentinels": (1, 0, f"row {r}, segment {s}")}


def _sft_block(tokenizer_path):
    user, end_user, asst, end_asst, system, end_system = ids_of(
        tokenizer_path, "<user>", "</user>", "<assistant>", "</assistant>", "<system>", "</system>")
    return {"assistant_header_ids": [asst], "end_of_turn_ids": [end_asst], "assistant_loss": "every",
            "context_ids": [user, end_user, system, end_system], "all_loss": "context"}, asst, end_asst


def test_every_mask_bit_of_an_sft_document(broken, tokenizer_path, capsys):
    folder = broken("sft")
    block, _, _ = _sft_block(tokenizer_path)
    rows = pq.read_table(folder / SHARD).to_pylist()
    r, s, a, b = pick(rows, lambda row, a, b: True)

    def edit(rows):
        rows[r]["loss_mask"][a:b] = [True] * (b - a)

    rows = rewrite(folder, edit)
    assert expect_failures(folder, rows, block, capsys) == {"all_loss_document": (1, 0, f"row {r}, segment {s}")}


def test_an_assistant_turn_without_loss_on_its_end_of_turn_token(broken, tokenizer_path, capsys):
    folder = broken("sft")
    block, _, end_asst = _sft_block(tokenizer_path)
    rows = pq.read_table(folder / SHARD).to_pylist()
    r, s, a, _ = pick(rows, lambda row, a, b: end_asst in row["input_ids"][a:b])

    def edit(rows):
        rows[r]["loss_mask"][rows[r]["input_ids"].index(end_asst, a)] = False

    rows = rewrite(folder, edit)
    bad = expect_failures(folder, rows, block, capsys)
    assert bad == {"assistant_end_no_loss": (1, 0, f"row {r}, segment {s}")}


def test_an_assistant_turn_without_loss_on_its_content(broken, tokenizer_path, capsys):
    folder = broken("sft")
    block, asst, end_asst = _sft_block(tokenizer_path)
    rows = pq.read_table(folder / SHARD).to_pylist()
    r, s, a, _ = pick(rows, lambda row, a, b: asst in row["input_ids"][a:b])

    def edit(rows):
        p = rows[r]["input_ids"].index(asst, a)
        e = rows[r]["input_ids"].index(end_asst, p)
        rows[r]["loss_mask"][p + 1 : e] = [False] * (e - p - 1)

    rows = rewrite(folder, edit)
    bad = expect_failures(folder, rows, block, capsys)
    assert bad == {"assistant_content_no_loss": (1, 0, f"row {r}, segment {s}")}


@pytest.mark.audit_violations  # the run must report it: that is what this test checks
def test_a_source_text_holding_a_sentinel_string_is_reported_by_the_run_and_validate(tmp_path, tokenizer_path,
                                                                                     capsys):
    """Nothing is broken by hand: the tokenizer reads "<fim_suffix>" in a prefix as the special token, so the run's
    summary warns, the card's table says error, and validate refuses the folder."""
    rows = [{"prefix": f"def f{i}(x):", "middle": " return x", "suffix": "\nprint(1)"} for i in range(12)]
    rows[5]["prefix"] = "s = '<fim_suffix>'"
    (tmp_path / "fim.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({
        "source": {"files": ["fim.jsonl"]}, "tokenizer": {"name_or_path": tokenizer_path},
        "tokenize": {"strategy": "fim", "fim_format": "psm"},
        "packing": {"seq_len": 64, "strategy": "no_incomplete", "num_reduce_chunks": 1},
        "output": {"folder": "out", "plots": False},
    }))
    summary = run_recipe(tmp_path / "r.yaml")
    folder = tmp_path / "out"
    warned = [w for w in summary["warnings"] if w.startswith("loss audit")]
    assert len(warned) == 1 and warned[0].startswith("loss audit of split 'train': fim_sentinels: 1 document(s)")
    assert "| FIM documents without each sentinel once | 1 | **error** |" in (folder / "README.md").read_text()
    eos, pre, mid, suf = ids_of(tokenizer_path, "<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>")
    rows = pq.read_table(folder / SHARD).to_pylist()
    bad = expect_failures(folder, rows, {"separator_ids": [eos], "fim_ids": [pre, mid, suf],
                                         "fim_every_document": True}, capsys)
    assert list(bad) == ["fim_sentinels"] and bad["fim_sentinels"][0] == 1
    assert bad["fim_sentinels"][2] in warned[0]


# ----------------------------------------------------------------------------------------------- real chat templates


@pytest.fixture(scope="module")
def qwen3_chat(tmp_path_factory):
    """Qwen3's own chat template, packed bfd 96 (documents split into pieces) and no_incomplete 160."""
    from conftest import real_tokenizer
    from fetch_tokenizers import family_dir
    from test_real_tokenizers import CONVERSATIONS

    real_tokenizer("qwen3")
    root = tmp_path_factory.mktemp("qwen3")
    rng = random.Random(2)
    words = ["alpha", "beta", "café", "東京", "def f(x):", "return", "\n", "🙂", "fox", "2+2", "?"]
    convs = list(CONVERSATIONS)
    for _ in range(30):
        turns = [{"role": "system", "content": "Be brief."}] if rng.random() < 0.5 else []
        for _ in range(rng.randint(1, 3)):
            turns += [{"role": "user", "content": " ".join(rng.choices(words, k=rng.randint(1, 20)))},
                      {"role": "assistant", "content": " ".join(rng.choices(words, k=rng.randint(1, 30)))}]
        convs.append(turns)
    (root / "chat.jsonl").write_text("".join(json.dumps({"messages": c}) + "\n" for c in convs))
    out = {}
    for name, packing in {"bfd": {"seq_len": 96, "strategy": "bfd"},
                          "no_incomplete": {"seq_len": 160, "strategy": "no_incomplete"}}.items():
        (root / f"{name}.yaml").write_text(yaml.safe_dump({
            "source": {"files": ["chat.jsonl"]},
            "tokenizer": {"name_or_path": str(family_dir("qwen3")), "backend": "hf"},
            "tokenize": {"strategy": "sft", "text_column": "messages"},
            "packing": {"num_reduce_chunks": 2, **packing}, "output": {"folder": f"out_{name}", "plots": False},
        }))
        run_recipe(root / f"{name}.yaml")
        out[name] = root / f"out_{name}"
    return out


@pytest.mark.slow
def test_qwen3_chat_outputs_pass_and_match_the_reference(qwen3_chat):
    from conftest import real_tokenizer

    tok = real_tokenizer("qwen3")
    block = {"assistant_header_ids": tok.convert_tokens_to_ids(["<|im_start|>", "assistant"]),
             "end_of_turn_ids": [tok.convert_tokens_to_ids("<|im_end|>")], "all_loss": "error",
             "document_end_loss": False}
    for folder in qwen3_chat.values():
        meta = read_card_metadata(folder / "README.md")["hfprep"]
        assert meta["loss_audit"] == block
        report = validate_folder(folder)
        assert report.ok, report.violations
        rows = pq.read_table(folder / SHARD).to_pylist()
        expected = reference_audit(rows, block, packing=meta["packing"], seq_len=meta["seq_len"],
                                   pad_id=meta["tokenizer"]["pad_token_id"], stats=meta["stats"]["train"])
        assert audit_of(report.audits["train"]) == expected
        assert report.audits["train"].turns > 0  # assistant turns were found and checked
    assert any(v[1] for v in audit_of(validate_folder(qwen3_chat["bfd"]).audits["train"]).values())


@pytest.mark.slow
def test_qwen3_broken_turns_fail_with_the_right_check(qwen3_chat, tmp_path, capsys):
    folder = tmp_path / "ds"
    shutil.copytree(qwen3_chat["no_incomplete"], folder)
    meta = read_card_metadata(folder / "README.md")["hfprep"]
    block = meta["loss_audit"]
    im_end = block["end_of_turn_ids"][0]
    rows = pq.read_table(folder / SHARD).to_pylist()
    r1, s1, a1, b1 = next((r, s, a, b) for r, row in enumerate(rows) for s, (a, b) in enumerate(segments_of(row))
                          if im_end in row["input_ids"][a:b])
    r2, s2, a2, b2 = next((r, s, a, b) for r, row in enumerate(rows) for s, (a, b) in enumerate(segments_of(row))
                          if r > r1)

    def edit(rows):
        ids, mask = rows[r1]["input_ids"], rows[r1]["loss_mask"]
        mask[max(i for i in range(a1, b1) if ids[i] == im_end and mask[i])] = False  # an answer that never stops
        rows[r2]["loss_mask"][a2:b2] = [True] * (b2 - a2)  # a template that did not separate the roles

    rows = rewrite(folder, edit)
    bad = expect_failures(folder, rows, block, capsys)
    assert bad == {"all_loss_document": (1, 0, f"row {r2}, segment {s2}"),
                   "assistant_end_no_loss": (1, 0, f"row {r1}, segment {s1}")}


# ----------------------------------------------------------------------------------------------- shipped recipes


@pytest.mark.slow
@pytest.mark.parametrize("name", ["quickstart", "mixture_stdlib"])
def test_shipped_offline_recipes_pass_the_audit(name, tmp_path, monkeypatch):
    text = (Path(__file__).parents[1] / "recipes" / f"{name}.yaml").read_text()
    assert f"folder: ../out/{name}" in text
    (tmp_path / f"{name}.yaml").write_text(text.replace(f"folder: ../out/{name}", "folder: out"))
    monkeypatch.setenv("HFPREP_CACHE", str(tmp_path / "cache"))
    summary = run_recipe(tmp_path / f"{name}.yaml")
    assert not [w for w in summary["warnings"] if w.startswith("loss audit")]
    report = validate_folder(tmp_path / "out")
    assert report.ok, report.violations
    meta = read_card_metadata(tmp_path / "out" / "README.md")["hfprep"]
    for split, result in report.audits.items():
        rows = [r for p in sorted((tmp_path / "out" / "data").glob(f"{split}-*.parquet"))
                for r in pq.read_table(p, columns=["input_ids", "position_ids", "loss_mask"]).to_pylist()]
        expected = reference_audit(rows, meta["loss_audit"], packing=meta["packing"], seq_len=meta["seq_len"],
                                   pad_id=meta["tokenizer"]["pad_token_id"],
                                   num_reduce_chunks=meta["num_reduce_chunks"], stats=meta["stats"][split])
        assert audit_of(result) == expected
        assert result.documents > len(rows)  # dense rows hold several documents, all audited
