"""Loss functions shared by several methods (each with a hand-checked unit test)."""

from __future__ import annotations

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


def angle_relations(embeddings: torch.Tensor) -> torch.Tensor:
    """Cosines of all triplet angles of a batch of embeddings, ``(B, B, B)``.

    Entry ``[j, i, k]`` is ``<e_ij, e_kj>`` with ``e_ij = (u_i - u_j) / ||u_i - u_j||`` (the zero
    vector when ``i == j``): the angle at anchor ``j``. By the law of cosines,
    ``<u_i - u_j, u_k - u_j> = (D_ji + D_jk - D_ik) / 2`` with ``D`` the squared pairwise
    distances, taken from the Gram matrix of the batch-centred embeddings (angles do not change
    under translation). The cost is one ``B x B x d`` matrix product plus a few element-wise
    ``B^3`` operations: no ``(B, B, d)`` difference tensor, let alone ``(B, B, B, d)``, is formed.
    Computed in float32, outside autocast.
    """
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        u = embeddings.float()
        u = u - u.mean(dim=0, keepdim=True)
        gram = u @ u.t()
        diag = gram.diagonal()
        squared = (diag[:, None] + diag[None, :] - 2 * gram).clamp_min(1e-12)  # D_ij = ||u_i - u_j||^2
        eye = torch.eye(len(u), dtype=torch.bool, device=u.device)
        inverse = torch.where(eye, torch.zeros_like(squared), squared.rsqrt())  # 1 / ||u_i - u_j||, 0 if i = j
        dots = 0.5 * (squared[:, :, None] + squared[:, None, :] - squared[None, :, :])
        return dots * inverse[:, :, None] * inverse[:, None, :]


def angle_relation_distillation(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Angle-wise relational KD (Park et al. 2019, as used by R-DFCIL).

    ``mean over all B^3 triplets (i, j, k) of |cos angle_s(i, j, k) - cos angle_t(i, j, k)|``.
    Gradients flow into both arguments (R-DFCIL learns projections on both sides).
    """
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"batch sizes differ: {student.shape[0]} vs {teacher.shape[0]}")
    return (angle_relations(student) - angle_relations(teacher)).abs().mean()
