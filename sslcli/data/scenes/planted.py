"""The ``planted`` preset of the synthetic scenes: known co-occurrence and position priors in train, none in val.

Why: on real photographs nobody knows *why* a feature is coupled to its neighbours or biased by position. Here the
cause is planted on purpose, so an analysis (``sslcli analyze coupling``, ``positional``, ``oknn``) has a ground
truth to find, and the evaluation split, which has no prior at all, exposes a representation that leans on one.

- Classes: ten shape x texture patterns (``PLANTED_CLASSES``); both colours of every object are drawn at random per
  instance from a wide palette, so colour carries no class information (colour-jittered SSL erases colour; the
  default preset's classes are told apart by colour and are therefore unlearnable for it).
- Train rules (``PlantedRules``): a *pair rule* (a, b, s) puts a class-b object touching each class-a object with
  probability s; a *region rule* (c, region, s) puts each class-c object's box centre inside the region with
  probability s (otherwise anywhere, like every other object).
- Objects never overlap, and objects not joined by a pair rule keep ``MIN_GAP`` pixels apart, so two objects touch
  if and only if a pair rule put them there: the rate is measurable from the annotations alone.
- Val: the same classes, uniformly drawn and uniformly placed, no rule.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from sslcli.data.scenes.painting import Scene, SceneObject, background, shape_mask, size_factor
from sslcli.errors import InputError

OBJECTS_PER_IMAGE = (3, 6)  # inclusive range of objects drawn per scene (a fired pair rule on the last draw adds one)
RADIUS_FRACTION = (0.14, 0.26)  # radius of the disc of equal area, as a fraction of the short side (log-uniform);
# large enough that selective search + the SoCo filter (boxes >= 0.3 of the image scale) finds >= 4 boxes per object
DEFAULT_SIZE = 224  # long side: large enough for selective search to find several proposals per object
MIN_GAP = 6  # pixels between objects that no pair rule joins
TOUCH = 2  # two masks "touch" when one, dilated by this many pixels, meets the other (pairs are placed <= 1 px apart)
MIN_CONTRAST = 70  # least luma difference (0-255) between an object's two colours, so its texture stays visible
PLACEMENT_TRIES = 40  # positions tried per object (per partner direction for a pair) before it is left out


# ---------------------------------------------------------------------------------------------------------------
# Textures: weight in [0, 1] mixing the object's two colours, from object-local coordinates (u, v) in units of the
# radius (the pattern turns and scales with its object); ``p`` is the per-instance period.

def _pattern(kind: str, u: np.ndarray, v: np.ndarray, p: float) -> np.ndarray:
    if kind == "stripes":
        w = np.sin(2 * np.pi * u / p) > 0
    elif kind == "checker":
        w = (np.floor(u / p) + np.floor(v / p)) % 2 == 1
    elif kind == "dots":
        du, dv = np.mod(u, p) - p / 2, np.mod(v, p) - p / 2
        w = du * du + dv * dv < (0.32 * p) ** 2
    elif kind == "grid":
        w = (np.abs(np.mod(u, p) - p / 2) < 0.14 * p) | (np.abs(np.mod(v, p) - p / 2) < 0.14 * p)
    elif kind == "rings":
        w = np.sin(2 * np.pi * np.hypot(u, v) / p) > 0
    elif kind == "spokes":
        w = np.sin(max(3, round(2.4 / p)) * np.arctan2(v, u)) > 0
    elif kind == "waves":
        w = np.sin(2 * np.pi * (u + 0.3 * p * np.sin(2 * np.pi * v / (1.5 * p))) / p) > 0
    elif kind == "zigzag":
        tri = np.abs(np.mod(v / p, 1.0) - 0.5)  # triangle wave in v: sharp zigzag stripes along u
        w = np.sin(2 * np.pi * (u + 0.8 * p * tri) / p) > 0
    elif kind == "bricks":
        row_height = 0.6 * p
        row = np.floor(v / row_height)
        along = np.mod(u + (row % 2) * p / 2, p) / p
        w = (np.mod(v / row_height, 1.0) < 0.22) | (along < 0.12)  # mortar lines
    elif kind == "halves":
        w = v > 0
    else:
        raise ValueError(f"unknown pattern {kind!r}")
    return w.astype(np.float32)


@dataclass(frozen=True)
class PlantedClass:
    """One class of the planted preset: a shape and a two-colour texture; the colours are drawn per instance."""

    category_id: int
    name: str
    shape: str
    texture: str


# Each class has its own shape and its own texture; none has a colour.
PLANTED_CLASSES: tuple[PlantedClass, ...] = (
    PlantedClass(1, "striped-disc", "disc", "stripes"),
    PlantedClass(2, "checkered-square", "square", "checker"),
    PlantedClass(3, "dotted-triangle", "triangle", "dots"),
    PlantedClass(4, "wavy-star", "star", "waves"),
    PlantedClass(5, "spoked-ring", "ring", "spokes"),
    PlantedClass(6, "gridded-cross", "cross", "grid"),
    PlantedClass(7, "ringed-ellipse", "ellipse", "rings"),
    PlantedClass(8, "brick-hexagon", "hexagon", "bricks"),
    PlantedClass(9, "zigzag-diamond", "diamond", "zigzag"),
    PlantedClass(10, "two-tone-crescent", "crescent", "halves"),
)
_BY_NAME = {c.name: c for c in PLANTED_CLASSES}
_BY_ID = {c.category_id: c for c in PLANTED_CLASSES}


def planted_categories() -> list[dict]:
    """The COCO ``categories`` list (``supercategory`` = the shape)."""
    return [{"id": c.category_id, "name": c.name, "supercategory": c.shape} for c in PLANTED_CLASSES]


# ---------------------------------------------------------------------------------------------------------------
# Rules.

# Named regions as (x0, y0, x1, y1) fractions of the image width and height.
REGIONS: dict[str, tuple[float, float, float, float]] = {
    "top-left": (0.0, 0.0, 0.5, 0.5), "top-right": (0.5, 0.0, 1.0, 0.5),
    "bottom-left": (0.0, 0.5, 0.5, 1.0), "bottom-right": (0.5, 0.5, 1.0, 1.0),
    "top": (0.0, 0.0, 1.0, 0.5), "bottom": (0.0, 0.5, 1.0, 1.0),
    "left": (0.0, 0.0, 0.5, 1.0), "right": (0.5, 0.0, 1.0, 1.0),
    "centre": (0.25, 0.25, 0.75, 0.75),
}


@dataclass(frozen=True)
class PairRule:
    a: int  # category id of the class that brings a partner
    b: int  # category id of the partner, placed touching it
    strength: float


@dataclass(frozen=True)
class RegionRule:
    category_id: int
    region: str  # a REGIONS name, or "x0,y0,x1,y1" for a custom box
    box: tuple[float, float, float, float]
    strength: float


@dataclass(frozen=True)
class PlantedRules:
    pairs: tuple[PairRule, ...] = ()
    regions: tuple[RegionRule, ...] = ()
    _pair_of: dict = field(default_factory=dict, compare=False, repr=False)
    _region_of: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        self._pair_of.update({r.a: r for r in self.pairs})
        self._region_of.update({r.category_id: r for r in self.regions})

    def pair_of(self, category_id: int) -> PairRule | None:
        return self._pair_of.get(category_id)

    def region_of(self, category_id: int) -> RegionRule | None:
        return self._region_of.get(category_id)

    def to_info(self) -> dict:
        """The ``info.planted`` block of the train annotation file (docs/synthetic.md)."""
        return {
            "pairs": [{"a": r.a, "a_name": _BY_ID[r.a].name, "b": r.b, "b_name": _BY_ID[r.b].name,
                       "strength": r.strength, "placement": "touching"} for r in self.pairs],
            "regions": [{"category_id": r.category_id, "name": _BY_ID[r.category_id].name, "region": r.region,
                         "box": list(r.box), "strength": r.strength} for r in self.regions],
        }


def _class_id(value, where: str) -> int:
    """A class given by id (int or digits) or by name."""
    if isinstance(value, bool):
        raise InputError(f"{where}: {value!r} is not a class (expected an id 1-{len(PLANTED_CLASSES)} or a name)")
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        cid = int(value)
        if cid in _BY_ID:
            return cid
    elif isinstance(value, str) and value.strip() in _BY_NAME:
        return _BY_NAME[value.strip()].category_id
    names = ", ".join(c.name for c in PLANTED_CLASSES)
    raise InputError(f"{where}: unknown class {value!r} (expected an id 1-{len(PLANTED_CLASSES)} or one of {names})")


def _strength(value, where: str) -> float:
    try:
        s = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: strength {value!r} is not a number (expected 0-1)") from None
    if not 0.0 <= s <= 1.0:
        raise InputError(f"{where}: strength {s} is out of range (expected 0-1)")
    return s


def _region(value, where: str) -> tuple[str, tuple[float, float, float, float]]:
    if isinstance(value, str) and value.strip() in REGIONS:
        return value.strip(), REGIONS[value.strip()]
    parts = value if isinstance(value, list | tuple) else str(value).split(",")
    try:
        box = tuple(float(x) for x in parts)
    except (TypeError, ValueError):
        box = ()
    if len(box) != 4 or not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1):
        raise InputError(f"{where}: region {value!r} is not one of {', '.join(REGIONS)} "
                         f"nor x0,y0,x1,y1 fractions with 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1")
    return ",".join(f"{x:g}" for x in box), box


def make_rules(pairs: list[tuple], regions: list[tuple], where: str = "rules") -> PlantedRules:
    """Validated rules from (a, b, strength) and (class, region, strength) tuples (ids or names)."""
    pair_rules, region_rules = [], []
    for k, (a, b, s) in enumerate(pairs):
        here = f"{where}: pair {k + 1}"
        a_id, b_id = _class_id(a, here), _class_id(b, here)
        if a_id == b_id:
            raise InputError(f"{here}: a and b are the same class {a!r} (expected two different classes)")
        if any(r.a == a_id for r in pair_rules):
            raise InputError(f"{here}: class {a!r} already has a pair rule (expected at most one per class)")
        pair_rules.append(PairRule(a_id, b_id, _strength(s, here)))
    for k, (c, region, s) in enumerate(regions):
        here = f"{where}: region {k + 1}"
        cid = _class_id(c, here)
        if any(r.category_id == cid for r in region_rules):
            raise InputError(f"{here}: class {c!r} already has a region rule (expected at most one per class)")
        name, box = _region(region, here)
        region_rules.append(RegionRule(cid, name, box, _strength(s, here)))
    return PlantedRules(tuple(pair_rules), tuple(region_rules))


# The preset's rules: two pairs and two regions; classes 7-10 are under no rule (controls).
DEFAULT_RULES = make_rules(pairs=[(1, 2, 1.0), (3, 4, 0.9)], regions=[(5, "top-left", 1.0), (6, "bottom", 0.9)])


def parse_rule_option(text: str, kind: str) -> tuple:
    """``--pair A,B,STRENGTH`` or ``--region CLASS,REGION,STRENGTH`` (REGION may itself be x0,y0,x1,y1)."""
    parts = [p.strip() for p in text.split(",")]
    if kind == "pair" and len(parts) == 3:
        return tuple(parts)
    if kind == "region" and len(parts) in (3, 6):
        return parts[0], parts[1] if len(parts) == 3 else parts[1:5], parts[-1]
    shape = "A,B,STRENGTH" if kind == "pair" else "CLASS,REGION,STRENGTH"
    raise InputError(f"--{kind} {text!r}: expected {shape}")


def load_rules_file(path: str | Path) -> PlantedRules:
    """Rules from a JSON or YAML file: {pairs: [{a, b, strength}], regions: [{class, region, strength}]}."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())  # YAML is a superset of JSON: one reader for both
    except FileNotFoundError:
        raise InputError(f"--rules {path}: file not found") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"--rules {path}: not readable as JSON/YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or not set(data) <= {"pairs", "regions"}:
        raise InputError(f"--rules {path}: expected a mapping with the keys pairs and/or regions")
    lists = {}
    for key, fields in (("pairs", ("a", "b", "strength")), ("regions", ("class", "region", "strength"))):
        entries = data.get(key) or []
        if not isinstance(entries, list):
            raise InputError(f"--rules {path}: {key} must be a list")
        for k, entry in enumerate(entries):
            if not isinstance(entry, dict) or set(entry) != set(fields):
                raise InputError(f"--rules {path}: {key}[{k}] must have exactly the keys {', '.join(fields)}")
        lists[key] = [tuple(e[f] for f in fields) for e in entries]
    return make_rules(lists["pairs"], lists["regions"], where=f"--rules {path}")


