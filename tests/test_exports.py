"""The public names: every ``hfprep.<name>`` exported before the package was split into stage folders still
resolves, ``__all__`` is exactly the export table, and each name is the object its defining module holds."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import hfprep

# Written out by hand from the release before the restructuring (not read from the package), so a name that
# disappears from the export table fails here.
PUBLIC_NAMES = ["ChatTemplateEncoder", "ConfigError", "DataCollatorForPackedLM", "DataError", "HfprepError", "HubError", "LMDataset", "MapReduceTransformBase", "MapReduceTransformConfigBase", "MapTransformBase", "MapTransformConfigBase", "OutputExistsError", "PackStats", "PrepareForTrainingTransform", "PrepareForTrainingTransformConfig", "Recipe", "RecipeError", "SourceSpec", "TokenizeConfig", "TokenizerError", "TransformBase", "TransformConfigBase", "__version__", "array_hash", "batch_keys", "export", "batch_nbytes", "block_causal_mask", "collate_lm", "fim_processing", "format_report", "load_recipe", "load_tokenizer", "make_attention_mask_from_positions", "make_tokenize_fn", "pack_bfd_flat", "pack_dense", "pack_no_incomplete", "pack_sequences", "packing_report", "position_fix_helper", "prepare_streaming", "pretrain_processing", "process_row", "push_folder", "repack", "run_recipe", "sft_processing", "tokenize_batch", "tokenized_features", "train_tiny_tokenizer", "validate_folder", "validate_folder_for_push"]


def test_no_public_name_lost():
    assert sorted(set(PUBLIC_NAMES) - set(hfprep.__all__)) == []


def test_all_is_the_export_table():
    assert sorted(hfprep.__all__) == sorted([*hfprep._EXPORTS, "__version__"])
    assert len(set(hfprep.__all__)) == len(hfprep.__all__)


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_every_exported_name_resolves_to_its_module_object(name):
    value = getattr(hfprep, name)
    if name == "__version__":
        assert isinstance(value, str) and value.count(".") >= 2
        return
    module = importlib.import_module(f"hfprep.{hfprep._EXPORTS[name]}")
    assert value is getattr(module, name)


def test_star_import_and_dir_list_every_name():
    namespace: dict[str, object] = {}
    exec("from hfprep import *", namespace)
    assert set(PUBLIC_NAMES) <= set(namespace)
    assert set(PUBLIC_NAMES) <= set(dir(hfprep))


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'pipeline_v2'"):
        hfprep.pipeline_v2  # noqa: B018


def test_import_hfprep_stays_light():
    # The export table imports lazily: `import hfprep` must not pull in torch/transformers/datasets.
    code = "import sys, hfprep; print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
