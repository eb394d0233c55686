"""Recipes: one YAML file that says everything about a prepared dataset, validated by pydantic models.

A recipe has these sections (only ``source``, ``tokenizer``, ``packing`` and ``output`` are required)::

    name: quickstart                  # free text, shown in the card
    source:   {text_dir: "{stdlib}", glob: "**/*.py", max_files: 400}   # or hub: / files:
    tokenizer: {train: {vocab_size: 2048}}                             # or name_or_path: + revision:
    tokenize: {strategy: pretrain, on_empty: drop}                    # any TokenizeConfig field
    packing:  {seq_len: 512, strategy: dense, num_reduce_chunks: 4}
    splits:   {heldout_fraction: 0.05, heldout_name: test}
    output:   {folder: ../out/quickstart}
    hub:      {repo_id: user/name, private: true, license: apache-2.0, tags: [code]}  # config_name: fr
    engine:   {name: datasets, num_proc: 2}
    seed: 0

A mixture lists ``sources:`` instead of ``source:`` (each a source spec + ``name`` + ``weight`` or ``tokens``, and
optionally its own ``tokenize`` keys), with top-level ``tokens``, ``max_epochs`` and ``source_column``; see
:mod:`hfprep.mixture`.

Every key, with its type, default and rules: ``docs/recipes.md``, generated from these models by
:mod:`hfprep.recipe_reference`. Unknown keys, wrong types and missing fields are one :class:`RecipeError` line
naming the file and the key.
Relative paths resolve against the recipe file's folder; ``{stdlib}`` in ``source.text_dir`` is the running
Python's standard-library folder (``sysconfig.get_paths()["stdlib"]``), so the quickstart needs no download.

Example:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "r.yaml")
    >>> _ = open(path, "w").write("source: {files: [a.jsonl]}\\ntokenizer: {name_or_path: gpt2}\\n"
    ...                           "packing: {seq_len: 8}\\noutput: {folder: out}\\n")
    >>> r = load_recipe(path)
    >>> r.packing.seq_len, os.path.basename(r.output.folder)
    (8, 'out')
    >>> _ = open(path, "w").write("source: {files: [a.jsonl]}\\ntokenizer: {name_or_path: gpt2}\\n"
    ...                           "packing: {seq_len: eight}\\noutput: {folder: out}\\n")
    >>> load_recipe(path)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    hfprep.errors.RecipeError: ...r.yaml: packing.seq_len: Input should be a valid integer...
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml

from .engines.direct import DEFAULT_MEMORY_BUDGET
from .errors import UNKNOWN_KEY, RecipeError, format_validation_error
from .mixture import check_mixture_recipe
from .output.layout import DEFAULT_MAX_SHARD_BYTES, DEFAULT_ROW_GROUP_ROWS
from .pack.packers import PACKERS
from .tokenization.loading import looks_like_path
from .tokenization.stage import TokenizeConfig

STDLIB_PLACEHOLDER = "{stdlib}"
"""Placeholder in ``source.text_dir``: the running Python's standard-library folder."""

SourceFormat = Literal["auto", "jsonl", "json", "parquet", "csv", "text"]


