"""The device pipeline (data.pipeline: gpu) run on CPU tensors: parameter distributions against torchvision's
samplers, pixels against torchvision's functional ops, EXIF orientation against PIL, and the engine wiring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from torchvision import transforms as T
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from sslcli.data.color import BYOL, IMAGENET_MEAN, IMAGENET_STD, MOCO_V2, ColorAug, blur_kernel_size
from sslcli.data.device_views import (
    BLUR_ON,
    FACTORS,
    GRAY,
    JITTER_ON,
    N_COLOUR_PARAMS,
    ORDER,
    SIGMA,
    SOLARIZE,
    DeviceViews,
    apply_colour,
    decode_batch,
    orient,
    resize_weights,
    resized_crops,
    sample_colour_params,
)
from sslcli.data.images import EncodedImage, load_image
from sslcli.data.transforms import CropViews, crop_resize
from sslcli.engine.data import build_loader, collate
from sslcli.errors import InputError
from sslcli.spec import parse_spec

N = 3000  # draws per distribution test; KS p-values below 1e-4 fail (a wrong range or rate gives p ≈ 0)
HEADER_ONLY = EncodedImage(Path("x.jpg"), b"", height=480, width=640, is_jpeg=True)


def _draws(views: CropViews, n: int = N) -> list[dict]:
    dv = DeviceViews(views)
    torch.manual_seed(0)
    return [dv({"image": HEADER_ONLY, "index": i}) for i in range(n)]


def test_crop_area_and_aspect_follow_torchvision_random_resized_crop():
    out = _draws(CropViews(224, (0.2, 1.0), (MOCO_V2, MOCO_V2)))
    boxes = torch.stack([o["boxes"] for o in out]).view(-1, 4)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    torch.manual_seed(1)
    ref = [T.RandomResizedCrop.get_params(torch.empty(3, 480, 640), [0.2, 1.0], [3 / 4, 4 / 3]) for _ in range(2 * N)]
    rh, rw = torch.tensor([r[2] for r in ref]).float(), torch.tensor([r[3] for r in ref]).float()
    assert stats.ks_2samp((w * h / (640 * 480)).numpy(), (rw * rh / (640 * 480)).numpy()).pvalue > 1e-4
    assert stats.ks_2samp((w / h).log().numpy(), (rw / rh).log().numpy()).pvalue > 1e-4
    assert ((boxes[:, 0] >= 0) & (boxes[:, 2] <= 640) & (boxes[:, 1] >= 0) & (boxes[:, 3] <= 480)).all()


def test_flip_rate_is_one_half():
    flips = torch.stack([o["flips"] for o in _draws(CropViews(64, (0.2, 1.0), (MOCO_V2, MOCO_V2)))]).float()
    assert abs(flips.mean().item() - 0.5) < 4 * (0.25 / flips.numel()) ** 0.5


def _rate_ok(values: torch.Tensor, p: float) -> bool:
    return abs(values.float().mean().item() - p) < 4 * (p * (1 - p) / len(values)) ** 0.5 + 1e-9


def test_colour_parameters_follow_torchvision():
    aug = MOCO_V2
    torch.manual_seed(0)
    p = torch.stack([sample_colour_params(aug) for _ in range(N)])
    assert _rate_ok(p[:, JITTER_ON], aug.jitter_p)
    assert _rate_ok(p[:, GRAY], aug.gray_p) and _rate_ok(p[:, BLUR_ON], aug.blur_p)
    assert (p[:, SOLARIZE] == 0).all()  # MoCo-v2: no solarize
    on = p[:, JITTER_ON] > 0.5
    torch.manual_seed(1)
    ref = [T.ColorJitter.get_params([0.6, 1.4], [0.6, 1.4], [0.6, 1.4], [-0.1, 0.1]) for _ in range(N)]
    for k in range(4):  # brightness, contrast, saturation, hue factors
        assert stats.ks_2samp(p[on, FACTORS][:, k].numpy(), np.array([r[k + 1] for r in ref])).pvalue > 1e-4
    order = p[on, ORDER].long()
    for position in range(4):  # each adjustment equally likely at each position (a uniform permutation)
        counts = torch.bincount(order[:, position], minlength=4).numpy()
        assert stats.chisquare(counts).pvalue > 1e-4
    sigma = p[p[:, BLUR_ON] > 0.5, SIGMA]
    assert stats.kstest(sigma.numpy(), stats.uniform(0.1, 1.9).cdf).pvalue > 1e-4
    byol2 = torch.stack([sample_colour_params(BYOL[1]) for _ in range(N)])
    assert _rate_ok(byol2[:, SOLARIZE], 0.2) and _rate_ok(byol2[:, BLUR_ON], 0.1)


def _torchvision_colour(x: torch.Tensor, row: torch.Tensor, kernel: int) -> torch.Tensor:
    """The same fixed parameters through torchvision's functional ops, one image at a time."""
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    if row[JITTER_ON] > 0.5:
        for op in row[ORDER].long().tolist():
            x = ops[op](x, float(row[FACTORS][op]))
    if row[GRAY] > 0.5:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    if row[BLUR_ON] > 0.5:
        x = TF.gaussian_blur(x, [kernel, kernel], [float(row[SIGMA])] * 2)
    if row[SOLARIZE] > 0.5:
        x = TF.solarize(x, 0.5)
    return TF.normalize(x, IMAGENET_MEAN, IMAGENET_STD)


