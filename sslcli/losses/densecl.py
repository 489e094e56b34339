"""DenseCL's losses (Wang et al., CVPR 2021): MoCo-v2's global InfoNCE plus a dense InfoNCE between the cells of the
two views' res5 grids, each query cell's positive being the key cell its backbone feature is most similar to.

Pure functions of tensors; every embedding is L2-normalised along its channel dimension by the caller. Shapes: N
images, C channels, S = H·W grid cells, K queue entries. The authors' code: openselfsup/models/densecl.py
(github.com/WXinlong/DenseCL), `DenseCL.forward_train`.
"""

from __future__ import annotations

import torch

from sslcli.losses import in_float32
from sslcli.losses.contrastive import moco_infonce


@torch.no_grad()
@in_float32  # a bf16 cosine would tie or swap near-equal cells
def dense_correspondence(query_backbone: torch.Tensor, key_backbone: torch.Tensor) -> torch.Tensor:
    """(N, S) index of the key cell matched to each query cell: arg-max over key cells of the cosine between the two
    views' normalised backbone features (N, C', S) (the first maximum on ties). No gradient flows through the match."""
    similarity = query_backbone.transpose(1, 2) @ key_backbone  # (N, S_query, S_key)
    return similarity.max(dim=2).indices


@in_float32
def dense_infonce(query_cells: torch.Tensor, key_cells: torch.Tensor, match: torch.Tensor, queue: torch.Tensor,
                  temperature: float = 0.2) -> torch.Tensor:
    """The dense InfoNCE over all N·S query cells.

    Args:
        query_cells: (N, C, S) normalised dense projections of the query view.
        key_cells: (N, C, S) normalised dense projections of the key view (key encoder).
        match: (N, S) key cell of each query cell (`dense_correspondence`).
        queue: (C, K) the dense queue: one pooled dense key per column (negatives of every cell).
        temperature: τ = 0.2 (the authors' ContrastiveHead in densecl_*.py configs).

    Returns:
        Scalar: mean over the N·S cells of −log softmax([q·k_match, q·queue] / τ)[0].
    """
    channels = query_cells.shape[1]
    positives = key_cells.gather(2, match.unsqueeze(1).expand(-1, channels, -1))  # (N, C, S)
    rows = query_cells.transpose(1, 2).reshape(-1, channels)  # cell-major per image: row n·S + s
    return moco_infonce(rows, positives.transpose(1, 2).reshape(-1, channels), queue, temperature)


def densecl_loss(query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor, query_cells: torch.Tensor,
                 key_cells: torch.Tensor, match: torch.Tensor, dense_queue: torch.Tensor, temperature: float = 0.2,
                 dense_weight: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """DenseCL's two weighted terms ``((1 − λ)·L_global, λ·L_dense)``; the total loss is their sum.

    ``query``, ``key`` (N, D) and ``queue`` (D, K): MoCo-v2's global InfoNCE (`moco_infonce`); the dense term:
    `dense_infonce`. λ = ``dense_weight`` = 0.5 (DenseCL §3.3; ``loss_lambda`` of the authors' configs).
    """
    global_loss = moco_infonce(query, key, queue, temperature)
    dense_loss = dense_infonce(query_cells, key_cells, match, dense_queue, temperature)
    return (1.0 - dense_weight) * global_loss, dense_weight * dense_loss
