"""D3SSL (D3 §4, METHODS.md §5): SoCo's ResNet-C4 region network trained with de-coupling and de-positioning.

Per sample (in DataLoader workers, `D3sslViews` behind `sslcli.data.stored_boxes.StoredBoxViews`): SoCo's
`RegionViews` geometry and colour give x1 (whole image, S²), x2 (RandomResizedCrop, area ``crop_scale``) and x2s (x2
resized to (S/2)², SoCo's V3) with the same K proposals in each (its own box jitter off: D3SSL uses RBJ). Then, with
one seeded numpy generator per sample:
- RBJ on each view's boxes independently (never larger than the proposal);
- de-coupling (``method.decoupling``): PRC on x1 and x2s (holes filled with ``prc.fill`` in normalised colour), and
  PRM's masks for x1 and x2s — the pixels PRM will take from a background image;
- de-positioning (``method.depositioning``): one shift t for all of x2's boxes, the mask m̂ (shifted box union minus
  PRC's holes) and x2 shifted by t; b̂ = b + t.
The background image is **another image of the batch**: the method rolls the batch by one (image b gets image b − 1's
x2, coloured, uncut) and writes it under PRM's masks (downsampled for x2s) and around m̂ for x3, the de-positioned
view (its parts travel as the "depositioned_*" keys; D3SSL has no "view3"). So PRM and x3 both take their
surroundings from the same other image; with a batch of one it is the image itself.

Per batch (`D3ssl.forward`): z = normalise(projector(res5(RoIAlign(res4(x), b)))) (`roi_features`), student f_q on
x̂1, x̂2s (and x3), teacher f_k (EMA of the student, cosine momentum as SoCo) on x̂1 and x2.
L_dc = NCE(z_s1, z_t2) + NCE(z_s2, z_t1), L_dp = NCE(z_s3, z_t2) + NCE(z_s3, z_t1), loss = mean over the B·K boxes of
(L_dc + L_dp) (`sslcli.losses.region_nce.d3ssl_loss`); negatives are the region bank (`RegionBank`). After the step,
the teacher's features of both views (z_t1 and z_t2, 2·B·K per rank) are enqueued.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sslcli.data.color import BYOL, IMAGENET_MEAN, IMAGENET_STD, ColorAug, view_colours
from sslcli.data.region_aug import (
    _fill_values,
    depositioning_composite,
    restricted_box_jitter,
    sample_prc_cutouts,
    sample_prm_rects,
)
from sslcli.data.region_views import RegionViews, downsample
from sslcli.data.stored_boxes import StoredBoxViews, open_box_store
from sslcli.errors import InputError
from sslcli.losses.region_nce import d3ssl_loss
from sslcli.methods.base import MomentumMethod, StepInfo
from sslcli.models.backbone import build_backbone
from sslcli.models.heads import mlp
from sslcli.models.queue import RegionBank, mean_pairwise_cosine
from sslcli.models.region_pooling import roi_features


def _normalised(colours: np.ndarray) -> torch.Tensor:
    """uint8 colours (3,) or (n, 3) → (3, 1) or (3, n) float, normalised as the views are."""
    values = torch.as_tensor(colours, dtype=torch.float32).reshape(-1, 3) / 255
    return ((values - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)).T


@dataclass
class D3sslViews:
    """(image (H, W, 3) uint8, boxes (M, 4)) → the sample dict `D3ssl.forward` reads (module docstring); picklable.

    Keys: "view1", "view2": (3, S, S) float (view1 already PRC'd); "view2s": (3, S/2, S/2) (PRC'd); "prm1" (S, S),
    "prm2s" (S/2, S/2) bool: PRM's background pixels (all False without de-coupling); "boxes": (3, K, 4) float of
    x1, x2, x2s after RBJ; with de-positioning also the parts of the de-positioned view x3: "depositioned_foreground"
    (3, S, S) (x2 shifted by t), "depositioned_mask" (S, S) bool (m̂, where x3 shows that foreground) and
    "depositioned_boxes" (K, 4) (b̂ = x2's boxes + t).
    """

    size: int
    boxes_per_image: int = 4
    crop_scale: tuple[float, float] = (0.4, 1.0)
    prc_side_fraction: tuple[float, float] = (0.2, 0.5)
    prc_max_cover: float = 0.5
    prc_fill: str = "mean"
    prm_scale: tuple[float, float] = (0.2, 0.6)
    prm_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    rbj_scale: tuple[float, float] = (0.9, 1.0)
    rbj_shift: float = 0.1
    decoupling: bool = True
    depositioning: bool = True
    colors: tuple[ColorAug, ColorAug] = BYOL

    def __post_init__(self):
        self.regions = RegionViews(self.size, self.boxes_per_image, tuple(self.crop_scale), jitter_p=0.0,
                                   colors=self.colors)

    def _jitter(self, boxes: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        jittered = restricted_box_jitter(boxes.numpy(), rng, tuple(self.rbj_scale), self.rbj_shift)
        return torch.from_numpy(jittered).float()

    def _cut(self, view: torch.Tensor, boxes: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """PRC on a normalised (3, h, w) view: the holes get the fill colour, normalised like the view."""
        hole = torch.from_numpy(sample_prc_cutouts(boxes.numpy(), view.shape[1], view.shape[2], rng,
                                                   tuple(self.prc_side_fraction), self.prc_max_cover).mask)
        out = view.clone()
        out[:, hole] = _normalised(_fill_values(self.prc_fill, int(hole.sum()), rng))  # type: ignore[arg-type]
        return out

    def _prm_mask(self, boxes: torch.Tensor, side: int, rng: np.random.Generator) -> torch.Tensor:
        if not self.decoupling:
            return torch.zeros(side, side, dtype=torch.bool)
        return torch.from_numpy(sample_prm_rects(boxes.numpy(), side, side, rng, tuple(self.prm_scale),
                                                 tuple(self.prm_ratio)).mask)

    def __call__(self, image: np.ndarray, boxes: np.ndarray) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng(int(torch.randint(2**62, ())))  # from torch's RNG: the engine seeds workers
        views = self.regions(image, boxes)
        view1, view2, view2s = views["view1"], views["view2"], views["view3"]  # SoCo's V3: x2 at (S/2)²
        b1, b2, b2s = (self._jitter(b, rng) for b in views["boxes"])
        if self.decoupling:
            view1, view2s = self._cut(view1, b1, rng), self._cut(view2s, b2s, rng)
        out = {"view1": view1, "view2": view2, "view2s": view2s, "boxes": torch.stack([b1, b2, b2s]),
               "prm1": self._prm_mask(b1, self.size, rng), "prm2s": self._prm_mask(b2s, view2s.shape[1], rng)}
        if self.depositioning:
            # Only the draw (t, m̂, b̂) is used: the pixels are composed from the coloured float views, here and in
            # the method (which owns the background), so the composite gets blank uint8 stand-ins.
            blank = np.zeros((self.size, self.size, 3), np.uint8)
            composite = depositioning_composite(blank, b2.numpy(), blank, rng, tuple(self.prc_side_fraction),
                                                self.prc_max_cover)
            tx, ty = composite.shift
            shifted = torch.roll(view2, shifts=(ty, tx), dims=(1, 2))  # pixel p holds x2's pixel p − t
            out["depositioned_foreground"] = shifted
            out["depositioned_mask"] = torch.from_numpy(composite.mask)
            out["depositioned_boxes"] = torch.from_numpy(composite.boxes).float()
        return out


def compose_views(batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The student's inputs x̂1 (B, 3, S, S), x̂2s (B, 3, S/2, S/2) and x3 (B, 3, S, S) or None without de-positioning.

    Image b's background is image b − 1's x2 (the batch rolled by one): written under PRM's masks (downsampled to S/2
    for x2s) and, for x3, everywhere outside m̂.
    """
    background = batch["view2"].roll(1, dims=0)
    x1 = torch.where(batch["prm1"][:, None], background, batch["view1"])
    small = batch["view2s"].shape[-1]
    x2s = torch.where(batch["prm2s"][:, None], downsample(background, small), batch["view2s"])
    x3 = None
    if "depositioned_mask" in batch:
        x3 = torch.where(batch["depositioned_mask"][:, None], batch["depositioned_foreground"], background)
    return x1, x2s, x3


class D3ssl(MomentumMethod):
    """D3SSL on ResNet-C4 (``model.c4: true``): student encoder + projector, EMA teacher, region memory bank."""

    momentum_pairs = (("encoder", "target_encoder"), ("projector", "target_projector"))

    def __init__(self, spec):
        super().__init__(spec)
        if not spec.model.c4:
            raise InputError("model.c4: D3SSL is a ResNet-C4 method (RoIAlign on res4, res5 as the box head); "
                             "set model.c4: true")
        method = spec.method
        per_step = 2 * method.boxes_per_image * spec.batch_size  # z_t1 and z_t2 of every box, all ranks
        if method.bank_size < per_step:
            raise InputError(f"method.bank_size: {method.bank_size} is below the {per_step} region features "
                             "enqueued per step (2 × boxes_per_image × batch_size)")
        self.encoder = build_backbone(spec.model.arch, spec.model.width, stem=spec.model.stem)
        self.projector = mlp(self.encoder.out_channels, method.hidden_dim, method.dim, batch_norm=True)
        self.init_momentum_targets()
        self.bank = RegionBank(method.dim, method.bank_size)
        self._pending: torch.Tensor | None = None  # teacher features of the last forward, enqueued after the step

    def transform(self) -> StoredBoxViews:
        method = self.spec.method
        views = D3sslViews(self.spec.data.image_size, method.boxes_per_image, tuple(method.crop_scale),
                           tuple(method.prc.side_fraction), method.prc.max_cover, method.prc.fill,
                           tuple(method.prm.scale), tuple(method.prm.ratio), tuple(method.rbj.scale),
                           method.rbj.shift, method.decoupling, method.depositioning,
                           view_colours(self.spec.views.colour, BYOL))
        return StoredBoxViews(open_box_store(method.boxes, self.spec.data), views)

    def _embed(self, encoder, projector, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images, (B, K, 4) boxes → (B, K, D) normalised region features."""
        features = projector(roi_features(encoder, images, boxes, self.spec.method.roi_size))
        return F.normalize(features, dim=1).reshape(boxes.shape[0], boxes.shape[1], -1)

    def forward(self, batch: dict, step: StepInfo) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """Reads the keys `D3sslViews` writes (batched: a leading B)."""
        method = self.spec.method
        boxes = batch["boxes"].contiguous()  # (B, 3, K, 4) looks like an image batch to the engine's channels_last
        x1, x2s, x3 = compose_views(batch)
        s1 = self._embed(self.encoder, self.projector, x1, boxes[:, 0])
        s2 = self._embed(self.encoder, self.projector, x2s, boxes[:, 2])
        with torch.no_grad():
            t1 = self._embed(self.target_encoder, self.target_projector, x1, boxes[:, 0])
            t2 = self._embed(self.target_encoder, self.target_projector, batch["view2"], boxes[:, 1])
        s3 = None
        if x3 is not None:
            s3 = self._embed(self.encoder, self.projector, x3, batch["depositioned_boxes"].contiguous())
        self._pending = torch.cat([t1, t2]).reshape(-1, method.dim)
        out = d3ssl_loss(s1, s2, t1, t2, self.bank.features, method.temperature, s3)
        return {**out, "bank_cos": mean_pairwise_cosine(self.bank.features)}

    @torch.no_grad()
    def after_step(self, step: StepInfo) -> None:
        super().after_step(step)
        if self._pending is not None:  # after backward: the loss's graph read the bank
            self.bank.enqueue(self._pending)
            self._pending = None
