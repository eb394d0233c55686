"""The streaming shard writer: the sharding rule, bytes that do not depend on how the rows arrive, the encodings, the
Arrow sizes, and errors in its writer threads."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hfprep.output.shards import COLUMN_ENCODINGS, ArrowSize, ShardWriter, arrow_nbytes, write_split
from hfprep.schema import row_features


def rows(n: int, seed: int = 0, lo: int = 1, hi: int = 40) -> pa.Table:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(lo, hi, n)
    off = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    total = int(off[-1])
    pos = (np.arange(total) - np.repeat(off[:-1], lengths)).astype(np.uint32)
    return pa.table({
        "input_ids": pa.ListArray.from_arrays(pa.array(off), pa.array(rng.integers(0, 128_000, total).astype(np.uint32))),
        "position_ids": pa.ListArray.from_arrays(pa.array(off), pa.array(pos)),
        "loss_mask": pa.ListArray.from_arrays(pa.array(off), pa.array(rng.random(total) < 0.8)),
    })


def digests(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((folder / "data").glob("*"))}


@pytest.mark.parametrize("chunks", [[1000], [1, 999], [7] * 142 + [6], [333, 0, 334, 333]])
def test_the_bytes_do_not_depend_on_how_the_rows_arrive(tmp_path, chunks):
    """The same rows handed over in different pieces (one table, single rows, odd slices, empty ones) give the same
    files: row groups are cut by the writer and written from one contiguous chunk."""
    table = rows(sum(chunks))
    reference = tmp_path / "ref"
    write_split(table, reference, "train", row_features(), max_rows_per_shard=300, row_group_rows=64)
    folder = tmp_path / "pieces"
    with ShardWriter(folder, "train", row_features(), max_rows_per_shard=300, row_group_rows=64, threads=2) as w:
        start = 0
        for n in chunks:
            w.write(table.slice(start, n).combine_chunks() if n else table.slice(0, 0))
            start += n
    assert digests(folder) == digests(reference)


def test_shards_and_row_groups_follow_the_rule(tmp_path):
    """Row groups of ``row_group_rows`` (cut short at a shard's row limit), shards closed before the row limit or the
    byte limit would be passed, counted from the rows' Arrow size: checked against a plain-Python replay of the rule."""
    table = rows(1000, seed=1)
    limit_bytes = 60_000
    paths = write_split(table, tmp_path, "train", row_features(), max_rows_per_shard=230, row_group_rows=50,
                        max_shard_bytes=limit_bytes)
    # Replay: a row group takes up to 50 rows, no more than the open shard has room for; a shard is closed before a
    # group that would pass 230 rows or the byte limit (offsets 4 bytes a row, ids and positions 4 a token, masks a bit).
    expected: list[list[int]] = []
    shard: list[int] = []
    shard_rows = shard_bytes = start = 0
    while start < table.num_rows:
        room = 50 if shard_rows == 230 else min(50, 230 - shard_rows)
        group = table.slice(start, room)
        tokens = len(group.column("input_ids").combine_chunks().values)
        size = 3 * 4 * group.num_rows + 2 * 4 * tokens + -(-tokens // 8)
        if shard and (shard_rows + group.num_rows > 230 or shard_bytes + size > limit_bytes):
            expected.append(shard)
            shard, shard_rows, shard_bytes = [], 0, 0
        shard.append(group.num_rows)
        shard_rows += group.num_rows
        shard_bytes += size
        start += group.num_rows
    expected.append(shard)
    got = [[pq.ParquetFile(tmp_path / p).metadata.row_group(g).num_rows
            for g in range(pq.ParquetFile(tmp_path / p).metadata.num_row_groups)] for p in paths]
    assert got == expected
    assert paths == [f"data/train-{i:05d}-of-{len(expected):05d}.parquet" for i in range(len(expected))]
    back = pa.concat_tables([pq.read_table(tmp_path / p) for p in paths])
    assert back.select(table.column_names).equals(table.cast(back.select(table.column_names).schema))


def test_token_columns_are_written_with_their_encodings(tmp_path):
    paths = write_split(rows(200), tmp_path, "train", row_features())
    meta = pq.ParquetFile(tmp_path / paths[0]).metadata
    for g in range(meta.num_row_groups):
        for c in range(meta.num_columns):
            col = meta.row_group(g).column(c)
            name = col.path_in_schema.split(".")[0]
            assert col.compression == "ZSTD"
            assert "PLAIN_DICTIONARY" not in col.encodings and "RLE_DICTIONARY" not in col.encodings
            assert COLUMN_ENCODINGS[name] in col.encodings, (name, col.encodings)


def test_arrow_nbytes_matches_pyarrow_for_a_fresh_table_and_adds_up():
    table = rows(500, seed=2)
    assert arrow_nbytes(table) == table.combine_chunks().nbytes
    writer_size = ArrowSize()
    for a in range(0, 500, 33):
        writer_size.add(table.slice(a, 33))
    assert writer_size.nbytes == arrow_nbytes(table)


def test_an_error_in_a_writer_thread_is_raised_and_nothing_is_left(tmp_path, monkeypatch):
    """A failing write (a full disk) surfaces in the producer's thread; abort removes every file the writer made."""
    import hfprep.output.shards as shards

    real = shards.pq.ParquetWriter

    class Failing(real):
        def write_table(self, *a, **k):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(shards.pq, "ParquetWriter", Failing)
    writer = ShardWriter(tmp_path, "train", row_features(), row_group_rows=10, max_rows_per_shard=30)
    with pytest.raises(OSError, match="No space left"), writer:
        for _ in range(20):
            writer.write(rows(10))
    assert list((tmp_path / "data").iterdir()) == []
