"""Data that does not fit the model fails before step one, in one line: token ids at or above the model's vocabulary
size (``check_dataset_for_model``, ``ModelCheckCallback``, the collators' ``vocab_size``), a tokenizer other than
the one the card records, and a KD cache made for a larger vocabulary.

Expected ids and rows are computed here in plain Python from the written Parquet shards; "before step one" is
checked on the Trainer's state (no optimizer step) and on the model's weights (unchanged).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from conftest import CORPUS, real_tokenizer

from hfprep.errors import ConfigError, DataError, TokenizerError
from hfprep.train.callbacks import ModelCheckCallback
from hfprep.train.collator import DataCollatorForPackedLM
from hfprep.train.model_check import check_batch_ids, check_dataset_for_model, model_vocab_size

transformers = pytest.importorskip("transformers")
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments  # noqa: E402

WORDS = ["alpha", "beta", "gamma", "import", "numpy", "def", "return", "fox", "lazy", "café", "東京", "🙂", "(x)"]


def _prepare(
    root: Path, tokenizer_path: str, name: str = "prepared", max_rows_per_shard: int | None = None, **tokenize
) -> Path:
    """``hfprep run`` (the real path: card included) on a small JSON Lines source; returns the output folder."""
    from hfprep.run import run_recipe

    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))) for _ in range(120)] + CORPUS
    (root / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    output = {"folder": name, "plots": False}
    if max_rows_per_shard:
        output["max_rows_per_shard"] = max_rows_per_shard
    recipe = {
        "source": {"files": ["docs.jsonl"], "columns": {"text": "content"}},
        "tokenizer": {"name_or_path": tokenizer_path},
        "tokenize": tokenize,
        "packing": {"seq_len": 32, "strategy": "no_incomplete", "num_reduce_chunks": 2},
        "splits": {"heldout_fraction": 0.2, "heldout_name": "test"},
        "output": output,
    }
    (root / "r.yaml").write_text(yaml.safe_dump(recipe))
    run_recipe(str(root / "r.yaml"))
    return root / name


def _rows(folder: Path, split: str) -> list[list[int]]:
    """The split's rows, shard after shard, as plain Python lists (the independent reference)."""
    rows: list[list[int]] = []
    for shard in sorted((folder / "data").glob(f"{split}-*.parquet")):
        rows += pq.read_table(shard, columns=["input_ids"]).column("input_ids").to_pylist()
    return rows


def _first_row_with_id_at_least(rows: list[list[int]], bound: int) -> int:
    return next(i for i, r in enumerate(rows) if any(t >= bound for t in r))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tokenizer_path) -> Path:
    return _prepare(tmp_path_factory.mktemp("model_check"), tokenizer_path, max_rows_per_shard=5)


@pytest.fixture(scope="module")
def max_id(prepared) -> int:
    return max(t for split in ("train", "test") for r in _rows(prepared, split) for t in r)


def _llama(vocab_size: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg)


