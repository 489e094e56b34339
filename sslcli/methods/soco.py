"""SoCo (Wei et al. 2021, "Aligning pretraining for detection via object-level contrastive learning"; METHODS.md §4).

Per sample (in DataLoader workers, `SocoTransform`): the image's selective-search boxes come from a box store made by
`sslcli prepare boxes`; `RegionViews` makes the views of ``method.recipe`` (paper: V1 whole image at S², V2 a crop at
S², V3 = V2 at (S/2)²; c4-code: V1 and V2; fpn-code: V3 its own (S/2)² crop) and box sets of K boxes with the
proposal id of every slot (``method.padding``).

Per batch (`Soco.forward`), ResNet-C4: res4 (stride 16) → RoIAlign (aligned=True, ``roi_size``², spatial scale 1/16)
per box → res5 (``layer4``) → global average pool → projector (→4096→BN→ReLU→256); the online branch adds the
predictor (→4096→BN→ReLU→256). The target (encoder + projector) is an EMA of the online one, momentum
1 − (1 − m₀)(cos(πk/K) + 1)/2. Loss (`soco_loss`): for every view pair (a, b) and both directions, BYOL's
2 − 2·cos(p_a,k, z_b,k) between the online prediction of box k in view a and the target projection of the same box
in view b, averaged over the boxes of the batch. SoCo's pairs are V1↔V2 and V1↔V3 (its loss L = L₁₂ + L₁₃, each
symmetrised; V2 and V3 share a crop and are not compared); ``method.view_pairs: all`` adds V2↔V3.
SoCo writes each direction as −2·Σ C_ij p̂_i·ẑ_j / ΣC per image, C_ij = [box i and box j are the same proposal];
`corresponding_regression` is that plus a constant 2 (same gradients), so every copy of a padded box is a positive of
every copy in the other view, as in the authors' code. With ``padding: slots`` the ids are slot numbers (C = I).
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import roi_align

from sslcli.data.color import BYOL, view_colours
from sslcli.data.region_views import RegionViews
from sslcli.errors import InputError
from sslcli.losses.regression import corresponding_regression, normalized_regression
from sslcli.methods.base import Method, StepInfo
from sslcli.methods.byol import byol_heads
from sslcli.models.backbone import ResNetBackbone, build_backbone
from sslcli.models.ema import cosine_momentum, ema_update, momentum_copy

RES4_STRIDE = 16
VIEW_PAIRS = {"soco": ((0, 1), (0, 2)), "all": ((0, 1), (0, 2), (1, 2))}
VIEW_KEYS = ("view1", "view2", "view3")
# Per recipe: the view of each box set of `RegionViews` and the pairs of box sets the loss compares.
SET_VIEWS = {"paper": (0, 1, 2), "c4-code": (0, 1), "fpn-code": (0, 1, 0, 2)}
CODE_PAIRS = {"c4-code": ((0, 1),), "fpn-code": ((0, 1), (2, 3))}


def set_pairs(recipe: str, view_pairs: str) -> tuple[tuple[int, int], ...]:
    return VIEW_PAIRS[view_pairs] if recipe == "paper" else CODE_PAIRS[recipe]


def soco_loss(predictions: list[torch.Tensor], targets: list[torch.Tensor], pairs: tuple[tuple[int, int], ...],
              ids: list[torch.Tensor] | None = None,
              set_views: tuple[int, ...] | None = None) -> dict[str, torch.Tensor]:
    """Σ over pairs (a, b) of box sets of the loss a → b plus the loss b → a.

    Without ``ids``, box k of every set is the same box: mean_k(2 − 2cos(p_a,k, z_b,k)). With ``ids``, the
    authors' correspondence (`corresponding_regression`): per image 2 − 2·Σ C_ij cos(p_a,i, z_b,j) / ΣC.

    Args:
        predictions: per box set, (N, D) online predictions of the N = B·K boxes, image-major.
        targets: per box set, (N, D) target projections (treated as constants).
        pairs: box-set index pairs, e.g. ((0, 1), (0, 2)).
        ids: per box set, (B, K) proposal ids; None = correspondence by index.
        set_views: the view of each box set (names the terms); None = set i is view i.

    Returns:
        {"loss": the total, "loss_v{a+1}v{b+1}": each pair's symmetrised term, named by views (for logging)}.
    """
    views = set_views or tuple(range(len(predictions)))

    def direction(a: int, b: int) -> torch.Tensor:
        if ids is None:
            return normalized_regression(predictions[a], targets[b]).mean()
        return corresponding_regression(predictions[a], targets[b], ids[a], ids[b])

    terms = {f"loss_v{views[a] + 1}v{views[b] + 1}": direction(a, b) + direction(b, a) for a, b in pairs}
    return {"loss": torch.stack(list(terms.values())).sum(), **terms}


def roi_features(encoder: ResNetBackbone, images: torch.Tensor, boxes: torch.Tensor, roi_size: int) -> torch.Tensor:
    """ResNet-C4 box features: res4 → RoIAlign → res5 → average pool.

    Args:
        images: (B, 3, H, W). boxes: (B, K, 4) x0, y0, x1, y1 in the images' pixels. roi_size: RoIAlign output side.

    Returns:
        (B·K, C5) features, image-major (row b·K + k is box k of image b).
    """
    res4 = encoder.features(images, upto="res4")["res4"]
    return encoder.layer4(align_rois(res4, boxes, roi_size)).mean(dim=(2, 3))


def align_rois(res4: torch.Tensor, boxes: torch.Tensor, roi_size: int) -> torch.Tensor:
    """RoIAlign (aligned=True: box corners are continuous pixel coordinates) of (B, K, 4) image-pixel boxes on a
    (B, C, H/16, W/16) res4 map → (B·K, C, roi_size, roi_size), image-major."""
    return roi_align(res4, list(boxes.to(res4.dtype).unbind(0)), output_size=roi_size,
                     spatial_scale=1.0 / RES4_STRIDE, sampling_ratio=-1, aligned=True)


def open_box_store(path: str):
    """The box store named by ``method.boxes``, checked at start-up (exists, is complete, holds boxes)."""
    from sslcli.data.store import RegionStore

    try:
        store = RegionStore(path)
        kind, method = store.kind, store.method
    except InputError as exc:
        raise InputError(f"method.boxes: {exc} (make one with `sslcli prepare boxes ROOT --method "
                         "selective-search --filter soco`)") from None
    if kind != "boxes":
        raise InputError(f"method.boxes: {path} holds {kind} (method {method}), expected boxes "
                         "(made by `sslcli prepare boxes`)")
    return store


class SocoTransform:
    """Sample dict → ``{"view1", "view2"(, "view3"), "boxes": (P, K, 4), "box_ids": (P, K)}`` (`RegionViews`)."""

    def __init__(self, store, views: RegionViews):
        self.store, self.views = store, views

    def __call__(self, sample: dict) -> dict:
        image = np.asarray(sample["image"])
        image_id = sample.get("image_id")
        try:
            boxes = self.store.boxes(image_id)
            stored_size = self.store.image_size(image_id)
        except KeyError:
            raise InputError(f"image {image_id!r} is not in box store {self.store.path}: was it made from this "
                             "data set and split?") from None
        if stored_size != image.shape[:2]:
            raise InputError(f"image {image_id!r}: boxes in {self.store.path} were computed on a "
                             f"{stored_size[1]}×{stored_size[0]} image, but it is {image.shape[1]}×{image.shape[0]}")
        return self.views(image, boxes)


class Soco(Method):
    """SoCo on ResNet-C4 (``model.c4: true``): online encoder + projector + predictor, EMA target."""

    def __init__(self, spec):
        super().__init__(spec)
        if not spec.model.c4:
            raise InputError("model.c4: SoCo is a ResNet-C4 method (RoIAlign on res4, res5 as the box head); "
                             "set model.c4: true")
        method = spec.method
        self.encoder = build_backbone(spec.model.arch, spec.model.width)
        self.projector, self.predictor = byol_heads(self.encoder.out_channels, method.hidden_dim, method.dim)
        self.target_encoder = momentum_copy(self.encoder)
        self.target_projector = momentum_copy(self.projector)

    def transform(self) -> SocoTransform:
        method = self.spec.method
        views = RegionViews(self.spec.data.image_size, method.boxes_per_image, tuple(method.crop_scale),
                            method.jitter_p, method.jitter_scale, recipe=method.recipe, padding=method.padding,
                            cutout_p=method.cutout_p, cutout_scale=tuple(method.cutout_scale),
                            colors=view_colours(self.spec.views.colour, BYOL))
        return SocoTransform(open_box_store(method.boxes), views)

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

    @torch.no_grad()
    def after_step(self, step: StepInfo) -> None:
        tau = cosine_momentum(self.spec.method.base_momentum, step.progress)
        ema_update(self.target_encoder, self.encoder, tau)
        ema_update(self.target_projector, self.projector, tau)