def test_fixed_colour_parameters_equal_torchvision_functional_ops():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 40, 40, generator=gen)
    x[5] = 0.5  # a flat grey image: hue and saturation of equal channels
    rows = torch.zeros(6, N_COLOUR_PARAMS)
    rows[:, ORDER] = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1], [0, 1, 2, 3], [3, 0, 1, 2]])
    rows[:, FACTORS] = torch.tensor([[1.3, 0.7, 1.2, 0.08], [0.6, 1.4, 0.6, -0.1], [1.0, 1.0, 1.0, 0.5],
                                     [0.9, 1.1, 0.0, -0.3], [1.0, 1.0, 1.0, 0.0], [1.2, 0.8, 1.3, 0.05]])
    rows[:, JITTER_ON] = torch.tensor([1, 1, 1, 1, 0, 1])
    rows[:, GRAY] = torch.tensor([0, 0, 1, 0, 1, 0])
    rows[:, BLUR_ON] = torch.tensor([1, 0, 1, 0, 1, 1])
    rows[:, SIGMA] = torch.tensor([0.1, 0.0, 2.0, 0.0, 1.3, 0.7])
    rows[:, SOLARIZE] = torch.tensor([0, 1, 0, 1, 1, 0])
    kernel = blur_kernel_size(40)
    out = apply_colour(x, rows, kernel)
    ref = torch.stack([_torchvision_colour(x[i], rows[i], kernel) for i in range(6)])
    # float32 rounding only (measured ≤ 6e-6 in normalised units); a wrong op order or a factor off by 0.01 gives > 4e-2
    assert torch.allclose(out, ref, atol=2e-5, rtol=0), (out - ref).abs().max()


@pytest.mark.parametrize("bicubic", [False, True])
def test_resized_crops_equal_torchvision_antialiased_resize(bicubic):
    gen = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8)
              for h, w in [(48, 64), (60, 40), (33, 33), (64, 64)]]
    # down-scaling, non-square, up-scaling (10 px → 16/24), nearly the whole image
    boxes = torch.tensor([[0, 0, 64, 48], [5, 7, 30, 50], [10, 3, 20, 13], [1, 2, 63, 40]])
    flips = torch.tensor([False, True, False, True])
    mode = TF.InterpolationMode.BICUBIC if bicubic else TF.InterpolationMode.BILINEAR
    for size in (16, 24):
        out = resized_crops(images, boxes, size, flips, bicubic)
        for i, img in enumerate(images):
            x0, y0, x1, y1 = boxes[i].tolist()
            wy = resize_weights(boxes[i:i + 1, 1], boxes[i:i + 1, 3] - y0, size, img.shape[1], bicubic)[0]
            wx = resize_weights(boxes[i:i + 1, 0], boxes[i:i + 1, 2] - x0, size, img.shape[2], bicubic)[0]
            exact = wy @ img.float() @ wx.T  # before rounding
            ref = TF.resize(img[:, y0:y1, x0:x1].float(), [size, size], mode, antialias=True)
            assert torch.allclose(exact, ref, atol=2e-3, rtol=0), (exact - ref).abs().max()  # float32 rounding
            expected = ref.clamp(0, 255).round()
            got = out[i].flip(-1) if flips[i] else out[i]
            assert (got - expected).abs().max() <= 1  # ties of the final rounding only