class _Section(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")


class SourceConfig(_Section):
    """Where the raw rows come from: exactly one of ``hub``, ``files`` or ``text_dir``.

    Attributes:
        hub: Hub dataset id (``HuggingFaceFW/fineweb-edu``), with ``config``, ``split`` and ``revision``.
        config: ``hub`` only: the dataset's configuration (subset) name, e.g. ``sample-10BT``.
        split: ``hub`` only: the split to read.
        revision: ``hub`` only: a branch, tag or commit of the dataset repo (pin a commit for exact reproduction).
        files: local jsonl/json/parquet/csv/text files or glob patterns (relative to the recipe); a single string
            is a one-item list.
        text_dir: a folder of text files, one document per file (column ``text``, plus ``path``), read in
            sorted path order; ``glob`` picks the files and ``max_files`` keeps the first N of them.
        glob: ``text_dir`` only: which files of the folder to read (``**`` recurses), e.g. ``**/*.py``.
        max_files: ``text_dir`` only: read the first N matching files (in sorted path order).
        format: ``files`` only: file format; ``auto`` picks it from the file extension.
        streaming: read the source as a stream instead of downloading and caching it whole first: rows are
            tokenized and keyed as they arrive and packed in bounded memory (not with the ``ray`` engine).
        max_rows: keep only the first N rows of the source (before the split).
        columns: renames applied to the source, ``{source_column: new_name}`` (e.g. ``{text: content}``).
        encoding: ``text_dir`` files' text encoding.
        decode_errors: ``text_dir`` bytes that do not decode: ``strict`` (default) refuses in one line naming the
            file, line and column; ``replace`` turns them into U+FFFD and counts them (summary and card).
    """

    hub: str | None = None
    config: str | None = None
    split: str = "train"
    revision: str | None = None
    files: list[str] | None = None
    text_dir: str | None = None
    glob: str = "**/*"
    max_files: int | None = pydantic.Field(default=None, ge=1)
    encoding: str = "utf-8"
    decode_errors: Literal["strict", "replace"] = "strict"
    format: SourceFormat = "auto"
    streaming: bool = False
    max_rows: int | None = pydantic.Field(default=None, ge=1)
    columns: dict[str, str] = pydantic.Field(default_factory=dict)

    @pydantic.field_validator("files", mode="before")
    @classmethod
    def _one_file(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @pydantic.model_validator(mode="after")
    def _one_kind(self) -> SourceConfig:
        kinds = [k for k in ("hub", "files", "text_dir") if getattr(self, k) is not None]
        if len(kinds) != 1:
            got = f"got {kinds}" if kinds else "got none"
            raise ValueError(f"give exactly one of 'hub', 'files' or 'text_dir' ({got})")
        if self.files is not None and not self.files:
            raise ValueError("'files' is empty; list at least one file or glob")
        return self

    @property
    def kind(self) -> Literal["hub", "files", "text_dir"]:
        return "hub" if self.hub is not None else "files" if self.files is not None else "text_dir"


class MixtureSourceConfig(SourceConfig):
    """One entry of a mixture's ``sources:`` list: a full source spec plus its name, budget and tokenize options.

    Attributes:
        name: short name shown in the card's mixture table (letters, digits, ``_ - .``; unique in the recipe).
        weight: share of the mixture's tokens (weights are normalised to sum to 1, with a note).
        tokens: an absolute token budget instead of a weight.
        tokenize: tokenize options for this source only, over the recipe's ``tokenize`` section (e.g. FIM on
            the code source alone; the tokenizer is the same for every source).
    """

    name: str = pydantic.Field(pattern=r"^[A-Za-z0-9_.-]+$")
    weight: float | None = pydantic.Field(default=None, gt=0)
    tokens: int | None = pydantic.Field(default=None, ge=1)
    tokenize: dict[str, Any] | None = None

    @pydantic.model_validator(mode="after")
    def _one_budget(self) -> MixtureSourceConfig:
        if (self.weight is None) == (self.tokens is None):
            raise ValueError("give exactly one of 'weight' (a share) or 'tokens' (an absolute budget)")
        return self


class TrainTokenizerConfig(_Section):
    """Train a small byte-level BPE on the first documents of the source (offline quickstarts, tests).

    The trained tokenizer is cached (keyed by a hash of its training texts and options) and copied into the
    output folder under ``tokenizer/``, so the dataset ships with the tokenizer that made it.

    Attributes:
        vocab_size: size of the trained vocabulary, special tokens included.
        max_docs: train on at most the first N documents of the source (a mixture splits them evenly over its
            sources).
        max_chars: and on at most this many characters of them.
        cache_dir: folder of the trained-tokenizer cache (relative to the recipe); default
            ``$HFPREP_CACHE/tokenizers``, ``HFPREP_CACHE`` defaulting to ``~/.cache/hfprep``.
    """

    vocab_size: int = pydantic.Field(default=2048, ge=300)
    max_docs: int = pydantic.Field(default=2000, ge=1)
    max_chars: int = pydantic.Field(default=5_000_000, ge=1)
    cache_dir: str | None = None


class TokenizerSection(_Section):
    """The tokenizer: a Hub id or local folder (``name_or_path`` + ``revision``), or ``train`` one here.

    Attributes:
        name_or_path: a Hub model id (``Qwen/Qwen3-8B``) or a local folder with ``tokenizer.json`` (relative to
            the recipe when it starts with ``.`` or exists there); a local folder is copied into the output under
            ``tokenizer/``.
        revision: branch, tag or commit of a Hub tokenizer (pin a commit for exact reproduction).
        train: train a small byte-level BPE on the source instead (the keys below).
        backend: the encoder: ``auto`` (the fastest backend that passes an exactness check on a sample of the
            input, else ``hf`` with a one-line reason), ``hf`` (Rust tokenizers) or ``gigatoken`` (fast, where
            installed and exact for this tokenizer, else an error).
    """

    name_or_path: str | None = None
    revision: str | None = None
    train: TrainTokenizerConfig | None = None
    backend: Literal["auto", "hf", "gigatoken"] = "auto"

    @pydantic.model_validator(mode="after")
    def _one(self) -> TokenizerSection:
        if (self.name_or_path is None) == (self.train is None):
            raise ValueError("give exactly one of 'name_or_path' or 'train'")
        return self


class PackingSection(_Section):
    """How tokenized documents become ``seq_len`` rows.

    Attributes:
        seq_len: row length (>= 2).
        strategy: ``dense``, ``no_incomplete`` or any registered packer (``bfd``).
        num_reduce_chunks: hash keys of the map-reduce; scale it with the input (each group is held in memory).
        pad_token_id: padding id; defaults to the tokenizer's eos id.
        packing_kwargs: packer options (e.g. bfd's ``overflow``/``pad``).
        reduce_memory_budget: bytes of tokens one reduce task may hold.
    """

    seq_len: int = pydantic.Field(ge=2)
    strategy: str = "dense"
    num_reduce_chunks: int = pydantic.Field(default=4, ge=1)
    pad_token_id: int | None = pydantic.Field(default=None, ge=0)
    packing_kwargs: dict[str, Any] = pydantic.Field(default_factory=dict)
    reduce_memory_budget: int | None = pydantic.Field(default=None, ge=1)


class SplitsSection(_Section):
    """Held-out split by document content hash (the same rule on every engine, independent of order).

    A row goes to ``heldout_name`` when ``sha256(canonical JSON of its strategy input columns)`` read as a
    fraction in [0, 1) is below ``heldout_fraction``; everything else goes to ``train_name``.

    Attributes:
        heldout_fraction: share of documents held out (0: no held-out split, only ``train_name`` is written).
        train_name: name of the split that gets the other documents.
        heldout_name: name of the held-out split (``test``, ``validation``...).
    """

    heldout_fraction: float = pydantic.Field(default=0.0, ge=0.0, lt=1.0)
    train_name: str = pydantic.Field(default="train", pattern=r"^[A-Za-z0-9_]+$")
    heldout_name: str = pydantic.Field(default="test", pattern=r"^[A-Za-z0-9_]+$")

    @pydantic.model_validator(mode="after")
    def _distinct(self) -> SplitsSection:
        if self.train_name == self.heldout_name:
            raise ValueError("train_name and heldout_name must differ")
        return self


class OutputSection(_Section):
    """The output folder (Hub dataset layout) and its shard sizes.

    ``documents: true`` also writes the tokenized, unpacked documents as a second config, ``documents``
    (``load_dataset(folder, "documents")``), in the order the packer reads them: ``hfprep repack`` packs them again
    at another length without the tokenizer or the source, ``hfprep export`` writes them for other trainers.

    Attributes:
        folder: the output folder (relative to the recipe), written atomically: a failed or interrupted run leaves
            no partial folder.
        overwrite: replace an existing output folder that hfprep wrote (``hfprep run --overwrite`` does the same);
            other folders are never replaced.
        max_shard_bytes: start a new Parquet shard past this many bytes of rows (in-memory Arrow size);
            ``null``: no size limit.
        max_rows_per_shard: start a new shard past this many rows (``null``: no row limit).
        row_group_rows: rows per Parquet row group.
        card_template: a ``string.Template`` Markdown file (relative to the recipe) used instead of the built-in
            dataset card template; a ``${name}`` hfprep does not provide is an error.
        plots: draw the document-length and row-fill histograms into ``images/`` and show them in the card.
        documents: also write the tokenized, unpacked documents as the ``documents`` config (see above).
    """

    folder: str
    overwrite: bool = False
    documents: bool = False
    max_shard_bytes: int | None = pydantic.Field(default=DEFAULT_MAX_SHARD_BYTES, ge=1)
    max_rows_per_shard: int | None = pydantic.Field(default=None, ge=1)
    row_group_rows: int = pydantic.Field(default=DEFAULT_ROW_GROUP_ROWS, ge=1)
    card_template: str | None = None
    plots: bool = True


class HubSection(_Section):
    """Hub target and card metadata. ``hfprep run`` pushes when ``repo_id`` is set and ``push`` is true.

    Attributes:
        repo_id: the dataset repo to push to (``your-name/dataset``); ``null``: nothing is pushed.
        private: create the repo private (an existing repo keeps its visibility).
        push: push after the run when ``repo_id`` is set (``false``, or ``hfprep run --no-push``: prepare only;
            the card's snippets still load from ``repo_id``).
        revision: the branch to push to (created from ``main`` when missing); ``null``: ``main``.
        config_name: the dataset config the folder becomes (``load_dataset(repo, config_name)``); other configs
            of the repo are kept.
        license: the card's license: a Hub license id (``apache-2.0``), anything else becomes ``other`` with a
            ``license_name``.
        tags: the card's tags.
        pretty_name: the card's title and ``pretty_name`` (default: the recipe's ``name``).
    """

    repo_id: str | None = None
    private: bool = False
    push: bool = True
    revision: str | None = None
    config_name: str = pydantic.Field(default="default", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
    license: str | None = None
    tags: list[str] = pydantic.Field(default_factory=list)
    pretty_name: str | None = None


class EngineSection(_Section):
    """``datasets`` (one machine, ``num_proc`` workers) or ``ray`` (a Ray cluster at ``address``).

    Attributes:
        name: the engine; ``hfprep run --engine`` overrides it.
        num_proc: ``datasets`` engine: worker processes for its ``Dataset.map`` steps (``null``: one process);
            ``hfprep run --num-proc`` overrides it.
        address: ``ray`` engine: the cluster to join (``auto``: the one this machine belongs to); ``null``: start
            a local Ray instance.
        num_cpus: ``ray`` engine: CPUs of the local Ray instance it starts (``null``: all of them).
        memory_budget: bytes of tokenized documents the ``datasets`` engine keeps in memory when it reads local
            files directly; beyond it they are spilled to the run's scratch folder (removed when the run ends).
        reuse_tokenized: keep the source and its tokenized rows in the ``datasets`` cache, so a later run of the
            same recipe on the same files skips tokenizing (``datasets``' cache rules); off by default, since those
            copies take several times the input's size and outlive the run.
    """

    name: Literal["datasets", "ray"] = "datasets"
    num_proc: int | None = pydantic.Field(default=None, ge=1)
    address: str | None = None
    num_cpus: int | None = pydantic.Field(default=None, ge=1)
    memory_budget: int = pydantic.Field(default=DEFAULT_MEMORY_BUDGET, ge=1)
    reuse_tokenized: bool = False


class Recipe(_Section):
    """A whole recipe. Build it with :func:`load_recipe` (paths resolved) or :func:`parse_recipe`.

    Attributes:
        name: a free-text title: the card's title and ``pretty_name`` (unless ``hub.pretty_name`` is set) and the
            commit message of a push.
        description: free text, the card's opening paragraph (default: a sentence naming the source).
        source: one source of raw rows (or ``sources`` for a mixture).
        sources: a mixture: several sources, each with its share (``weight``) or budget (``tokens``); see
            :mod:`hfprep.mixture`.
        tokens: mixture only: the mixture's total token budget (default with weights only: the largest mix that
            repeats no document).
        max_epochs: mixture only: how many times a source may be repeated to meet its budget.
        source_column: mixture only: add a ``source`` column: per token, the index of its source in ``sources``
            (-1 on padding).
        tokenizer: the tokenizer.
        tokenize: how raw rows become tokenized documents.
        packing: how documents become ``seq_len`` rows.
        splits: the held-out split.
        output: the output folder and its shards.
        hub: the Hub repo to push to and the card's metadata.
        engine: the engine that runs the map-reduce.
        seed: the run's seed: raw-document FIM draws (``tokenize.fim_seed`` unless set) and a mixture's choice of
            documents derive from it.
    """

    name: str | None = None
    description: str | None = None
    source: SourceConfig | None = None
    # A mixture instead of one source (see hfprep.mixture): budgets, epochs and the optional `source` column.
    sources: list[MixtureSourceConfig] | None = None
    tokens: int | None = pydantic.Field(default=None, ge=1)
    max_epochs: int = pydantic.Field(default=1, ge=1)
    source_column: bool = False
    tokenizer: TokenizerSection
    tokenize: TokenizeConfig = pydantic.Field(default_factory=TokenizeConfig)
    packing: PackingSection
    splits: SplitsSection = pydantic.Field(default_factory=SplitsSection)
    output: OutputSection
    hub: HubSection = pydantic.Field(default_factory=HubSection)
    engine: EngineSection = pydantic.Field(default_factory=EngineSection)
    seed: int = 0

    # Set by load_recipe: the file and its exact text (embedded in the card).
    path: str | None = pydantic.Field(default=None, exclude=True)
    text: str | None = pydantic.Field(default=None, exclude=True)

    @pydantic.field_validator("engine", mode="before")
    @classmethod
    def _engine_shorthand(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @pydantic.field_validator("tokenize", mode="before")
    @classmethod
    def _no_backend_here(cls, v: Any) -> Any:
        if isinstance(v, dict) and "backend" in v:
            raise ValueError("set the backend under tokenizer.backend, not tokenize.backend")
        return v

    @property
    def where(self) -> str:
        return self.path or "<recipe>"

    def splits_to_write(self) -> list[str]:
        if self.splits.heldout_fraction > 0:
            return [self.splits.train_name, self.splits.heldout_name]
        return [self.splits.train_name]


def parse_recipe(data: Any, where: str = "<recipe>") -> Recipe:
    """Validate a recipe dict (no path resolution); errors are one :class:`RecipeError` line."""
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: a recipe must be a YAML mapping of sections, got {type(data).__name__}")
    for key, field in Recipe.model_fields.items():
        if field.exclude and key in data:  # set by load_recipe (path, text), never by the recipe itself
            raise RecipeError(f"{where}: {key}: {UNKNOWN_KEY}")
    try:
        recipe = Recipe.model_validate(data)
    except pydantic.ValidationError as e:
        raise RecipeError(format_validation_error(e, where)) from None
    check_mixture_recipe(recipe, where)
    return recipe


def _resolve(path: str, base: Path) -> str:
    p = Path(os.path.expanduser(path))
    return str(p if p.is_absolute() else (base / p).resolve())




def stdlib_dir() -> str:
    """The running Python's standard-library folder (the offline quickstart corpus)."""
    return sysconfig.get_paths()["stdlib"]


def resolve_paths(recipe: Recipe, base: Path) -> Recipe:
    """Resolve relative paths against ``base`` (the recipe's folder) and expand ``{stdlib}``."""
    for src in [recipe.source] if recipe.source is not None else recipe.sources or []:
        if src.files is not None:
            src.files = [_resolve(f, base) for f in src.files]
        if src.text_dir is not None:
            src.text_dir = _resolve(src.text_dir.replace(STDLIB_PLACEHOLDER, stdlib_dir()), base)
        own = getattr(src, "tokenize", None)  # a mixture source's own tokenize keys: its paths are the recipe's too
        if own and isinstance(own.get("chat_template_path"), str):
            own["chat_template_path"] = _resolve(own["chat_template_path"], base)
    recipe.output.folder = _resolve(recipe.output.folder, base)
    if recipe.output.card_template is not None:
        recipe.output.card_template = _resolve(recipe.output.card_template, base)
    if recipe.tokenize.chat_template_path is not None:
        recipe.tokenize.chat_template_path = _resolve(recipe.tokenize.chat_template_path, base)
    tok = recipe.tokenizer
    if tok.name_or_path is not None and looks_like_path(tok.name_or_path, base):
        tok.name_or_path = _resolve(tok.name_or_path, base)
    if tok.train is not None and tok.train.cache_dir is not None:
        tok.train.cache_dir = _resolve(tok.train.cache_dir, base)
    return recipe


def check_packing_strategy(recipe: Recipe) -> None:
    """The packing strategy must be registered."""
    if recipe.packing.strategy not in PACKERS:
        raise RecipeError(
            f"{recipe.where}: packing.strategy: unknown packer {recipe.packing.strategy!r}; "
            f"choose one of {sorted(PACKERS)}"
        )


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read, validate and resolve a recipe file. Errors name the file and the key (:class:`RecipeError`)."""
    p = Path(path)
    where = str(path)
    if not p.is_file():
        raise RecipeError(f"{where}: recipe file not found (check the path)")
    text = p.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise RecipeError(f"{where}: invalid YAML{at}: {problem}") from None
    recipe = parse_recipe(data, where)
    recipe.path = str(p.absolute())
    recipe.text = text
    check_packing_strategy(recipe)
    return resolve_paths(recipe, p.absolute().parent)
