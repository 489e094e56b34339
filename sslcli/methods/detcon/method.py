"""DetCon_S and DetCon_B (contrastive detection; DetCon paper §3, App. A; METHODS.md §3).

Per sample (in DataLoader workers, `DetconTransform` of sslcli/methods/detcon/views.py): the image's label map comes from a `MaskSource` (store,
grid or COCO ground truth); two views get the same crop and flip as their label maps (`MaskViewPair`; the crop
window is drawn as the authors' code does, ``method.crop_sampler``); each view's label map is then brought onto the
encoder's res5 grid (`map_side`: 7×7 at 224 px; 6×6 at 48 px with ``model.stem: small``) by average-pooling its
one-hot masks and taking the argmax per cell (`label_grid`), so each cell owns exactly one id. Only these small id
grids travel to the model.

Per batch (`Detcon.forward`): 16 ids per image and view are sampled uniformly with replacement among the ids owning
≥ 1 cell; the same ids serve the online and the target network. Mask pooling h_m = Σ m·h / max(Σ m, 1) over the res5
map (`sslcli.models.region_pooling.mask_pool`); DetCon_S projects with SimCLR's shared 2048→2048→128 head, DetCon_B
with BYOL's projector + predictor (online) and an EMA target (projector only). `sslcli.losses.detcon.detcon_loss`
contrasts every latent against all masks of all images on all ranks.
"""

from __future__ import annotations

import torch

from sslcli import distributed as dist
from sslcli.data.views.colour import view_colours
from sslcli.errors import InputError
from sslcli.losses.detcon import detcon_loss
from sslcli.methods.base import MomentumMethod, StepInfo
from sslcli.methods.detcon.views import COLOUR_PRESETS, CROP_SCALE, DetconTransform, MaskSource, MaskViewPair
from sslcli.models.backbone import build_backbone, map_side
from sslcli.models.heads import byol_heads, simclr_projector
from sslcli.models.region_pooling import mask_pool

DEFAULT_DIMS = {"S": (128, 2048), "B": (256, 4096)}  # (dim, hidden_dim): SimCLR's and BYOL's heads


def sample_ids(grid: torch.Tensor, num_samples: int) -> torch.Tensor:
    """(B, n, n) id grids → (B, R) ids drawn uniformly with replacement among each image's distinct ids.

    Every distinct id is represented by the first cell carrying it; drawing uniformly among those cells draws
    uniformly among ids (not in proportion to their area).
    """
    flat = grid.reshape(grid.shape[0], -1)
    cells = flat.shape[1]
    same = flat[:, :, None] == flat[:, None, :]                                # (B, cells, cells)
    earlier = torch.ones(cells, cells, dtype=torch.bool, device=grid.device).tril(-1)
    first = ~(same & earlier).any(-1)                                          # (B, cells): first cell of its id
    cell = torch.multinomial(first.float(), num_samples, replacement=True)     # (B, R)
    return flat.gather(1, cell)


class Detcon(MomentumMethod):
    """DetCon_S (``method.variant: S``, SimCLR-based) and DetCon_B (``B``, BYOL-based, with an EMA target)."""

    def __init__(self, spec):
        super().__init__(spec)
        method = spec.method
        self.variant = method.variant
        if self.variant == "B":
            self.momentum_pairs = (("encoder", "target_encoder"), ("projector", "target_projector"))
        default_dim, default_hidden = DEFAULT_DIMS[self.variant]
        dim, hidden = method.dim or default_dim, method.hidden_dim or default_hidden
        self.encoder = build_backbone(spec.model.arch, spec.model.width, stem=spec.model.stem)
        if self.variant == "S":
            self.projector = simclr_projector(self.encoder.out_channels, hidden, dim)
        else:
            self.projector, self.predictor = byol_heads(self.encoder.out_channels, hidden, dim)
            self.init_momentum_targets()

    def transform(self) -> DetconTransform:
        masks = MaskSource.from_spec(self.spec.method.masks, self.spec.data)
        spec = self.spec
        views = MaskViewPair(spec.data.image_size, self.variant, scale=spec.views.crop_scale or CROP_SCALE,
                             crop_sampler=spec.method.crop_sampler,
                             colours=view_colours(spec.views.colour, COLOUR_PRESETS[self.variant]))
        return DetconTransform(masks, views, map_side(self.encoder, views.size))

    def forward(self, batch: dict, step: StepInfo) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """``batch["views"]``: (B, 2, 3, S, S); ``batch["masks"]``: (B, 2, n, n) ids on the res5 grid."""
        views, grids = batch["views"], batch["masks"]
        b, r = views.shape[0], self.spec.method.num_samples
        x = torch.cat([views[:, 0], views[:, 1]])                      # both views in one pass (BN over 2B)
        grid = torch.cat([grids[:, 0], grids[:, 1]])                   # (2B, n, n)
        ids = sample_ids(grid, r)                                      # (2B, R), per view; shared with the target
        online, target = self.latents(x, grid, ids)
        if self.variant == "S":
            target1, target2 = dist.gather_with_grad(target[:b]), dist.gather_with_grad(target[b:])
        else:
            target1, target2 = dist.gather_no_grad(target[:b]), dist.gather_no_grad(target[b:])
        loss = detcon_loss(online[:b], online[b:], target1, target2, ids[:b], ids[b:],
                           self.spec.method.temperature, offset=dist.rank() * b)
        return {"loss": loss}

    def latents(self, x: torch.Tensor, grid: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Views (2B, 3, S, S), id grids (2B, n, n), sampled ids (2B, R) → (rows, columns) latents (2B, R, D).

        DetCon_S: both are the shared projections g(h_m). DetCon_B: rows q(g(h_m)) from the online network, columns
        the EMA target's projections (no gradient).
        """
        projections = self._project(self.encoder, self.projector, x, grid, ids)
        if self.variant == "S":
            return projections, projections
        online = self.predictor(projections.flatten(0, 1)).view_as(projections)
        with torch.no_grad():
            target = self._project(self.target_encoder, self.target_projector, x, grid, ids)
        return online, target

    @staticmethod
    def _project(encoder, projector, x: torch.Tensor, grid: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Backbone res5 map → mask pooling → projector: (2B, R, D)."""
        features = encoder.forward_map(x)
        if features.shape[-2:] != grid.shape[-2:]:
            raise InputError(f"masks: {tuple(grid.shape[-2:])} grid does not match the res5 map "
                             f"{tuple(features.shape[-2:])} of {tuple(x.shape[-2:])} px views")
        pooled = mask_pool(features, grid, ids)
        return projector(pooled.flatten(0, 1)).view(*ids.shape, -1)
