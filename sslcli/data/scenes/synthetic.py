"""Synthetic multi-object scenes in COCO layout: the embedded default data set (no download).

Each scene is a random crop of one of scikit-image's bundled photographs or textures (colour-shifted), with 3–8
objects painted on it. An object class is a shape with its own texture and colours (``CLASSES``); every class draws
its scale, aspect, rotation and position from the same distributions, so size alone does not reveal the class.
Objects are painted in order, so later ones occlude earlier ones: an annotation's mask is the object's *visible*
pixels, its box the bounding box of those pixels, and objects left with too little visible area are not annotated.

Every image has its own generator, ``np.random.default_rng([seed, split_index, image_index])``: the same seed gives
the same pixels and byte-identical JSON, whatever the number of images or the order they are made in.
"""

from __future__ import annotations

import functools
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from sslcli.errors import InputError
from sslcli.io import atomic_path, check_writable_dir, write_json_atomic, write_text_atomic

SPLITS = ("train2017", "val2017")
JPEG_QUALITY = 90
MIN_VISIBLE_PIXELS = 24  # an object with fewer visible pixels is not annotated (a sliver, not an object)
MIN_VISIBLE_FRACTION = 0.2  # ... nor one whose visible part is under this fraction of its in-frame area
OBJECTS_PER_IMAGE = (3, 8)  # inclusive range of objects painted per scene
RADIUS_FRACTION = (0.07, 0.2)  # radius of the disc of equal area, as a fraction of the short side (log-uniform)
MARKER = ".sslcli-synthetic"  # written into OUT first: what --force may replace is ours
IMAGE_ID_STRIDE = 10**9  # image ids: train 1.., val 10**9 + 1..: unique across the two splits, as in COCO


# ---------------------------------------------------------------------------------------------------------------
# Shapes: lists of (polygon, value) in unit coordinates (radius ~1), painted in order (value 0 cuts a hole).

def _circle(radius: float = 1.0, cx: float = 0.0, cy: float = 0.0, n: int = 48) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], 1)