# ---------------------------------------------------------------------------------------------------------------
# Scenes.

def instance_colours(rng: np.random.Generator) -> np.ndarray:
    """Two RGB colours (2, 3) float32 from the whole hue circle, with luma at least MIN_CONTRAST apart."""
    while True:
        hsv = rng.uniform([0.0, 0.15, 0.08], [1.0, 1.0, 1.0], size=(2, 3))
        rgb = np.array([colorsys.hsv_to_rgb(*c) for c in hsv]) * 255
        luma = rgb @ np.array([0.299, 0.587, 0.114])
        if abs(luma[0] - luma[1]) >= MIN_CONTRAST:
            return rgb.astype(np.float32)


@dataclass
class _Draw:
    """One object to place: its class, geometry, and (for a pair) the index of the object it must touch."""

    cls: PlantedClass
    radius: float
    stretch: np.ndarray
    angle: float
    region: tuple[float, float, float, float] | None = None  # box-centre region, when a region rule fired
    partner_of: int | None = None


def _draw_geometry(rng: np.random.Generator, cls: PlantedClass, short: int) -> tuple[float, np.ndarray, float]:
    radius = short * np.exp(rng.uniform(*np.log(RADIUS_FRACTION))) * size_factor(cls.shape)
    stretch = np.exp(rng.uniform(np.log(0.8), np.log(1.25), size=2))
    return radius, stretch, rng.uniform(0, 2 * np.pi)


