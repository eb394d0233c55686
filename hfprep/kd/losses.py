r"""Distillation losses on a top-k teacher cache (full-vocabulary log-probs, see :mod:`hfprep.kd.format`).

Notation, per position with a target: student logits :math:`z \in \mathbb{R}^V`, temperature :math:`T`,
student log-probs :math:`s = \log\mathrm{softmax}(z / T)`, :math:`q = e^{s}`. The cache holds the teacher's top-k
ids :math:`K` and their *full-vocabulary* log-probs :math:`\ell_i = \log p_i` (captured at temperature
:math:`T_c`). Covered masses :math:`P = \sum_{i\in K} p_i`, :math:`Q = \sum_{i\in K} q_i`; tails
:math:`1-P`, :math:`1-Q`. Renormalised over :math:`K`: :math:`\hat p_i = p_i / P`, :math:`\hat q_i = q_i / Q`.

* forward KL, renormalised teacher:  :math:`\sum_{i\in K} \hat p_i (\log \hat p_i - s_i)`
* forward KL, tail bucket:  :math:`\sum_{i\in K} p_i(\ell_i - s_i) + (1-P)\,(\log(1-P) - \log(1-Q))`
* reverse KL, renormalised:  :math:`\sum_{i\in K} \hat q_i (\log \hat q_i - \log \hat p_i)`
* reverse KL, tail bucket:  :math:`\sum_{i\in K} q_i(s_i - \ell_i) + (1-Q)\,(\log(1-Q) - \log(1-P))`

The tail-bucket losses are the KL divergences between the (k+1)-outcome coarsenings of the two distributions
(the k kept tokens plus "anything else"), so by the data-processing inequality they are <= the full-vocabulary
KL, with equality when k = V: the tightest lower bound a top-k cache allows. Every loss is averaged over the
positions where ``mask`` is True and multiplied by :math:`T^2` (Hinton et al.) unless ``t2_scale=False``, so
gradient magnitudes do not shrink as :math:`T` grows.

A loss temperature :math:`T \ne T_c` re-tempers the teacher: over :math:`K`, :math:`\ell_i T_c / T` equals the
teacher's logits divided by :math:`T` up to a constant, so the renormalised losses stay exact; the tail mass at
the new temperature is unknowable from a top-k cache, so tail-bucket losses require :math:`T = T_c`.

Example:
    >>> import torch
    >>> z, t = torch.randn(1, 3, 10), torch.randn(1, 3, 10).log_softmax(-1)
    >>> lp, ids = t.topk(4, dim=-1)
    >>> loss = forward_kl_topk(z, ids, lp, torch.ones(1, 3, dtype=torch.bool), mode="tail")
    >>> bool(loss >= 0)
    True
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from jaxtyping import Bool, Float, Int

from ..errors import ConfigError

Mode = Literal["renorm", "tail"]
TAIL_EPS = 1e-7
"""log(1 - x) needs x < 1; fp16 top-k masses can round to >= 1, so covered masses are clamped to 1 - TAIL_EPS."""


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, accurate near 0 and for very negative x (x clamped to <= -TAIL_EPS)."""
    x = x.clamp(max=-TAIL_EPS)
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _prepare(
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    temperature: float,
    teacher_temperature: float | None,
    mode: Mode,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(student log-probs at the teacher's ids, teacher log-probs), both float32 (B, L, k)."""
    if mode not in ("renorm", "tail"):
        raise ConfigError(f"unknown KD loss mode {mode!r}; use 'renorm' or 'tail'")
    s_full = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    s = torch.gather(s_full, -1, topk_ids.long())
    t = topk_logprobs.float()
    tc = temperature if teacher_temperature is None else teacher_temperature
    if not math.isclose(tc, temperature):
        if mode == "tail":
            raise ConfigError(
                f"tail-bucket loss at temperature {temperature} but the cache was captured at {tc}: the tail mass "
                "at another temperature is unknown; use mode='renorm' or the capture temperature"
            )
        t = t * (tc / temperature)  # renormalised below, so the missing constant cancels
    return s, t


def _reduce(per_pos: torch.Tensor, mask: torch.Tensor, temperature: float, t2_scale: bool) -> torch.Tensor:
    m = mask.to(per_pos.dtype)
    # where() rather than multiply: a masked position must not leak NaN/inf into the sum
    total = torch.where(mask, per_pos, torch.zeros_like(per_pos)).sum()
    loss = total / m.sum().clamp(min=1.0)
    return loss * (temperature**2) if t2_scale else loss


def _log_tails(t: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``log(1 - P)`` and ``log(1 - Q)``: the teacher's and the student's mass outside the top-k."""
    return _log1mexp(torch.logsumexp(t, dim=-1)), _log1mexp(torch.logsumexp(s, dim=-1))


def forward_kl_topk(
    student_logits: Float[torch.Tensor, "batch seq vocab"],
    topk_ids: Int[torch.Tensor, "batch seq k"],
    topk_logprobs: Float[torch.Tensor, "batch seq k"],
    mask: Bool[torch.Tensor, "batch seq"],
    temperature: float = 1.0,
    mode: Mode = "renorm",
    teacher_temperature: float | None = None,
    t2_scale: bool = True,
) -> Float[torch.Tensor, ""]:
    r"""Forward KL(teacher || student) on the teacher's top-k; ``mode`` ``renorm`` or ``tail`` (see module doc).

    renorm: :math:`\sum_{i\in K} \hat p_i (\log \hat p_i - s_i)`;
    tail: :math:`\sum_{i\in K} p_i(\ell_i - s_i) + (1-P)(\log(1-P) - \log(1-Q))`.
    """
    s, t = _prepare(student_logits, topk_ids, topk_logprobs, temperature, teacher_temperature, mode)
    if mode == "renorm":
        t_hat = torch.log_softmax(t, dim=-1)
        per_pos = (t_hat.exp() * (t_hat - s)).sum(-1)
    else:
        log_tail_p, log_tail_q = _log_tails(t, s)
        per_pos = (t.exp() * (t - s)).sum(-1) + log_tail_p.exp() * (log_tail_p - log_tail_q)
    return _reduce(per_pos, mask, temperature, t2_scale)


# The same signature as forward_kl_topk on purpose: kd_loss dispatches between the two.
def reverse_kl_topk(
    student_logits: Float[torch.Tensor, "batch seq vocab"],
    topk_ids: Int[torch.Tensor, "batch seq k"],
    topk_logprobs: Float[torch.Tensor, "batch seq k"],
    mask: Bool[torch.Tensor, "batch seq"],
    temperature: float = 1.0,
    mode: Mode = "renorm",
    teacher_temperature: float | None = None,
    t2_scale: bool = True,
) -> Float[torch.Tensor, ""]:
    r"""Reverse KL(student || teacher) on the teacher's top-k (mode-seeking).

    renorm: :math:`\sum_{i\in K} \hat q_i (\log \hat q_i - \log \hat p_i)`;
    tail: :math:`\sum_{i\in K} q_i(s_i - \ell_i) + (1-Q)(\log(1-Q) - \log(1-P))`.
    """
    s, t = _prepare(student_logits, topk_ids, topk_logprobs, temperature, teacher_temperature, mode)
    if mode == "renorm":
        s_hat = torch.log_softmax(s, dim=-1)
        t_hat = torch.log_softmax(t, dim=-1)
        per_pos = (s_hat.exp() * (s_hat - t_hat)).sum(-1)
    else:
        log_tail_p, log_tail_q = _log_tails(t, s)
        per_pos = (s.exp() * (s - t)).sum(-1) + log_tail_q.exp() * (log_tail_q - log_tail_p)
    return _reduce(per_pos, mask, temperature, t2_scale)


def kd_loss(
    student_logits: Float[torch.Tensor, "batch seq vocab"],
    topk_ids: Int[torch.Tensor, "batch seq k"],
    topk_logprobs: Float[torch.Tensor, "batch seq k"],
    mask: Bool[torch.Tensor, "batch seq"],
    kind: Literal["forward", "reverse"] = "forward",
    **kwargs,
) -> Float[torch.Tensor, ""]:
    """Dispatch to :func:`forward_kl_topk` or :func:`reverse_kl_topk`."""
    if kind == "forward":
        return forward_kl_topk(student_logits, topk_ids, topk_logprobs, mask, **kwargs)
    if kind == "reverse":
        return reverse_kl_topk(student_logits, topk_ids, topk_logprobs, mask, **kwargs)
    raise ConfigError(f"unknown KD loss kind {kind!r}; use 'forward' or 'reverse'")