def _regular(n: int, radius: float = 1.0, phase: float = -np.pi / 2) -> np.ndarray:
    t = phase + np.arange(n) * 2 * np.pi / n
    return np.stack([radius * np.cos(t), radius * np.sin(t)], 1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    t = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


_ARM = 0.32  # half-width of the cross's arms
SHAPES: dict[str, list[tuple[np.ndarray, int]]] = {
    "disc": [(_circle(), 1)],
    "square": [(np.array([[-0.8, -0.8], [0.8, -0.8], [0.8, 0.8], [-0.8, 0.8]]), 1)],
    "triangle": [(_regular(3), 1)],
    "star": [(_star(), 1)],
    "ring": [(_circle(), 1), (_circle(0.55), 0)],
    "cross": [(np.array([[-_ARM, -1], [_ARM, -1], [_ARM, -_ARM], [1, -_ARM], [1, _ARM], [_ARM, _ARM], [_ARM, 1],
                         [-_ARM, 1], [-_ARM, _ARM], [-1, _ARM], [-1, -_ARM], [-_ARM, -_ARM]]), 1)],
    "ellipse": [(_circle() * [1.0, 0.55], 1)],
    "hexagon": [(_regular(6, phase=0.0), 1)],
    "diamond": [(np.array([[0, -1], [0.62, 0], [0, 1], [-0.62, 0]]), 1)],
    "crescent": [(_circle(), 1), (_circle(0.85, cx=0.45), 0)],
}


# ---------------------------------------------------------------------------------------------------------------
# Textures: weight in [0, 1] mixing a class's two colours, from object-local coordinates (u, v) in units of the
# radius, so the pattern turns and scales with its object. ``p`` is the pattern period.

def _texture(kind: str, u: np.ndarray, v: np.ndarray, p: float) -> np.ndarray:
    if kind == "solid":
        return np.zeros_like(u)
    if kind == "stripes":
        return (np.sin(2 * np.pi * u / p) > 0).astype(np.float32)
    if kind == "diagonal":
        return (np.sin(2 * np.pi * (u + v) / (p * 1.4)) > 0).astype(np.float32)
    if kind == "checker":
        return ((np.floor(u / p) + np.floor(v / p)) % 2).astype(np.float32)
    if kind == "dots":
        du, dv = np.mod(u, p) - p / 2, np.mod(v, p) - p / 2
        return (du * du + dv * dv < (0.3 * p) ** 2).astype(np.float32)
    if kind == "grid":
        return ((np.abs(np.mod(u, p) - p / 2) < 0.12 * p) | (np.abs(np.mod(v, p) - p / 2) < 0.12 * p)).astype(
            np.float32)
    if kind == "rings":
        return (np.sin(2 * np.pi * np.hypot(u, v) / (p * 0.8)) > 0).astype(np.float32)
    if kind == "radial":
        return np.clip(np.hypot(u, v), 0, 1).astype(np.float32)
    if kind == "gradient":
        return np.clip((u + 1) / 2, 0, 1).astype(np.float32)
    raise ValueError(f"unknown texture {kind!r}")


@dataclass(frozen=True)
class ObjectClass:
    """One object class: a shape, a texture and its two colours (RGB)."""

    category_id: int
    name: str
    shape: str
    texture: str
    colour_a: tuple[int, int, int]
    colour_b: tuple[int, int, int]


# Ten classes, each a distinct shape *and* a distinct texture/colour pair, so either cue identifies it.
CLASSES: tuple[ObjectClass, ...] = (
    ObjectClass(1, "red-disc", "disc", "solid", (220, 40, 40), (220, 40, 40)),
    ObjectClass(2, "checkered-square", "square", "checker", (40, 70, 200), (245, 215, 50)),
    ObjectClass(3, "striped-triangle", "triangle", "stripes", (30, 150, 60), (240, 240, 240)),
    ObjectClass(4, "dotted-star", "star", "dots", (250, 200, 240), (190, 30, 170)),
    ObjectClass(5, "orange-ring", "ring", "solid", (250, 140, 20), (250, 140, 20)),
    ObjectClass(6, "hatched-cross", "cross", "diagonal", (30, 200, 210), (20, 20, 20)),
    ObjectClass(7, "glowing-ellipse", "ellipse", "radial", (235, 215, 250), (110, 30, 150)),
    ObjectClass(8, "wooden-hexagon", "hexagon", "rings", (140, 80, 30), (230, 190, 130)),
    ObjectClass(9, "gridded-diamond", "diamond", "grid", (150, 230, 150), (20, 30, 90)),
    ObjectClass(10, "sunset-crescent", "crescent", "gradient", (250, 230, 60), (200, 30, 30)),
)


def categories() -> list[dict]:
    """The COCO ``categories`` list."""
    return [{"id": c.category_id, "name": c.name, "supercategory": c.shape} for c in CLASSES]


# ---------------------------------------------------------------------------------------------------------------
# Backgrounds: images shipped inside the scikit-image wheel (these load offline; the others need pooch).

BACKGROUNDS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "brick",
               "grass", "gravel", "camera", "moon", "coins", "clock", "cell")