def _trainer(model, dataset, tmp_path, collator=None, callbacks=None, trainer_cls=Trainer, **kw) -> Trainer:
    args = TrainingArguments(
        output_dir=str(tmp_path / "ckpt"), per_device_train_batch_size=4, max_steps=2, learning_rate=1e-2,
        save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, remove_unused_columns=False,
        dataloader_num_workers=0, logging_strategy="no",
    )
    return trainer_cls(model=model, args=args, train_dataset=dataset, data_collator=collator or DataCollatorForPackedLM(),
                       callbacks=callbacks, **kw)


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _unchanged(model, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# ---------------------------------------------------------------------------------------------- Trainer, end to end


def test_trainer_with_a_too_small_vocabulary_fails_before_step_one(prepared, max_id, tmp_path):
    from datasets import load_dataset

    ds = load_dataset(str(prepared), split="train").with_format("numpy")
    rows = _rows(prepared, "train")
    train_max = max(t for r in rows for t in r)
    vocab = min(max(r) for r in rows)  # every row holds an id >= vocab: whichever rows the Trainer draws fail
    first_bad = _first_row_with_id_at_least(rows, vocab)

    # The premise: without the check, transformers fails deep inside the embedding.
    model = _llama(vocab)
    with pytest.raises(IndexError, match="index out of range"):
        _trainer(model, ds, tmp_path).train()

    # ModelCheckCallback scans the Trainer's own train dataset in on_train_begin.
    model = _llama(vocab)
    before = _weights(model)
    trainer = _trainer(model, ds, tmp_path, callbacks=[ModelCheckCallback()])
    with pytest.raises(DataError) as err:
        trainer.train()
    message = str(err.value)
    assert "\n" not in message
    assert f"row {first_bad} holds token id " in message and f"the largest id in the data is {train_max}" in message
    assert f"the model's vocabulary has {vocab} ids (0..{vocab - 1})" in message
    assert trainer.state.global_step == 0 and _unchanged(model, before)

    # The collator's per-batch check: the first batch already fails, before its forward pass.
    model = _llama(vocab)
    before = _weights(model)
    trainer = _trainer(model, ds, tmp_path, collator=DataCollatorForPackedLM(vocab_size=model_vocab_size(model)))
    with pytest.raises(DataError, match=rf"input_ids holds id \d+ \(the largest id in this batch is \d+\), but the "
                       rf"model's vocabulary has {vocab} ids"):
        trainer.train()
    assert trainer.state.global_step == 0 and _unchanged(model, before)


def test_trainer_with_a_vocabulary_that_fits_trains(prepared, max_id, tmp_path):
    # The folder check covers every split (max_id is over train and test), the collator the batches it sees.
    from datasets import load_dataset

    ds = load_dataset(str(prepared), split="train")
    model = _llama(max_id + 1)  # the smallest vocabulary that holds every id
    check = ModelCheckCallback(prepared)
    trainer = _trainer(model, ds, tmp_path, collator=DataCollatorForPackedLM(vocab_size=max_id + 1), callbacks=[check])
    trainer.train()
    assert trainer.state.global_step == 2
    n_rows = len(_rows(prepared, "train")) + len(_rows(prepared, "test"))
    n_tokens = sum(len(r) for split in ("train", "test") for r in _rows(prepared, split))
    assert (check.result.max_id, check.result.vocab_size) == (max_id, max_id + 1)
    assert (check.result.rows, check.result.tokens) == (n_rows, n_tokens)


# ------------------------------------------------------------------------------------- check_dataset_for_model


def test_folder_check_names_split_and_row_across_shards(prepared, max_id, tokenizer, tmp_path):
    import shutil

    # Splits are scanned in file-name order (test before train); a copy without the test shards isolates train.
    only_train = tmp_path / "only_train"
    shutil.copytree(prepared, only_train)
    for shard in (only_train / "data").glob("test-*.parquet"):
        shard.unlink()
    rows = _rows(prepared, "train")
    assert len(list((only_train / "data").glob("train-*.parquet"))) > 2  # the row numbering spans shards
    # A bound the first shard's 5 rows stay below: the row number must count the earlier shards' rows.
    bound = max(max(r) for r in rows[:5]) + 1
    first = _first_row_with_id_at_least(rows, bound)
    assert first >= 5
    with pytest.raises(DataError) as err:
        check_dataset_for_model(str(only_train), bound)
    train_max = max(t for r in rows for t in r)
    assert f"{only_train}: split 'train' row {first} holds token id " in str(err.value)
    assert f"the largest id in the data is {train_max} (its card records a {len(tokenizer)}-id tokenizer)" in str(err.value)
    # With both splits, the first offending row is the test split's (scanned first).
    test_rows = _rows(prepared, "test")
    with pytest.raises(DataError, match=f"split 'test' row {_first_row_with_id_at_least(test_rows, max_id)} holds "
                       f"token id {max_id}, the largest id in the data is {max_id} "):
        check_dataset_for_model(prepared, max_id)
    ok = check_dataset_for_model(prepared, LlamaConfig(vocab_size=max_id + 1))
    assert ok.max_id == max_id and ok.vocab_size == max_id + 1


def test_datasetdict_check_names_the_split_and_a_view_scans_only_its_rows():
    from datasets import Dataset, DatasetDict

    dd = DatasetDict({"train": Dataset.from_dict({"input_ids": [[1, 2], [3]]}),
                      "test": Dataset.from_dict({"input_ids": [[4], [5, 50], [60]]})})
    with pytest.raises(DataError, match=r"^the dataset: split 'test' row 1 holds token id 50, the largest id in the "
                       r"data is 60, but the model's vocabulary has 8 ids \(0\.\.7\);"):
        check_dataset_for_model(dd, 8)
    assert check_dataset_for_model(dd, 61).max_id == 60
    ds = Dataset.from_dict({"input_ids": [[1, 2], [3, 90], [4], [5, 6, 7]]})
    picked = ds.select([0, 2, 3])  # an indices mapping: row 1 (id 90) is not part of this view
    assert check_dataset_for_model(picked, 8) == check_dataset_for_model(Dataset.from_dict(picked[:]), 8)
    assert (check_dataset_for_model(picked, 8).max_id, check_dataset_for_model(picked, 8).tokens) == (7, 6)
    with pytest.raises(DataError, match="the dataset: row 1 holds token id 90"):
        check_dataset_for_model(ds.select([3, 1, 0]), 8)


def test_negative_ids_and_bad_arguments():
    from datasets import Dataset, IterableDataset

    with pytest.raises(DataError, match="row 1 holds token id -3"):
        check_dataset_for_model(Dataset.from_dict({"input_ids": [[1], [-3, 2]]}), 8)
    with pytest.raises(ConfigError, match="streaming dataset cannot be scanned"):
        check_dataset_for_model(IterableDataset.from_generator(lambda: iter([{"input_ids": [1]}])), 8)
    with pytest.raises(ConfigError, match="not a folder"):
        check_dataset_for_model("no/such/folder", 8)
    with pytest.raises(ConfigError, match="cannot tell the vocabulary size"):
        check_dataset_for_model(Dataset.from_dict({"input_ids": [[1]]}), object())
    with pytest.raises(DataError, match="no 'input_ids' column"):
        check_dataset_for_model(Dataset.from_dict({"text": ["a"]}), 8)
    with pytest.raises(ConfigError, match="pass card="):
        check_dataset_for_model(Dataset.from_dict({"input_ids": [[1]]}), 8, tokenizer=object())


def test_model_vocab_size_is_the_embedding_table():
    model = _llama(50)
    model.resize_token_embeddings(64)  # the table (what ids must stay below) and the config can differ
    assert model.get_input_embeddings().num_embeddings == 64
    assert model_vocab_size(model) == 64 and model_vocab_size(LlamaConfig(vocab_size=50)) == 50


# ------------------------------------------------------------------------------------------------- fingerprints


def test_card_fingerprint_same_tokenizer_passes_another_fails(prepared, tokenizer_path, tmp_path, max_id):
    from datasets import load_dataset

    from hfprep.tokenization.loading import load_tokenizer, tokenizer_fingerprint, train_tiny_tokenizer

    card = yaml.safe_load((prepared / "README.md").read_text().split("---")[1])["hfprep"]["tokenizer"]
    same = load_tokenizer(tokenizer_path)  # loaded afresh, as a training script would
    ok = check_dataset_for_model(prepared, max_id + 1, tokenizer=same)
    assert ok.fingerprint == card["fingerprint"] == tokenizer_fingerprint(same)
    other = train_tiny_tokenizer(CORPUS * 20, tmp_path / "other", vocab_size=380)
    with pytest.raises(TokenizerError) as err:
        check_dataset_for_model(prepared, max_id + 1, tokenizer=other)
    message = str(err.value)
    assert "\n" not in message and card["fingerprint"][:12] in message
    assert tokenizer_fingerprint(other)[:12] in message
    # A Dataset has no card of its own: card= names the folder; the callback does the same before step one.
    ds = load_dataset(str(prepared), split="train")
    assert check_dataset_for_model(ds, max_id + 1, tokenizer=same, card=prepared).fingerprint == card["fingerprint"]
    with pytest.raises(TokenizerError):
        check_dataset_for_model(ds, max_id + 1, tokenizer=other, card=prepared / "README.md")
    model = _llama(max_id + 1)
    before = _weights(model)
    trainer = _trainer(model, ds, tmp_path, callbacks=[ModelCheckCallback(tokenizer=other, card=prepared)])
    with pytest.raises(TokenizerError):
        trainer.train()
    assert trainer.state.global_step == 0 and _unchanged(model, before)


@pytest.mark.slow
def test_real_tokenizer_card_fingerprint_matches_a_fresh_load(tmp_path):
    """On real model tokenizers: the fingerprint `hfprep run` writes into the card is the one a training script
    gets from loading the same tokenizer files afresh, and another family's differs."""
    from fetch_tokenizers import family_dir

    from hfprep.tokenization.loading import load_tokenizer

    qwen = real_tokenizer("qwen3")
    folder = _prepare(tmp_path / "qwen", str(family_dir("qwen3")), eos_token="<|endoftext|>")
    fresh = load_tokenizer(str(family_dir("qwen3")))
    check = check_dataset_for_model(folder, LlamaConfig(vocab_size=len(qwen)), tokenizer=fresh)
    assert check.max_id < len(qwen)
    with pytest.raises(TokenizerError):
        check_dataset_for_model(folder, LlamaConfig(vocab_size=len(qwen)), tokenizer=real_tokenizer("llama3_1"))


# ------------------------------------------------------------------------------------------------------- batches


def test_check_batch_ids_names_row_token_and_largest_id():
    ids = np.array([[1, 2, 3], [4, 12, 9]])
    check_batch_ids(ids, 13)
    with pytest.raises(DataError, match=r"^batch row 1, token 1: input_ids holds id 12 \(the largest id in this batch "
                       r"is 12\), but the model's vocabulary has 9 ids \(0\.\.8\);"):
        check_batch_ids(ids, 9)
    with pytest.raises(DataError, match=r"batch row 1, token 0, top-k entry 1: topk_ids holds id 7"):
        check_batch_ids(torch.tensor([[[0, 1]], [[2, 7]]]), 5, "topk_ids")


def test_collator_vocab_size_leaves_good_batches_alone():
    rows = [{"input_ids": [5, 6, 0, 7], "position_ids": [0, 1, 2, 0], "loss_mask": [True] * 4}]
    plain = DataCollatorForPackedLM()(rows)
    checked = DataCollatorForPackedLM(vocab_size=8)(rows)
    assert all(torch.equal(plain[k], checked[k]) for k in ("input_ids", "labels", "position_ids"))
    with pytest.raises(DataError, match="batch row 0, token 3: input_ids holds id 7"):
        DataCollatorForPackedLM(vocab_size=7)(rows)
    for bad in (0, -1, True, 2.5, "8"):
        with pytest.raises(ConfigError, match="vocab_size must be a positive integer"):
            DataCollatorForPackedLM(vocab_size=bad)


# ---------------------------------------------------------------------------------------------------- KD caches


@pytest.fixture(scope="module")
def kd_cache(tmp_path_factory, tokenizer, tokenizer_path) -> Path:
    from hfprep.kd import build_kd_cache, config_from_dict
    from hfprep.kd.example import EXAMPLE_TEXTS, save_tiny_teacher, write_prepared

    work = tmp_path_factory.mktemp("kd_model_check")
    write_prepared(tokenizer, work / "prepared", EXAMPLE_TEXTS * 4, seq_len=24, max_rows_per_shard=7)
    save_tiny_teacher(work / "teacher", len(tokenizer), seed=3)
    cfg = config_from_dict(
        {
            "input": {"folder": str(work / "prepared")},
            "teacher": {"name_or_path": str(work / "teacher")},
            "tokenizer": {"name_or_path": tokenizer_path},
            "output": {"folder": str(work / "kd"), "rows_per_shard": 6},
            "k": 4,
        }
    )
    build_kd_cache(cfg, overwrite=True, progress=False)
    return work / "kd"


def test_kd_trainer_with_a_too_small_student_fails_before_step_one(kd_cache, tokenizer, tmp_path):
    from hfprep.kd import DataCollatorForKD, KDTrainer, RBTopKIterableDataset

    rows = _rows(kd_cache, "train")
    data_max = max(t for r in rows for t in r)
    vocab = data_max  # input ids reach one past the student's last id
    reader = RBTopKIterableDataset(str(kd_cache / "data" / "train-*.parquet"), k=4)

    # The premise: an unchecked batch fails inside the student's embedding.
    batch = DataCollatorForKD()([next(iter(reader))])
    with pytest.raises(IndexError):
        _llama(vocab)(input_ids=batch["input_ids"], position_ids=batch["position_ids"])

    # KDTrainer gives its DataCollatorForKD the student's vocabulary size: the first batch is refused.
    model = _llama(vocab)
    before = _weights(model)
    collator = DataCollatorForKD()
    trainer = _trainer(model, reader, tmp_path, collator=collator, trainer_cls=KDTrainer)
    assert collator.vocab_size is None and trainer.data_collator.vocab_size == vocab  # the caller's object is untouched
    with pytest.raises(DataError, match=rf"(input_ids|topk_ids) holds id \d+ .*vocabulary has {vocab} ids"):
        trainer.train()
    assert trainer.state.global_step == 0 and _unchanged(model, before)

    # ModelCheckCallback on the trainer's KD reader: the cache's teacher vocabulary does not fit the student.
    model = _llama(vocab)
    trainer = _trainer(model, reader, tmp_path, collator=DataCollatorForKD(), trainer_cls=KDTrainer,
                       callbacks=[ModelCheckCallback(tokenizer=tokenizer)])
    with pytest.raises(DataError, match=rf"top-k ids range over the cache's {len(tokenizer):,}-id vocabulary, but the "
                       rf"model's has {vocab:,} ids"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_kd_cache_folder_check(kd_cache, tokenizer, tmp_path):
    from hfprep.tokenization.loading import train_tiny_tokenizer

    rows = _rows(kd_cache, "train")
    data_max = max(t for r in rows for t in r)
    check = check_dataset_for_model(kd_cache, len(tokenizer), tokenizer=tokenizer)
    assert (check.max_id, check.rows, check.tokens) == (data_max, len(rows), sum(map(len, rows)))
    other = train_tiny_tokenizer(CORPUS * 20, tmp_path / "other", vocab_size=380)
    with pytest.raises(TokenizerError, match="the data was tokenized with tokenizer"):
        check_dataset_for_model(kd_cache, len(tokenizer), tokenizer=other)
    with pytest.raises(DataError, match="distil into a student that uses the cache's tokenizer"):
        check_dataset_for_model(kd_cache, len(tokenizer) - 1)
