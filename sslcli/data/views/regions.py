"""Views that carry boxes, for SoCo (METHODS.md §4): views of an image and K proposal boxes mapped into each.

Three recipes (``recipe``; docs/soco.md): ``paper`` (SoCo's text, described below), ``c4-code`` (the authors'
released C4 recipe, ``ImageAsymBboxCutout``: V1 and V2 only, no box jitter, cutout in V2's boxes) and ``fpn-code``
(the released FPN recipe, ``ImageAsymBboxAwareMultiJitter1Cutout``: V3 its own S/2 crop; boxes chosen and jittered
separately for the V1–V2 and V1–V3 pairs, jitter anchored at the box corner; cutout in V2's and V3's boxes).
The ``paper`` recipe:

- V1: the whole image resized to S×S (aspect ratio not kept); V2: RandomResizedCrop(S, area ``crop_scale``, aspect
  ratio 3/4–4/3); V3: V2 resized to S/2 (the same pixels, downsampled: SoCo's scale-invariance view). V1 and V2 are
  flipped horizontally with probability ½ each, independently; V3 inherits V2's flip.
- Boxes (x0, y0, x1, y1, continuous pixel coordinates: pixel (i, j) spans [j, j+1) × [i, i+1), the convention of
  torchvision's resize and of RoIAlign with ``aligned=True``) move exactly as the pixels do: V1 scales x by S/W and y
  by S/H; V2 subtracts the crop's corner and scales by S/crop size; V3 halves V2's; a flip maps x to S − x.
- Only proposals overlapping both views are kept (V1 holds the whole image, so: a positive-area intersection with
  the V2 crop). K = ``boxes_per_image`` are sampled among them without replacement; with fewer than K the kept ones
  are all used and the rest padded by resampling them. An image without any such proposal uses the V2 crop itself
  (the region both views see) as its only box, so every image contributes K boxes.
- Jitter, on V1's boxes (the whole-image view, as in the authors' code; V2 and V3 keep the exact proposals),
  independently per box with probability ``jitter_p``: shift the centre by U(±s)·(w, h) and scale w and h by
  1 + U(±s) (s = ``jitter_scale``, w, h the box's size in V1); then every box is clipped to its view. A jitter that
  would leave no area inside V1 is not applied to that box.
- Padding (``padding``): ``authors`` (SoCo's ``bboxs_utils.py``): the n < K chosen proposals fill the first n slots
  of every view and each view pads its remaining slots separately with random copies of them; ``ids`` name the
  proposal in every slot, and every copy of a proposal is a positive of every copy of it in the other view (the
  correspondence matrix C_ij = [id_i = id_j]). ``slots`` (D3SSL, and SoCo before): one padding shared by all views
  and slot k corresponds to slot k only (ids = slot numbers).

Colour (BYOL's two presets, `sslcli.data.views.colour`) is applied to V1 and V2 (and the code recipes' V3, with V2's preset)
after the geometry; it never moves pixels. The code recipes' cutout follows colour and normalisation, as the authors'.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms import v2

from sslcli.data.views.colour import BYOL_COLOUR, ColourAug, colour_transform
from sslcli.data.views.crops import crop_resize, image_to_tensor, sample_crop_box

CROP_RATIO = (3 / 4, 4 / 3)  # V2's RandomResizedCrop aspect-ratio range
RECIPES = ("paper", "c4-code", "fpn-code")
PADDINGS = ("authors", "slots")


def sanitize_boxes(boxes: np.ndarray, height: int, width: int) -> torch.Tensor:
    """(M, 4) boxes in image pixels → float32 (M', 4) clipped to the image, keeping those with positive area."""
    out = torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4)).clone()
    out[:, 0::2] = out[:, 0::2].clamp(0, width)
    out[:, 1::2] = out[:, 1::2].clamp(0, height)
    return out[(out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])]


def overlapping(boxes: torch.Tensor, crop: tuple[int, int, int, int]) -> torch.Tensor:
    """Boolean (M,): the boxes whose intersection with ``crop`` (x0, y0, x1, y1) has a positive area."""
    x0, y0, x1, y1 = crop
    width = boxes[:, 2].clamp(max=x1) - boxes[:, 0].clamp(min=x0)
    height = boxes[:, 3].clamp(max=y1) - boxes[:, 1].clamp(min=y0)
    return (width > 0) & (height > 0)


def pad_indices(n: int, k: int) -> torch.Tensor:
    """k slots over n ≥ 1 unique boxes: 0..n−1 then k − n random copies (none when n ≥ k)."""
    return torch.cat([torch.arange(min(n, k)), torch.randint(n, (max(k - n, 0),))])