def test_resized_crops_chunk_large_batches(monkeypatch):
    import sslcli.data.device_views as dv

    images = [torch.full((3, 20 + i, 30), i, dtype=torch.uint8) for i in range(5)]
    boxes = torch.tensor([[0, 0, 30, 20]] * 5)
    whole = resized_crops(images, boxes, 8, torch.zeros(5, dtype=torch.bool), False)
    monkeypatch.setattr(dv, "PAD_BUDGET", 2 * 24 * 30)  # two images per chunk at most
    chunked = resized_crops(images, boxes, 8, torch.zeros(5, dtype=torch.bool), False)
    assert torch.equal(whole, chunked) and torch.equal(whole[:, 0, 0, 0], torch.arange(5.0))


@pytest.mark.parametrize("orientation, method", [
    (2, Image.Transpose.FLIP_LEFT_RIGHT), (3, Image.Transpose.ROTATE_180), (4, Image.Transpose.FLIP_TOP_BOTTOM),
    (5, Image.Transpose.TRANSPOSE), (6, Image.Transpose.ROTATE_270), (7, Image.Transpose.TRANSVERSE),
    (8, Image.Transpose.ROTATE_90)])
def test_exif_orientation_matches_pil(orientation, method):
    arr = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(arr).transpose(method))  # PIL's exif_transpose table
    got = orient(torch.from_numpy(arr).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
    assert np.array_equal(got, expected)


def test_exif_rotated_jpeg_decodes_as_load_image(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rot.jpg"
    Image.fromarray(arr).save(path, quality=95, exif=exif.tobytes())
    enc = EncodedImage.read(path)
    assert (enc.height, enc.width, enc.orientation) == (40, 24, 6)
    img = decode_batch([torch.frombuffer(bytearray(enc.data), dtype=torch.uint8)], [True], [6], [str(path)],
                       [(40, 24)], torch.device("cpu"))[0]
    full = load_image(path)  # OpenCV applies the orientation
    assert full.shape == (40, 24, 3)
    assert np.abs(img.permute(1, 2, 0).numpy().astype(int) - full.astype(int)).mean() < 2.0


def test_views_match_the_cpu_path_for_the_same_crops(coco_data):
    no_colour = ColorAug(jitter_p=0.0, gray_p=0.0, blur_p=0.0)
    views = CropViews(64, (0.2, 1.0), (no_colour, no_colour), small_size=32, n_small=2)
    dv = DeviceViews(views)
    paths = sorted((coco_data / "train2017").glob("*.jpg"))[:4]
    torch.manual_seed(0)
    samples = [dv({"image": EncodedImage.read(p), "index": i}) for i, p in enumerate(paths)]
    out = dv.apply(collate(samples), torch.device("cpu"))
    assert out["views"].shape == (4, 2, 3, 64, 64) and out["small"].shape == (4, 2, 3, 32, 32)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    for i, path in enumerate(paths):
        image = torch.from_numpy(load_image(path)).permute(2, 0, 1)
        for j in range(4):
            box = tuple(samples[i]["boxes"][j].long().tolist())
            ref = crop_resize(image, box, 64 if j < 2 else 32, bool(samples[i]["flips"][j])).float() / 255
            got = (out["views"][i, j] if j < 2 else out["small"][i, j - 2]) * std + mean
            # Same decoded pixels (torchvision's and OpenCV's libjpeg agree on these files); the resize differs from
            # torchvision's uint8 CPU kernel by rounding ties only (≤ 1 level; measured mean |Δ| ≤ 4.2e-4); the bound
            # leaves room for other libjpeg builds; a mirrored crop differs by ≥ 0.07
            assert (got - ref).abs().mean() < 0.005
            assert (got - ref).abs().max() <= 1.5 / 255


def _spec(tmp_path: Path, root: Path, **data) -> dict:
    return {"data": {"root": str(root), "format": "coco", "image_size": 32, "workers": 0, "pin_memory": False,
                     "pipeline": "gpu", **data},
            "model": {"arch": "resnet18", "width": 8}, "method": {"name": "moco", "queue_size": 32, "dim": 8,
                                                                  "hidden_dim": 16},
            "batch_size": 4, "epochs": 1, "max_steps": 2, "output_dir": str(tmp_path / "run")}


def test_unsupported_methods_are_refused_naming_the_field(tmp_path, monkeypatch):
    from dataclasses import replace

    from sslcli.method_registry import REGISTRY

    base = _spec(tmp_path, tmp_path)
    # Every built-in method has device views; a registered method without them (a plugin) is refused.
    monkeypatch.setitem(REGISTRY, "detcon", replace(REGISTRY["detcon"], gpu_pipeline=False))
    with pytest.raises(InputError, match="data.pipeline: 'gpu' runs the views of moco, simclr, byol, soco, d3ssl, densecl, pixpro; "
                                         "method detcon needs data.pipeline: cpu"):
        parse_spec({**base, "method": {"name": "detcon"}})
    with pytest.raises(InputError, match="has no device views for this method's transform"):
        DeviceViews(object())
    with pytest.raises(InputError, match="data.pipeline: 'gpu' does not run A\\+"):
        parse_spec({**base, "method": {"name": "moco", "queue_size": 32, "aplus": {"enabled": True}}})
    with pytest.raises(InputError, match="data.pipeline"):
        parse_spec({**base, "data": {"root": "d", "pipeline": "tpu"}})


def test_engine_loader_yields_device_views_reproducibly(tmp_path, coco_data):
    from sslcli.methods.moco import moco_views

    spec = parse_spec(_spec(tmp_path, coco_data))
    loader, sampler = build_loader(spec, moco_views(spec), rank=0, world_size=1, start_epoch=0, pin_memory=False)
    sampler.set_epoch(0)
    first = next(iter(loader))
    again = next(iter(loader))
    assert first["views"].shape == (4, 2, 3, 32, 32) and first["views"].dtype == torch.float32
    assert torch.equal(first["views"], again["views"]) and torch.equal(first["index"], again["index"])
    assert first["_skipped"] == []


def test_pretrain_runs_with_the_device_pipeline_on_cpu(tmp_path, coco_data):
    from sslcli.engine.launch import launch

    result = launch(parse_spec(_spec(tmp_path, coco_data)))
    assert result["steps"] == 2 and np.isfinite(result["final_loss"])


def test_reference_sampler_has_the_cpu_paths_ranges():
    """The ranges given to the reference sampler above are those of the CPU path's v2.ColorJitter(0.4, 0.4, 0.4, 0.1)."""
    cj = v2.ColorJitter(0.4, 0.4, 0.4, 0.1)
    assert cj.brightness == (0.6, 1.4) and cj.hue == (-0.1, 0.1)


def test_cuda_loader_prepares_the_next_batch_on_a_side_stream(monkeypatch):
    """The CUDA branch of DeviceLoader with torch.cuda's stream API faked (no GPU here): batch k+1 is computed on the
    side stream before batch k is handed over, and the training stream waits for each batch's own event first."""
    import contextlib

    from sslcli.engine import data as engine_data

    log = []

    class Stream:
        def __init__(self, name):
            self.name = name

        def wait_event(self, event):
            log.append(("wait", self.name, event.batch))

    class Event:
        def record(self, stream):
            self.batch = current["batch"]
            log.append(("record", stream.name, self.batch))

    current = {"stream": None, "batch": None}

    @contextlib.contextmanager
    def use(stream):
        current["stream"] = stream.name
        yield
        current["stream"] = None

    class Views:
        def apply(self, batch, device):
            current["batch"] = batch["k"]
            log.append(("apply", current["stream"], batch["k"]))
            return {"views": torch.zeros(1), "k": batch["k"]}

    monkeypatch.setattr(torch.cuda, "Stream", lambda device: Stream("side"))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: Stream("main"))
    monkeypatch.setattr(torch.cuda, "stream", use)
    monkeypatch.setattr(torch.cuda, "Event", Event)
    batches = [{"k": k, "_skipped": []} for k in range(3)]
    loader = engine_data.DeviceLoader(batches, Views(), torch.device("cuda", 0))
    got = []
    for out in loader:
        got.append(out["k"])
        log.append(("step", "main", out["k"]))
    assert got == [0, 1, 2]
    assert log == [("apply", "side", 0), ("record", "side", 0),
                   ("apply", "side", 1), ("record", "side", 1), ("wait", "main", 0), ("step", "main", 0),
                   ("apply", "side", 2), ("record", "side", 2), ("wait", "main", 1), ("step", "main", 1),
                   ("wait", "main", 2), ("step", "main", 2)]
