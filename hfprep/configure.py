"""From a recipe to the stages' objects: the tokenizer, the transform config and the transform.

The recipe's ``tokenize`` and ``packing`` sections become one
:class:`~hfprep.pack.transform.PrepareForTrainingTransformConfig` (the seed's config, plus every tokenize
option), so every engine gets the same transform. Used by :mod:`hfprep.run` and :mod:`hfprep.mixture_run`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from .errors import ConfigError
from .output.audit import AuditResult
from .output.layout import TOKENIZER_DIR
from .output.plots import length_bin_counts
from .output.validate import SplitStats
from .pack.transform import PrepareForTrainingTransform, PrepareForTrainingTransformConfig
from .recipe import Recipe
from .source.loading import (
    require_hub,
)
from .tokenization.loading import (
    check_tokenizer_folder,
    load_tokenizer,
)
from .tokenization.stage import TokenizeConfig
from .tokenization.training import train_cached_tokenizer, training_texts

PREPARE_TOKENIZE_FIELDS = ("strategy", "text_column", "on_empty", "backend")


SEED_FIELDS = ("fim_seed", "seed")  # tokenize options that take the recipe's top-level seed unless set


@dataclass
class TokenizerInfo:
    """The tokenizer a run used, as the card and the transform config describe it."""

    tokenizer: Any
    name_or_path: str  # what workers load (a local cache folder for a trained tokenizer)
    card_id: str  # what the card calls it
    revision: str | None
    bundle_dir: str | None = None  # a local tokenizer folder copied into the output under tokenizer/


def prepare_tokenizer(recipe: Recipe, source_ds, columns: list[str], streaming: bool) -> TokenizerInfo:
    sec = recipe.tokenizer
    if sec.train is not None:
        texts = training_texts(source_ds, columns, sec.train.max_docs, sec.train.max_chars, streaming)
        tok, path = train_cached_tokenizer(texts, sec.train.vocab_size, sec.train.cache_dir)
        card_id = f"{TOKENIZER_DIR}/ (byte-level BPE trained on the source by hfprep, bundled)"
        return TokenizerInfo(tok, path, card_id, None, path)
    assert sec.name_or_path is not None
    key = "tokenizer.name_or_path"
    check_tokenizer_folder(sec.name_or_path, key)  # a path that is no folder: say so, never ask the Hub about it
    if not os.path.isdir(sec.name_or_path):
        require_hub(f"{key} {sec.name_or_path!r}", f"set {key} to a local folder holding tokenizer.json")
    tok = load_tokenizer(sec.name_or_path, revision=sec.revision, key=key)
    if os.path.isdir(sec.name_or_path):
        # A local tokenizer travels with the dataset (a Hub id is enough to find a Hub one).
        card_id = f"{TOKENIZER_DIR}/ (local tokenizer {Path(sec.name_or_path).name!r}, bundled)"
        return TokenizerInfo(tok, sec.name_or_path, card_id, sec.revision, sec.name_or_path)
    return TokenizerInfo(tok, sec.name_or_path, sec.name_or_path, sec.revision)


def effective_tokenize_config(recipe: Recipe) -> TokenizeConfig:
    """The recipe's tokenize section with the tokenizer backend and (where the config has one) the seed."""
    update: dict[str, Any] = {"backend": recipe.tokenizer.backend}
    for name in SEED_FIELDS:
        if name in TokenizeConfig.model_fields and name not in recipe.tokenize.model_fields_set:
            update[name] = recipe.seed
    return recipe.tokenize.model_copy(update=update)


def transform_config(recipe: Recipe, tokenizer_name: str) -> PrepareForTrainingTransformConfig:
    """The seed's config for this recipe; tokenize options beyond the seed's go through ``fim_kwargs``."""
    tcfg = effective_tokenize_config(recipe)
    extra = {
        k: getattr(tcfg, k)
        for k in tcfg.model_fields_set | (set(SEED_FIELDS) & set(TokenizeConfig.model_fields))
        if k not in PREPARE_TOKENIZE_FIELDS
    }
    kwargs: dict[str, Any] = {
        "processing_strategy": tcfg.strategy,
        "packing_strategy": recipe.packing.strategy,
        "tokenizer_name": tokenizer_name,
        "tokenizer_revision": recipe.tokenizer.revision,
        "seq_len": recipe.packing.seq_len,
        "pad_token_id": recipe.packing.pad_token_id,
        "num_reduce_chunks": recipe.packing.num_reduce_chunks,
        "text_column": tcfg.text_column,
        "on_empty": tcfg.on_empty,
        "backend": tcfg.backend,
        "packing_kwargs": dict(recipe.packing.packing_kwargs),
        "fim_kwargs": extra,
    }
    if recipe.packing.reduce_memory_budget is not None:
        kwargs["reduce_memory_budget"] = recipe.packing.reduce_memory_budget
    cfg = PrepareForTrainingTransformConfig(**kwargs)
    try:
        cfg.tokenize_config()
    except ConfigError:
        # This version of the seed config cannot carry some tokenize options: keep the ones it accepts; the
        # datasets engine still applies the full tokenize section (see make_transform).
        allowed = {k: v for k, v in extra.items() if k in _seed_fim_keys()}
        cfg = cfg.model_copy(update={"fim_kwargs": allowed})
    return cfg


def _seed_fim_keys() -> set[str]:
    return {"only_middle_not_masked", "fim_format", "prefix_column", "middle_column", "suffix_column"}


class RecordingTransform(PrepareForTrainingTransform):
    """Also counts document lengths (fixed quarter-octave bins) on the reduce side, where documents are whole."""

    def reduce_group_with_tail(self, key: Any, table: pa.Table) -> tuple[pa.Table, dict, pa.Table | None]:
        packed, stats, tail = super().reduce_group_with_tail(key, table)
        lengths = pa.compute.list_value_length(table.column("input_ids")).to_numpy(zero_copy_only=False)
        stats["doc_length_bins"] = length_bin_counts(lengths)
        return packed, stats, tail


def make_transform(recipe: Recipe, info: TokenizerInfo) -> PrepareForTrainingTransform:
    """The recipe's transform, with its whole tokenize section (some options do not fit the seed's config)."""
    cfg = transform_config(recipe, info.name_or_path)
    return RecordingTransform(cfg, tokenizer=info.tokenizer, tokenize_config=effective_tokenize_config(recipe))


@dataclass
class SplitResult:
    name: str
    dataset: Any
    pack_stats: dict[str, Any]
    doc_bins: dict[int, int] | None
    rows_in: int | None
    backend_report: dict[str, Any] | None = None
    out_stats: SplitStats = field(default_factory=SplitStats)
    fill_bins: list[int] = field(default_factory=list)
    segment_bins: dict[int, int] = field(default_factory=dict)
    quality: dict[str, Any] | None = None
    audit: AuditResult | None = None  # the loss audit of the rows written (hfprep.run.keep_written_splits)
    documents: Any = None
    """The split's tokenized documents in the order the packer read them (a ``datasets.Dataset``), when the recipe
    asks for the documents config (``output.documents``)."""


def split_stats_from(stats: dict[str, Any]) -> tuple[dict[str, Any], dict[int, int] | None]:
    """A run's packing stats without the document-length bins, and the bins (None when not recorded)."""
    stats = dict(stats)
    return stats, stats.pop("doc_length_bins", None) or None
