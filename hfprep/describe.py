"""What a run says about itself: provenance, the dataset card and the summary.

:func:`build_card` collects the facts of a finished run (recipe, splits, stats, tokenizer, provenance) and renders
the card with :mod:`hfprep.output.card`; :func:`make_summary` / :func:`format_summary` give the dict that
``run_recipe`` returns and the lines ``hfprep run`` prints.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from .configure import SplitResult, TokenizerInfo, effective_tokenize_config
from .output.audit import AuditRules, LossAudit
from .output.card import (
    BlockText,
    CardParams,
    CardSplit,
    CardTarget,
    TokenizerFacts,
    bundled_tokenizer_meta,
    dump_yaml,
    hfprep_block,
    portable_path,
    render_dataset_card,
)
from .output.documents import documents_block
from .output.hub import hub_card_target
from .output.layout import RECIPE_NAME, TOKENIZER_DIR, file_sha256, files_sha256
from .output.mixture_report import mixture_lines
from .output.quality import format_report
from .recipe import STDLIB_PLACEHOLDER, Recipe, stdlib_dir
from .schema import output_is_padded
from .source.loading import SourceSpec, resolve_source
from .tokenization.loading import (
    tokenizer_fingerprint,
    vocab_size,
)
from .tokenization.loss_probe import probe_loss_layout
from .tokenization.stage import TokenizeConfig, audit_ids, document_specials, separator_for
from .version import __version__


def git_commit() -> str | None:
    """Commit of the hfprep checkout (None for an installed wheel or without git)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and len(sha) == 40 else None


def source_revision(spec: SourceSpec) -> str:
    """Hub: the requested revision; local: the files' content identity, :func:`~hfprep.output.layout.files_sha256`
    (the sha256 of their ``sha256sum`` lines, paths relative to their common folder)."""
    if spec.kind == "hub":
        return spec.revision or "main (not pinned: set source.revision to a commit for exact reproduction)"
    root = spec.root or os.path.commonpath([os.path.dirname(p) for p in spec.paths])
    return f"sha256:{files_sha256(spec.paths, root)} over {len(spec.paths)} local file(s)"


def doc_lengths_note(results: list[SplitResult]) -> tuple[str, str]:
    if all(r.doc_bins for r in results):
        return "Document length (tokens, before packing)", "Token count of every document before packing (log scale)."
    return (
        "Segment length (tokens)",
        "Length of the segments in the packed rows (documents, or their pieces where a document was cut).",
    )


def _path_aliases() -> dict[str, str]:
    return {STDLIB_PLACEHOLDER: stdlib_dir()}


def _recipe_dir(recipe: Recipe) -> str | None:
    return os.path.dirname(os.path.abspath(recipe.path)) if recipe.path else None


def card_source(spec: SourceSpec, recipe: Recipe) -> str:
    """The source as the card shows it: Hub coordinates, or local files by their path relative to the recipe
    (file name + sha256 for files elsewhere), never a folder of this machine."""
    if spec.kind == "hub":
        return spec.describe()
    base, aliases = _recipe_dir(recipe), _path_aliases()
    if spec.kind == "text_dir":
        return f"{len(spec.paths):,} text files under `{portable_path(spec.root or '.', base, aliases)}`"
    shown = []
    for p in spec.paths[:8]:
        rel = portable_path(p, base, aliases)
        inside = rel != os.path.basename(p) or os.path.dirname(os.path.abspath(p)) == base
        shown.append(f"`{rel}`" if inside else f"`{rel}` (sha256 {file_sha256(p)[:16]})")
    more = f" and {len(spec.paths) - 8:,} more" if len(spec.paths) > 8 else ""
    return f"{len(spec.paths):,} {spec.format} file(s): " + ", ".join(shown) + more


PORTABLE_OUTPUT = "prepared"
"""``output.folder`` of the portable recipe: where a re-run writes, next to the recipe (the original folder's name
stays on the machine that ran it)."""
MAX_LISTED_FILES = 8
"""A local source with more files is listed by one digest over all of them instead of one line per file."""


