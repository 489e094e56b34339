"""The device pipeline for DetCon, SoCo and D3SSL, run on CPU tensors: label maps against torchvision's nearest resize
and DetCon's own grid, crop windows against independent samplers, painted-id images (masks and boxes follow the
pixels), the device views against the CPU path on the same draws, and the engine wiring."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import stats
from torchvision import transforms as T
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from sslcli.data.readers.images import EncodedImage
from sslcli.data.views.colour import IMAGENET_MEAN, IMAGENET_STD, ColourAug
from sslcli.data.views.label_maps import MaskSource
from sslcli.data.views.regions import RegionViews, cutout_in_boxes
from sslcli.data.views.stored_boxes import StoredBoxViews
from sslcli.engine.data import collate
from sslcli.method_registry import import_target, method_entry
from sslcli.methods.d3ssl.views import D3sslDeviceViews, D3sslViews, shift_views
from sslcli.methods.detcon.views import (
    DetconTransform,
    MaskDeviceViews,
    MaskViewPair,
    crop_label_maps,
    label_grid,
    label_grids,
)
from sslcli.methods.soco.views import BoxDeviceViews, zero_rects

CPU = torch.device("cpu")
NO_COLOUR = ColourAug(jitter_p=0.0, gray_p=0.0, blur_p=0.0)
MEAN, STD = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
# Painted objects: distinct saturated colours on grey, far apart so that resizing blends only along their edges.
PALETTE = np.array([[128, 128, 128], [230, 30, 30], [30, 200, 40], [40, 60, 230], [240, 220, 20], [200, 40, 220],
                    [20, 210, 210], [250, 140, 0], [0, 0, 0], [255, 255, 255]], np.uint8)


def _unnormalise(view: torch.Tensor) -> torch.Tensor:
    return (view * STD + MEAN) * 255


def _classify(view: torch.Tensor) -> torch.Tensor:
    """(3, h, w) normalised view → (h, w) index of the nearest palette colour."""
    pixels = _unnormalise(view).permute(1, 2, 0).reshape(-1, 1, 3)
    return (pixels - torch.from_numpy(PALETTE).float()).norm(dim=-1).argmin(-1).view(view.shape[1:])


def _png(path: Path, pixels: np.ndarray) -> EncodedImage:
    Image.fromarray(pixels).save(path)
    return EncodedImage.read(path)


# ------------------------------------------------------------------------------------------------------ label maps
def test_crop_label_maps_equal_torchvision_nearest_resize_and_flip():
    gen = torch.Generator().manual_seed(0)
    maps, boxes, flips, refs = [], [], [], []
    for h, w, box in ((48, 64, (5, 3, 61, 40)), (30, 20, (0, 0, 20, 30)), (50, 70, (10, 11, 17, 50)),
                      (40, 40, (2, 2, 39, 9)), (33, 57, (20, 1, 57, 33))):
        m = torch.randint(0, 9, (h, w), generator=gen, dtype=torch.int32)
        flip = len(maps) % 2 == 1
        x0, y0, x1, y1 = box
        ref = TF.resized_crop(tv_tensors.Mask(m.long()), y0, x0, y1 - y0, x1 - x0, [24, 24])
        refs.append(TF.horizontal_flip(ref) if flip else ref)
        maps.append(m)
        boxes.append(box)
        flips.append(flip)
    got = crop_label_maps(maps, torch.tensor(boxes, dtype=torch.float32), 24, torch.tensor(flips), CPU)
    assert torch.equal(got, torch.stack([r.as_subclass(torch.Tensor) for r in refs]))


@pytest.mark.parametrize("side,n", [(64, 2), (112, 4), (97, 4), (30, 7)])
def test_label_grids_are_the_argmax_of_average_pooled_one_hot_masks(side, n):
    """The batched grids (both pipelines' one implementation: the CPU's `label_grid` is a batch of one) against the
    definition: adaptive_avg_pool2d of each id's one-hot mask, argmax over ids (ties: the first, smallest id)."""
    gen = torch.Generator().manual_seed(side)
    maps = torch.randint(0, 4, (6, side, side), generator=gen)
    maps[0] = 3  # one id everywhere
    maps[1, :, : side // 2], maps[1, :, side // 2:] = 2, 1  # halves: ties inside the middle windows
    maps[2] = torch.arange(side)[None, :] % 5  # stripes
    got = label_grids(maps, n)
    for label_map, grid in zip(maps, got, strict=True):
        ids = torch.unique(label_map)
        one_hot = (label_map[None] == ids[:, None, None]).float()
        assert torch.equal(grid, ids[F.adaptive_avg_pool2d(one_hot[None], n)[0].argmax(0)])
    assert torch.equal(label_grid(maps[1], n), got[1])  # the CPU path's call


# ------------------------------------------------------------------------------------------------------------ DetCon
def _detcon(size=64, sampler="authors", variant="S", grid=3) -> MaskDeviceViews:
    return MaskDeviceViews(DetconTransform(MaskSource("grid", grid=grid), MaskViewPair(size, variant, crop_sampler=sampler),
                                           grid_side=-(-size // 32)))  # the ImageNet stem's res5: ⌈size/32⌉


def test_each_region_method_registers_its_own_device_views():
    assert import_target(method_entry("detcon").device_views) is MaskDeviceViews
    assert import_target(method_entry("soco").device_views) is BoxDeviceViews
    assert import_target(method_entry("d3ssl").device_views) is D3sslDeviceViews


N = 3000


@pytest.mark.parametrize("sampler", ["authors", "torchvision"])
def test_detcon_crop_windows_follow_the_cpu_samplers(sampler):
    dv = _detcon(sampler=sampler)
    torch.manual_seed(0)
    boxes = torch.cat([torch.tensor([dv._window(480, 640) for _ in range(N)], dtype=torch.float32)])
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    rng = np.random.default_rng(1)
    if sampler == "torchvision":
        torch.manual_seed(1)
        ref = [T.RandomResizedCrop.get_params(torch.empty(3, 480, 640), [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(N)]
        rh, rw = np.array([r[2] for r in ref], float), np.array([r[3] for r in ref], float)
    else:  # DetCon's get_random_crop_window, re-derived: one draw, w and h clipped to the image
        area = 480 * 640 * rng.uniform(0.08, 1.0, N)
        ratio = np.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3), N))
        rw = np.clip(np.round(np.sqrt(area * ratio)), 1, 640)
        rh = np.clip(np.round(np.sqrt(area / ratio)), 1, 480)
    assert stats.ks_2samp((w * h).numpy(), rw * rh).pvalue > 1e-4
    assert stats.ks_2samp((w / h).log().numpy(), np.log(rw / rh)).pvalue > 1e-4
    assert ((boxes[:, 0] >= 0) & (boxes[:, 2] <= 640) & (boxes[:, 1] >= 0) & (boxes[:, 3] <= 480)).all()


def test_detcon_flip_rate_and_byol_colour_rates():
    from sslcli.data.views.colour import BLUR_ON, SOLARIZE

    dv = _detcon(variant="B")
    image = EncodedImage(Path("x.jpg"), b"", height=48, width=64, is_jpeg=True)
    torch.manual_seed(0)
    out = [dv({"image": image, "index": i, "image_id": i}) for i in range(N)]
    flips = torch.stack([o["flips"] for o in out]).float()
    colour = torch.stack([o["colour"] for o in out])
    assert stats.binomtest(int(flips.sum()), flips.numel(), 0.5).pvalue > 1e-4
    for view, blur_p, solarize_p in ((0, 1.0, 0.0), (1, 0.1, 0.2)):  # BYOL's presets (DetCon_B)
        for column, p in ((BLUR_ON, blur_p), (SOLARIZE, solarize_p)):
            hits = int(colour[:, view, column].sum())
            assert (hits == N * p) if p in (0.0, 1.0) else stats.binomtest(hits, N, p).pvalue > 1e-4


def _painted_grid(tmp_path: Path, height: int, width: int, grid: int) -> tuple[EncodedImage, np.ndarray]:
    """An image painted with the grid mask source's label map: id k → PALETTE[k + 1]."""
    from sslcli.data.views.label_maps import grid_label_map

    ids = grid_label_map(height, width, grid)
    return _png(tmp_path / "grid.png", PALETTE[1 + ids % (len(PALETTE) - 1)]), ids


def test_detcon_masks_follow_the_pixels_on_a_painted_image(tmp_path):
    dv = _detcon(size=112, grid=3)
    dv.colours = (NO_COLOUR, NO_COLOUR)
    image, ids = _painted_grid(tmp_path, 96, 128, 3)
    torch.manual_seed(0)
    samples = [dv({"image": image, "index": i, "image_id": 0}) for i in range(8)]
    batch = collate(samples)
    out = dv.apply(batch, CPU)
    assert out["views"].shape == (8, 2, 3, 112, 112) and out["masks"].shape == (8, 2, 4, 4)
    assert batch["flips"].any() and not batch["flips"].all()
    for j in range(2):
        full = crop_label_maps(batch["label_map"], batch["boxes"][:, j], 112, batch["flips"][:, j], CPU)
        for i in range(8):
            painted = _classify(out["views"][i, j]) - 1  # the id each view pixel shows
            # Every pixel but those on resampled edges shows its mask id; a mirrored or shifted mask fails this
            assert (painted == full[i] % (len(PALETTE) - 1)).float().mean() > 0.95
            assert torch.equal(out["masks"][i, j], label_grid(full[i], 4))


def _both_paths(transform, dv, image, seeds: int):
    """(cpu, device) outputs of one image for each seed: both paths start every draw from the same torch seed."""
    pixels = np.asarray(Image.open(image.path).convert("RGB"))
    for seed in range(seeds):
        torch.manual_seed(seed)
        cpu = transform({"image": pixels, "index": 0, "image_id": 0})
        torch.manual_seed(seed)
        yield cpu, dv.apply(collate([dv({"image": image, "index": 0, "image_id": 0})]), CPU)


def test_detcon_device_views_equal_the_cpu_path_on_the_same_draws(tmp_path):
    """Colour off, so both paths draw only the windows and flips, in the same order: same masks, views within
    resampling rounding (the CPU path resizes uint8 with torchvision's kernel)."""
    pair = MaskViewPair(64, "S", crop_sampler="authors")
    pair._pipelines = (pair._build()[0], [_normalise_only] * 2)  # colour off on the CPU path too
    transform = DetconTransform(MaskSource("grid", grid=3), pair, grid_side=2)  # 64 px / 32
    dv = MaskDeviceViews(transform)
    dv.colours = (NO_COLOUR, NO_COLOUR)
    image, ids = _painted_grid(tmp_path, 60, 80, 3)
    for cpu, dev in _both_paths(transform, dv, image, 4):
        assert torch.equal(dev["masks"][0], cpu["masks"])
        # Bicubic: torch's uint8 kernel (the CPU path) rounds and clamps between its horizontal and vertical passes,
        # the device path (float, = torchvision's float resize exactly) does not: up to 12 levels apart on the
        # painted edges where bicubic overshoots, equal elsewhere
        diff = ((dev["views"][0] - cpu["views"]) * STD).abs() * 255
        assert diff.mean() < 0.5 and diff.max() <= 13


def _normalise_only(x: torch.Tensor) -> torch.Tensor:
    return TF.normalize(x.float() / 255 if x.dtype == torch.uint8 else x, IMAGENET_MEAN, IMAGENET_STD)


# ------------------------------------------------------------------------------------------------------- SoCo, D3SSL
class FakeStore:
    """A box store holding one image's proposals."""

    path = "fake.h5"

    def __init__(self, boxes: np.ndarray, height: int, width: int):
        self._boxes, self._size = boxes, (height, width)

    def boxes(self, image_id):
        return self._boxes

    def image_size(self, image_id):
        return self._size


OBJECTS = np.array([[8, 6, 48, 40], [70, 10, 120, 44], [12, 56, 60, 92], [76, 54, 118, 90]], np.float32)


def _painted_objects(tmp_path: Path) -> EncodedImage:
    pixels = np.broadcast_to(PALETTE[0], (96, 128, 3)).copy()
    for k, (x0, y0, x1, y1) in enumerate(OBJECTS.astype(int)):
        pixels[y0:y1, x0:x1] = PALETTE[k + 1]
    return _png(tmp_path / "objects.png", pixels)


def _soco(recipe: str, padding: str = "authors", k: int = 3) -> BoxDeviceViews:
    views = RegionViews(64, k, (0.4, 1.0), colours=(NO_COLOUR, NO_COLOUR), recipe=recipe, padding=padding)
    return BoxDeviceViews(StoredBoxViews(FakeStore(OBJECTS, 96, 128), views))


def _box_colour(view: torch.Tensor, box: torch.Tensor) -> int | None:
    """The palette index that fills the central half of ``box`` in ``view`` (None when the box is too small)."""
    x0, y0, x1, y1 = box.tolist()
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 4, (y1 - y0) / 4
    if w < 1 or h < 1:
        return None
    colours = _classify(view)[int(cy - h):int(cy + h) + 1, int(cx - w):int(cx + w) + 1].flatten()
    return int(torch.mode(colours).values)


@pytest.mark.parametrize("recipe", ["paper", "c4-code", "fpn-code"])
def test_soco_boxes_follow_the_pixels_on_a_painted_image(recipe, tmp_path):
    from sslcli.methods.soco.method import SET_VIEWS, VIEW_KEYS

    dv = _soco(recipe)
    dv.views.cutout_p = 0.0  # cutouts would blank the centres the test reads
    image = _painted_objects(tmp_path)
    torch.manual_seed(0)
    batch = collate([dv({"image": image, "index": i, "image_id": 0}) for i in range(6)])
    out = dv.apply(batch, CPU)
    checked = 0
    for i in range(6):
        colours = []
        for p, v in enumerate(SET_VIEWS[recipe]):
            colours.append([_box_colour(out[VIEW_KEYS[v]][i], b) for b in out["boxes"][i, p]])
        for p, q in ((0, 1), (0, 2)) if recipe == "paper" else ((0, 1), (2, 3)) if recipe == "fpn-code" else ((0, 1),):
            for a in range(out["boxes"].shape[2]):  # every slot of set p and the same proposal's slots in set q
                for b in range(out["boxes"].shape[2]):
                    if out["box_ids"][i, p, a] != out["box_ids"][i, q, b]:
                        continue
                    ca, cb = colours[p][a], colours[q][b]
                    if ca is not None and cb is not None:
                        assert ca == cb and ca > 0, (recipe, i, p, a, q, b)  # one painted object in both views
                        checked += 1
    assert checked >= 6


@pytest.mark.parametrize("recipe", ["paper", "c4-code", "fpn-code"])
def test_soco_device_views_equal_the_cpu_path_on_the_same_draws(recipe, tmp_path):
    """Colour off, so both paths draw the same geometry and cutouts in the same order."""
    dv = _soco(recipe, padding="slots")
    transform = StoredBoxViews(dv.store, dv.views)
    for cpu, dev in _both_paths(transform, dv, _painted_objects(tmp_path), 3):
        assert set(dev) == set(cpu)
        assert torch.equal(dev["boxes"][0], cpu["boxes"]) and torch.equal(dev["box_ids"][0], cpu["box_ids"])
        for key in ("view1", "view2", "view3"):
            if key in cpu:
                assert dev[key].shape[1:] == cpu[key].shape
                assert (dev[key][0] - cpu[key]).abs().max() < 2.5 / 255 / min(IMAGENET_STD), key


def test_zero_rects_equals_cutout_in_boxes():
    view = torch.randn(3, 32, 32)
    boxes = torch.tensor([[2.0, 3.0, 20.0, 30.0], [10.0, 0.0, 31.0, 12.0], [0.0, 0.0, 32.0, 32.0]])
    torch.manual_seed(5)
    ref = cutout_in_boxes(view, boxes, 1.0, (0.1, 0.3))
    torch.manual_seed(5)
    from sslcli.data.views.regions import cutout_rects

    rects = cutout_rects(boxes, 1.0, (0.1, 0.3), 32)
    assert torch.equal(zero_rects(view[None], rects[None])[0], ref) and not torch.equal(ref, view)


def test_shift_views_equals_torch_roll():
    views = torch.randn(3, 3, 8, 10)
    shifts = torch.tensor([[2, -3], [0, 0], [-9, 7]])
    got = shift_views(views, shifts)
    for n, (tx, ty) in enumerate(shifts.tolist()):
        assert torch.equal(got[n], torch.roll(views[n], shifts=(ty, tx), dims=(1, 2)))


@pytest.mark.parametrize("fill,decoupling,depositioning", [("mean", True, True), ("noise", True, True),
                                                           ("zero", False, True), ("mean", True, False)])
def test_d3ssl_device_views_equal_the_cpu_path_on_the_same_draws(fill, decoupling, depositioning, tmp_path):
    """Colour off: the same torch and numpy draws in both paths, so the same boxes, holes, PRM masks and shift."""
    d3 = D3sslViews(64, 3, prc_fill=fill, decoupling=decoupling, depositioning=depositioning)
    d3.regions = RegionViews(64, 3, tuple(d3.crop_scale), jitter_p=0.0, colours=(NO_COLOUR, NO_COLOUR))
    transform = StoredBoxViews(FakeStore(OBJECTS, 96, 128), d3)
    dv = D3sslDeviceViews(transform)
    for cpu, dev in _both_paths(transform, dv, _painted_objects(tmp_path), 3):
        assert set(dev) == set(cpu)
        for key, value in cpu.items():
            if value.dtype == torch.bool or key.endswith("boxes"):  # boxes, depositioned_boxes: exact
                assert torch.equal(dev[key][0], value), key
            else:
                assert (dev[key][0] - value).abs().max() < 2.5 / 255 / min(IMAGENET_STD), key


def test_d3ssl_boxes_follow_the_pixels_on_a_painted_image(tmp_path):
    d3 = D3sslViews(64, 3, decoupling=False)
    d3.regions = RegionViews(64, 3, tuple(d3.crop_scale), jitter_p=0.0, colours=(NO_COLOUR, NO_COLOUR))
    dv = D3sslDeviceViews(StoredBoxViews(FakeStore(OBJECTS, 96, 128), d3))
    image = _painted_objects(tmp_path)
    torch.manual_seed(0)
    out = dv.apply(collate([dv({"image": image, "index": i, "image_id": 0}) for i in range(6)]), CPU)
    checked = 0
    for i in range(6):
        for k in range(3):  # slot k is the same proposal in x1, x2, x2s (slots padding) and in x3 (shifted x2)
            found = [_box_colour(out[key][i], out["boxes"][i, p, k]) for key, p in
                     (("view1", 0), ("view2", 1), ("view2s", 2))]
            found.append(_box_colour(out["depositioned_foreground"][i], out["depositioned_boxes"][i, k]))
            found = [c for c in found if c is not None]
            assert len(set(found)) <= 1 and all(c > 0 for c in found), (i, k, found)
            checked += len(found)
    assert checked >= 30


# ------------------------------------------------------------------------------------------------------ the engine
@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """12 synthetic images with a selective-search box store, made through the CLI."""
    from typer.testing import CliRunner

    from sslcli.cli import app
    from sslcli.data.scenes.synthetic import generate

    root = tmp_path_factory.mktemp("regions") / "data"
    generate(root, n_train=12, n_val=0, seed=0, size=64)
    result = CliRunner().invoke(app, ["prepare", "boxes", str(root)])
    assert result.exit_code == 0, result.stderr
    return root


@pytest.mark.parametrize("method", [{"name": "detcon", "masks": {"kind": "grid", "grid": 3}},
                                    {"name": "soco", "recipe": "fpn-code"}, {"name": "d3ssl", "bank_size": 64}])
def test_pretrain_runs_every_region_method_with_the_device_pipeline(method, dataset, tmp_path):
    from sslcli.engine.launch import launch
    from sslcli.spec import parse_spec

    boxes = {} if method["name"] == "detcon" else {"boxes": str(dataset / "sslcli" / "ss-soco.h5")}
    spec = parse_spec({"data": {"root": str(dataset), "image_size": 64, "workers": 0, "pin_memory": False,
                                "pipeline": "gpu"},
                       "model": {"arch": "resnet18", "width": 8, "c4": method["name"] != "detcon"},
                       "method": {**method, **boxes, "dim": 16, "hidden_dim": 32},
                       "optimizer": {"name": "lars", "base_lr": 1.0, "weight_decay": 1e-5},
                       "batch_size": 4, "epochs": 1, "max_steps": 2, "precision": "fp32",
                       "output_dir": str(tmp_path / "run")})
    result = launch(spec)
    assert result["steps"] == 2 and np.isfinite(result["final_loss"])