def _dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    kernel = np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def touching(mask_a: np.ndarray, mask_b: np.ndarray) -> bool:
    """Whether two (H, W) bool masks touch: ``mask_a`` dilated by TOUCH pixels meets ``mask_b``."""
    return bool((_dilate(mask_a, TOUCH) & mask_b).any())


def _box_centre_in(mask: np.ndarray, box: tuple[float, float, float, float]) -> bool:
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return False
    height, width = mask.shape
    cx, cy = (xs.min() + xs.max() + 1) / 2 / width, (ys.min() + ys.max() + 1) / 2 / height
    return box[0] <= cx < box[2] and box[1] <= cy < box[3]


def _place_free(rng, draw: _Draw, height: int, width: int, blocked: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """A position for an object on its own: centre uniform in the frame (box centre in its region, when a region
    rule fired), away from ``blocked``. Returns (mask, centre) or None."""
    for _ in range(PLACEMENT_TRIES):
        if draw.region is None:
            centre = rng.uniform([0, 0], [width, height])
        else:
            x0, y0, x1, y1 = draw.region
            centre = rng.uniform([x0 * width, y0 * height], [x1 * width, y1 * height])
        mask = shape_mask(draw.cls.shape, height, width, centre, draw.radius, draw.stretch, draw.angle)
        if not mask.any() or (mask & blocked).any():
            continue
        if draw.region is not None and not _box_centre_in(mask, draw.region):
            continue
        return mask, centre
    return None


def _place_partner(rng, draw: _Draw, host: np.ndarray, host_centre: np.ndarray, height: int, width: int,
                   blocked: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """A position touching ``host``: move out from the host's centre along a random direction, one pixel at a time,
    until the masks stop overlapping (they are then <= 1 px apart); the centre must stay in the frame."""
    for _ in range(PLACEMENT_TRIES):
        theta = rng.uniform(0, 2 * np.pi)
        step = np.array([np.cos(theta), np.sin(theta)])
        for distance in range(1, 2 * (height + width)):
            centre = host_centre + distance * step
            if not (0 <= centre[0] < width and 0 <= centre[1] < height):
                break
            mask = shape_mask(draw.cls.shape, height, width, centre, draw.radius, draw.stretch, draw.angle)
            if (mask & host).any():
                continue
            if mask.any() and not (mask & blocked).any() and touching(host, mask):
                return mask, centre
            break
    return None


def render_planted_scene(rng: np.random.Generator, size: int, rules: PlantedRules | None) -> Scene:
    """One scene whose long side is ``size`` px; ``rules`` None = the evaluation split (no prior)."""
    short = int(round(size * rng.uniform(0.75, 1.0)))
    height, width = (size, short) if rng.random() < 0.5 else (short, size)
    image = background(rng, height, width)

    # 1. What to draw: classes uniform; a fired pair rule adds its partner right after its host.
    draws: list[_Draw] = []
    n = int(rng.integers(OBJECTS_PER_IMAGE[0], OBJECTS_PER_IMAGE[1] + 1))
    while len(draws) < n:
        cls = PLANTED_CLASSES[rng.integers(len(PLANTED_CLASSES))]
        draw = _Draw(cls, *_draw_geometry(rng, cls, short))
        region = rules.region_of(cls.category_id) if rules else None
        if region is not None and rng.random() < region.strength:
            draw.region = region.box
        draws.append(draw)
        pair = rules.pair_of(cls.category_id) if rules else None
        if pair is not None and rng.random() < pair.strength:
            partner = _BY_ID[pair.b]
            draws.append(_Draw(partner, *_draw_geometry(rng, partner, short), partner_of=len(draws) - 1))

    # 2. Where: pairs first (so they nearly always fit), then the others; what does not fit is left out
    # (a pair as a whole, so that a never appears without b because b did not fit).
    hosts = {d.partner_of for d in draws if d.partner_of is not None}
    order = [i for i in range(len(draws)) if i in hosts] + [i for i in range(len(draws))
                                                            if i not in hosts and draws[i].partner_of is None]
    occupied = np.zeros((height, width), bool)
    placed: list[tuple[_Draw, np.ndarray, np.ndarray]] = []
    for i in order:
        blocked = _dilate(occupied, MIN_GAP) if occupied.any() else occupied
        if i in hosts:
            partner = next(d for d in draws if d.partner_of == i)
            for _ in range(PLACEMENT_TRIES):
                host = _place_free(rng, draws[i], height, width, blocked)
                if host is None:
                    break
                guest = _place_partner(rng, partner, host[0], host[1], height, width, blocked)
                if guest is not None:
                    placed += [(draws[i], *host), (partner, *guest)]
                    occupied |= host[0] | guest[0]
                    break
        else:
            spot = _place_free(rng, draws[i], height, width, blocked)
            if spot is not None:
                placed.append((draws[i], *spot))
                occupied |= spot[0]

    # 3. Paint: each object's two colours drawn now, from the wide palette.
    for draw, mask, centre in placed:
        _paint_pattern(image, mask, draw, centre, rng)
    image += rng.normal(0, 3, size=image.shape).astype(np.float32)  # sensor noise: no perfectly flat regions
    objects = [SceneObject(draw.cls.category_id, mask, mask.copy()) for draw, mask, _ in placed]
    return Scene(np.clip(image + 0.5, 0, 255).astype(np.uint8), objects)


def _paint_pattern(image: np.ndarray, mask: np.ndarray, draw: _Draw, centre: np.ndarray,
                   rng: np.random.Generator) -> None:
    ys, xs = np.nonzero(mask)
    dx, dy = xs - centre[0], ys - centre[1]
    c, s = np.cos(draw.angle), np.sin(draw.angle)
    u = (c * dx + s * dy) / (draw.radius * draw.stretch[0])  # inverse rotation, then unit radius
    v = (-s * dx + c * dy) / (draw.radius * draw.stretch[1])
    weight = _pattern(draw.cls.texture, u, v, p=rng.uniform(0.3, 0.6))[:, None]
    colours = instance_colours(rng)
    colours = np.clip(colours * rng.uniform(0.85, 1.15) + rng.uniform(-12, 12, size=3), 0, 255)  # lighting
    image[ys, xs] = (1 - weight) * colours[0] + weight * colours[1]