def _tree(folder: str) -> list[str]:
    """The files of a folder as a run copies it (hidden ones skipped), sorted by relative path."""
    root = Path(folder)
    return [
        str(p) for p in sorted(root.rglob("*"), key=lambda q: q.relative_to(root).as_posix())
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]


def portable_recipe(recipe: Recipe, info: TokenizerInfo) -> str:
    """The recipe as run, re-runnable elsewhere: the card shows it and the output folder keeps it as
    ``recipe.yaml`` (the file as written may hold this machine's paths, which neither may show).

    The recipe's settings (those it sets, after validation) as YAML, with every local path made portable: relative
    to the recipe when it lies beside it, ``{stdlib}/...`` under the standard library, else its name; a local
    tokenizer folder becomes the copy bundled next to the recipe (``./tokenizer``), and ``output.folder``
    :data:`PORTABLE_OUTPUT`. Hub ids and revisions stay as given. A comment at the top lists the local inputs
    (marked local) with their sha256, so whoever has the same files can check them and re-run the recipe.

    Example:
        >>> print(portable_recipe(load_recipe("recipes/quickstart.yaml"), info))  # doctest: +SKIP
        # The hfprep recipe as run: `hfprep run recipe.yaml` reproduces the dataset into prepared/.
        # Local inputs, by path relative to this file (put the same files there):
        #   {stdlib}  local, 300 files, sha256:... of their sha256sum lines (paths relative to the folder)
        name: hfprep quickstart (Python stdlib)
        ...
    """
    base, aliases = _recipe_dir(recipe), _path_aliases()

    def port(path: str) -> str:
        return portable_path(path, base, aliases)

    def file_line(path: str, what: str = "local file") -> str:
        return f"#   {port(path)}  {what}, sha256:{file_sha256(path)}"

    data = recipe.model_dump(mode="json", exclude_unset=True)
    inputs: list[str] = []
    if recipe.source is not None:
        sections = [(recipe.source, data["source"])]
    else:
        sections = list(zip(recipe.sources or [], data.get("sources") or []))
    for sec, out in sections:
        own = out.get("tokenize") or {}
        if isinstance(own.get("chat_template_path"), str):
            inputs.append(file_line(own["chat_template_path"], "local chat template"))
            own["chat_template_path"] = port(own["chat_template_path"])
        if sec.kind == "hub":
            continue
        paths = resolve_source(sec).paths
        if sec.kind == "files":
            out["files"] = [port(f) for f in sec.files or []]
        else:
            out["text_dir"] = port(sec.text_dir or "")
        if sec.kind == "files" and len(paths) <= MAX_LISTED_FILES:
            inputs += [file_line(f) for f in paths]
            continue
        root = sec.text_dir or os.path.commonpath([os.path.dirname(f) for f in paths])
        where = out.get("text_dir") or ", ".join(out["files"])
        inputs.append(f"#   {where}  local, {len(paths):,} files, sha256:{files_sha256(paths, root)} of their "
                      "sha256sum lines (paths relative to the folder)")
    tok, tok_out = recipe.tokenizer, data["tokenizer"]
    if info.bundle_dir and tok.name_or_path:
        tok_out["name_or_path"] = f"./{TOKENIZER_DIR}"
        inputs.append(f"#   ./{TOKENIZER_DIR}  local tokenizer folder, bundled with this dataset, "
                      f"sha256:{files_sha256(_tree(tok.name_or_path), tok.name_or_path)} of its files' sha256sum lines")
    if tok.train is not None and tok.train.cache_dir:
        tok_out["train"]["cache_dir"] = port(tok.train.cache_dir)
    if isinstance(data.get("tokenize", {}).get("chat_template_path"), str):
        inputs.append(file_line(data["tokenize"]["chat_template_path"], "local chat template"))
        data["tokenize"]["chat_template_path"] = port(data["tokenize"]["chat_template_path"])
    data["output"]["folder"] = PORTABLE_OUTPUT
    if recipe.output.card_template:
        inputs.append(file_line(recipe.output.card_template, "local card template"))
        data["output"]["card_template"] = port(recipe.output.card_template)
    head = [f"# The hfprep recipe as run: `hfprep run {RECIPE_NAME}` reproduces the dataset into {PORTABLE_OUTPUT}/"
            + (f" (and pushes it to {recipe.hub.repo_id}; --no-push prepares only)." if recipe.hub.repo_id else ".")]
    if inputs:
        head += ["# Local inputs, by path relative to this file (put the same files there):", *inputs]
    return "\n".join(head) + "\n" + dump_yaml(data).rstrip("\n")