def sample_indices(n: int, k: int) -> torch.Tensor:
    """k indices into n ≥ 1 items: a random subset when n ≥ k, else all n followed by k − n resampled ones."""
    if n >= k:
        return torch.randperm(n)[:k]
    return torch.cat([torch.randperm(n), torch.randint(n, (k - n,))])


def map_boxes(boxes: torch.Tensor, origin: tuple[float, float], scale: tuple[float, float], size: int,
              flip: bool) -> torch.Tensor:
    """Image boxes (K, 4) → a view's coordinates: (x − origin)·scale, then x → size − x when flipped. Not clipped."""
    ox, oy = origin
    sx, sy = scale
    out = torch.stack([(boxes[:, 0] - ox) * sx, (boxes[:, 1] - oy) * sy,
                       (boxes[:, 2] - ox) * sx, (boxes[:, 3] - oy) * sy], dim=1)
    if flip:
        out = torch.stack([size - out[:, 2], out[:, 1], size - out[:, 0], out[:, 3]], dim=1)
    return out


def clip_boxes(boxes: torch.Tensor, size: int) -> torch.Tensor:
    return boxes.clamp(0, size)


def jitter_boxes(boxes: torch.Tensor, p: float, scale: float) -> torch.Tensor:
    """Each box, with probability p: centre shifted by U(±scale)·(w, h), w and h multiplied by 1 + U(±scale)."""
    k = len(boxes)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    shift = (torch.rand(k, 2) * 2 - 1) * scale
    resize = 1 + (torch.rand(k, 2) * 2 - 1) * scale
    apply = torch.rand(k) < p
    cx, cy = cx + shift[:, 0] * w, cy + shift[:, 1] * h
    w, h = w * resize[:, 0], h * resize[:, 1]
    jittered = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1)
    return torch.where(apply[:, None], jittered, boxes)


def jitter_corners(boxes: torch.Tensor, p: float, scale: float) -> torch.Tensor:
    """The authors' FPN jitter (``jitter_props``), each box with probability p: the top-left corner moves by
    U(±scale)·(w, h) and w and h are multiplied by 1 + U(±scale), the new box starting at the moved corner."""
    k = len(boxes)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    u = (torch.rand(k, 4) * 2 - 1) * scale
    apply = torch.rand(k) < p
    x0, y0 = boxes[:, 0] + u[:, 0] * w, boxes[:, 1] + u[:, 1] * h
    jittered = torch.stack([x0, y0, x0 + w * (1 + u[:, 2]), y0 + h * (1 + u[:, 3])], dim=1)
    return torch.where(apply[:, None], jittered, boxes)


def place_boxes(boxes: torch.Tensor, size: int, jitter_p: float, jitter_scale: float,
                jitter=jitter_boxes) -> torch.Tensor:
    """Boxes in a view's coordinates → jittered (where drawn, by ``jitter``) and clipped to the size×size view.

    A jittered box left without area inside the view falls back to its un-jittered, clipped self.
    """
    plain = clip_boxes(boxes, size)
    if jitter_p <= 0 or jitter_scale <= 0:
        return plain
    jittered = clip_boxes(jitter(boxes, jitter_p, jitter_scale), size)
    empty = (jittered[:, 2] <= jittered[:, 0]) | (jittered[:, 3] <= jittered[:, 1])
    return torch.where(empty[:, None], plain, jittered)


def downsample(view: torch.Tensor, size: int) -> torch.Tensor:
    """V3 from V2: (3, S, S) → (3, size, size), bilinear and antialiased (uint8 or float)."""
    return v2.functional.resize(view, [size, size], antialias=True)


def cutout_rects(boxes: torch.Tensor, p: float, scale: tuple[float, float], side: int) -> torch.Tensor:
    """The draws of SoCo's ``RandomCutoutInBbox`` for a (side, side) view: (K, 4) int64 rectangles (x0, y0, x1, y1),
    clipped to the view, one per box slot; a slot not drawn (probability 1 − p) gets an empty rectangle. For each box
    with probability p: a square of area U(scale)·(box area) centred on a uniform pixel of the box. Every slot draws,
    copies included, as in the authors' loop."""
    rects = torch.zeros(len(boxes), 4, dtype=torch.int64)
    for k, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        if float(torch.rand(())) >= p:
            continue
        area = float(torch.empty(()).uniform_(*scale)) * (x1 - x0) * (y1 - y0)
        half = round(area ** 0.5) // 2
        cx = int(x0 + float(torch.rand(())) * (x1 - x0))
        cy = int(y0 + float(torch.rand(())) * (y1 - y0))
        rects[k] = torch.tensor([max(cx - half, 0), max(cy - half, 0), min(cx + half + 1, side),
                                 min(cy + half + 1, side)])
    return rects


