"""MoCo-v2 and the Revisiting additions: multi-crop (MC), constrained multi-crop (CC), lower momentum (m), A+ and
kNN-MoCo (NN). METHODS.md §1–2.

Networks: query encoder = backbone + head (2048→2048→128, no BN); key encoder = momentum copy (parameters averaged
with ``method.momentum``, BN buffers copied, see `sslcli.models.ema`). Buffers, named as in the authors' checkpoints:
``queue`` (D × K, one normalised key per column), ``queue_ptr``, and with kNN ``queue_backbone`` (F × K, normalised
backbone features of the same keys, column-aligned with ``queue``).

Shuffle-BN: `sslcli.models.shuffle_bn.shuffled_encode` (shared with DenseCL); in a single process its substitute's
batch-norm statistics differ from a multi-process run (METHODS.md §1 allows this).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sslcli import distributed as dist
from sslcli.data.views.crops import CropViews
from sslcli.losses.contrastive import knn_moco_loss, moco_infonce
from sslcli.methods.base import MomentumMethod, StepInfo
from sslcli.methods.moco.views import moco_views
from sslcli.models.backbone import build_backbone
from sslcli.models.heads import mlp
from sslcli.models.queue import enqueue_, mean_pairwise_cosine, queue_slots
from sslcli.models.shuffle_bn import shuffled_encode


class MoCo(MomentumMethod):
    """Query encoder + head; key encoder + head = their momentum copies (constant ``method.momentum``); key queue."""

    momentum_pairs = (("encoder", "key_encoder"), ("head", "key_head"))

    def __init__(self, spec):
        super().__init__(spec)
        m = spec.method
        self.encoder = build_backbone(spec.model.arch, spec.model.width, stem=spec.model.stem)
        self.head = mlp(self.encoder.out_channels, m.hidden_dim, m.dim, batch_norm=False)
        self.init_momentum_targets()
        self.register_buffer("queue", F.normalize(torch.randn(m.dim, m.queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        if m.knn.enabled:
            self.register_buffer("queue_backbone",
                                 F.normalize(torch.randn(self.encoder.out_channels, m.queue_size), dim=0))
        # Gathered (keys, backbone features or None) of the last forward, enqueued by after_step.
        self._pending: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def transform(self) -> CropViews:
        return moco_views(self.spec)

    def momentum(self, step: StepInfo) -> float:
        return self.spec.method.momentum  # a constant m (0.999; the Revisiting "lower momentum" +m: 0.995)

    # ----------------------------------------------------------------------------------------------- key encoder
    def _encode_key_group(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.key_encoder(x)
        return F.normalize(self.key_head(features), dim=1), F.normalize(features, dim=1)

    @torch.no_grad()
    def encode_keys(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (B, D) and normalised key backbone features (B, F) of this rank's key crops x (B, 3, S, S)."""
        if not self.spec.method.shuffle_bn:
            return self._encode_key_group(x)
        keys, features = shuffled_encode(self._encode_key_group, x)
        return keys, features

    # --------------------------------------------------------------------------------------------------- forward
    def _queries(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Query embeddings (V, B, D) and normalised backbone features (V, B, F): crop 0, then any small crops."""
        b = batch["views"].shape[0]
        parts = [self.encoder(batch["views"][:, 0])]  # crops of different sizes: one backbone pass per size
        if "small" in batch:
            small = batch["small"]  # (B, n, 3, s, s) → view-major (n·B, 3, s, s)
            parts.append(self.encoder(small.transpose(0, 1).reshape(-1, *small.shape[2:])))
        features = torch.cat(parts)
        queries = F.normalize(self.head(features), dim=1)
        return queries.view(-1, b, queries.shape[1]), F.normalize(features.detach(), dim=1).view(-1, b, features.shape[1])

    def knn_active(self, step: StepInfo) -> bool:
        knn = self.spec.method.knn
        return knn.enabled and (knn.bank_first or step.epoch >= knn.warmup_epochs)

    def forward(self, batch: dict, step: StepInfo) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """``batch["views"]`` (B, 2, 3, L, L): crop 0 = query, crop 1 = key; optional ``"small"`` (B, n, 3, S, S).

        Returns loss = InfoNCE over all (1 + n)·B query rows [+ λ·kNN loss once enabled], and the parts.
        """
        m = self.spec.method
        queries, query_features = self._queries(batch)
        keys, key_features = self.encode_keys(batch["views"][:, 1])
        # The queue is read here and overwritten in place only in after_step, once backward is done.
        loss_moco = moco_infonce(queries, keys, self.queue, m.temperature)
        keys_all = dist.gather_no_grad(keys)
        features_all = dist.gather_no_grad(key_features) if m.knn.enabled else None
        self._pending = (keys_all, features_all)
        out = {"loss_moco": loss_moco, "queue_cos": mean_pairwise_cosine(self.queue)}
        loss = loss_moco
        if self.knn_active(step):
            feature_queue = self.queue_backbone
            if m.knn.bank_first:
                # The authors' order (builder_ours.py): neighbours are mined on the backbone bank as it will be after
                # this step's enqueue (built out of place; the buffers change in after_step), but scored with the
                # logits q·queue computed before the enqueue, so a neighbour among the newest columns gets the logit
                # of the key it replaces.
                slots = queue_slots(self.queue_ptr, keys_all.shape[0], m.queue_size)
                feature_queue = feature_queue.index_copy(1, slots, features_all.T.to(feature_queue.dtype))  # type: ignore[union-attr]
            rows = queries.shape[0] * queries.shape[1]
            loss_nn = knn_moco_loss(queries.reshape(rows, -1), query_features.reshape(rows, -1), self.queue,
                                    feature_queue, m.knn.k, m.temperature)
            out["loss_nn"] = loss_nn
            loss = loss + m.knn.weight * loss_nn
        out["loss"] = loss
        return out

    # ------------------------------------------------------------------------------------------------ after step
    @torch.no_grad()
    def after_step(self, step: StepInfo) -> None:
        """Momentum update of the key encoder, then enqueue the keys (all ranks) of the step just taken."""
        super().after_step(step)
        if self._pending is None:
            return
        keys, features = self._pending
        self._pending = None
        size = self.queue.shape[1]
        slots = queue_slots(self.queue_ptr, keys.shape[0], size)
        enqueue_(self.queue, slots, keys)
        if features is not None:
            enqueue_(self.queue_backbone, slots, features)
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % size)
