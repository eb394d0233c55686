"""Distil a tiny student from a tiny teacher on CPU, end to end, in seconds: ``python -m hfprep.kd.example``.

Steps: train a tiny tokenizer -> prepare packed rows (pretrain strategy, dense packing) -> write them in the Hub
layout -> build a top-k KD cache with a random tiny Llama teacher -> train a smaller random student with
:class:`~hfprep.kd.trainer.KDTrainer` on :class:`~hfprep.kd.readers.RBTopKIterableDataset` +
:class:`~hfprep.kd.collator.DataCollatorForKD` -> print the KD loss per step (finite and decreasing).

The helpers here (:func:`tiny_llama`, :func:`save_tiny_teacher`, :func:`write_prepared`) are also what the tests
use to build their fixtures: no network, the real loading code runs on saved folders.

Example:
    >>> losses = main(steps=20, quiet=True)  # doctest: +SKIP
    >>> losses[-1] < losses[0]  # doctest: +SKIP
    True
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

from ..datasets_internals import arrow_table
from ..output.layout import atomic_output, write_split
from ..pack.transform import PrepareForTrainingTransform, PrepareForTrainingTransformConfig
from ..tokenization.loading import train_tiny_tokenizer
from .builder import build_kd_cache
from .collator import DataCollatorForKD
from .config import config_from_dict
from .readers import RBTopKIterableDataset
from .trainer import KDTrainer

EXAMPLE_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "def f(x):\n    return x * 2\n",
    "A sample text. Hello, World! A test string.",
    "for i in range(10):\n    print(i)\n",
    "How can I help you? Hi! I am fine, thanks.",
    "import numpy as np\nimport pandas as pd\n",
]


def tiny_llama(vocab_size: int, hidden: int = 32, layers: int = 2, heads: int = 2, seed: int = 0, **kw: Any):
    """A randomly initialised ``LlamaForCausalLM`` small enough for CPU tests (fp32, eval mode)."""
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        **kw,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


def save_tiny_teacher(path: str | os.PathLike, vocab_size: int, seed: int = 0, tokenizer=None, **kw: Any) -> str:
    """Save a tiny random teacher (and optionally its tokenizer) to ``path``; returns the path."""
    model = tiny_llama(vocab_size, seed=seed, **kw)
    model.save_pretrained(str(path))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    return str(path)


def write_prepared(
    tokenizer,
    folder: str | os.PathLike,
    texts: Sequence[str],
    seq_len: int = 32,
    packing: str = "dense",
    max_rows_per_shard: int | None = None,
    split: str = "train",
) -> Path:
    """Prepare ``texts`` (pretrain strategy) into packed rows and write them as a Hub-layout folder."""
    cfg = PrepareForTrainingTransformConfig(
        processing_strategy="pretrain",
        packing_strategy=packing,
        tokenizer_name=getattr(tokenizer, "name_or_path", "tokenizer"),
        seq_len=seq_len,
        num_reduce_chunks=2,
    )
    packed = PrepareForTrainingTransform(cfg, tokenizer=tokenizer).run(Dataset.from_dict({"content": list(texts)}))
    with atomic_output(folder, overwrite=True) as tmp:
        write_split(arrow_table(packed), tmp, split, max_rows_per_shard=max_rows_per_shard)
    return Path(folder)


def main(steps: int = 30, workdir: str | None = None, quiet: bool = False, lr: float = 3e-3) -> list[float]:
    """Run the whole example; returns the KD loss of every optimiser step."""
    root = Path(workdir or tempfile.mkdtemp(prefix="hfprep-kd-example-"))
    tok = train_tiny_tokenizer(EXAMPLE_TEXTS * 20, root / "tokenizer", vocab_size=300)
    write_prepared(tok, root / "prepared", EXAMPLE_TEXTS * 8, seq_len=32)
    save_tiny_teacher(root / "teacher", len(tok), seed=1, hidden=64)
    cfg = config_from_dict(
        {
            "input": {"folder": str(root / "prepared")},
            "teacher": {"name_or_path": str(root / "teacher")},
            "tokenizer": {"name_or_path": str(root / "tokenizer")},
            "output": {"folder": str(root / "kd"), "rows_per_shard": 16},
            "k": 16,
        }
    )
    summary = build_kd_cache(cfg, overwrite=True, progress=not quiet)
    train = RBTopKIterableDataset(str(root / "kd" / "data" / "train-*.parquet"), student_tokenizer=tok, k=16)
    student = tiny_llama(len(tok), hidden=32, seed=2)
    student.train()
    args = TrainingArguments(
        output_dir=str(root / "student"),
        per_device_train_batch_size=4,
        max_steps=steps,
        learning_rate=lr,
        lr_scheduler_type="constant",
        # The Trainer's own per-step log would print every loss a second time (this function prints them below).
        logging_strategy="no",
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=quiet,
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )
    trainer = KDTrainer(model=student, args=args, train_dataset=train, data_collator=DataCollatorForKD(), kd_alpha=1.0)
    trainer.train()
    losses = list(trainer.kd_losses)
    if not quiet:
        print(f"cache: {summary['tokens']} tokens, {summary['bytes_per_token']} bytes/token")
        for i, v in enumerate(losses):
            print(f"step {i + 1:3d}  kd_loss {v:.4f}")
    return losses


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--workdir", default=None)
    a = p.parse_args()
    main(steps=a.steps, workdir=a.workdir)