def cutout_in_boxes(view: torch.Tensor, boxes: torch.Tensor, p: float, scale: tuple[float, float]) -> torch.Tensor:
    """SoCo's ``RandomCutoutInBbox`` on a normalised (3, s, s) view: the `cutout_rects` squares set to 0 (the mean
    colour after normalisation)."""
    out = view.clone()
    for x0, y0, x1, y1 in cutout_rects(boxes, p, scale, view.shape[-1]).tolist():
        out[:, y0:y1, x0:x1] = 0.0
    return out


@dataclass
class Drawn:
    """One draw of a recipe: uint8 views (3, s, s), box sets (P, K, 4) in their views' pixels, ids (P, K).

    An id is the index of a slot's proposal among those chosen for its V1–Vx pair: comparable within a pair (fpn-code
    chooses separately for V1–V2 and V1–V3).
    """

    views: list[torch.Tensor]
    boxes: torch.Tensor
    ids: torch.Tensor


@dataclass
class Geometry:
    """A recipe's random draw without pixels: per view its window in the image (``crops``: V1 the whole image), its
    flip and its output side; the box sets (P, K, 4) in their views' pixels and their ids (P, K) (as `Drawn`)."""

    crops: list[tuple[int, int, int, int]]
    flips: list[bool]
    sizes: list[int]
    boxes: torch.Tensor
    ids: torch.Tensor


