"""Render the README.md card of a KD cache from ``cards/kd_cache.md`` (YAML front matter + prose).

The YAML holds what ``load_dataset(folder)`` needs (``configs``, ``dataset_info`` with Array2D features) and an
``hfprep_kd`` block with everything a trainer must check before trusting the cache (k, temperature, alignment,
teacher id + revision, tokenizer fingerprint, vocab size, logits width, fill values, input hash).
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import yaml

from ..output.card import CardTarget, kd_snippet
from ..output.card import template_path as find_template
from ..output.layout import split_glob

TEMPLATE_NAME = "kd_cache.md"


def template_path() -> Path:
    """The KD card template (``cards/kd_cache.md``, shipped as ``hfprep/assets/kd_cache.md``)."""
    return find_template(TEMPLATE_NAME)


def kd_split(split_rows) -> str:
    """The split the card's snippet reads: ``train`` when the cache has it, else its first."""
    names = sorted(split_rows)
    return "train" if "train" in names or not names else names[0]


def card_yaml(meta: dict[str, Any], features, split_rows: dict[str, int], split_bytes: dict[str, int]) -> str:
    """The YAML front matter (without the ``---`` fences)."""
    doc = {
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": s, "path": split_glob(s)} for s in sorted(split_rows)],
            }
        ],
        "dataset_info": {
            "features": features._to_yaml_list(),
            "splits": [
                {"name": s, "num_bytes": split_bytes[s], "num_examples": n} for s, n in sorted(split_rows.items())
            ],
        },
        "tags": ["hfprep", "knowledge-distillation", "kd-cache"],
        "hfprep_kd": meta,
    }
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=120).rstrip("\n")


def render_card(
    meta: dict[str, Any], features, split_rows: dict[str, int], split_bytes: dict[str, int], folder_name: str
) -> str:
    """Fill the template; deterministic (no dates), so the same cache always gets the same README bytes."""
    hidden = meta["hidden_states"]
    if hidden["layers"]:
        hidden_txt = ", ".join(f"`hidden_L{i}`" for i in hidden["layers"]) + f" ({hidden['dtype']})"
        hidden_doc = (
            f"Columns {hidden_txt}: `hidden_L{{i}}` is {hidden['convention']}. "
            + (
                "Stored as the uint16 bit patterns of bfloat16 values (Parquet has no bf16); "
                "`hfprep.kd.bf16_bits_to_float` views them back without rounding. "
                if hidden["dtype"] == "bfloat16"
                else ""
            )
            + f"Padding positions hold {meta['fill']['hidden']}."
        )
    else:
        hidden_txt = "none"
        hidden_doc = "This cache stores no hidden states (response-based KD only)."
    stats = meta["stats"]
    values = {
        "yaml": card_yaml(meta, features, split_rows, split_bytes),
        "title": f"KD cache: {meta['teacher']['id']} on {meta['input']['name']} (top-{meta['k']})",
        "input_name": meta["input"]["name"],
        "teacher_id": meta["teacher"]["id"],
        "teacher_revision": meta["teacher"]["revision"],
        "k": meta["k"],
        "temperature": meta["temperature"],
        "rows": stats["rows"],
        "tokens": stats["tokens"],
        "targets": stats["targets"],
        "logprob_dtype": meta["logprob_dtype"],
        "hidden": hidden_txt,
        "bytes_on_disk": stats["bytes_on_disk"],
        "bytes_per_token": f"{stats['bytes_per_token']:.1f}",
        "tokenizer_fingerprint": meta["tokenizer"]["fingerprint"],
        "vocab_size": meta["tokenizer"]["vocab_size"],
        "logits_width": meta["teacher"]["logits_width"],
        "input_sha256": meta["input"]["sha256"],
        "alignment": meta["alignment"],
        "fill_id": meta["fill"]["topk_ids"],
        "fill_logprob": meta["fill"]["topk_logprobs"],
        "masking": meta["teacher"]["masking"],
        "normalisation": meta["normalisation"],
        "hidden_doc": hidden_doc,
        "kd_snippet": kd_snippet(CardTarget(folder_name), kd_split(split_rows), meta["k"]),
    }
    return string.Template(template_path().read_text()).substitute(values)