@functools.cache
def _background_image(name: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB; grey images are replicated to three channels (and tinted later)."""
    import skimage.data

    image = np.asarray(getattr(skimage.data, name)())
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3].astype(np.uint8))


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random crop of a bundled image, resized to (height, width), flipped and colour-shifted: (H, W, 3) float32."""
    source = _background_image(BACKGROUNDS[rng.integers(len(BACKGROUNDS))])
    sh, sw = source.shape[:2]
    aspect = width / height
    scale = rng.uniform(0.25, 1.0)  # fraction of the source area
    ch = int(min(sh, np.sqrt(scale * sh * sw / aspect)))
    cw = int(min(sw, ch * aspect))
    ch = int(min(ch, cw / aspect)) or 1
    y0, x0 = rng.integers(sh - ch + 1), rng.integers(sw - cw + 1)
    crop = cv2.resize(source[y0:y0 + ch, x0:x0 + cw], (width, height), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    gain = rng.uniform(0.6, 1.15, size=3)  # per-channel: also tints grey textures
    offset = rng.uniform(-25, 25, size=3)
    return np.clip(crop.astype(np.float32) * gain + offset, 0, 255)


# ---------------------------------------------------------------------------------------------------------------
# Scenes.

@dataclass
class SceneObject:
    """One painted object. ``full_mask`` is its whole in-frame shape, ``visible`` what later objects left uncovered."""

    category_id: int
    full_mask: np.ndarray  # (H, W) bool
    visible: np.ndarray  # (H, W) bool, a subset of full_mask

    @property
    def annotated(self) -> bool:
        area = int(self.visible.sum())
        return area >= MIN_VISIBLE_PIXELS and area >= MIN_VISIBLE_FRACTION * int(self.full_mask.sum())


@dataclass
class Scene:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    objects: list[SceneObject]  # in painting order (back to front), annotated or not


def _shape_mask(shape: str, height: int, width: int, centre: np.ndarray, radius: float, stretch: np.ndarray,
                angle: float) -> np.ndarray:
    """Rasterise a shape placed at ``centre`` (x, y) with ``radius``, ``stretch`` (sx, sy) and ``angle``: (H, W) bool."""
    canvas = np.zeros((height, width), np.uint8)
    c, s = np.cos(angle), np.sin(angle)
    rotation = np.array([[c, -s], [s, c]])
    shift = 4  # sub-pixel vertices: cv2 takes fixed-point coordinates with `shift` fractional bits
    for polygon, value in SHAPES[shape]:
        points = (polygon * stretch * radius) @ rotation.T + centre
        cv2.fillPoly(canvas, [np.round(points * (1 << shift)).astype(np.int32)], int(value), cv2.LINE_8, shift)
    return canvas.astype(bool)


@functools.cache
def _size_factor(shape: str) -> float:
    """Radius multiplier that gives ``shape`` the area of the unit disc, so that all classes share one area
    distribution (measured by rasterising the shape at radius 100)."""
    area = _shape_mask(shape, 256, 256, np.array([128.0, 128.0]), 100.0, np.ones(2), 0.0).sum() / 100.0**2
    return float(np.sqrt(np.pi / area))


def _paint(image: np.ndarray, mask: np.ndarray, cls: ObjectClass, centre: np.ndarray, radius: float,
           stretch: np.ndarray, angle: float, rng: np.random.Generator) -> None:
    """Fill ``image`` (H, W, 3 float32) under ``mask`` with the class texture in the object's own coordinates."""
    ys, xs = np.nonzero(mask)
    dx, dy = xs - centre[0], ys - centre[1]
    c, s = np.cos(angle), np.sin(angle)
    u = (c * dx + s * dy) / (radius * stretch[0])  # inverse rotation, then unit radius
    v = (-s * dx + c * dy) / (radius * stretch[1])
    weight = _texture(cls.texture, u, v, p=rng.uniform(0.4, 0.6))[:, None]
    colours = np.array([cls.colour_a, cls.colour_b], np.float32)
    colours = np.clip(colours * rng.uniform(0.85, 1.15) + rng.uniform(-12, 12, size=3), 0, 255)  # lighting jitter
    image[ys, xs] = (1 - weight) * colours[0] + weight * colours[1]


def render_scene(rng: np.random.Generator, size: int) -> Scene:
    """One scene whose long side is ``size`` pixels (the short side 75–100 % of it, either orientation)."""
    short = int(round(size * rng.uniform(0.75, 1.0)))
    height, width = (size, short) if rng.random() < 0.5 else (short, size)
    image = _background(rng, height, width)
    owner = np.full((height, width), -1, np.int32)  # index of the object each pixel shows
    full_masks, class_ids = [], []
    for k in range(rng.integers(OBJECTS_PER_IMAGE[0], OBJECTS_PER_IMAGE[1] + 1)):
        cls = CLASSES[rng.integers(len(CLASSES))]
        radius = min(height, width) * np.exp(rng.uniform(*np.log(RADIUS_FRACTION))) * _size_factor(cls.shape)
        stretch = np.exp(rng.uniform(np.log(0.8), np.log(1.25), size=2))
        angle = rng.uniform(0, 2 * np.pi)
        centre = rng.uniform([0, 0], [width, height])  # objects may run off the edge (truncated, as in photos)
        mask = _shape_mask(cls.shape, height, width, centre, radius, stretch, angle)
        _paint(image, mask, cls, centre, radius, stretch, angle, rng)
        owner[mask] = k
        full_masks.append(mask)
        class_ids.append(cls.category_id)
    image += rng.normal(0, 3, size=image.shape).astype(np.float32)  # sensor noise: no perfectly flat regions
    objects = [SceneObject(cid, full, owner == k) for k, (cid, full) in enumerate(zip(class_ids, full_masks))]
    return Scene(np.clip(image + 0.5, 0, 255).astype(np.uint8), objects)


# ---------------------------------------------------------------------------------------------------------------
# COCO output.

def _annotation(obj: SceneObject, ann_id: int, image_id: int) -> dict:
    from pycocotools import mask as mask_utils

    ys, xs = np.nonzero(obj.visible)
    x0, y0 = int(xs.min()), int(ys.min())
    rle = mask_utils.encode(np.asfortranarray(obj.visible.astype(np.uint8)))
    return {"id": ann_id, "image_id": image_id, "category_id": obj.category_id,
            "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1], "area": int(obj.visible.sum()),
            "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
            "iscrowd": 0}


def _write_jpeg(path: Path, image: np.ndarray) -> None:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError(f"{path}: JPEG encoding failed")
    with atomic_path(path, suffix=".jpg") as tmp:
        tmp.write_bytes(data.tobytes())


def _check_out(out: Path, force: bool) -> None:
    """Refuse an OUT whose data set this generator did not make; with --force (or after a killed run of it) remove
    its own splits and annotation files, nothing else. Then mark OUT as made by it, before the first image."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder (expected an output folder)")
    if out.is_dir() and any(out.iterdir()):
        ours, parts = (out / MARKER).is_file(), _data_set_parts(out)
        if parts and not ours:
            raise InputError(f"{out}: holds {', '.join(parts)} not made by `sslcli prepare synthetic` "
                             f"(no {MARKER} marker), so even --force will not replace them; choose a new folder")
        if not force and not (ours and _killed_run(out)):
            raise InputError(f"{out}: output folder is not empty (pass --force to overwrite it)")
        # Remove the annotation files first: until the new ones are written, OUT must not look complete.
        for split in SPLITS:
            (out / "annotations" / f"instances_{split}.json").unlink(missing_ok=True)
        for split in SPLITS:
            if (out / split).is_dir():
                shutil.rmtree(out / split)
    check_writable_dir(out, "OUT")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / MARKER, "made by sslcli prepare synthetic; its --force replaces train2017/, val2017/ and "
                              "annotations/instances_*2017.json here\n")


def _data_set_parts(out: Path) -> list[str]:
    """The split folders and annotation files in OUT that --force would replace."""
    parts = [f"{split}/" for split in SPLITS if (out / split).exists()]
    return parts + [f"annotations/instances_{split}.json" for split in SPLITS
                    if (out / "annotations" / f"instances_{split}.json").exists()]


def _killed_run(out: Path) -> bool:
    """A run of this generator that was stopped before its last step: only its marker and folders, no annotation file
    yet (they are written last). Rerunning it starts over, as --force would, so the result is the same as one clean
    run."""
    names = {p.name for p in out.iterdir()}
    return names <= {MARKER, "annotations", *SPLITS} and not any(
        (out / "annotations" / f"instances_{split}.json").exists() for split in SPLITS)


PRESETS = ("default", "planted")


def generate(out: str | os.PathLike, n_train: int, n_val: int, seed: int, size: int | None = None,
             force: bool = False, on_image=None, preset: str = "default", rules=None) -> dict:
    """Write ``n_train`` + ``n_val`` scenes to ``out`` in COCO layout and return summary statistics.

    ``preset`` "default" (this module's scenes; ``size`` defaults to 160) or "planted" (sslcli.data.planted:
    colour-free classes, ``rules`` planted in train, none in val; ``size`` defaults to 224; ``rules`` None = the
    preset's DEFAULT_RULES). ``on_image`` (optional) wraps the iterator of (split, index) jobs, e.g. to show
    progress. The annotation files are written last, so a run that was killed is never mistaken for a complete one.
    """
    out = Path(out)
    if preset not in PRESETS:
        raise InputError(f"--preset {preset!r}: expected one of {', '.join(PRESETS)}")
    if preset == "default" and rules is not None:
        raise InputError("planted rules (--pair, --region, --rules) need --preset planted")
    if preset == "planted":
        from sslcli.data import planted

        rules = planted.DEFAULT_RULES if rules is None else rules
        size = planted.DEFAULT_SIZE if size is None else size
        classes = planted.planted_categories()

        def render(rng, split):
            return planted.render_planted_scene(rng, size, rules if split == SPLITS[0] else None)
    else:
        size = 160 if size is None else size
        classes = categories()

        def render(rng, split):
            return render_scene(rng, size)
    if n_train < 1:
        raise InputError(f"--images {n_train}: expected at least 1 training image")
    if n_val < 0:
        raise InputError(f"--val-images {n_val}: expected 0 or more validation images")
    if not 32 <= size <= 4096:
        raise InputError(f"--size {size}: expected an image side between 32 and 4096 pixels")
    if max(n_train, n_val) >= IMAGE_ID_STRIDE:
        raise InputError(f"--images {max(n_train, n_val)}: expected fewer than {IMAGE_ID_STRIDE} images per split")
    _check_out(out, force)

    counts = dict(zip(SPLITS, (n_train, n_val)))
    datasets = {split: {"images": [], "annotations": []} for split in SPLITS}
    jobs = [(split, i) for split in SPLITS for i in range(counts[split])]
    occluded = 0
    for split, i in (on_image(jobs) if on_image else jobs):
        split_index = SPLITS.index(split)
        scene = render(np.random.default_rng([seed, split_index, i]), split)
        image_id = split_index * IMAGE_ID_STRIDE + i + 1
        file_name = f"{image_id:012d}.jpg"
        _write_jpeg(out / split / file_name, scene.image)
        height, width = scene.image.shape[:2]
        data = datasets[split]
        data["images"].append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for obj in scene.objects:
            if obj.annotated:
                data["annotations"].append(_annotation(obj, len(data["annotations"]) + 1, image_id))
                occluded += int(obj.visible.sum() < obj.full_mask.sum())
    for split in SPLITS:
        (out / split).mkdir(parents=True, exist_ok=True)  # an empty val split is still a valid COCO split
        info = {"description": "sslcli synthetic multi-object scenes", "seed": seed, "size": size, "split": split}
        if preset == "planted":  # the default preset's files stay byte-identical to what they always were
            info["preset"] = preset
            info["planted"] = rules.to_info() if split == SPLITS[0] else "none"
        write_json_atomic(out / "annotations" / f"instances_{split}.json",
                          {"info": info, "licenses": [], "categories": classes, **datasets[split]})

    anns = [a for split in SPLITS for a in datasets[split]["annotations"]]
    n_images = n_train + n_val
    return {
        "out": str(out),
        "images": counts,
        "objects": len(anns),
        "objects_per_image": round(len(anns) / n_images, 3),
        "occluded_objects": occluded,
        "classes": len(classes),
        "classes_used": len({a["category_id"] for a in anns}),
        "size": size,
        "seed": seed,
        "preset": preset,
        **({"planted": rules.to_info()} if preset == "planted" else {}),
    }