def card_target(recipe: Recipe) -> CardTarget:
    """Where the card is read: the recipe's Hub repo, config and revision, or the output folder as typed from here
    (a push renders the card's snippets again for where it pushes)."""
    if recipe.hub.repo_id:
        return hub_card_target(recipe.hub.repo_id, recipe.hub.config_name, recipe.hub.revision)
    folder = os.path.abspath(recipe.output.folder)
    rel = os.path.relpath(folder)
    return CardTarget(rel if not rel.startswith("..") else os.path.basename(folder))


def _portable_decode_report(replaced: Any, recipe: Recipe) -> str:
    text = replaced.describe()
    first = getattr(replaced, "first_file", None)
    return text.replace(first, portable_path(first, _recipe_dir(recipe), _path_aliases())) if first else text


def default_title(strategy: str, seq_len: int) -> str:
    """The card's title when the recipe names none (not the output folder's name: that stays on this machine).

    Example:
        >>> default_title("sft", 2048)
        'SFT data in packed 2048-token rows'
    """
    kind = {"pretrain": "Pre-training", "fim": "Fill-in-the-middle", "sft": "SFT"}.get(strategy, strategy)
    return f"{kind} data in packed {seq_len}-token rows"


def rows_all_full(results: list[SplitResult], seq_len: int) -> bool:
    return all(r.out_stats.pad_tokens == 0 and r.out_stats.tokens == r.out_stats.rows * seq_len for r in results)


