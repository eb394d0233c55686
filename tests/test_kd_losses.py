"""KD losses against a full-vocabulary float64 reference, the KD collator's alignment, and a tiny distillation run."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from hfprep.errors import ConfigError
from hfprep.kd.collator import DataCollatorForKD
from hfprep.kd.losses import forward_kl_topk, reverse_kl_topk

V = 11


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def ref_losses(zs: np.ndarray, zt: np.ndarray, k: int, T: float) -> dict[str, float]:
    """Plain per-position float64 loops: full KLs and the top-k variants written out from their definitions."""
    p, q = softmax(zt / T), softmax(zs / T)
    K = np.argsort(-p, kind="stable")[:k]
    P, Q = p[K].sum(), q[K].sum()
    out = {
        "full_fwd": sum(p[i] * math.log(p[i] / q[i]) for i in range(V)),
        "full_rev": sum(q[i] * math.log(q[i] / p[i]) for i in range(V)),
        "renorm_fwd": sum((p[i] / P) * math.log((p[i] / P) / q[i]) for i in K),
        "renorm_rev": sum((q[i] / Q) * math.log((q[i] / Q) / (p[i] / P)) for i in K),
    }
    tail_p, tail_q = 1 - P, 1 - Q
    tail_f = tail_p * math.log(tail_p / tail_q) if tail_p > 1e-12 else 0.0
    tail_r = tail_q * math.log(tail_q / tail_p) if tail_q > 1e-12 else 0.0
    out["tail_fwd"] = sum(p[i] * math.log(p[i] / q[i]) for i in K) + tail_f
    out["tail_rev"] = sum(q[i] * math.log(q[i] / p[i]) for i in K) + tail_r
    return out


def setup(k: int, T: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    zs = torch.randn(2, 3, V, generator=g, dtype=torch.float64) * 2
    zt = torch.randn(2, 3, V, generator=g, dtype=torch.float64) * 2
    lp, ids = torch.log_softmax(zt / T, -1).topk(k, dim=-1)  # what the cache stores: full-vocab values
    mask = torch.tensor([[True, True, False], [True, False, True]])
    refs = [[ref_losses(zs[b, t].numpy(), zt[b, t].numpy(), k, T) for t in range(3)] for b in range(2)]

    def mean(name: str) -> float:
        vals = [refs[b][t][name] for b in range(2) for t in range(3) if mask[b, t]]
        return float(np.mean(vals)) * T * T

    return zs.float(), ids, lp.float(), mask, mean


@pytest.mark.parametrize("T", [1.0, 2.0])
@pytest.mark.parametrize("k", [3, 7])
def test_topk_losses_match_reference_and_bound_full_kl(k, T):
    zs, ids, lp, mask, mean = setup(k, T)
    got = {
        "renorm_fwd": forward_kl_topk(zs, ids, lp, mask, temperature=T, mode="renorm"),
        "tail_fwd": forward_kl_topk(zs, ids, lp, mask, temperature=T, mode="tail"),
        "renorm_rev": reverse_kl_topk(zs, ids, lp, mask, temperature=T, mode="renorm"),
        "tail_rev": reverse_kl_topk(zs, ids, lp, mask, temperature=T, mode="tail"),
    }
    for name, v in got.items():
        assert float(v) == pytest.approx(mean(name), rel=1e-4, abs=1e-5), name
    assert float(got["tail_fwd"]) <= mean("full_fwd") + 1e-6
    assert float(got["tail_rev"]) <= mean("full_rev") + 1e-6
    assert float(got["tail_fwd"]) < mean("full_fwd") - 1e-4  # strictly below when mass is dropped


@pytest.mark.parametrize("T", [1.0, 2.0])
def test_all_modes_equal_full_kl_when_k_is_vocab(T):
    zs, ids, lp, mask, mean = setup(V, T)
    for mode in ("renorm", "tail"):
        assert float(forward_kl_topk(zs, ids, lp, mask, temperature=T, mode=mode)) == pytest.approx(
            mean("full_fwd"), rel=1e-4, abs=1e-5
        )
        assert float(reverse_kl_topk(zs, ids, lp, mask, temperature=T, mode=mode)) == pytest.approx(
            mean("full_rev"), rel=1e-4, abs=1e-5
        )


def test_retempered_renorm_equals_capture_at_loss_temperature():
    zs, ids, lp1, mask, _ = setup(5, 1.0)
    # the same teacher captured at T=2: same top-k set (monotone), values log_softmax(z/2)
    g = torch.Generator().manual_seed(0)
    torch.randn(2, 3, V, generator=g, dtype=torch.float64)
    zt = torch.randn(2, 3, V, generator=g, dtype=torch.float64) * 2
    lp2 = torch.gather(torch.log_softmax(zt / 2.0, -1), -1, ids).float()
    a = forward_kl_topk(zs, ids, lp1, mask, temperature=2.0, teacher_temperature=1.0, mode="renorm")
    b = forward_kl_topk(zs, ids, lp2, mask, temperature=2.0, teacher_temperature=2.0, mode="renorm")
    assert float(a) == pytest.approx(float(b), rel=1e-5)
    with pytest.raises(ConfigError, match="tail mass"):
        forward_kl_topk(zs, ids, lp1, mask, temperature=2.0, teacher_temperature=1.0, mode="tail")


def test_fill_values_give_finite_gradients():
    zs, ids, lp, mask, _ = setup(4, 1.0)
    lp[~mask] = -1.0e4  # what the cache holds where there is no target
    ids[~mask] = 0
    zs.requires_grad_(True)
    for fn in (forward_kl_topk, reverse_kl_topk):
        for mode in ("renorm", "tail"):
            zs.grad = None
            fn(zs, ids, lp, mask, mode=mode).backward()
            assert torch.isfinite(zs.grad).all()
            assert (zs.grad[~mask] == 0).all()


def test_collator_aligns_cache_with_labels():
    k = 2
    rows = [
        {
            # two documents [5 6 7] [8 9], then padding
            "input_ids": torch.tensor([5, 6, 7, 8, 9, 0, 0]),
            "position_ids": torch.tensor([0, 1, 2, 0, 1, 0, 0]),
            "loss_mask": torch.tensor([True, True, True, False, True, False, False]),
            "attn_mask": torch.tensor([1, 1, 1, 1, 1, 0, 0], dtype=torch.uint8),
            "target_mask": torch.tensor([True, True, False, True, False, False, False]),
            "topk_ids": torch.arange(14).reshape(7, k),
            "topk_logprobs": -torch.arange(14, dtype=torch.float16).reshape(7, k),
        },
        {
            "input_ids": torch.tensor([3, 4, 5]),
            "position_ids": torch.tensor([0, 1, 2]),
            "loss_mask": torch.tensor([True, True, True]),
            "attn_mask": torch.tensor([1, 1, 1], dtype=torch.uint8),
            "target_mask": torch.tensor([True, True, False]),
            "topk_ids": torch.ones(3, k, dtype=torch.long),
            "topk_logprobs": torch.zeros(3, k, dtype=torch.float16),
        },
    ]
    b = DataCollatorForKD(pad_token_id=0)(rows)
    assert b["labels"].tolist() == [[-100, 6, 7, -100, 9, -100, -100], [-100, 4, 5, -100, -100, -100, -100]]
    # teacher row t is used iff the label at t+1 exists: logits[t] predicts labels[t+1]
    assert b["teacher_mask"].tolist() == [
        [True, True, False, True, False, False, False],
        [True, True, False, False, False, False, False],
    ]
    assert b["position_ids"][1].tolist() == [0, 1, 2, 0, 0, 0, 0]
    assert b["teacher_topk_ids"][0, 3].tolist() == [6, 7] and b["teacher_topk_logprobs"].dtype == torch.float32
    assert "attention_mask" not in b  # packed detection from position_ids needs no 2D mask


def test_tiny_distillation_loss_finite_and_decreasing(tmp_path):
    from hfprep.kd.example import main

    losses = main(steps=24, workdir=str(tmp_path), quiet=True)
    assert len(losses) == 24 and all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1


def test_example_prints_each_loss_once(tmp_path, capfd):
    """``python -m hfprep.kd.example`` prints one line per step; the Trainer's own per-step log is off."""
    from hfprep.kd.example import main

    losses = main(steps=3, workdir=str(tmp_path), quiet=False)
    out = capfd.readouterr()
    text = out.out + out.err
    printed = re.findall(r"step\s+(\d+)\s+kd_loss (\S+)", text)
    assert [int(s) for s, _ in printed] == [1, 2, 3]
    assert [float(v) for _, v in printed] == pytest.approx(losses, abs=1e-4)
    assert "'loss'" not in text and '"loss"' not in text  # no second copy from the Trainer's log
