"""Knowledge-distillation caches: build teacher top-k log-probs / hidden states, read them fast, train with them.

* :mod:`~hfprep.kd.builder`: :func:`build_kd_cache` / :func:`run_kd_recipe` (``hfprep kd-cache RECIPE``).
* :mod:`~hfprep.kd.readers`: the seed's :class:`RBTopKIterableDataset` and :class:`FBDataset`, zero-copy and
  sharded over ranks and workers; :func:`load_kd_dataset` for the datasets-native path.
* :mod:`~hfprep.kd.collator` / :mod:`~hfprep.kd.losses` / :mod:`~hfprep.kd.trainer`: training with the cache.
* ``python -m hfprep.kd.example``: distil a tiny student from a tiny teacher on CPU.
"""

from .builder import build_kd_cache, format_summary, run_kd_recipe
from .collator import DataCollatorForKD
from .config import KDCacheConfig, config_from_dict, load_kd_recipe
from .format import FILL_ID, FILL_LOGPROB, bf16_bits_to_float
from .losses import forward_kl_topk, kd_loss, reverse_kl_topk
from .readers import FBDataset, RBTopKIterableDataset, load_kd_dataset


def __getattr__(name: str):
    if name == "KDTrainer":
        from .trainer import KDTrainer  # it imports transformers.Trainer (seconds): only when asked for

        return KDTrainer
    raise AttributeError(name)


__all__ = [
    "FILL_ID",
    "FILL_LOGPROB",
    "DataCollatorForKD",
    "FBDataset",
    "KDCacheConfig",
    "KDTrainer",
    "RBTopKIterableDataset",
    "bf16_bits_to_float",
    "build_kd_cache",
    "config_from_dict",
    "format_summary",
    "forward_kl_topk",
    "kd_loss",
    "load_kd_dataset",
    "load_kd_recipe",
    "reverse_kl_topk",
    "run_kd_recipe",
]
