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

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from sslcli.data.scenes import planted
from sslcli.data.scenes.painting import Scene, SceneObject, background, shape_mask, size_factor
from sslcli.errors import InputError
from sslcli.io import atomic_path, check_writable_dir, write_json_atomic, write_text_atomic

SPLITS = ("train2017", "val2017")
JPEG_QUALITY = 90
OBJECTS_PER_IMAGE = (3, 8)  # inclusive range of objects painted per scene
RADIUS_FRACTION = (0.07, 0.2)  # radius of the disc of equal area, as a fraction of the short side (log-uniform)
MARKER = ".sslcli-synthetic"  # written into OUT first: what --force may replace is ours
IMAGE_ID_STRIDE = 10**9  # image ids: train 1.., val 10**9 + 1..: unique across the two splits, as in COCO


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
# Scenes (shapes, backgrounds and the scene records: sslcli.data.scenes.painting).

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
    image = background(rng, height, width)
    owner = np.full((height, width), -1, np.int32)  # index of the object each pixel shows
    full_masks, class_ids = [], []
    for k in range(rng.integers(OBJECTS_PER_IMAGE[0], OBJECTS_PER_IMAGE[1] + 1)):
        cls = CLASSES[rng.integers(len(CLASSES))]
        radius = min(height, width) * np.exp(rng.uniform(*np.log(RADIUS_FRACTION))) * size_factor(cls.shape)
        stretch = np.exp(rng.uniform(np.log(0.8), np.log(1.25), size=2))
        angle = rng.uniform(0, 2 * np.pi)
        centre = rng.uniform([0, 0], [width, height])  # objects may run off the edge (truncated, as in photos)
        mask = shape_mask(cls.shape, height, width, centre, radius, stretch, angle)
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

    ``preset`` "default" (this module's scenes; ``size`` defaults to 160) or "planted" (sslcli.data.scenes.planted:
    colour-free classes, ``rules`` planted in train, none in val; ``size`` defaults to 224; ``rules`` None = the
    preset's DEFAULT_RULES). ``on_image`` (optional) wraps the iterator of (split, index) jobs, e.g. to show
    progress. The annotation files are written last, so a run that was killed is never mistaken for a complete one.
    """
    out = Path(out)
    preset_scenes = _preset_scenes(preset, size, rules)
    _check_counts(n_train, n_val, preset_scenes.size)
    _check_out(out, force)
    counts = dict(zip(SPLITS, (n_train, n_val)))
    datasets, occluded = _render_splits(out, preset_scenes, seed, counts, on_image)
    for split in SPLITS:
        (out / split).mkdir(parents=True, exist_ok=True)  # an empty val split is still a valid COCO split
        write_json_atomic(out / "annotations" / f"instances_{split}.json",
                          {"info": _split_info(preset_scenes, seed, split), "licenses": [],
                           "categories": preset_scenes.classes, **datasets[split]})
    anns = [a for split in SPLITS for a in datasets[split]["annotations"]]
    return {
        "out": str(out),
        "images": counts,
        "objects": len(anns),
        "objects_per_image": round(len(anns) / (n_train + n_val), 3),
        "occluded_objects": occluded,
        "classes": len(preset_scenes.classes),
        "classes_used": len({a["category_id"] for a in anns}),
        "size": preset_scenes.size,
        "seed": seed,
        "preset": preset,
        **({"planted": preset_scenes.rules.to_info()} if preset == "planted" else {}),
    }


@dataclass(frozen=True)
class PresetScenes:
    """What a preset draws: its scene renderer ``render(rng, split)``, image side, categories and planted rules."""

    preset: str
    render: Callable[[np.random.Generator, str], Scene]
    size: int
    classes: list[dict]
    rules: planted.PlantedRules | None


def _preset_scenes(preset: str, size: int | None, rules) -> PresetScenes:
    if preset not in PRESETS:
        raise InputError(f"--preset {preset!r}: expected one of {', '.join(PRESETS)}")
    if preset == "default" and rules is not None:
        raise InputError("planted rules (--pair, --region, --rules) need --preset planted")
    if preset == "planted":
        rules = planted.DEFAULT_RULES if rules is None else rules
        size = planted.DEFAULT_SIZE if size is None else size

        def render_planted(rng, split):
            return planted.render_planted_scene(rng, size, rules if split == SPLITS[0] else None)
        return PresetScenes(preset, render_planted, size, planted.planted_categories(), rules)
    size = 160 if size is None else size

    def render_default(rng, split):
        return render_scene(rng, size)
    return PresetScenes(preset, render_default, size, categories(), None)


def _check_counts(n_train: int, n_val: int, size: int) -> None:
    if n_train < 1:
        raise InputError(f"--images {n_train}: expected at least 1 training image")
    if n_val < 0:
        raise InputError(f"--val-images {n_val}: expected 0 or more validation images")
    if not 32 <= size <= 4096:
        raise InputError(f"--size {size}: expected an image side between 32 and 4096 pixels")
    if max(n_train, n_val) >= IMAGE_ID_STRIDE:
        raise InputError(f"--images {max(n_train, n_val)}: expected fewer than {IMAGE_ID_STRIDE} images per split")


def _render_splits(out: Path, preset_scenes: PresetScenes, seed: int, counts: dict[str, int],
                   on_image) -> tuple[dict[str, dict], int]:
    """Render and write every image; return each split's COCO ``images``/``annotations`` and the number of
    annotated objects that something in front of them occludes."""
    datasets: dict[str, dict] = {split: {"images": [], "annotations": []} for split in SPLITS}
    jobs = [(split, i) for split in SPLITS for i in range(counts[split])]
    occluded = 0
    for split, i in (on_image(jobs) if on_image else jobs):
        split_index = SPLITS.index(split)
        scene = preset_scenes.render(np.random.default_rng([seed, split_index, i]), split)
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
    return datasets, occluded


def _split_info(preset_scenes: PresetScenes, seed: int, split: str) -> dict:
    """The COCO ``info`` of a split's annotation file."""
    info = {"description": "sslcli synthetic multi-object scenes", "seed": seed, "size": preset_scenes.size,
            "split": split}
    if preset_scenes.preset == "planted":  # the default preset's files stay byte-identical to what they always were
        info["preset"] = preset_scenes.preset
        info["planted"] = preset_scenes.rules.to_info() if split == SPLITS[0] else "none"
    return info
