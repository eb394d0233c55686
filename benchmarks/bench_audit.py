"""Loss audit throughput: ``LossAudit.add`` per record batch vs the other per-batch work of ``hfprep validate``.

Rows: dense-packed rows of ``seq_len`` 2048 from lognormal documents (median ~300 tokens) in three shapes: pretrain
(eos-terminated, loss everywhere), raw-document FIM (half the documents with the three sentinels) and chat SFT
(a 2-token assistant header, content with loss, an end-of-turn token, a trailing newline without loss; every
check of the audit runs). Each is cut into 1,024-row Arrow batches, as ``validate`` reads them, and timed:

* ``table_to_flat``: the Arrow -> numpy views every per-batch step starts from (the floor);
* ``batch_stats``: the card statistics ``validate`` already recomputes per batch;
* ``LossAudit.add``: the audit;
* a plain-Python loop over the same rows (segments and tokens one at a time, the no-loss check only), on the
  first batch, to show what vectorising buys.

Timing: one warm-up pass, then the fastest of ``reps`` passes over all batches (tokens per second of the whole
pass). Run: ``python benchmarks/bench_audit.py`` (``--quick``: fewer tokens and repetitions).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

from hfprep.output.audit import AuditRules, LossAudit
from hfprep.output.validate import batch_stats
from hfprep.pack.packers import pack_dense_flat
from hfprep.schema import flat_to_table, table_to_flat

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import best_of

SEQ_LEN = 2048
BATCH_ROWS = 1024
EOS, PRE, MID, SUF, HEAD, EOT, NL = 0, 1, 2, 3, (20, 21), 22, 24
RULES = {
    "pretrain": AuditRules(separator_ids=(EOS,)),
    "fim_raw": AuditRules(separator_ids=(EOS,), fim_ids=(PRE, MID, SUF)),
    "chat_sft": AuditRules(assistant_header_ids=HEAD, end_of_turn_ids=(EOT,), all_loss="error",
                           document_end_loss=False),
}


def make_batches(kind: str, tokens: int, seed: int = 0) -> list[pa.Table]:
    """Dense rows of ``kind`` documents, about ``tokens`` tokens, as 1,024-row tables."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(300), 1.0, size=tokens // 300 + 1), 8, 20 * SEQ_LEN).astype(np.int64)
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    ids = rng.integers(100, 60000, size=total).astype(np.uint32)
    loss = np.ones(total, np.bool_)
    starts, ends = offsets[:-1], offsets[1:]
    ids[ends - 1] = EOS
    if kind == "fim_raw":
        fim = starts[rng.random(len(starts)) < 0.5]
        for k, tok in enumerate((SUF, PRE, MID)):
            ids[fim + k] = tok
    if kind == "chat_sft":  # per 60 tokens: a 20-token prompt, [HEAD], content with loss; <eot> \n at the end
        at = np.arange(total) - np.repeat(starts, lengths)
        loss[:] = (at % 60) >= 22
        for k, tok in enumerate(HEAD):
            ids[(at % 60 == 20 + k) & (at < np.repeat(lengths, lengths) - 5)] = tok
        ids[ends - 2], loss[ends - 2] = EOT, True
        ids[ends - 1], loss[ends - 1] = NL, False
    pos = (np.arange(total) - np.repeat(starts, lengths)).astype(np.uint32)
    packed = pack_dense_flat(ids, pos, loss, offsets, SEQ_LEN)
    table = flat_to_table(packed.input_ids, packed.position_ids, packed.loss_mask, packed.row_offsets)
    return [table.slice(a, BATCH_ROWS) for a in range(0, table.num_rows, BATCH_ROWS)]


def python_no_loss(table: pa.Table) -> int:
    """The no-loss check, one segment and token at a time."""
    found = 0
    for ids, pos, mask in zip(*(table.column(c).to_pylist() for c in ("input_ids", "position_ids", "loss_mask")),
                              strict=True):
        del ids
        starts = [i for i in range(len(pos)) if i == 0 or pos[i] == 0]
        for a, b in zip(starts, [*starts[1:], len(pos)], strict=True):
            found += not any(mask[a:b])
    return found


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    tokens, reps = (4_000_000, 2) if args.quick else (32_000_000, 3)
    print(f"loss audit, dense rows of {SEQ_LEN}, {BATCH_ROWS}-row batches, ~{tokens / 1e6:.0f}M tokens per shape; "
          "Mtok/s (best of {reps})".replace("{reps}", str(reps)))
    print(f"{'shape':<10}{'tokens':>12}{'table_to_flat':>15}{'batch_stats':>13}{'LossAudit.add':>15}"
          f"{'audit/stats':>13}{'python loop':>13}{'audit/python':>14}")
    for kind, rules in RULES.items():
        batches = make_batches(kind, tokens)
        n = sum(int(pa.compute.sum(pa.compute.list_value_length(b.column("input_ids"))).as_py()) for b in batches)

        def audit(batches=batches, rules=rules) -> None:
            a = LossAudit(rules, seq_len=SEQ_LEN, packing="dense", num_reduce_chunks=64)
            base = 0
            for b in batches:
                a.add(b, base)
                base += b.num_rows
            assert a.result().ok

        t_flat = best_of(lambda batches=batches: [table_to_flat(b) for b in batches], reps)
        t_stats = best_of(lambda batches=batches: [batch_stats(b, EOS, False) for b in batches], reps)
        t_audit = best_of(audit, reps)
        first = batches[0]
        n_first = first.num_rows * SEQ_LEN
        t_py = best_of(lambda first=first: python_no_loss(first), 1)
        t_audit_first = best_of(lambda first=first, rules=rules: LossAudit(rules, seq_len=SEQ_LEN, packing="dense")
                             .add(first), reps)
        print(f"{kind:<10}{n:>12,}{n / t_flat / 1e6:>15.0f}{n / t_stats / 1e6:>13.0f}{n / t_audit / 1e6:>15.0f}"
              f"{t_audit / t_stats:>12.2f}x{n_first / t_py / 1e6:>13.2f}{t_py / t_audit_first:>13.0f}x")


if __name__ == "__main__":
    main()