def card_params(
    recipe: Recipe,
    info: TokenizerInfo,
    spec: SourceSpec,
    results: list[SplitResult],
    split_bytes: dict[str, int],
    pad_id: int,
    backend_report: dict[str, Any] | None,
    engine_line: str,
    date: str,
    download_bytes: dict[str, int] | None = None,
    has_fill_plot: bool = True,
    recipe_text: str | None = None,
    audit_rules: AuditRules | None = None,
) -> CardParams:
    """The facts of a finished run that the dataset card shows. ``split_bytes``: Arrow bytes per split
    (``num_bytes``); ``download_bytes``: Parquet bytes; ``recipe_text``: :func:`portable_recipe` when the caller
    has it (the run writes it as ``recipe.yaml`` too); ``audit_rules``: the loss audit's rules (the card records
    them for ``hfprep validate``)."""
    tok = info.tokenizer
    tcfg = effective_tokenize_config(recipe)
    target = card_target(recipe)
    recipe_text = recipe_text if recipe_text is not None else portable_recipe(recipe, info)
    options = json.loads(tcfg.model_dump_json(exclude_defaults=True))
    options.pop("strategy", None)
    if isinstance(options.get("chat_template_path"), str):  # resolved to an absolute path when the recipe loaded
        options["chat_template_path"] = portable_path(options["chat_template_path"], _recipe_dir(recipe), _path_aliases())
    backend = (backend_report or {}).get("backend", tcfg.backend)
    fingerprint = tokenizer_fingerprint(tok)  # serialises the whole tokenizer: once
    separator = separator_for(tok, tcfg)
    tokenizer = TokenizerFacts(
        metadata={
            # Loadable as written: AutoTokenizer.from_pretrained(name_or_path, subfolder=..., revision=...).
            **(bundled_tokenizer_meta(target) if info.bundle_dir else {"name_or_path": info.name_or_path,
                                                                       "revision": info.revision}),
            "vocab_size": vocab_size(tok),
            "fingerprint": fingerprint,
            **document_specials(tok, tcfg),
            "pad_token_id": pad_id,
            "backend": backend,
        },
        label=f"`{info.name_or_path}`" + (f" @ `{info.revision}`" if info.revision else "")
        if not info.bundle_dir
        else "bundled with the rows (loaded as *Load it* shows)",
        vocab_size=vocab_size(tok),
        fingerprint=fingerprint,
        eos_id=separator.token_id,
        pad_id=pad_id,
        backend=backend,
        backend_report=backend_report,
        bundled=bool(info.bundle_dir),
        separator=separator.describe(quote=lambda t: f"`{t}`"),
    )
    replaced = getattr(spec, "replaced", None)  # a mixture's spec has none (each source reports its own)
    hub = recipe.hub
    commit = git_commit()
    description = recipe.description or f"Language-model training data prepared from {card_source(spec, recipe)}."
    source_line = (
        card_source(spec, recipe)
        + (f", first {spec.max_rows:,} rows" if spec.max_rows else "")
        + (f", columns renamed {spec.columns}" if spec.columns else "")
        + (f"; {_portable_decode_report(replaced, recipe)}" if replaced is not None else "")
    )
    documents = None
    if recipe.output.documents:
        provenance = {
            "recipe": BlockText(recipe_text),
            "description": description,
            "source_line": source_line,
            "source_revision": source_revision(spec),
            "tokenizer_label": tokenizer.label,
            "backend_report": backend_report,
        }
        documents = documents_block(recipe.sources is not None, provenance)
    return CardParams(
        title=hub.pretty_name or recipe.name or default_title(tcfg.strategy, recipe.packing.seq_len),
        description=description,
        pretty_name=hub.pretty_name or recipe.name or None,
        license=hub.license,
        tags=list(hub.tags),
        source_datasets=[spec.hub_id] if spec.kind == "hub" else ["original"],
        strategy=tcfg.strategy,
        tokenize_options=options,
        only_middle_not_masked=tcfg.only_middle_not_masked,
        **_rows_card_fields(recipe, results),
        split_bytes=split_bytes,
        download_bytes=download_bytes,
        tokenizer=tokenizer,
        target=target,
        has_fill_plot=has_fill_plot,
        decode_replacements=replaced.sequences if replaced is not None else None,
        source_line=source_line,
        recipe_text=recipe_text,
        engine_line=engine_line,
        version=__version__,
        git_commit=commit,
        source_revision=source_revision(spec),
        recipe_sha256=hashlib.sha256((recipe.text or "").encode()).hexdigest(),
        date=date,
        template=recipe.output.card_template,
        loss_layout=probe_loss_layout(tok, tcfg) if tcfg.strategy == "sft" else None,
        loss_audit=audit_rules.to_card() if audit_rules is not None else None,
        documents=documents,
    )


def _rows_card_fields(recipe: Recipe, results: list[SplitResult]) -> dict[str, Any]:
    """What a run's card and a repack's card both say of the rows: the packing and split settings, the splits'
    stats and the document-length caption."""
    packing, splits = recipe.packing, recipe.splits
    caption, note = doc_lengths_note(results)
    return {
        "seq_len": packing.seq_len,
        "packing": packing.strategy,
        "packing_kwargs": dict(packing.packing_kwargs),
        "num_reduce_chunks": packing.num_reduce_chunks,
        "padded": output_is_padded(packing.strategy, packing.packing_kwargs),
        "heldout_fraction": splits.heldout_fraction,
        "heldout_name": splits.heldout_name,
        "train_name": splits.train_name,
        "splits": card_splits(results),
        "doc_lengths_caption": caption,
        "doc_lengths_note": note,
        "rows_all_full": rows_all_full(results, packing.seq_len),
    }


def card_splits(results: list[SplitResult]) -> list[CardSplit]:
    """Every split as the card shows it: the rows' stats plus the packer's document and token counts
    (:func:`card_split_stats`) and the loss audit."""
    return [
        CardSplit(r.name, r.out_stats.rows, r.out_stats.tokens, r.out_stats.pad_tokens, card_split_stats(r), r.quality,
                  r.audit)
        for r in results
    ]


