"""hfprep: prepare language-model training data natively on Hugging Face ``datasets``.

Stages follow the data flow: :mod:`~hfprep.tokenize` -> :mod:`~hfprep.hashing` (keys) ->
:mod:`~hfprep.mapreduce` (group) -> :mod:`~hfprep.packing` -> write/push -> training
(:mod:`~hfprep.torch_data`, collators).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public names -> defining module. Imported on first use so `hfprep --help` and data-only code do not pay for
# torch/transformers at import time.
_EXPORTS: dict[str, str] = {
    "pack_bfd_flat": "bfd",
    "packing_report": "quality",
    "format_report": "quality",
    "ChatTemplateEncoder": "chat",
    "ConfigError": "errors",
    "DataCollatorForPackedLM": "collator",
    "DataError": "errors",
    "HfprepError": "errors",
    "HubError": "errors",
    "LMDataset": "torch_data",
    "MapReduceTransformBase": "mapreduce",
    "MapReduceTransformConfigBase": "mapreduce",
    "MapTransformBase": "mapreduce",
    "MapTransformConfigBase": "mapreduce",
    "OutputExistsError": "errors",
    "PackStats": "packing",
    "PrepareForTrainingTransform": "prepare",
    "PrepareForTrainingTransformConfig": "prepare",
    "Recipe": "recipe",
    "RecipeError": "recipe",
    "SourceSpec": "sources",
    "TokenizeConfig": "tokenize",
    "TokenizerError": "errors",
    "TransformBase": "mapreduce",
    "TransformConfigBase": "mapreduce",
    "array_hash": "hashing",
    "batch_keys": "hashing",
    "batch_nbytes": "collator",
    "block_causal_mask": "collator",
    "collate_lm": "torch_data",
    "fim_processing": "tokenize",
    "load_recipe": "recipe",
    "load_tokenizer": "tokenizer",
    "make_attention_mask_from_positions": "torch_data",
    "make_tokenize_fn": "tokenize",
    "pack_dense": "packing",
    "pack_no_incomplete": "packing",
    "pack_sequences": "packing",
    "position_fix_helper": "packing",
    "prepare_streaming": "streaming",
    "pretrain_processing": "tokenize",
    "process_row": "tokenize",
    "push_folder": "hub",
    "run_recipe": "pipeline",
    "sft_processing": "tokenize",
    "tokenize_batch": "tokenize",
    "tokenized_features": "tokenize",
    "train_tiny_tokenizer": "tokenizer",
    "validate_folder": "validate",
    "validate_folder_for_push": "hub",
}

__all__ = [
    "ChatTemplateEncoder",
    "ConfigError",
    "DataCollatorForPackedLM",
    "DataError",
    "HfprepError",
    "HubError",
    "LMDataset",
    "MapReduceTransformBase",
    "MapReduceTransformConfigBase",
    "MapTransformBase",
    "MapTransformConfigBase",
    "OutputExistsError",
    "PackStats",
    "PrepareForTrainingTransform",
    "PrepareForTrainingTransformConfig",
    "Recipe",
    "RecipeError",
    "SourceSpec",
    "TokenizeConfig",
    "TokenizerError",
    "TransformBase",
    "TransformConfigBase",
    "__version__",
    "array_hash",
    "batch_keys",
    "batch_nbytes",
    "block_causal_mask",
    "collate_lm",
    "fim_processing",
    "format_report",
    "load_recipe",
    "load_tokenizer",
    "make_attention_mask_from_positions",
    "make_tokenize_fn",
    "pack_bfd_flat",
    "pack_dense",
    "pack_no_incomplete",
    "pack_sequences",
    "packing_report",
    "position_fix_helper",
    "prepare_streaming",
    "pretrain_processing",
    "process_row",
    "push_folder",
    "run_recipe",
    "sft_processing",
    "tokenize_batch",
    "tokenized_features",
    "train_tiny_tokenizer",
    "validate_folder",
    "validate_folder_for_push",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hfprep' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from .bfd import pack_bfd_flat
    from .chat import ChatTemplateEncoder
    from .collator import DataCollatorForPackedLM, batch_nbytes, block_causal_mask
    from .errors import ConfigError, DataError, HfprepError, HubError, OutputExistsError, TokenizerError
    from .hashing import array_hash, batch_keys
    from .hub import push_folder, validate_folder_for_push
    from .mapreduce import (
        MapReduceTransformBase,
        MapReduceTransformConfigBase,
        MapTransformBase,
        MapTransformConfigBase,
        TransformBase,
        TransformConfigBase,
    )
    from .packing import PackStats, pack_dense, pack_no_incomplete, pack_sequences, position_fix_helper
    from .pipeline import run_recipe
    from .prepare import PrepareForTrainingTransform, PrepareForTrainingTransformConfig
    from .quality import format_report, packing_report
    from .recipe import Recipe, RecipeError, load_recipe
    from .sources import SourceSpec
    from .streaming import prepare_streaming
    from .tokenize import (
        TokenizeConfig,
        fim_processing,
        make_tokenize_fn,
        pretrain_processing,
        process_row,
        sft_processing,
        tokenize_batch,
        tokenized_features,
    )
    from .tokenizer import load_tokenizer, train_tiny_tokenizer
    from .torch_data import LMDataset, collate_lm, make_attention_mask_from_positions
    from .validate import validate_folder
