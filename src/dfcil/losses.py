"""Loss functions shared by several methods (each with a hand-checked unit test)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def soft_cross_entropy(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0
) -> torch.Tensor:
    """Knowledge distillation of LwF as in ABD's code: ``-sum_c p_t^T(c) log p_s^T(c)``, batch mean.

    ``p^T = softmax(logits / T)``. No ``T^2`` factor (multiply the weight if you want it).
    The teacher is detached. Computed in float32.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"logit shapes differ: {tuple(student_logits.shape)} vs {tuple(teacher_logits.shape)}")
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits.detach().float() / temperature, dim=1)
    return -(p_teacher * log_p_student).sum(dim=1).mean()


def cross_entropy_seen(logits: torch.Tensor, labels: torch.Tensor, num_seen: int) -> torch.Tensor:
    """Cross-entropy over the first ``num_seen`` classes (all classes seen so far)."""
    return F.cross_entropy(logits[:, :num_seen].float(), labels)


def local_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Cross-entropy restricted to the classes ``[start, stop)`` of one task ("local" CE)."""
    return F.cross_entropy(logits[:, start:stop].float(), labels - start)


def pairwise_squared_distances(embeddings: torch.Tensor) -> torch.Tensor:
    """``D_ij = ||u_i - u_j||^2`` of a batch, ``(B, B)`` float32, from the Gram matrix of the
    batch-centred embeddings (distances do not change under translation; centring keeps the
    cancellation in ``|u_i|^2 + |u_j|^2 - 2 <u_i, u_j>`` small). Clamped at 1e-12 so that
    ``rsqrt`` stays finite."""
    u = embeddings.float()
    u = u - u.mean(dim=0, keepdim=True)
    gram = u @ u.t()
    diag = gram.diagonal()
    return (diag[:, None] + diag[None, :] - 2 * gram).clamp_min(1e-12)


def _inverse_distances(squared: torch.Tensor) -> torch.Tensor:
    """``1 / ||u_i - u_j||`` off the diagonal, 0 on it (the angle at ``j`` is 0 when ``i == j``)."""
    eye = torch.eye(len(squared), dtype=torch.bool, device=squared.device)
    return squared.rsqrt().masked_fill(eye, 0.0)


def angle_relations(embeddings: torch.Tensor) -> torch.Tensor:
    """Cosines of all triplet angles of a batch of embeddings, ``(B, B, B)``.

    Entry ``[j, i, k]`` is ``<e_ij, e_kj>`` with ``e_ij = (u_i - u_j) / ||u_i - u_j||`` (the zero
    vector when ``i == j``): the angle at anchor ``j``. By the law of cosines,
    ``<u_i - u_j, u_k - u_j> = (D_ji + D_jk - D_ik) / 2`` with ``D`` the squared pairwise
    distances (:func:`pairwise_squared_distances`): one ``B x B x d`` matrix product plus a few
    element-wise ``B^3`` operations, no ``(B, B, d)`` difference tensor. Computed in float32,
    outside autocast. The readable form of what :func:`angle_relation_distillation` computes
    fused.
    """
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        squared = pairwise_squared_distances(embeddings)
        inverse = _inverse_distances(squared)
        dots = 0.5 * (squared[:, :, None] + squared[:, None, :] - squared[None, :, :])
        return dots * inverse[:, :, None] * inverse[:, None, :]


def _anchor_block(squared: torch.Tensor, inverse: torch.Tensor, anchors: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """For the anchors ``j`` in ``anchors``: ``R[j, i, k] = r_ji r_jk`` and the cosines
    ``A[j, i, k] = (D_ji + D_jk - D_ik) / 2 * R[j, i, k]`` (``r`` the inverse distances)."""
    outer = inverse[anchors, :, None] * inverse[anchors, None, :]
    dots = (squared[anchors, :, None] + squared[anchors, None, :]).sub_(squared[None]).mul_(0.5)
    return outer, dots.mul_(outer)


_CPU_BLOCK_ELEMENTS = 1 << 18
"""Elements of one ``(anchors, B, B)`` block of the fused angle loss on a CPU: 1 MiB of float32,
about a core's L2 (measured at B = 128, 2 cores: blocks of 4/8/16/32/64/128 anchors took
9.1/8.4/6.5/6.9/9.6/16.9 ms forward + backward)."""

_ACCELERATOR_BLOCK_ELEMENTS = 1 << 26
"""The same on a GPU, where each block costs a few dozen kernel launches and memory bandwidth is
plentiful: one block up to B = 406 (256 MiB per float32 block)."""


class _AngleRelationL1(torch.autograd.Function):
    """``mean_{j,i,k} |A_s[j,i,k] - A_t[j,i,k]|`` from the two squared-distance matrices, with the
    gradient taken in the same pass.

    Autograd through :func:`angle_relations` keeps about ten ``B^3`` tensors and makes as many
    passes over them backwards. Here the anchors are processed in blocks that stay in cache,
    and each block adds its share of ``dL/dD`` straight away (the loss is a scalar, so the
    backward only scales it). With ``S = sign(A_s - A_t)`` and, per side, ``R = r_j r_j^T``
    (``r = D^-1/2``, 0 on the diagonal), using that ``A`` and ``S`` are symmetric in ``(i, k)``:

    * through ``D_ji`` and ``D_jk``: ``dL/dD[j, m] += sum_k (S R)[j, m, k]``;
    * through ``D_ik``:             ``dL/dD[i, k] -= 1/2 sum_j (S R)[j, i, k]``;
    * through ``r_ji`` and ``r_jk``: ``dL/dr[j, m] = 2 sum_k (S A)[j, m, k] / r_jm`` and
      ``dr/dD = -r^3 / 2``, so ``dL/dD[j, m] -= r_jm^2 sum_k (S A)[j, m, k]``;

    all divided by ``B^3``, with the sign flipped for the teacher side.
    """

    @staticmethod
    def forward(ctx: Any, student_squared: torch.Tensor, teacher_squared: torch.Tensor,
                with_gradient: bool, block: int) -> torch.Tensor:
        size = len(student_squared)
        sides = [(student_squared, _inverse_distances(student_squared), 1.0),
                 (teacher_squared, _inverse_distances(teacher_squared), -1.0)]
        gradients = [torch.zeros_like(student_squared), torch.zeros_like(teacher_squared)]
        total = student_squared.new_zeros(())
        for first in range(0, size, block):
            anchors = slice(first, min(first + block, size))
            (outer_s, cos_s), (outer_t, cos_t) = (_anchor_block(d, r, anchors) for d, r, _ in sides)
            difference = cos_s.sub(cos_t)
            total += difference.abs().sum()
            if not with_gradient:
                continue
            signs = difference.sign_()
            for (_, inverse, direction), outer, cosines, gradient in zip(
                    sides, (outer_s, outer_t), (cos_s, cos_t), gradients):
                weighted = outer.mul_(signs)
                gradient[anchors] += direction * (weighted.sum(-1) - inverse[anchors].square()
                                                  * cosines.mul_(signs).sum(-1))
                gradient -= (0.5 * direction) * weighted.sum(0)
        scale = 1.0 / size**3
        ctx.save_for_backward(*(g.mul_(scale) for g in gradients))
        return total * scale

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        student_gradient, teacher_gradient = ctx.saved_tensors
        return grad_output * student_gradient, grad_output * teacher_gradient, None, None


def angle_relation_distillation(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Angle-wise relational KD (Park et al. 2019, as used by R-DFCIL).

    ``mean over all B^3 triplets (i, j, k) of |cos angle_s(i, j, k) - cos angle_t(i, j, k)|``
    (:func:`angle_relations` of each side). Gradients flow into both arguments (R-DFCIL learns
    projections on both sides). Computed in float32 outside autocast, fused: the ``B^3`` work
    runs in blocks of anchors (cache-sized on a CPU) with the gradient formed in the same pass (batch
    128, width 128, forward + backward on 2 CPU cores: 35 ms through autograd, 5.7 ms here;
    ``benchmarks/relation_loss.py``).
    """
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"batch sizes differ: {student.shape[0]} vs {teacher.shape[0]}")
    with torch.autocast(device_type=student.device.type, enabled=False):
        student_squared = pairwise_squared_distances(student)
        teacher_squared = pairwise_squared_distances(teacher)
        with_gradient = torch.is_grad_enabled() and (student_squared.requires_grad or teacher_squared.requires_grad)
        elements = _CPU_BLOCK_ELEMENTS if student.device.type == "cpu" else _ACCELERATOR_BLOCK_ELEMENTS
        block = max(1, elements // len(student) ** 2)
        return _AngleRelationL1.apply(student_squared, teacher_squared, with_gradient, block)