def repack_card_params(
    source_meta: dict[str, Any],
    recipe: Recipe,
    results: list[SplitResult],
    split_bytes: dict[str, int],
    pad_id: int,
    date: str,
    *,
    download_bytes: dict[str, int],
    has_fill_plot: bool,
    repacked_from: dict[str, str],
) -> CardParams:
    """The card of a repacked dataset (``hfprep repack``): the packing, rows and stats of ``results``, and what
    only the source's run knew (tokenizer, source, provenance) from the source's card (``hfprep.documents``), so
    neither the tokenizer nor the source is needed."""
    hf = hfprep_block(source_meta)
    provenance = dict(hf["documents"]["provenance"])
    provenance["recipe"] = BlockText(recipe.text or "")
    tok_meta = dict(hf["tokenizer"])
    target = card_target(recipe)
    bundled = str(tok_meta.get("subfolder") or "").endswith(TOKENIZER_DIR)  # `tokenizer`, or `<config>/tokenizer`
    if bundled:  # the tokenizer travels with the repack: loadable from where the repack is
        for key in ("name_or_path", "subfolder", "revision", "repo_type"):
            tok_meta.pop(key, None)
        tok_meta = {**bundled_tokenizer_meta(target), **tok_meta}
    tokenizer = TokenizerFacts(
        metadata=tok_meta,
        label=str(provenance.get("tokenizer_label", tok_meta.get("name_or_path"))),
        vocab_size=int(tok_meta["vocab_size"]),
        fingerprint=str(tok_meta.get("fingerprint")),
        eos_id=int(tok_meta["eos_token_id"]),
        pad_id=pad_id,
        backend=str(tok_meta.get("backend")),
        backend_report=provenance.get("backend_report"),
        bundled=bundled,
        separator=f"`{tok_meta.get('eos_token')}` (id {tok_meta.get('eos_token_id')})",
    )
    hub = recipe.hub
    return CardParams(
        title=hub.pretty_name or recipe.name or default_title(str(hf["strategy"]), recipe.packing.seq_len),
        description=str(provenance.get("description", "")),
        pretty_name=hub.pretty_name or recipe.name or None,
        license=hub.license,
        tags=list(hub.tags),
        source_datasets=list(source_meta.get("source_datasets") or ["original"]),
        strategy=str(hf["strategy"]),
        tokenize_options=dict(hf.get("tokenize") or {}),
        only_middle_not_masked=effective_tokenize_config(recipe).only_middle_not_masked,
        **_rows_card_fields(recipe, results),
        split_bytes=split_bytes,
        download_bytes=download_bytes,
        tokenizer=tokenizer,
        target=target,
        has_fill_plot=has_fill_plot,
        decode_replacements=hf.get("source_decode_replacements"),
        source_line=str(provenance.get("source_line", "")),
        recipe_text=(recipe.text or "").rstrip("\n"),
        engine_line=f"`hfprep repack` of {repacked_from['source']} @ {repacked_from['revision']} (its documents "
        "config: no tokenizer, no source read)",
        version=__version__,
        git_commit=git_commit(),
        source_revision=str(provenance.get("source_revision", "")),
        recipe_sha256=hashlib.sha256((recipe.text or "").encode()).hexdigest(),
        date=date,
        template=recipe.output.card_template if recipe.output.card_template and os.path.isfile(
            recipe.output.card_template) else None,
        documents=documents_block(hf["documents"].get("columns", []) != ["input_ids", "loss_mask"], provenance),
        repacked_from=dict(repacked_from),
        loss_audit=hf.get("loss_audit"),
    )


def build_card(*args: Any, **kwargs: Any) -> str:
    """The dataset card (README.md) of a finished run: :func:`card_params` rendered by
    :func:`hfprep.output.card.render_dataset_card` (YAML for the Hub and ``load_dataset`` plus a compact
    ``hfprep`` block; prose with the load/train snippets, tables, figures, recipe and provenance)."""
    return render_dataset_card(card_params(*args, **kwargs))


ROWS_PER_KEY = 32
"""A reduce group should hold at least this many rows' worth of tokens: its last, partly filled row then costs at
most ~1/64 of the group (dense drops it, the padded packers pad it)."""