@dataclass
class RegionViews:
    """SoCo's views with K boxes each (see the module docstring); picklable.

    Calling it on (image (H, W, 3) uint8 RGB, boxes (M, 4) x0, y0, x1, y1 in image pixels) returns a dict:
    "view1", "view2": (3, S, S) float32 (and "view3": (3, S/2, S/2) except for ``c4-code``), colour-augmented and
    normalised; "boxes": (P, K, 4) float32, the box sets in their views' pixels, and "box_ids": (P, K) int64 (the
    proposal of each slot, see ``padding``). Box sets (set → view: `sslcli.methods.soco.method.SET_VIEWS`): paper V1, V2, V3;
    c4-code V1, V2; fpn-code V1 (for V2), V2, V1 (for V3), V3. Fixed shapes, so `default_collate` stacks them.
    """

    size: int
    boxes_per_image: int = 4
    crop_scale: tuple[float, float] = (0.6, 1.0)
    jitter_p: float = 0.5
    jitter_scale: float = 0.1
    colours: tuple[ColourAug, ColourAug] = BYOL_COLOUR
    recipe: str = "paper"
    padding: str = "slots"
    cutout_p: float = 0.5
    cutout_scale: tuple[float, float] = (0.1, 0.3)

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe {self.recipe!r}: expected one of {', '.join(RECIPES)}")
        if self.padding not in PADDINGS:
            raise ValueError(f"padding {self.padding!r}: expected one of {', '.join(PADDINGS)}")
        self._colours = tuple(colour_transform(aug, self.size) for aug in self.colours)
        self._small_colour = colour_transform(self.colours[1], self.small_size)

    @property
    def small_size(self) -> int:
        return self.size // 2

    def _pair(self, candidates: torch.Tensor, crop: tuple[int, int, int, int], side: int, flip: bool,
              to_view1, jitter) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """Boxes for V1 and the view cut at ``crop`` (side px, flipped or not): ((V1 boxes, ids), (view boxes, ids)).

        Up to K proposals seeing the crop are chosen, jittered in V1 (``jitter``: a jitter function or None),
        clipped, and padded to K slots (per view with ``authors`` padding, shared with ``slots``).
        """
        k = self.boxes_per_image
        seen = candidates[overlapping(candidates, crop)]
        if len(seen) == 0:  # no proposal both views see: the region they share
            seen = torch.tensor([crop], dtype=torch.float32)
        unique = seen[torch.randperm(len(seen))[:k]]
        n = len(unique)
        ids1 = pad_indices(n, k)
        ids2 = pad_indices(n, k) if self.padding == "authors" else ids1
        x0, y0, x1, y1 = crop
        in_view = clip_boxes(map_boxes(unique, (x0, y0), (side / (x1 - x0), side / (y1 - y0)), side, flip), side)
        in_view = in_view[ids2]
        in_view1 = to_view1(unique)
        if jitter is None:
            in_view1 = clip_boxes(in_view1, self.size)[ids1]
        elif self.padding == "authors":  # jitter the proposals, then copy them (the authors' order)
            in_view1 = place_boxes(in_view1, self.size, self.jitter_p, self.jitter_scale, jitter)[ids1]
        else:  # slots: every slot jitters on its own, copies included
            in_view1 = place_boxes(in_view1[ids1], self.size, self.jitter_p, self.jitter_scale, jitter)
        if self.padding == "slots":
            ids1 = ids2 = torch.arange(k)
        return (in_view1, ids1), (in_view, ids2)

    def sample_geometry(self, height: int, width: int, boxes: np.ndarray) -> Geometry:
        """The recipe's random geometry for a ``height`` × ``width`` image and its proposals (no pixels touched)."""
        s = self.size
        crop2 = sample_crop_box(height, width, tuple(self.crop_scale), CROP_RATIO)
        flip1, flip2 = bool(torch.rand(()) < 0.5), bool(torch.rand(()) < 0.5)
        candidates = sanitize_boxes(boxes, height, width)
        whole = (0, 0, width, height)

        def to_view1(b):
            return map_boxes(b, (0, 0), (s / width, s / height), s, flip1)

        if self.recipe == "paper":
            (b1, i1), (b2, i2) = self._pair(candidates, crop2, s, flip2, to_view1, jitter_boxes)
            b3 = clip_boxes(map_boxes(b2, (0, 0), (self.small_size / s,) * 2, self.small_size, False), self.small_size)
            return Geometry([whole, crop2], [flip1, flip2], [s, s], torch.stack([b1, b2, b3]),
                            torch.stack([i1, i2, i2]))
        if self.recipe == "c4-code":
            (b1, i1), (b2, i2) = self._pair(candidates, crop2, s, flip2, to_view1, None)
            return Geometry([whole, crop2], [flip1, flip2], [s, s], torch.stack([b1, b2]), torch.stack([i1, i2]))
        crop3 = sample_crop_box(height, width, tuple(self.crop_scale), CROP_RATIO)
        flip3 = bool(torch.rand(()) < 0.5)
        (b12, i12), (b2, i2) = self._pair(candidates, crop2, s, flip2, to_view1, jitter_corners)
        (b13, i13), (b3, i3) = self._pair(candidates, crop3, self.small_size, flip3, to_view1, jitter_corners)
        return Geometry([whole, crop2, crop3], [flip1, flip2, flip3], [s, s, self.small_size],
                        torch.stack([b12, b2, b13, b3]), torch.stack([i12, i2, i13, i3]))

    def draw(self, image: np.ndarray, boxes: np.ndarray) -> Drawn:
        """The recipe's geometry: uint8 views, box sets and ids (paper: V3's pixels are `downsample`(V2), added
        after colour)."""
        pixels = image_to_tensor(image)
        g = self.sample_geometry(image.shape[0], image.shape[1], boxes)
        views = [crop_resize(pixels, crop, size, flip) for crop, flip, size in zip(g.crops, g.flips, g.sizes,
                                                                                  strict=True)]
        return Drawn(views, g.boxes, g.ids)

    def geometry(self, image: np.ndarray, boxes: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(V1, V2) as (3, S, S) uint8 and the box sets (`draw` without the ids and the code recipes' V3)."""
        drawn = self.draw(image, boxes)
        return drawn.views[0], drawn.views[1], drawn.boxes

    def __call__(self, image: np.ndarray, boxes: np.ndarray) -> dict[str, torch.Tensor]:
        drawn = self.draw(image, boxes)
        colour1, colour2 = self._colours
        # uint8 views in: the colour steps scale them to [0, 1]
        out = {"view1": colour1(drawn.views[0]), "view2": colour2(drawn.views[1])}
        if self.recipe == "paper":
            out["view3"] = downsample(out["view2"], self.small_size)
        elif self.recipe == "fpn-code":
            out["view3"] = self._small_colour(drawn.views[2])
        if self.recipe != "paper":  # cutout in V2's boxes (and V3's), after colour, as the authors
            out["view2"] = cutout_in_boxes(out["view2"], drawn.boxes[1], self.cutout_p, tuple(self.cutout_scale))
            if self.recipe == "fpn-code":
                out["view3"] = cutout_in_boxes(out["view3"], drawn.boxes[3], self.cutout_p,
                                               tuple(self.cutout_scale))
        return out | {"boxes": drawn.boxes, "box_ids": drawn.ids}
