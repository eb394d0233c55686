"""hfprep: prepare language-model training data natively on Hugging Face ``datasets``.

Stages follow the data flow: :mod:`~hfprep.tokenization.stage` -> :mod:`~hfprep.pack.keys` (keys) ->
:mod:`~hfprep.engines.mapreduce` (group) -> :mod:`~hfprep.pack.packers` -> write/push -> training
(:mod:`~hfprep.train.torch_data`, collators).
"""

from __future__ import annotations

import importlib
from typing import Any

from .version import __version__ as __version__

# The one export table: public name -> defining module; ``__all__`` is derived from it. Imported on first use so
# `hfprep --help` and data-only code do not pay for torch/transformers at import time.
_EXPORTS: dict[str, str] = {
    "ChatTemplateEncoder": "tokenization.chat",
    "ConfigError": "errors",
    "DataCollatorForPackedLM": "train.collator",
    "DataError": "errors",
    "HfprepError": "errors",
    "HubError": "errors",
    "LMDataset": "train.torch_data",
    "MapReduceTransformBase": "engines.mapreduce",
    "MapReduceTransformConfigBase": "engines.mapreduce",
    "MapTransformBase": "engines.mapreduce",
    "MapTransformConfigBase": "engines.mapreduce",
    "ModelCheckCallback": "train.callbacks",
    "OutputExistsError": "errors",
    "PackStats": "pack.packers",
    "PrepareForTrainingTransform": "pack.transform",
    "PrepareForTrainingTransformConfig": "pack.transform",
    "Recipe": "recipe",
    "RecipeError": "recipe",
    "SourceSpec": "source.loading",
    "TokenizeConfig": "tokenization.stage",
    "TokenizerError": "errors",
    "TransformBase": "engines.mapreduce",
    "TransformConfigBase": "engines.mapreduce",
    "array_hash": "pack.keys",
    "export": "commands.export",
    "batch_keys": "pack.keys",
    "batch_nbytes": "train.collator",
    "block_causal_mask": "train.collator",
    "check_dataset_for_model": "train.model_check",
    "collate_lm": "train.torch_data",
    "fim_processing": "tokenization.stage",
    "format_report": "output.quality",
    "load_recipe": "recipe",
    "load_tokenizer": "tokenization.loading",
    "make_attention_mask_from_positions": "train.torch_data",
    "make_tokenize_fn": "tokenization.stage",
    "pack_bfd_flat": "pack.bfd",
    "pack_dense": "pack.packers",
    "pack_no_incomplete": "pack.packers",
    "pack_sequences": "pack.packers",
    "packing_report": "output.quality",
    "position_fix_helper": "pack.packers",
    "prepare_streaming": "engines.streaming",
    "pretrain_processing": "tokenization.stage",
    "process_row": "tokenization.stage",
    "push_folder": "output.hub",
    "repack": "commands.repack",
    "run_recipe": "run",
    "sft_processing": "tokenization.stage",
    "tokenize_batch": "tokenization.stage",
    "tokenized_features": "tokenization.stage",
    "train_tiny_tokenizer": "tokenization.loading",
    "validate_folder": "output.validate",
    "validate_folder_for_push": "output.hub",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hfprep' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