def reduce_chunks_advice(recipe: Recipe, results: list[SplitResult]) -> str | None:
    """A warning with the number to use when ``num_reduce_chunks`` is so large for the data that every group is
    small and packing loses fill (each group of a padded packer ends in a partly filled row); None when the keys do
    no harm. Dense packing never needs it: the groups' tails are packed together at the end, so a run loses at most
    one partial row whatever the number of keys.

    The advice is the largest key count that still gives every group ``ROWS_PER_KEY`` rows' worth of tokens.
    """
    if recipe.packing.strategy == "dense":
        return None
    keys, seq_len = recipe.packing.num_reduce_chunks, recipe.packing.seq_len
    first = results[0]
    tokens_in = int(first.pack_stats.get("tokens_in", 0))
    suggested = max(1, tokens_in // (ROWS_PER_KEY * seq_len))
    if keys <= suggested or not tokens_in:
        return None
    s = first.out_stats
    groups = min(keys, int(first.pack_stats.get("docs_in", keys)))  # at most one group per document
    # Every group ends in one partly filled row (dropped by dense, padded otherwise): harmful when those rows are
    # a noticeable share of the output.
    if not s.rows or groups / s.rows <= 2 / ROWS_PER_KEY:
        return None
    harm = f"fill is {s.fill_ratio:.2f} (each group ends in a partly filled row: ~{groups} of {s.rows} rows)"
    return (
        f"packing.num_reduce_chunks: {keys} keys for {tokens_in:,} tokens of split {first.name!r} "
        f"(~{tokens_in / keys / seq_len:.1f} rows of {seq_len} per key): {harm}; "
        f"use num_reduce_chunks: {suggested} (>= {ROWS_PER_KEY} rows per key)"
    )


def make_summary(recipe, results, out_dir, engine, num_proc, spec, info, backend_report, elapsed, warnings) -> dict:
    splits = {}
    for r in results:
        s = r.out_stats
        d: dict[str, Any] = {
            "rows_in": r.rows_in,
            "docs_dropped_by_tokenizer": r.pack_stats.get("docs_dropped_by_tokenizer"),
            "docs_in": r.pack_stats.get("docs_in"),
            "docs_dropped": r.pack_stats.get("docs_dropped"),
            "rows_out": s.rows,
            "tokens_in": r.pack_stats.get("tokens_in"),
            "tokens_out": s.tokens,
            "tokens_dropped": r.pack_stats.get("tokens_dropped"),
            "tokens_truncated": r.pack_stats.get("tokens_truncated"),
            "pad_tokens": s.pad_tokens,
            "loss_tokens": s.loss_tokens,
            "fill_ratio": round(s.fill_ratio, 6),
        }
        if r.quality is not None:
            d["quality"] = r.quality
        splits[r.name] = d

    def tot(k: str) -> int:
        return int(sum(int(v[k] or 0) for v in splits.values()))

    tokens_in = tot("tokens_in")
    totals = {k: tot(k) for k in ("rows_in", "docs_dropped_by_tokenizer", "docs_dropped", "rows_out", "tokens_in",
                                  "tokens_out", "tokens_dropped", "pad_tokens")}
    slots = totals["tokens_out"] + totals["pad_tokens"]
    totals["fill_ratio"] = round(totals["tokens_out"] / slots, 6) if slots else 0.0
    return {
        "recipe": recipe.path,
        "output": str(out_dir),
        "engine": engine,
        "num_proc": num_proc,
        "source": spec.describe(),
        "tokenizer": info.card_id,
        "document_separator": separator_for(info.tokenizer, effective_tokenize_config(recipe)).describe(),
        "backend": backend_report,
        "seq_len": recipe.packing.seq_len,
        "packing": recipe.packing.strategy,
        "splits": splits,
        "totals": totals,
        "elapsed_s": round(elapsed, 3),
        "tokens_per_s": round(tokens_in / elapsed, 1) if elapsed > 0 else None,
        "warnings": warnings,
        "decode_replacements": getattr(getattr(spec, "replaced", None), "sequences", 0),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """One screen of text: per-split table, totals, time and throughput."""
    t = summary["totals"]
    lines = [
        f"hfprep run: {summary['output']}",
        f"  source    {summary['source']}",
        f"  tokenizer {summary['tokenizer']}"
        + (f"  (backend {summary['backend'].get('backend')})" if summary.get("backend") else ""),
        f"  packing   {summary['packing']}, seq_len {summary['seq_len']}, engine {summary['engine']}",
        *([f"  {summary['document_separator']}"] if summary.get("document_separator") else []),
        "",
        f"  {'split':<12}{'rows in':>12}{'rows out':>12}{'tokens in':>14}{'tokens out':>14}{'dropped':>12}{'fill':>9}",
    ]
    for name, s in summary["splits"].items():
        lines.append(
            f"  {name:<12}{s['rows_in'] or 0:>12,}{s['rows_out']:>12,}{s['tokens_in'] or 0:>14,}"
            f"{s['tokens_out']:>14,}{s['tokens_dropped'] or 0:>12,}{s['fill_ratio']:>9.2%}"
        )
    lines.append(
        f"  {'total':<12}{t['rows_in']:>12,}{t['rows_out']:>12,}{t['tokens_in']:>14,}{t['tokens_out']:>14,}"
        f"{t['tokens_dropped']:>12,}{t['fill_ratio']:>9.2%}"
    )
    lines.append("")
    dropped_pct = t["tokens_dropped"] / t["tokens_in"] if t["tokens_in"] else 0.0
    lines.append(
        f"  dropped: {t['docs_dropped_by_tokenizer']:,} empty rows, {t['docs_dropped']:,} documents, "
        f"{t['tokens_dropped']:,} tokens ({dropped_pct:.2%}); padding {t['pad_tokens']:,} tokens"
    )
    quality = {name: s["quality"] for name, s in summary["splits"].items() if s.get("quality")}
    if quality:
        for name, q in quality.items():
            lines.append(f"  packing report ({name}):")
            lines += [f"    {line}" for line in format_report(q).splitlines()]
    if summary.get("mixture"):
        lines += mixture_lines(summary["mixture"])
    tps = summary.get("tokens_per_s")
    lines.append(f"  time: {summary['elapsed_s']:.1f} s, {tps:,.0f} tokens/s" if tps else f"  time: {summary['elapsed_s']:.1f} s")
    if summary.get("decode_replacements"):
        lines.append(f"  decode: {summary['decode_replacements']:,} undecodable byte sequence(s) replaced by U+FFFD "
                     "(source.decode_errors: replace)")
    for w in summary.get("warnings", []):
        lines.append(f"  warning: {w}")
    if summary.get("pushed"):
        lines.append(f"  pushed: {summary['pushed']}")
    return "\n".join(lines)


def loss_audit(recipe: Recipe, tokenizer, configs: list[TokenizeConfig], pad_id: int) -> LossAudit:
    """The loss audit of this run's rows: the rules of every tokenize config (a mixture has one per source) merged,
    with the recipe's packing (:mod:`hfprep.output.audit`)."""
    rules = AuditRules.merge(AuditRules(**audit_ids(tokenizer, c)) for c in configs)
    p = recipe.packing
    return LossAudit(rules, seq_len=p.seq_len, packing=p.strategy, packing_kwargs=p.packing_kwargs,
                     num_reduce_chunks=p.num_reduce_chunks, pad_token_id=pad_id)


def card_split_stats(r: SplitResult) -> dict[str, Any]:
    """A split's line of the card's ``hfprep.stats``: the rows' counts and the packer's document counts."""
    s: dict[str, Any] = r.out_stats.as_dict()
    for k in ("docs_in", "docs_dropped", "tokens_in", "tokens_dropped", "tokens_truncated"):
        if k in r.pack_stats:
            s[k] = int(r.pack_stats[k])
    if r.rows_in is not None:
        s["rows_in"] = int(r.rows_in)
        s["docs_dropped_by_tokenizer"] = int(r.rows_in) - int(r.pack_stats.get("docs_in", r.rows_in))
    return s
