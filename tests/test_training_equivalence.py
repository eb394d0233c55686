"""The proof that training on packed rows is training on the documents one by one.

A tiny random LlamaForCausalLM (fp32, eval) is saved and loaded by path. For rows packed by the real packers
(dense with mid-document cuts, no_incomplete with padding, FIM and SFT loss masks), the loss of the packed batch
from ``DataCollatorForPackedLM`` must equal the token-weighted mean of the losses of the same documents run one
by one, unpacked. The reference below is plain Python: it splits rows at ``position_ids == 0`` itself and scores
token t of a document (t >= 1) iff ``loss_mask[t]``.

Deliberately broken collators (positions, labels, segment starts, padding, a 2D attention mask) must fail the
same check, so the check is shown to be able to fail.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from hfprep.pack.packers import pack_dense, pack_no_incomplete
from hfprep.tokenization.stage import fim_processing, pretrain_processing, sft_processing
from hfprep.train.collator import DataCollatorForPackedLM

transformers = pytest.importorskip("transformers")
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.masking_utils import find_packed_sequence_indices  # noqa: E402

RTOL = 1e-5

TEXTS = [
    "Hello, World!",
    "The quick brown fox jumps over the lazy dog.",
    "import numpy as np",
    "A sample text. A test string. How can I help you?",
    "def f(x):\n    return x * 2\n",
    "Hi!",
    "for i in range(10):\n    print(i)\n",
    "Unicode: café, naïve.",
    "I am fine, thanks. The quick brown fox.",
    "import pandas as pd\nimport numpy as np\n",
]
FIM = [
    {"prefix": "def f(x):\n", "middle": "    return x", "suffix": " * 2\n"},
    {"prefix": "import ", "middle": "numpy", "suffix": " as np\n"},
    {"prefix": "The quick ", "middle": "brown fox", "suffix": " jumps."},
]
CHATS = [
    [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello, World!"}],
    [
        {"role": "user", "content": "How can I help you?"},
        {"role": "assistant", "content": "I am fine, thanks."},
        {"role": "user", "content": "A test string."},
        {"role": "assistant", "content": "A sample text."},
    ],
    [{"role": "user", "content": "import numpy"}, {"role": "assistant", "content": "as np"}],
]


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, tokenizer) -> str:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        # A larger init than the default 0.02 makes attention far from uniform, so any leak between documents
        # or any position error moves the loss well above the tolerance.
        initializer_range=0.3,
        tie_word_embeddings=False,
    )
    path = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module", params=["eager", "sdpa"])
def model(request, model_path):
    m = LlamaForCausalLM.from_pretrained(model_path, attn_implementation=request.param, dtype=torch.float32)
    assert m.config._attn_implementation == request.param
    return m.eval()


@pytest.fixture(scope="module")
def docs(tokenizer) -> dict[str, list[dict]]:
    pre = [pretrain_processing({"content": t}, tokenizer) for t in TEXTS]
    fim = [fim_processing(r, tokenizer, only_middle_not_masked=True, fim_format=f)
           for r in FIM for f in ("psm", "spm")]
    sft = [sft_processing({"content": c}, tokenizer) for c in CHATS]
    return {"pretrain": pre, "fim_sft": [d for pair in zip(fim, sft * 2, strict=False) for d in pair]}


@pytest.fixture(scope="module")
def packed(docs, tokenizer) -> dict[str, list[dict]]:
    eos = tokenizer.eos_token_id
    out = {
        "dense": pack_dense(docs["pretrain"], 24),
        "no_incomplete": pack_no_incomplete(docs["pretrain"], 32, eos),
        "dense_fim_sft": pack_dense(docs["fim_sft"], 40),
        "no_incomplete_fim_sft": pack_no_incomplete(docs["fim_sft"], 48, eos),
    }
    # The cases must really contain what they claim to test.
    assert _has_mid_document_cut(docs["pretrain"], 24)
    assert any(not r["loss_mask"][-1] for r in out["no_incomplete"])  # padding present
    assert any(not r["loss_mask"][i] and r["position_ids"][i] > 0 for r in out["dense_fim_sft"]
               for i in range(len(r["loss_mask"])))  # masked tokens inside documents
    return out


def _has_mid_document_cut(docs: list[dict], seq_len: int) -> bool:
    ends = np.cumsum([len(d["input_ids"]) for d in docs])
    return bool(np.any(ends % seq_len != 0))


# ------------------------------------------------------------------------------------------- reference


def reference_segments(pos: list[int], loss: list[bool]) -> list[int]:
    """Segment index per token: documents start at position 0; the trailing padding (position 0, no loss) is one."""
    n = len(pos)
    pad_from = n
    while pad_from > 0 and pos[pad_from - 1] == 0 and not loss[pad_from - 1]:
        pad_from -= 1
    seg, cur = [], -1
    for t in range(n):
        if pos[t] == 0 and not (t > pad_from):
            cur += 1
        seg.append(cur)
    return seg


_REFERENCE_CACHE: dict[tuple[int, int], tuple[float, int]] = {}


def reference_loss(model, rows: list[dict]) -> tuple[float, int]:
    """Token-weighted mean loss of every document of every row, each run alone (cached per model and rows)."""
    key = (id(model), id(rows))
    if key not in _REFERENCE_CACHE:
        _REFERENCE_CACHE[key] = _reference_loss(model, rows)
    return _REFERENCE_CACHE[key]


@torch.no_grad()
def _reference_loss(model, rows: list[dict]) -> tuple[float, int]:
    total, count = 0.0, 0
    for row in rows:
        ids = [int(x) for x in row["input_ids"]]
        pos = [int(x) for x in row["position_ids"]]
        loss = [bool(x) for x in row["loss_mask"]]
        starts = [t for t in range(len(ids)) if pos[t] == 0] + [len(ids)]
        for a, b in itertools.pairwise(starts):
            scored = [t for t in range(a + 1, b) if loss[t]]
            if not scored:
                continue
            logp = model(input_ids=torch.tensor([ids[a:b]])).logits[0].double().log_softmax(-1)
            for t in scored:
                total -= float(logp[t - a - 1, ids[t]])
                count += 1
    return total / count, count


def check_packed_batch(model, rows: list[dict], collator) -> list[str]:
    """Every way the packed batch can disagree with the documents run alone (empty list = equivalent)."""
    problems = []
    batch = collator(rows)
    ref, count = reference_loss(model, rows)
    model_inputs = {k: v for k, v in batch.items() if not k.startswith(("cu_seq", "max_length"))}
    with torch.no_grad():
        got = float(model(**model_inputs).loss)
    if not math.isclose(got, ref, rel_tol=RTOL):
        problems.append(f"loss {got:.8f} != reference {ref:.8f}")
    scored = int((batch["labels"][:, 1:] != -100).sum())
    if scored != count:
        problems.append(f"{scored} scored tokens, reference {count}")
    # What transformers will see as documents must be the reference documents, padding as one segment.
    expected = [reference_segments([int(p) for p in r["position_ids"]], [bool(x) for x in r["loss_mask"]])
                for r in rows]
    if "cu_seq_lens_q" in batch:
        starts, offset = [], 0
        for seg in expected:
            starts += [offset + t for t in range(len(seg)) if t == 0 or seg[t] != seg[t - 1]]
            offset += len(seg)
        if batch["cu_seq_lens_q"].tolist() != [*starts, offset]:
            problems.append("cu_seq_lens differ from the reference documents")
        if batch["max_length_q"] != max(np.diff([*starts, offset])):
            problems.append("max_length differs from the longest reference document")
    elif "attention_mask" in batch and batch["attention_mask"].ndim == 4:
        for r, seg in enumerate(expected):
            want = [[j <= i and seg[i] == seg[j] for j in range(len(seg))] for i in range(len(seg))]
            m = batch["attention_mask"][r, 0]
            allowed = m if m.dtype == torch.bool else m == 0
            if allowed.tolist() != want:
                problems.append(f"4d mask of row {r} is not the reference block-diagonal causal mask")
    else:
        detected = find_packed_sequence_indices(batch["position_ids"])
        detected = torch.zeros_like(batch["position_ids"]) if detected is None else detected
        if detected.tolist() != expected:
            problems.append("transformers' packed-sequence detection differs from the reference documents")
    return problems


# ----------------------------------------------------------------------------------------------- tests

CASES = ["dense", "no_incomplete", "dense_fim_sft", "no_incomplete_fim_sft"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("mode", ["position_ids", "4d", "flash_varlen"])
def test_packed_loss_equals_unpacked(model, packed, case, mode):
    # flash_varlen's flattened (1, total) batch runs here through eager/sdpa's own detection from position_ids;
    # its cu_seq_lens are checked against the reference documents.
    collator = DataCollatorForPackedLM(attention=mode)
    assert check_packed_batch(model, packed[case], collator) == []


def test_packed_loss_equals_unpacked_bool_4d_mask(model, packed):
    if model.config._attn_implementation != "sdpa":
        pytest.skip("eager adds the mask to its scores, so it takes the additive float mask (tested above)")
    collator = DataCollatorForPackedLM(attention="4d", mask_dtype=torch.bool)
    for case in CASES:
        assert check_packed_batch(model, packed[case], collator) == [], case


def test_flash_varlen_drop_padding_same_loss(model, packed):
    rows = packed["no_incomplete"]
    collator = DataCollatorForPackedLM(attention="flash_varlen", drop_padding=True)
    batch = collator(rows)
    assert batch["input_ids"].shape[1] < sum(len(r["input_ids"]) for r in rows)
    with torch.no_grad():
        got = float(model(input_ids=batch["input_ids"], labels=batch["labels"],
                          position_ids=batch["position_ids"], use_cache=batch["use_cache"]).loss)
    assert math.isclose(got, reference_loss(model, rows)[0], rel_tol=RTOL)


def test_reference_is_not_trivially_satisfied(model, packed):
    """Running the packed rows as plain sequences (documents see each other) gives another loss."""
    rows = packed["dense"]
    ids = torch.tensor(np.stack([r["input_ids"] for r in rows]).astype(np.int64))
    labels = DataCollatorForPackedLM()(rows)["labels"]
    with torch.no_grad():
        leaky = float(model(input_ids=ids, labels=labels).loss)
    ref = reference_loss(model, rows)[0]
    assert not math.isclose(leaky, ref, rel_tol=1e-3)


def _pad_from(row: dict) -> int:
    loss, pos = np.asarray(row["loss_mask"]), np.asarray(row["position_ids"])
    t = len(loss)
    while t > 0 and not loss[t - 1] and pos[t - 1] == 0:
        t -= 1
    return t


class BrokenCollator(DataCollatorForPackedLM):
    """The real collator with one deliberate bug, to show the equivalence check catches it."""

    def __init__(self, bug: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.bug = bug

    def __call__(self, features, return_tensors=None):
        batch = super().__call__(features, return_tensors)
        pos, labels, ids = batch["position_ids"], batch["labels"], batch["input_ids"]
        if self.bug == "positions_not_restarted":  # one running position per row
            batch["position_ids"] = torch.arange(pos.shape[1]).expand_as(pos).clone()
        elif self.bug == "positions_restart_late":  # each document's positions shifted into the next one
            batch["position_ids"] = torch.roll(pos, 1, dims=1)
            batch["position_ids"][:, 0] = 0
        elif self.bug == "labels_pre_shifted":
            batch["labels"] = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)
        elif self.bug == "labels_ignore_loss_mask":
            batch["labels"] = torch.where(pos == 0, torch.full_like(ids, -100), ids)
        elif self.bug == "segment_starts_scored":
            rebuilt = DataCollatorForPackedLM(attention=self.attention, cross_document_labels=True)(features)
            batch["labels"] = rebuilt["labels"]
        elif self.bug == "padding_one_segment_per_token":
            for r, f in enumerate(features):
                batch["position_ids"][r, _pad_from(f) :] = 0
        elif self.bug == "padding_scored":
            for r, f in enumerate(features):
                batch["labels"][r, _pad_from(f) :] = ids[r, _pad_from(f) :]
        elif self.bug == "attention_mask_2d":
            batch["attention_mask"] = torch.ones_like(ids)
        elif self.bug == "kv_cache_left_on":
            del batch["use_cache"]
        elif self.bug == "4d_plain_causal":
            L = ids.shape[1]
            causal = torch.ones(L, L, dtype=torch.bool).tril()
            batch["attention_mask"] = torch.zeros_like(batch["attention_mask"]).masked_fill_(
                ~causal, torch.finfo(torch.float32).min
            )
        else:
            raise ValueError(self.bug)
        return batch


BUGS = [
    ("position_ids", "positions_not_restarted"),
    ("position_ids", "positions_restart_late"),
    ("position_ids", "labels_pre_shifted"),
    ("position_ids", "labels_ignore_loss_mask"),
    ("position_ids", "segment_starts_scored"),
    ("position_ids", "padding_one_segment_per_token"),
    ("position_ids", "padding_scored"),
    ("position_ids", "attention_mask_2d"),
    ("position_ids", "kv_cache_left_on"),
    ("flash_varlen", "labels_pre_shifted"),
    ("flash_varlen", "segment_starts_scored"),
    ("4d", "positions_restart_late"),
    ("4d", "segment_starts_scored"),
    ("4d", "4d_plain_causal"),
]


@pytest.mark.parametrize(("mode", "bug"), BUGS)
def test_deliberate_bugs_are_caught(model, packed, mode, bug):
    collator = BrokenCollator(bug, attention=mode)
    # Stops at the first packing that exposes the bug.
    assert any(check_packed_batch(model, packed[case], collator) for case in CASES), f"{bug!r} went unnoticed"


# ---------------------------------------------------------------------------------------- Trainer smoke


@pytest.fixture(scope="module")
def prepared_parquet(tmp_path_factory, tokenizer_path) -> str:
    """A dataset prepared by hfprep, written to Parquet and read back with load_dataset (the round trip)."""
    from datasets import Dataset

    from hfprep.pack.transform import PrepareForTrainingTransform, PrepareForTrainingTransformConfig

    cfg = PrepareForTrainingTransformConfig(
        processing_strategy="pretrain", packing_strategy="no_incomplete", tokenizer_name=tokenizer_path,
        seq_len=32, num_reduce_chunks=2,
    )
    ds = PrepareForTrainingTransform(cfg).run(Dataset.from_dict({"content": TEXTS * 3}))
    path = tmp_path_factory.mktemp("prepared") / "train.parquet"
    ds.to_parquet(str(path))
    return str(path)


def _trainer(model_path, dataset, tmp_path, remove_unused_columns: bool):
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    model = LlamaForCausalLM.from_pretrained(model_path, attn_implementation="sdpa", dtype=torch.float32)
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=12, learning_rate=3e-3,
        logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, seed=0,
        remove_unused_columns=remove_unused_columns, disable_tqdm=True, dataloader_num_workers=0,
    )
    return Trainer(model=model, args=args, train_dataset=dataset, data_collator=DataCollatorForPackedLM())


@pytest.mark.parametrize("fmt", [None, "torch"])
def test_trainer_runs_and_loss_decreases(model_path, prepared_parquet, tmp_path, fmt):
    from datasets import load_dataset

    ds = load_dataset("parquet", data_files=prepared_parquet, split="train").with_format(fmt)
    assert set(ds.column_names) == {"input_ids", "position_ids", "loss_mask"}
    trainer = _trainer(model_path, ds, tmp_path, remove_unused_columns=False)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 12 and all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.5


def test_trainer_dropping_loss_mask_is_a_clear_error(model_path, prepared_parquet, tmp_path):
    from datasets import load_dataset

    from hfprep.errors import DataError

    ds = load_dataset("parquet", data_files=prepared_parquet, split="train")
    trainer = _trainer(model_path, ds, tmp_path, remove_unused_columns=True)
    with pytest.raises(DataError, match="remove_unused_columns=False"):
        trainer.train()


# ---------------------------------------------------------------------------------------- TRL SFTTrainer


def test_trl_sft_trainer_trains_on_hfprep_rows(model_path, tokenizer, prepared_parquet, tmp_path):
    """TRL's SFTTrainer on hfprep rows with the documented settings: TRL's own preparation skipped (the rows are
    already tokenized and packed), columns kept, hfprep's collator. The loss is finite and falls, and the labels
    TRL trains on are exactly the collator's (no loss across documents)."""
    trl = pytest.importorskip("trl")
    from datasets import load_dataset

    ds = load_dataset("parquet", data_files=prepared_parquet, split="train")
    torch.manual_seed(0)
    model = LlamaForCausalLM.from_pretrained(model_path, attn_implementation="sdpa", dtype=torch.float32)
    args = trl.SFTConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=12, learning_rate=3e-3,
        logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, seed=0, disable_tqdm=True,
        dataloader_num_workers=0,
        dataset_kwargs={"skip_prepare_dataset": True},  # rows are tokenized and packed already
        remove_unused_columns=False,  # keep position_ids / loss_mask for the collator
    )
    collator = DataCollatorForPackedLM()
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=ds, data_collator=collator,
                             processing_class=tokenizer)
    assert trainer.train_dataset.column_names == ds.column_names  # TRL left the rows alone
    seen: list[dict] = []
    original = trainer.compute_loss

    def spy(model, inputs, *a, **kw):
        seen.append({k: v.clone() if torch.is_tensor(v) else v for k, v in inputs.items()})
        return original(model, inputs, *a, **kw)

    trainer.compute_loss = spy
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 12 and all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.5
    # What reached the model: position_ids kept, no 2D attention mask, and labels as transformers expects them
    # (not pre-shifted; -100 off the loss mask and at every document's first token), written out by hand.
    first = seen[0]
    assert "attention_mask" not in first and "position_ids" in first
    by_ids = {tuple(r["input_ids"]): r for r in ds}
    for ids, labels in zip(first["input_ids"].tolist(), first["labels"].tolist()):
        row = by_ids[tuple(ids)]
        expected = [t if m and p != 0 else -100 for t, m, p in zip(row["input_ids"], row["loss_mask"], row["position_ids"])]
        assert labels == expected
