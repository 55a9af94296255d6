"""Token-level distillation losses: pure functions, tensors in, (loss, metrics) out.

Every loss takes the student's and (where needed) the teacher's logits at the SAME
response positions, shape `[..., V]`, and a boolean mask `[...]` marking which positions
are real response tokens. It returns the mean over masked tokens (a token-mean, so a long
response weighs more than a short one, as in the paper) and a dict of float metrics.

Conventions shared by all of them:
- `temperature` divides both sides' logits before the log-softmax: the student is
  matched to the teacher's distribution *at the sampling temperature*, the distribution
  the student actually draws its responses from.
- The teacher is always detached: only the student learns.
- Softmaxes are computed in float32 whatever the logits' dtype: bf16 log-probabilities
  of a 150k vocabulary are too coarse for a KL of a few hundredths.
- Masked positions contribute exactly zero (values are selected with `torch.where`, so
  garbage at padded positions cannot leak into the loss).

Reverse KL(student || teacher) is mode seeking: the student is pushed off tokens the
teacher (with knowledge) finds unlikely. It is the on-policy objective. Forward
KL(teacher || student) is mass covering; it is the natural loss when the *teacher*
generated the tokens (the off-policy baseline).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
Metrics = dict[str, float]

DEFAULT_TOP_K = 256
DEFAULT_TEMPERATURE = 0.7


def _log_probs(logits: Tensor, temperature: float) -> Tensor:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return F.log_softmax(_upcast(logits) / temperature, dim=-1)


def _upcast(logits: Tensor) -> Tensor:
    """At least float32 (bf16/fp16 -> fp32); float64 stays float64 (used by the tests)."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def masked_token_mean(per_token: Tensor, mask: Tensor) -> Tensor:
    """Mean of `per_token` over positions where `mask` is true; 0 when nothing is masked in."""
    mask = mask.to(torch.bool)
    zeros = torch.zeros_like(per_token)
    total = torch.where(mask, per_token, zeros).sum()
    return total / mask.sum().clamp(min=1)


def _check_shapes(student: Tensor, teacher: Tensor | None, mask: Tensor) -> None:
    if teacher is not None and student.shape != teacher.shape:
        raise ValueError(f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} differ")
    if student.shape[:-1] != mask.shape:
        raise ValueError(f"mask {tuple(mask.shape)} does not match logits {tuple(student.shape)} without the vocab dim")


def student_topk_mass(student_logits: Tensor, mask: Tensor, *, k: int = DEFAULT_TOP_K,
                      temperature: float = DEFAULT_TEMPERATURE) -> float:
    """Mean probability mass of the student's top-k tokens, a diagnostic for top-k reverse KL.

    Top-k reverse KL ignores everything outside the student's top-k, so a student can lower
    the loss by spreading mass outside it; a falling mass flags that.
    """
    with torch.no_grad():
        logp = _log_probs(student_logits, temperature)
        top = logp.topk(min(k, logp.shape[-1]), dim=-1).values.exp().sum(-1)
        return float(masked_token_mean(top, mask))


def topk_reverse_kl(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, *,
                    k: int = DEFAULT_TOP_K, temperature: float = DEFAULT_TEMPERATURE) -> tuple[Tensor, Metrics]:
    """Reverse KL restricted to the student's top-k tokens of the FULL-vocabulary softmax.

    per token: sum_{v in topk(p_s)} p_s(v) * (log p_s(v) - log p_t(v)), with p_s and p_t the
    full-vocabulary softmaxes (no renormalisation inside the top-k: this is the paper's
    choice). Gradients flow through both p_s and log p_s; which tokens form the top-k is a
    discrete choice and carries no gradient. With k >= V this is the full reverse KL.
    """
    _check_shapes(student_logits, teacher_logits, mask)
    logp_s = _log_probs(student_logits, temperature)
    logp_t = _log_probs(teacher_logits.detach(), temperature)
    k = min(k, logp_s.shape[-1])
    idx = logp_s.detach().topk(k, dim=-1).indices
    logp_s_k = logp_s.gather(-1, idx)
    logp_t_k = logp_t.gather(-1, idx)
    p_s_k = logp_s_k.exp()
    per_token = (p_s_k * (logp_s_k - logp_t_k)).sum(-1)
    loss = masked_token_mean(per_token, mask)
    mass = float(masked_token_mean(p_s_k.detach().sum(-1), mask))
    return loss, {"loss": float(loss.detach()), "student_topk_mass": mass}


def reverse_kl(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, *,
               temperature: float = DEFAULT_TEMPERATURE) -> tuple[Tensor, Metrics]:
    """Exact reverse KL(p_s || p_t) over the whole vocabulary, per response token."""
    _check_shapes(student_logits, teacher_logits, mask)
    logp_s = _log_probs(student_logits, temperature)
    logp_t = _log_probs(teacher_logits.detach(), temperature)
    per_token = (logp_s.exp() * (logp_s - logp_t)).sum(-1)
    loss = masked_token_mean(per_token, mask)
    return loss, {"loss": float(loss.detach())}


def sampled_reverse_kl(student_logits: Tensor, teacher_logits: Tensor, tokens: Tensor, mask: Tensor, *,
                       temperature: float = DEFAULT_TEMPERATURE) -> tuple[Tensor, Metrics]:
    """Single-sample estimator of reverse KL at the sampled tokens y: log p_s(y) - log p_t(y).

    Its VALUE is that estimate (unbiased for the reverse KL when y ~ p_s). Differentiating
    the estimate itself would give grad log p_s(y), whose expectation is zero, so the
    returned tensor is built to have the score-function gradient instead:
    sg(log p_s(y) - log p_t(y)) * grad log p_s(y), an unbiased estimate of the reverse KL's
    gradient at this position (sg = stop-gradient). `tokens` has the mask's shape.
    """
    _check_shapes(student_logits, teacher_logits, mask)
    if tokens.shape != mask.shape:
        raise ValueError(f"tokens {tuple(tokens.shape)} do not match mask {tuple(mask.shape)}")
    logp_s = _log_probs(student_logits, temperature).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    logp_t = _log_probs(teacher_logits.detach(), temperature).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    estimate = (logp_s - logp_t).detach()
    # value == estimate, gradient == estimate * d(logp_s): exp(x - sg(x)) is 1 with gradient dx.
    per_token = estimate * torch.exp(logp_s - logp_s.detach())
    loss = masked_token_mean(per_token, mask)
    return loss, {"loss": float(loss.detach())}


def forward_kl(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, *,
               temperature: float = DEFAULT_TEMPERATURE) -> tuple[Tensor, Metrics]:
    """Forward KL(p_t || p_s) over the whole vocabulary: the off-policy baseline's loss."""
    _check_shapes(student_logits, teacher_logits, mask)
    logp_s = _log_probs(student_logits, temperature)
    logp_t = _log_probs(teacher_logits.detach(), temperature)
    per_token = (logp_t.exp() * (logp_t - logp_s)).sum(-1)
    loss = masked_token_mean(per_token, mask)
    return loss, {"loss": float(loss.detach())}


def sft_loss(student_logits: Tensor, tokens: Tensor, mask: Tensor) -> tuple[Tensor, Metrics]:
    """Cross-entropy of the given tokens under the student (no temperature: plain SFT)."""
    _check_shapes(student_logits, None, mask)
    logp = F.log_softmax(_upcast(student_logits), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    loss = masked_token_mean(-logp, mask)
    return loss, {"loss": float(loss.detach())}
