"""The ``documents`` config: the tokenized, unpacked documents of a prepared dataset, next to its packed rows.

With ``output.documents: true`` a run also writes every split's documents as a second config of the same folder
(``load_dataset(folder, "documents")``), so that trainers and tools that pack (or index) their own way start from
the one tokenized copy instead of re-tokenizing on every launch::

    documents/<split>-XXXXX-of-YYYYY.parquet    the layout push_to_hub gives a config named ``documents``

* **Rows** (the row contract, :func:`hfprep.schema.document_features`): one document per row, ``input_ids``
  list<uint32> and ``loss_mask`` list<bool> of the same length (positions are ``0..n-1`` in every document, so
  they are not stored), plus ``source`` int16 (the index of its source) for a mixture.
* **Order**: the order the packer reads them (:data:`ORDER_RULE`): ascending key
  ``array_hash(input_ids) % num_reduce_chunks``, input order inside a key (for a mixture, the mixing order; a
  document repeated by the mixture's epochs appears once per repeat). The key is recomputed from the ids, so
  ``hfprep repack`` packs the groups again in one streaming pass and ``hfprep validate`` checks the order.
* **Card**: the ``configs`` list names both configs; ``hfprep.documents`` (:func:`documents_block`) records what a
  repack needs besides the ``hfprep`` block's tokenizer, packing and stats: the recipe and the provenance lines of
  the card; a short section says what the config is and how to use it (:func:`documents_section`).
* **Push**: ``hfprep push`` uploads both configs in the same commits (:mod:`hfprep.output.hub`); the documents of
  config ``NAME`` become config ``NAME-documents`` (``documents`` for the default config).

Example:
    >>> import tempfile, pyarrow as pa
    >>> from hfprep.schema import document_features
    >>> t = pa.table({"input_ids": pa.array([[5, 6, 2]], pa.list_(pa.uint32())), "loss_mask": [[True] * 3]})
    >>> write_documents(t, tempfile.mkdtemp(), "train", document_features())
    ['documents/train-00000-of-00001.parquet']
    >>> documents_config_name("default"), documents_config_name("fr")
    ('documents', 'fr-documents')
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from ..schema import DOCUMENT_COLUMNS, SOURCE_COLUMN
from .layout import DEFAULT_MAX_SHARD_BYTES, DEFAULT_ROW_GROUP_ROWS, DOCUMENTS_DIR, split_glob, write_split

DOCUMENTS_CONFIG = "documents"
ORDER_RULE = (
    "ascending key array_hash(input_ids) % num_reduce_chunks, input order inside a key (the order the packer "
    "reads them)"
)


def documents_config_name(config_name: str = "default") -> str:
    """The config that holds the documents of config ``config_name``: ``documents`` for the default config,
    ``<config_name>-documents`` for another (what ``hfprep push --config-name`` writes)."""
    return DOCUMENTS_CONFIG if config_name == "default" else f"{config_name}-{DOCUMENTS_CONFIG}"


def write_documents(
    table: pa.Table,
    folder: str | os.PathLike,
    split: str,
    features,
    *,
    max_rows_per_shard: int | None = None,
    max_shard_bytes: int | None = DEFAULT_MAX_SHARD_BYTES,
    row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
) -> list[str]:
    """Write one split's documents under ``folder/documents/`` with the packed splits' writer
    (:func:`~hfprep.output.layout.write_split`: same shard sizes, row groups and encodings); returns the paths."""
    return write_split(
        table.select(list(features)), folder, split, features=features, max_rows_per_shard=max_rows_per_shard,
        max_shard_bytes=max_shard_bytes, row_group_rows=row_group_rows, data_dir=DOCUMENTS_DIR,
    )


def documents_entry(splits: list[str], config_name: str = DOCUMENTS_CONFIG) -> dict[str, Any]:
    """The card's ``configs`` entry of the documents config.

    Example:
        >>> documents_entry(["train"])
        {'config_name': 'documents', 'data_files': [{'split': 'train', 'path': 'documents/train-*'}]}
    """
    return {"config_name": config_name, "data_files": [{"split": s, "path": split_glob(s, DOCUMENTS_DIR)} for s in splits]}


def documents_block(with_source: bool, provenance: Mapping[str, Any]) -> dict[str, Any]:
    """The ``hfprep.documents`` block of the card: the config's name, columns and order, and ``provenance``: the
    recipe and the card facts that only the run knew (source line, source revision, tokenizer label, backend
    report), which ``hfprep repack`` copies into the card of what it writes, having neither source nor tokenizer."""
    return {
        "config_name": DOCUMENTS_CONFIG,
        "columns": [*DOCUMENT_COLUMNS, *([SOURCE_COLUMN] if with_source else [])],
        "order": ORDER_RULE,
        "provenance": dict(provenance),
    }


def documents_section(snippet: str, stats: Mapping[str, Mapping[str, Any]], block: Mapping[str, Any],
                      repacked_from: Mapping[str, Any] | None = None) -> str:
    """The card's section on the documents config: what it holds, and ``snippet`` (how to load, repack and export it,
    :func:`hfprep.output.card.documents_snippet`, rendered again for the repo by a push)."""
    counts = ", ".join(
        f"`{split}` {int(s.get('docs_in', 0)):,} documents / {int(s.get('tokens_in', 0)):,} tokens"
        for split, s in stats.items()
    )
    source = " and `source` (int16: the index of its source in the mixture table)" if SOURCE_COLUMN in block.get(
        "columns", ()) else ""
    config = block.get("config_name", DOCUMENTS_CONFIG)
    lines = [
        "## Documents config",
        "",
        f"Config `{config}` holds the tokenized documents before packing, one per row: `input_ids` (uint32) and "
        f"`loss_mask` (bool){source}; positions are 0..n-1 in every document. {counts}. They are in the order the "
        "packer reads them (by hash key `array_hash(input_ids) % num_reduce_chunks`, input order inside a key), so "
        "they pack again at another length without the tokenizer or the source, or go to other trainers:",
        "",
        snippet,
        "",
    ]
    if repacked_from:
        source = repacked_from["source"]
        named = source if " " in source else f"`{source}`"  # a repo id, or "a local folder"
        lines += [
            f"This dataset was repacked by `hfprep repack` from {named} @ `{repacked_from['revision']}` (its documents "
            "config; no tokenizer, no source read).",
            "",
        ]
    return "\n".join(lines) + "\n"
