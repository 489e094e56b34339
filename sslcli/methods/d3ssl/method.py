"""D3SSL (D3 §4, METHODS.md §5): SoCo's ResNet-C4 region network trained with de-coupling and de-positioning.

Per sample (in DataLoader workers, `D3sslViews` of sslcli/methods/d3ssl/views.py behind `sslcli.data.views.stored_boxes.StoredBoxViews`): SoCo's
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

import torch
import torch.nn.functional as F

from sslcli.data.views.colour import BYOL_COLOUR, view_colours
from sslcli.data.views.regions import downsample
from sslcli.data.views.stored_boxes import StoredBoxViews, open_box_store
from sslcli.errors import InputError
from sslcli.losses.region_nce import d3ssl_loss
from sslcli.methods.base import MomentumMethod, StepInfo
from sslcli.methods.d3ssl.views import D3sslViews
from sslcli.models.backbone import build_backbone
from sslcli.models.heads import mlp
from sslcli.models.queue import RegionBank, mean_pairwise_cosine
from sslcli.models.region_pooling import roi_features


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
                           view_colours(self.spec.views.colour, BYOL_COLOUR))
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
