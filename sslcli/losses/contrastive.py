"""Contrastive losses: MoCo InfoNCE with a queue (+ multi-crop), the kNN-MoCo loss, SimCLR's NT-Xent.

Pure functions of tensors: no networks, no queues to mutate, no cross-rank communication (callers gather first).
Every input embedding is expected L2-normalised along its last dimension.

References: R = Revisiting Contrastive Methods (MoCo in the wild), METHODS.md §1–2; SimCLR (Chen et al. 2020).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sslcli.losses import in_float32


@in_float32
def moco_infonce(queries: torch.Tensor, key: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2
                 ) -> torch.Tensor:
    """MoCo InfoNCE with a queue of negatives, averaged over every query row (METHODS.md §1, §2 "MC").

    Args:
        queries: (B, D) or (V, B, D): V query crops of the same B images (MC: crop 0 + the small crops, V = 5).
        key: (B, D) positive keys (crop 1 through the key encoder); every query crop of image b shares key[b].
        queue: (D, K) negatives (MoCo's layout: one key per column).
        temperature: T = 0.2 (R §2).

    Returns:
        Scalar: mean over all V·B rows of −log softmax([q·k₊, q·queue] / T)[0].
    """
    if queries.dim() == 2:
        queries = queries.unsqueeze(0)
    positive = torch.einsum("vbd,bd->vb", queries, key).unsqueeze(-1)  # (V, B, 1)
    negative = queries @ queue  # (V, B, K)
    logits = torch.cat([positive, negative], dim=-1) / temperature
    # Label 0 is the positive: CE = logsumexp(logits) − logits[..., 0].
    return (torch.logsumexp(logits, dim=-1) - logits[..., 0]).mean()


def knn_neighbours(query_features: torch.Tensor, feature_queue: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (N, k) of the k queue entries closest (cosine) to each query's backbone feature.

    Args:
        query_features: (N, F) normalised backbone features (before the head) of the query crops.
        feature_queue: (F, K) normalised backbone features of past keys, aligned column-for-column with the key queue.
    """
    similarity = query_features @ feature_queue  # (N, K)
    return similarity.topk(min(k, feature_queue.shape[1]), dim=1).indices


@in_float32
def knn_moco_loss(queries: torch.Tensor, query_features: torch.Tensor, queue: torch.Tensor,
                  feature_queue: torch.Tensor, k: int = 20, temperature: float = 0.2) -> torch.Tensor:
    """kNN-MoCo loss (R §4, METHODS.md §2 "NN"): the k nearest past keys act as extra positives.

    Neighbours are mined on backbone features (no gradient flows through the mining); the scores are the query's
    projected embedding against the key queue: z = q·queue / T, log-softmax over the queue only (the current positive
    key is not part of it), loss = −mean over rows of the mean over the k neighbours of log p.

    Args:
        queries: (N, D) normalised query embeddings (N = V·B with multi-crop).
        query_features: (N, F) normalised backbone features of the same query crops.
        queue: (D, K) key queue; feature_queue: (F, K) backbone-feature queue, aligned with ``queue``.
        k: neighbours per row (paper default 20); temperature: T (0.2, as MoCo).

    Returns:
        Scalar loss_nn; the method adds λ·loss_nn (λ = 0.4) to the MoCo loss.
    """
    with torch.no_grad():
        neighbours = knn_neighbours(query_features, feature_queue, k)  # (N, k)
    log_p = F.log_softmax(queries @ queue / temperature, dim=1)  # (N, K)
    return -log_p.gather(1, neighbours).mean(dim=1).mean()


@in_float32
def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1, all1: torch.Tensor | None = None,
            all2: torch.Tensor | None = None, offset: int = 0) -> torch.Tensor:
    """SimCLR's NT-Xent over the 2B local rows, negatives from the whole (gathered) batch.

    Row i of view 1 is scored against every embedding of both views of the global batch except itself; its positive
    is the same image in view 2 (and symmetrically for view 2). Loss = view-1 term + view-2 term, each the mean CE
    over the B local rows of that view: the SimCLR authors' ``loss_a + loss_b`` and DetCon's form, so DetCon_S with
    one global mask gives exactly this value. (It is 2 × the mean over the 2B rows.)

    Args:
        z1, z2: (B, D) normalised embeddings of this rank's images, views 1 and 2.
        temperature: τ (SimCLR / DetCon_S: 0.1).
        all1, all2: (N, D) the same embeddings gathered over all ranks (``gather_with_grad``); default z1, z2.
        offset: index of this rank's first image in ``all1``/``all2`` (rank × B).

    Returns:
        Scalar. With W ranks each rank returns the loss of its own rows, and the gradients summed by
        ``gather_with_grad`` and averaged by DDP equal those of the global loss.
    """
    all1 = z1 if all1 is None else all1
    all2 = z2 if all2 is None else all2
    n, b = all1.shape[0], z1.shape[0]
    candidates = torch.cat([all1, all2], dim=0)  # (2N, D)
    rows = torch.cat([z1, z2], dim=0)  # (2B, D)
    logits = rows @ candidates.T / temperature  # (2B, 2N)
    local = torch.arange(b, device=z1.device) + offset
    self_index = torch.cat([local, local + n])
    positive_index = torch.cat([local + n, local])
    row = torch.arange(2 * b, device=z1.device)
    logits = logits.masked_fill(F.one_hot(self_index, 2 * n).bool(), float("-inf"))
    per_row = torch.logsumexp(logits, dim=1) - logits[row, positive_index]
    return per_row[:b].mean() + per_row[b:].mean()
