"""SoCo (Wei et al. 2021, "Aligning pretraining for detection via object-level contrastive learning"; METHODS.md §4).

Per sample (in DataLoader workers, `sslcli.data.views.stored_boxes.StoredBoxViews`): the image's selective-search boxes
come from a box store made by `sslcli prepare boxes`; `RegionViews` makes the views of ``method.recipe`` (paper: V1
whole image at S², V2 a crop at S², V3 = V2 at (S/2)²; c4-code: V1 and V2; fpn-code: V3 its own (S/2)² crop), under
the keys "view1", "view2", "view3" (SoCo's V3, the small view), and box sets of K boxes with the proposal id of every
slot (``method.padding``).

Per batch (`Soco.forward`), ResNet-C4 (`sslcli.models.region_pooling.roi_features`): res4 (stride 16, 4 with a small
stem) → RoIAlign (aligned=True, ``roi_size``², spatial scale 1/stride, `stage_strides`) per box → res5 (``layer4``)
→ global average pool → projector (→4096→BN→ReLU→256); the online branch adds the predictor (→4096→BN→ReLU→256).
The target (encoder + projector) is an EMA of the online one, momentum 1 − (1 − m₀)(cos(πk/K) + 1)/2. Loss
(`sslcli.losses.regression.soco_loss`): for every view pair (a, b) and both directions, BYOL's
2 − 2·cos(p_a,k, z_b,k) between the online prediction of box k in view a and the target projection of the same box in
view b, averaged over the boxes of the batch. SoCo's pairs are V1↔V2 and V1↔V3 (its loss L = L₁₂ + L₁₃, each
symmetrised; V2 and V3 share a crop and are not compared); ``method.view_pairs: all`` adds V2↔V3.
SoCo writes each direction as −2·Σ C_ij p̂_i·ẑ_j / ΣC per image, C_ij = [box i and box j are the same proposal];
`corresponding_regression` is that plus a constant 2 (same gradients), so every copy of a padded box is a positive of
every copy in the other view, as in the authors' code. With ``padding: slots`` the ids are slot numbers (C = I).
"""

from __future__ import annotations

import torch

from sslcli.data.views.colour import BYOL_COLOUR, view_colours
from sslcli.data.views.regions import RegionViews
from sslcli.data.views.stored_boxes import StoredBoxViews, open_box_store
from sslcli.losses.regression import soco_loss
from sslcli.methods.base import MomentumMethod, StepInfo
from sslcli.models.backbone import build_backbone
from sslcli.models.heads import byol_heads
from sslcli.models.region_pooling import roi_features

VIEW_PAIRS = {"soco": ((0, 1), (0, 2)), "all": ((0, 1), (0, 2), (1, 2))}
VIEW_KEYS = ("view1", "view2", "view3")
# Per recipe: the view of each box set of `RegionViews` and the pairs of box sets the loss compares.
SET_VIEWS = {"paper": (0, 1, 2), "c4-code": (0, 1), "fpn-code": (0, 1, 0, 2)}
CODE_PAIRS = {"c4-code": ((0, 1),), "fpn-code": ((0, 1), (2, 3))}


def set_pairs(recipe: str, view_pairs: str) -> tuple[tuple[int, int], ...]:
    return VIEW_PAIRS[view_pairs] if recipe == "paper" else CODE_PAIRS[recipe]


class Soco(MomentumMethod):
    """SoCo on ResNet-C4 (``model.c4: true``): online encoder + projector + predictor, EMA target."""

    momentum_pairs = (("encoder", "target_encoder"), ("projector", "target_projector"))

    def __init__(self, spec):
        super().__init__(spec)
        method = spec.method
        self.encoder = build_backbone(spec.model.arch, spec.model.width, stem=spec.model.stem)
        self.projector, self.predictor = byol_heads(self.encoder.out_channels, method.hidden_dim, method.dim)
        self.init_momentum_targets()

    def transform(self) -> StoredBoxViews:
        method = self.spec.method
        views = RegionViews(self.spec.data.image_size, method.boxes_per_image, tuple(method.crop_scale),
                            method.jitter_p, method.jitter_scale, recipe=method.recipe, padding=method.padding,
                            cutout_p=method.cutout_p, cutout_scale=tuple(method.cutout_scale),
                            colours=view_colours(self.spec.views.colour, BYOL_COLOUR))
        return StoredBoxViews(open_box_store(method.boxes, self.spec.data), views)

    def forward(self, batch: dict, step: StepInfo) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """``batch["view1"]``, ``["view2"]``: (B, 3, S, S); ``["view3"]``: (B, 3, S/2, S/2) (not for c4-code);
        ``["boxes"]``: (B, P, K, 4) box sets; ``["box_ids"]``: (B, P, K) (see `RegionViews`)."""
        method = self.spec.method
        set_views = SET_VIEWS[method.recipe]
        boxes = batch["boxes"].contiguous()  # (B, P, K, 4) looks like an image batch to the engine's channels_last
        b, _, k, _ = boxes.shape
        predictions: list = [None] * len(set_views)
        targets: list = [None] * len(set_views)
        for v in sorted(set(set_views)):  # one pass per view (V3 has another size; BN statistics per view)
            sets = [i for i, view in enumerate(set_views) if view == v]
            view_boxes = boxes[:, sets].flatten(1, 2)  # (B, n·K, 4): all of this view's box sets at once
            prediction = self.predictor(self.projector(roi_features(self.encoder, batch[VIEW_KEYS[v]], view_boxes,
                                                                    method.roi_size)))
            with torch.no_grad():
                target = self.target_projector(roi_features(self.target_encoder, batch[VIEW_KEYS[v]], view_boxes,
                                                            method.roi_size))
            for j, i in enumerate(sets):  # rows are image-major: (B, n, K, D) → set j's (B·K, D)
                predictions[i] = prediction.view(b, len(sets), k, -1)[:, j].flatten(0, 1)
                targets[i] = target.view(b, len(sets), k, -1)[:, j].flatten(0, 1)
        ids = list(batch["box_ids"].unbind(1))
        return soco_loss(predictions, targets, set_pairs(method.recipe, method.view_pairs), ids, set_views)
