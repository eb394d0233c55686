"""hfprep: prepare language-model training data natively on Hugging Face ``datasets``.

Stages follow the data flow: :mod:`~hfprep.tokenize` -> :mod:`~hfprep.hashing` (keys) ->
:mod:`~hfprep.mapreduce` (group) -> :mod:`~hfprep.packing` -> write/push -> training
(:mod:`~hfprep.torch_data`, collators).
"""

from .errors import ConfigError, DataError, HfprepError, HubError, OutputExistsError, TokenizerError
from .hashing import array_hash, batch_keys
from .mapreduce import (
    MapReduceTransformBase,
    MapReduceTransformConfigBase,
    MapTransformBase,
    MapTransformConfigBase,
    TransformBase,
    TransformConfigBase,
)
from .packing import (
    PackStats,
    pack_dense,
    pack_no_incomplete,
    pack_sequences,
    position_fix_helper,
)
from .prepare import PrepareForTrainingTransform, PrepareForTrainingTransformConfig
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

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
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
    "TokenizeConfig",
    "TokenizerError",
    "TransformBase",
    "TransformConfigBase",
    "__version__",
    "array_hash",
    "batch_keys",
    "collate_lm",
    "fim_processing",
    "load_tokenizer",
    "make_attention_mask_from_positions",
    "make_tokenize_fn",
    "pack_dense",
    "pack_no_incomplete",
    "pack_sequences",
    "position_fix_helper",
    "pretrain_processing",
    "process_row",
    "sft_processing",
    "tokenize_batch",
    "tokenized_features",
    "train_tiny_tokenizer",
]
