"""The DetCon loss (contrastive detection; DetCon paper §3, eq. 3 and App. A; METHODS.md §3).

Every image contributes R sampled mask ids per view (possibly repeated). A view-1 latent (image b, id i) is scored
against every view-2 and view-1 latent of the batch on all ranks. Its positives are the view-2 latents of the same
image with the same id (the paired-mask indicator 1[m, m']); view-1 latents of the same image with the same id
(itself included) are masked out; everything else — other masks of the same image and all masks of other images,
even when they carry the same id number — is a negative. As in the authors' loss:

- the target distribution is spread evenly over a row's positives (duplicated ids give several equal positives);
- each row is weighted by 1[row has a positive] / (number of sampled ids in its own view equal to its id), so an id
  sampled k times counts once in total and a mask absent from the other view contributes nothing;
- the weighted cross-entropies are averaged over all B×R local rows (zero-weight rows included in the count);
- loss = view-1 term + view-2 term.

Latents are L2-normalised and the logits divided by τ (0.1 in the paper). The function is pure: the caller gathers
the other ranks' latents (`sslcli.distributed.gather_with_grad` / `gather_no_grad`) and says where its own images
sit in the gathered batch (``offset``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sslcli.losses import in_float32


@in_float32
def detcon_loss(pred1: torch.Tensor, pred2: torch.Tensor, target1: torch.Tensor, target2: torch.Tensor,
                ids1: torch.Tensor, ids2: torch.Tensor, temperature: float = 0.1, offset: int = 0) -> torch.Tensor:
    """DetCon loss, symmetrised.

    Args:
        pred1, pred2: (B, R, D) this rank's latents of views 1 and 2 (DetCon_S: projections; DetCon_B: online
            predictions). They form the rows.
        target1, target2: (N, R, D) latents of all N images on all ranks (DetCon_S: the gathered projections;
            DetCon_B: the EMA target's projections). They form the columns. This rank's images are rows
            ``offset .. offset + B - 1``.
        ids1, ids2: (B, R) integer mask ids sampled for this rank's images in views 1 and 2 (the same ids are used
            for rows and columns, as DetCon uses the same ids for the online and target networks).
        temperature: τ.
        offset: index of this rank's first image in the gathered batch (rank × B).

    Returns:
        A scalar: view-1 term + view-2 term.
    """
    if pred1.shape != pred2.shape or ids1.shape != pred1.shape[:2] or ids2.shape != pred1.shape[:2]:
        raise ValueError(f"detcon_loss: shapes disagree: pred {tuple(pred1.shape)}/{tuple(pred2.shape)}, "
                         f"ids {tuple(ids1.shape)}/{tuple(ids2.shape)}")
    if target1.shape != target2.shape or target1.shape[1:] != pred1.shape[1:]:
        raise ValueError(f"detcon_loss: targets {tuple(target1.shape)} do not match predictions {tuple(pred1.shape)}")
    view1 = _directional_term(pred1, target2, target1, ids1, ids2, temperature, offset)
    view2 = _directional_term(pred2, target1, target2, ids2, ids1, temperature, offset)
    return view1 + view2


def _directional_term(query: torch.Tensor, other: torch.Tensor, same: torch.Tensor, query_ids: torch.Tensor,
                      other_ids: torch.Tensor, temperature: float, offset: int) -> torch.Tensor:
    """One view's term: rows ``query`` (B, R, D) against columns ``other`` and ``same`` (N, R, D)."""
    b, r, d = query.shape
    n = other.shape[0]
    q = _unit(query).reshape(b * r, d)
    logits_other = (q @ _unit(other).reshape(n * r, d).T / temperature).view(b, r, n, r)
    logits_same = (q @ _unit(same).reshape(n * r, d).T / temperature).view(b, r, n, r)

    # (B, N): column image n is row image b itself.
    own_image = torch.zeros(b, n, dtype=torch.bool, device=query.device)
    own_image[torch.arange(b), offset + torch.arange(b)] = True
    own_image = own_image[:, None, :, None]
    positive = own_image & (query_ids[:, :, None] == other_ids[:, None, :])[:, :, None, :]   # (B, R, N, R)
    excluded = own_image & (query_ids[:, :, None] == query_ids[:, None, :])[:, :, None, :]   # (B, R, N, R)
    logits_same = logits_same.masked_fill(excluded, float("-inf"))

    logits = torch.cat([logits_other.reshape(b, r, n * r), logits_same.reshape(b, r, n * r)], dim=-1)
    log_prob_other = torch.log_softmax(logits, dim=-1)[..., : n * r]
    positive = positive.reshape(b, r, n * r).to(log_prob_other.dtype)
    num_positives = positive.sum(-1)
    cross_entropy = -(positive * log_prob_other).sum(-1) / num_positives.clamp(min=1)
    duplicates = (query_ids[:, :, None] == query_ids[:, None, :]).sum(-1)                   # (B, R), ≥ 1
    weight = (num_positives > 0).to(cross_entropy.dtype) / duplicates
    return (weight * cross_entropy).mean()


def _unit(x: torch.Tensor) -> torch.Tensor:
    """L2-normalised along the last dim (callers run under `in_float32`)."""
    return F.normalize(x, dim=-1)
