"""The KD-cache recipe: a pydantic model validated from YAML (unknown keys are errors naming key and file).

Example recipe (``recipes/kd_cache.yaml``)::

    input: {folder: ../out/quickstart, splits: [train]}
    teacher: {name_or_path: my-org/teacher-1b, revision: main}
    tokenizer: {name_or_path: my-org/teacher-1b}
    k: 32
    output: {folder: ../out/quickstart-kd}

Example:
    >>> cfg = KDCacheConfig.model_validate({"input": {"folder": "in"}, "teacher": {"name_or_path": "t"},
    ...     "tokenizer": {"name_or_path": "t"}, "output": {"folder": "out"}})
    >>> cfg.k, cfg.logprob_dtype, cfg.temperature
    (32, 'float16', 1.0)
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml

from ..errors import ConfigError
from ..tokenization.loading import looks_like_path


class _Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")


class KDInput(_Strict):
    """A prepared hfprep dataset folder (Hub layout) and the splits to cache.

    Attributes:
        folder: the prepared dataset folder (written by ``hfprep run``; relative to the recipe).
        splits: the splits to cache; ``null``: every split found under ``folder/data``.
    """

    folder: str
    splits: list[str] | None = None


class KDTeacher(_Strict):
    """The teacher: an ``AutoModelForCausalLM`` by Hub id or local path.

    Attributes:
        name_or_path: the teacher's Hub model id or local folder (relative to the recipe when it exists there); it
            must share the student's tokenizer.
        revision: branch, tag or commit of a Hub teacher (recorded in the cache's metadata).
        dtype: the teacher's weights and compute dtype; ``auto``: bfloat16 on CUDA, float32 on CPU.
        device: a torch device (``cuda``, ``cuda:1``, ``cpu``); ``auto``: CUDA when available, else CPU.
        attn_implementation: transformers' ``attn_implementation`` (``sdpa``, ``eager``, ``flash_attention_2``...);
            ``null``: the model's default.
        masking: ``position_ids`` passes packed position ids without an attention mask (transformers then builds
            the block-diagonal causal mask itself; works with eager, sdpa, flex and flash attention); ``4d`` passes
            an explicit block-diagonal mask (eager/sdpa only, O(L^2) memory). Both keep every document invisible
            to the others.
        trust_remote_code: let transformers run the model repo's own code (only for teachers you trust).
    """

    name_or_path: str
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"
    attn_implementation: str | None = None
    masking: Literal["position_ids", "4d"] = "position_ids"
    trust_remote_code: bool = False


class KDTokenizer(_Strict):
    """The tokenizer the input rows were prepared with (and the student's): fingerprint and vocab size come from it.

    Attributes:
        name_or_path: its Hub id or local folder (relative to the recipe when it exists there).
        revision: branch, tag or commit of a Hub tokenizer.
    """

    name_or_path: str
    revision: str | None = None


class KDOutput(_Strict):
    """Where the cache goes and how its Parquet is laid out.

    Attributes:
        folder: the cache folder (relative to the recipe).
        rows_per_shard: rows per Parquet shard; shards are the unit of resume (a killed run restarts at the last
            complete one).
        row_group_rows: rows per Parquet row group (readers split row groups across DataLoader workers and ranks).
        compression: Parquet codec (``zstd``, ``snappy``, ``none``...).
        compression_level: the codec's level (``null``: its default).
    """

    folder: str
    rows_per_shard: int = pydantic.Field(default=2048, ge=1)
    row_group_rows: int = pydantic.Field(default=64, ge=1)
    compression: str = "zstd"
    compression_level: int | None = None


class KDCacheConfig(_Strict):
    """Everything that defines a KD cache; two caches built from equal configs and inputs are byte-identical.

    Attributes:
        k: number of top log-probs kept per position (sorted descending).
        temperature: the teacher's logits are divided by it before the log-softmax (1.0 = raw distribution).
        logprob_dtype: ``float16`` (2 bytes, ~1e-3 relative error in [-30, 0]) or ``float32``.
        hidden_layers: indices into transformers' ``hidden_states`` to store as ``hidden_L{i}``.
        hidden_dtype: ``float16``, ``float32``, or ``bfloat16`` (kept losslessly as uint16 bit patterns).
        batch_size: rows per teacher forward pass.
        pad_token_id: the id padding uses in the input (default: the tokenizer's eos id).
    """

    input: KDInput
    teacher: KDTeacher
    tokenizer: KDTokenizer
    output: KDOutput
    k: int = pydantic.Field(default=32, ge=1)
    temperature: float = pydantic.Field(default=1.0, gt=0)
    logprob_dtype: Literal["float16", "float32"] = "float16"
    hidden_layers: list[int] = pydantic.Field(default_factory=list)
    hidden_dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    batch_size: int = pydantic.Field(default=8, ge=1)
    pad_token_id: int | None = None

    def fingerprint(self) -> str:
        """sha256 of the settings that change the cache's bytes (not device/batch size or the output folder)."""
        d = self.model_dump()
        d.pop("batch_size")
        d["output"] = {
            key: d["output"][key] for key in ("rows_per_shard", "row_group_rows", "compression", "compression_level")
        }
        d["teacher"] = {key: d["teacher"][key] for key in ("name_or_path", "revision", "masking")}
        d["input"] = {"splits": d["input"]["splits"]}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def _format_validation_error(e: pydantic.ValidationError, source: str) -> str:
    err = e.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "<root>"
    if err["type"] == "extra_forbidden":
        return f"{source}: unknown key {key!r}; remove it or check the spelling (see recipes/kd_cache.yaml)"
    if err["type"] == "missing":
        return f"{source}: missing required key {key!r}"
    return f"{source}: invalid value for {key!r}: {err['msg']}"


def config_from_dict(data: Any, source: str = "<dict>", base_dir: str | os.PathLike | None = None) -> KDCacheConfig:
    """Validate a recipe dict; relative folders resolve against ``base_dir`` (the recipe's folder).

    A recipe may be the bare KD config or hold it under a top-level ``kd:`` section.
    """
    if isinstance(data, dict) and set(data) == {"kd"}:
        data = data["kd"]
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a KD recipe must be a mapping of keys (input, teacher, tokenizer, output, ...)")
    try:
        cfg = KDCacheConfig.model_validate(data)
    except pydantic.ValidationError as e:
        raise ConfigError(_format_validation_error(e, source)) from None
    if base_dir is not None:
        base = Path(base_dir)

        def resolve(p: str) -> str:
            return str((base / p).resolve()) if not os.path.isabs(p) else p

        cfg.input.folder = resolve(cfg.input.folder)
        cfg.output.folder = resolve(cfg.output.folder)
        for section in (cfg.teacher, cfg.tokenizer):
            # a relative path (see looks_like_path) is relative to the recipe; anything else is a Hub id
            if not os.path.isabs(section.name_or_path) and looks_like_path(section.name_or_path, base):
                section.name_or_path = resolve(os.path.expanduser(section.name_or_path))
    return cfg


def load_kd_recipe(path: str | os.PathLike) -> KDCacheConfig:
    """Read and validate a KD recipe YAML file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"recipe file {str(p)!r} not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    return config_from_dict(data, source=str(p), base_dir=p.parent)
