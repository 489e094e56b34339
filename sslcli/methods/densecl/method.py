"""DenseCL (Wang et al., CVPR 2021): MoCo-v2 with a dense projection head on res5, a dense InfoNCE whose positive
for each query cell is the key cell with the most similar backbone feature, and a second (dense) queue.

Networks: query encoder = backbone + global head (2048→2048→128, linear, no BN) + dense head (the same as 1×1
convs on every res5 cell); key encoder and heads = their momentum copies (constant ``method.momentum``). Buffers:
``queue`` (global keys), ``dense_queue`` (the key view's dense projections averaged over its cells, normalised: the
authors' ``queue2``), one ``queue_ptr`` (both advance by the global batch). The authors' code:
openselfsup/models/densecl.py and necks.py (`DenseCLNeck`) of github.com/WXinlong/DenseCL; docs/densecl.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sslcli import distributed as dist
from sslcli.data.views.crops import CropViews
from sslcli.losses.densecl import dense_correspondence, densecl_loss
from sslcli.methods.base import MomentumMethod, StepInfo
from sslcli.methods.densecl.views import densecl_views
from sslcli.models.backbone import build_backbone
from sslcli.models.heads import conv_mlp, mlp
from sslcli.models.queue import enqueue_, mean_pairwise_cosine, queue_slots
from sslcli.models.shuffle_bn import shuffled_encode


class DenseCL(MomentumMethod):
    """Query encoder + global and dense heads; their momentum copies encode the keys; a global and a dense queue."""

    momentum_pairs = (("encoder", "key_encoder"), ("head", "key_head"), ("dense_head", "key_dense_head"))

    def __init__(self, spec):
        super().__init__(spec)
        m = spec.method
        self.encoder = build_backbone(spec.model.arch, spec.model.width, stem=spec.model.stem)
        self.head = mlp(self.encoder.out_channels, m.hidden_dim, m.dim, batch_norm=False)
        self.dense_head = conv_mlp(self.encoder.out_channels, m.hidden_dim, m.dim, batch_norm=False)
        self.init_momentum_targets()
        self.register_buffer("queue", F.normalize(torch.randn(m.dim, m.queue_size), dim=0))
        self.register_buffer("dense_queue", F.normalize(torch.randn(m.dim, m.queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None  # gathered (keys, dense keys) to enqueue

    def transform(self) -> CropViews:
        """MoCo-v2's two views (the authors' config: crop area 0.2-1, MoCo-v2 colour, flip, bilinear)."""
        return densecl_views(self.spec)

    def momentum(self, step: StepInfo) -> float:
        return self.spec.method.momentum  # constant, as MoCo-v2

    def encode(self, x: torch.Tensor, encoder, head, dense_head) -> tuple[torch.Tensor, ...]:
        """Normalised (global (N, D), dense cells (N, D, S), pooled dense (N, D), backbone cells (N, C, S))."""
        grid = encoder.forward_map(x)
        pooled = F.adaptive_avg_pool2d(grid, 1).flatten(1)
        if self.spec.method.grid is not None:
            grid = F.adaptive_avg_pool2d(grid, self.spec.method.grid)
        cells = dense_head(grid).flatten(2)
        return (F.normalize(head(pooled), dim=1), F.normalize(cells, dim=1),
                F.normalize(cells.mean(dim=2), dim=1), F.normalize(grid.flatten(2), dim=1))

    def _encode_keys(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.encode(x, self.key_encoder, self.key_head, self.key_dense_head)

    @torch.no_grad()
    def encode_keys(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The key encoder's `encode` of this rank's key crops, in a shuffled batch when ``method.shuffle_bn``."""
        return shuffled_encode(self._encode_keys, x) if self.spec.method.shuffle_bn else self._encode_keys(x)

    def forward(self, batch: dict, step: StepInfo) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """``batch["views"]`` (B, 2, 3, S, S): crop 0 = query, crop 1 = key. loss = (1 − λ)·global + λ·dense."""
        m = self.spec.method
        query, query_cells, _, query_backbone = self.encode(batch["views"][:, 0], self.encoder, self.head,
                                                            self.dense_head)
        key, key_cells, dense_key, key_backbone = self.encode_keys(batch["views"][:, 1])
        match = dense_correspondence(query_backbone.detach(), key_backbone)
        # The queues are read here and overwritten in place only in after_step, once backward is done.
        loss_global, loss_dense = densecl_loss(query, key, self.queue, query_cells, key_cells, match,
                                               self.dense_queue, m.temperature, m.dense_weight)
        self._pending = (dist.gather_no_grad(key), dist.gather_no_grad(dense_key))
        return {"loss": loss_global + loss_dense, "loss_global": loss_global, "loss_dense": loss_dense,
                "queue_cos": mean_pairwise_cosine(self.queue)}

    @torch.no_grad()
    def after_step(self, step: StepInfo) -> None:
        """Momentum update of the key networks, then enqueue every rank's keys into both queues."""
        super().after_step(step)
        if self._pending is None:
            return
        keys, dense_keys = self._pending
        self._pending = None
        size = self.queue.shape[1]
        slots = queue_slots(self.queue_ptr, keys.shape[0], size)
        enqueue_(self.queue, slots, keys)
        enqueue_(self.dense_queue, slots, dense_keys)
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % size)
