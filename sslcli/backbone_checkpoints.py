"""A pretrained ResNet backbone out of any checkpoint, for probes and analyses; export it for downstream fine-tuning.

This module reads checkpoints for evaluation (ours and third-party ones); the engine's own training checkpoint (its
format, atomic saves, resume) is `sslcli.engine.training_checkpoint`. Formats, detected from the file's content
(METHODS.md §8):

- ``sslcli``: the engine's training checkpoint, ``{"format": "sslcli-checkpoint", "arch", "width", "stem", "backbone":
  state dict, ...}``; only the backbone is read (checkpoints written before ``stem`` existed have the ImageNet stem).
- ``torchvision``: a plain state dict (``conv1.weight``, ``layer1.0...``; ``fc.*`` ignored), optionally with a DDP
  ``module.`` prefix or wrapped in ``{"state_dict": ...}``.
- ``moco``: ``{epoch, arch, state_dict, optimizer}`` with ``module.encoder_q.*`` keys; ``fc.*`` (the MLP head),
  ``encoder_k`` and the queues are ignored.
- ``soco``: ``{opt, model, ...}`` with ``module.encoder.*`` keys (exact prefix: ``module.encoder_k.*`` is the momentum
  encoder and is ignored). ``opt`` is a pickled ``argparse.Namespace``: torch can only read it with
  ``weights_only=False``, which runs arbitrary code from the file while unpickling, so it needs ``trust=True``.
- ``haiku``: DetCon/BYOL JAX ``.npy`` dicts (``initial_conv``, ``block_group_g/~/block_b/~/conv_i``, ``batchnorm_i``,
  ``shortcut_conv``...). Read with a restricted unpickler that only builds numpy arrays and dicts.
- ``detectron2``: a ``.pkl`` written by :func:`export_backbone` (or MoCo's converter), read the same safe way.

A load that leaves any backbone parameter or buffer unset is refused (InputError naming a few missing keys). The stem
(``imagenet`` or ``small``, `sslcli.models.backbone`) is the one an sslcli checkpoint records, else the one conv1's
kernel implies (7×7 or 3×3), so every probe and analysis rebuilds the network that was trained.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sslcli.engine.training_checkpoint import FORMAT as SSLCLI_FORMAT
from sslcli.engine.training_checkpoint import load_error_reason
from sslcli.errors import InputError
from sslcli.io import atomic_path, check_writable_dir
from sslcli.models.backbone import STEMS, ResNetBackbone, build_backbone

TRUST_HINT = ("rerun with --trust-checkpoint only if you trust this file: loading it needs torch.load(weights_only=False), "
              "which can execute arbitrary code stored in the pickle")

# Block counts per stage and block type, to name the architecture from the keys.
_ARCHS = {((2, 2, 2, 2), False): "resnet18", ((3, 4, 6, 3), False): "resnet34", ((3, 4, 6, 3), True): "resnet50",
          ((3, 4, 23, 3), True): "resnet101", ((3, 8, 36, 3), True): "resnet152"}


@dataclass
class LoadReport:
    """What `load_backbone` did. Keys are torchvision names (``layer1.0.conv1.weight``)."""

    path: str
    format: str
    arch: str
    width: int
    sha256: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # deliberately dropped: heads, momentum encoder, queues, fc
    prefix: str | None = None
    stem: str = "imagenet"

    @property
    def identity(self) -> str:
        """What the loaded weights depend on (file hash and key prefix): the key of feature caches."""
        return self.sha256 if self.prefix is None else f"{self.sha256}:{self.prefix}"

    def summary(self) -> str:
        text = (f"{Path(self.path).name}: {self.format} checkpoint, {self.arch} width {self.width}, {self.stem} stem, "
                f"loaded {len(self.loaded)} tensors, missing {len(self.missing)}, unexpected {len(self.unexpected)}, "
                f"ignored {len(self.ignored)} (heads/momentum encoder/fc)")
        if self.unexpected:
            text += f"; unexpected: {', '.join(self.unexpected[:5])}{' ...' if len(self.unexpected) > 5 else ''}"
        return text

    def to_dict(self) -> dict:
        return {"path": self.path, "format": self.format, "arch": self.arch, "width": self.width, "stem": self.stem,
                "sha256": self.sha256,
                "loaded": len(self.loaded), "missing": self.missing, "unexpected": self.unexpected,
                "ignored": len(self.ignored)}


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------------------
# Reading files safely

class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists and numpy arrays only: a .npy/.pkl weight file cannot run code through us."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
                ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} (only numpy arrays and dicts are allowed)")


def _safe_unpickle(data: bytes, path: Path, trust: bool):
    try:
        if trust:
            return pickle.loads(data)  # noqa: S301  (the user vouched for the file)
        return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        if trust or "refusing" not in str(exc):
            raise InputError(f"{path}: not a readable pickle ({exc})") from None
        raise InputError(f"{path}: {exc}; {TRUST_HINT}") from None
    except (EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError) as exc:
        raise InputError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from None


def _read_npy(path: Path, trust: bool):
    with open(path, "rb") as fh:
        try:
            version = np.lib.format.read_magic(fh)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            _, _, dtype = read_header(fh)  # the header only: no unpickling here
            if not dtype.hasobject:
                fh.seek(0)
                return np.lib.format.read_array(fh, allow_pickle=False)
        except (ValueError, EOFError, OSError) as exc:  # truncated or damaged header / data
            raise InputError(f"{path}: not a readable .npy file ({exc})") from None
        obj = _safe_unpickle(fh.read(), path, trust)  # object arrays are stored as one pickle after the header
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()  # np.save(dict) wraps the dict in a 0-d object array
    return obj


def _read_torch(path: Path, trust: bool):
    unreadable = (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError, TypeError, AttributeError)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # Only a pickle that names a Python global is "objects that need trust"; anything else is not a checkpoint.
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found is None:
            raise InputError(f"{path}: not a readable torch checkpoint ({load_error_reason(exc)})") from None
        if not trust:
            raise InputError(f"{path}: the checkpoint stores pickled Python objects ({found.group(1)}) (SoCo "
                             f"checkpoints store their options as argparse.Namespace); {TRUST_HINT}") from None
    except unreadable as exc:  # truncated or foreign files (torch's unpickler raises IndexError on some)
        raise InputError(f"{path}: not a readable torch checkpoint ({load_error_reason(exc)})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)  # trusted by the user's explicit flag
    except (pickle.UnpicklingError, ImportError, *unreadable) as exc:
        raise InputError(f"{path}: not a readable torch checkpoint ({load_error_reason(exc)})") from None


def read_checkpoint_file(path: str | os.PathLike, trust: bool = False):
    """The raw object stored in ``path`` (a .npy dict, a pickle of numpy arrays or a torch checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    with open(path, "rb") as fh:
        head = fh.read(6)
    if head == b"\x93NUMPY":
        return _read_npy(path, trust)
    if head[:1] == b"\x80":  # a bare pickle (detectron2 .pkl); torch's zip container starts with "PK"
        obj = _safe_unpickle(path.read_bytes(), path, trust)
        if isinstance(obj, dict):
            return obj
        # else: torch's legacy (pre-1.6) format, whose first pickle is a magic number: let torch read it
    return _read_torch(path, trust)


# ---------------------------------------------------------------------------------------------------------------------
# Format detection: every reader returns a torchvision-named state dict plus the keys it ignored

def _as_tensor(value) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))


def _strip(state: dict, prefix: str) -> tuple[dict, list[str]]:
    """Keys under ``prefix`` (exact, including its dot) with the prefix removed; the other keys are returned as ignored."""
    kept, ignored = {}, []
    for key, value in state.items():
        if key.startswith(prefix):
            kept[key[len(prefix):]] = value
        else:
            ignored.append(key)
    return kept, ignored


def _drop_fc(state: dict) -> tuple[dict, list[str]]:
    return {k: v for k, v in state.items() if not k.startswith("fc.")}, [k for k in state if k.startswith("fc.")]


def _looks_torchvision(state) -> bool:
    return isinstance(state, dict) and "conv1.weight" in state and any(k.startswith("layer1.") for k in state)


def _flatten(tree, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(_flatten(value, name))
        else:
            out[name] = value
    return out


def detect_and_convert(obj, path: Path, prefix: str | None = None) -> tuple[str, dict, list[str], dict]:
    """(format, torchvision-named state dict, ignored keys, metadata such as arch/width) for a loaded checkpoint."""
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a dict of weights, found {type(obj).__name__}")
    if prefix is not None:
        flat = _flatten(obj)
        if any("initial_conv" in k for k in flat):  # haiku: the prefix selects e.g. online_params/online_state
            kept, ignored = _strip(flat, prefix)
            state, unused = haiku_to_torchvision(kept, path)
            return f"haiku (prefix {prefix!r})", state, ignored + unused, {}
        state = obj.get("state_dict", obj.get("model", obj))
        kept, ignored = _strip(state, prefix)
        kept, fc = _drop_fc(kept)
        return f"prefix {prefix!r}", kept, ignored + fc, {}
    if obj.get("format") == SSLCLI_FORMAT:
        if "backbone" not in obj:
            raise InputError(f"{path}: sslcli checkpoint has no \"backbone\" entry")
        state, fc = _drop_fc(dict(obj["backbone"]))
        return "sslcli", state, fc, {"arch": obj.get("arch"), "width": obj.get("width"), "stem": obj.get("stem")}
    if isinstance(obj.get("model"), dict) and "__author__" in obj:
        return "detectron2", *detectron2_to_torchvision(obj["model"]), {}
    # MoCo/SoCo trained with DDP have a "module." prefix; single-GPU runs do not.
    for fmt, container, prefixes in (("moco", "state_dict", ("module.encoder_q.", "encoder_q.")),
                                     ("soco", "model", ("module.encoder.", "encoder."))):
        for pre in prefixes:
            if isinstance(obj.get(container), dict) and any(k.startswith(pre + "conv1.") for k in obj[container]):
                kept, ignored = _strip(obj[container], pre)  # exact prefix: SoCo's module.encoder_k.* is ignored
                kept, fc = _drop_fc(kept)
                return fmt, kept, ignored + fc, {}
    if any(isinstance(k, str) and ("initial_conv" in k or "block_group_" in k) for k in _flatten(obj)):
        return "haiku", *haiku_to_torchvision(_flatten(obj), path), {}
    for candidate, name in ((obj, "torchvision"), (obj.get("state_dict"), "torchvision"), (obj.get("model"), "torchvision")):
        if _looks_torchvision(candidate):
            state, fc = _drop_fc(candidate)
            return name, state, fc, {}
        if isinstance(candidate, dict) and _looks_torchvision(_strip(candidate, "module.")[0]):
            state, ignored = _strip(candidate, "module.")
            state, fc = _drop_fc(state)
            return name, state, ignored + fc, {}
    keys = ", ".join(list(map(str, obj))[:6])
    raise InputError(f"{path}: unrecognised checkpoint format (top-level keys: {keys}); expected an sslcli, "
                     "torchvision, MoCo, SoCo, DetCon/haiku .npy or detectron2 checkpoint (or pass a key prefix)")


# ---------------------------------------------------------------------------------------------------------------------
# JAX/haiku (DetCon, BYOL) <-> torchvision names

def _haiku_module(tv_module: str) -> str:
    """torchvision module path -> haiku module path suffix, e.g. layer2.0.bn3 -> block_group_1/~/block_0/~/batchnorm_2."""
    if tv_module == "conv1":
        return "initial_conv"
    if tv_module == "bn1":
        return "initial_batchnorm"
    layer, block, rest = tv_module.split(".", 2)
    group = f"block_group_{int(layer[len('layer'):]) - 1}/~/block_{block}/~/"
    if rest == "downsample.0":
        return group + "shortcut_conv"
    if rest == "downsample.1":
        return group + "shortcut_batchnorm"
    kind, index = re.fullmatch(r"(conv|bn)(\d)", rest).groups()
    return group + ("conv" if kind == "conv" else "batchnorm") + f"_{int(index) - 1}"


# torchvision tensor name -> haiku parameter (or state) name inside the module
_HAIKU_PARAM = {"weight_conv": "w", "weight": "scale", "bias": "offset",
                "running_mean": "~/mean_ema/average", "running_var": "~/var_ema/average"}


def haiku_name(tv_key: str) -> str:
    """The haiku path suffix holding torchvision tensor ``tv_key`` (``num_batches_tracked`` has none)."""
    module, param = tv_key.rsplit(".", 1)
    is_conv = module == "conv1" or module.endswith("downsample.0") or re.search(r"\.conv\d$", module)
    return _haiku_module(module) + "/" + _HAIKU_PARAM["weight_conv" if is_conv and param == "weight" else param]


def torch_to_haiku(value: torch.Tensor, tv_key: str) -> np.ndarray:
    """One tensor in haiku layout: conv OIHW -> HWIO, BN vectors -> (1, 1, 1, C) as haiku stores them."""
    array = value.detach().cpu().numpy()
    return array.transpose(2, 3, 1, 0) if array.ndim == 4 else array.reshape(1, 1, 1, -1)  # OIHW -> HWIO


def haiku_to_torchvision(flat: dict, path: Path) -> tuple[dict, list[str]]:
    """Convert a flattened haiku dict (``.../block_group_0/~/block_0/~/conv_0/w``) to torchvision names."""
    arch_width = _haiku_arch(flat, path)
    template = build_backbone(*arch_width).state_dict()
    state, used = {}, set()
    for tv_key, ref in template.items():
        if tv_key.endswith("num_batches_tracked"):
            continue
        suffix = haiku_name(tv_key)
        matches = [k for k in flat if k == suffix or k.endswith("/" + suffix)]
        if len(matches) > 1:
            prefixes = sorted({m[: -len(suffix)] for m in matches})
            raise InputError(f"{path}: {suffix} found under several prefixes {prefixes} (e.g. online and target "
                             "networks); pass the one to load with --prefix (e.g. online_)")
        if not matches:
            continue  # reported as missing by the caller
        array = np.asarray(flat[matches[0]])
        if array.size != ref.numel():
            raise InputError(f"{path}: {matches[0]} has shape {array.shape}, expected {ref.numel()} values for {tv_key}")
        array = array.transpose(3, 2, 0, 1) if ref.ndim == 4 else array.reshape(ref.shape)  # HWIO -> OIHW
        state[tv_key] = torch.as_tensor(np.ascontiguousarray(array))
        used.add(matches[0])
    return state, sorted(k for k in flat if k not in used)


def _haiku_arch(flat: dict, path: Path) -> tuple[str, int]:
    blocks: dict[int, set[int]] = {}
    for key in flat:
        found = re.search(r"block_group_(\d+)/~/block_(\d+)/", key)
        if found:
            blocks.setdefault(int(found.group(1)), set()).add(int(found.group(2)))
    bottleneck = any("/~/conv_2/" in k for k in flat)
    counts = tuple(len(blocks.get(g, ())) for g in range(4))
    stem = [k for k in flat if k.endswith("initial_conv/w")]
    if (counts, bottleneck) not in _ARCHS or not stem:
        raise InputError(f"{path}: haiku checkpoint with block counts {counts} is not a known ResNet")
    return _ARCHS[(counts, bottleneck)], int(np.asarray(flat[stem[0]]).shape[-1])


def backbone_to_haiku(state: dict) -> dict:
    """A torchvision-named state dict as a nested haiku params/state dict (used to build test fixtures)."""
    tree: dict = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        module, param = haiku_name(key).rsplit("/", 1)
        tree.setdefault(module, {})[param] = torch_to_haiku(value, key)
    return tree


# ---------------------------------------------------------------------------------------------------------------------
# detectron2 names

def torchvision_to_detectron2(state: dict) -> dict[str, np.ndarray]:
    """Rename per METHODS.md §8 (stem., layerN -> res(N+1), bnN -> convN.norm, downsample -> shortcut); numpy values.

    ``num_batches_tracked`` is dropped: detectron2's (frozen) BatchNorm has no such buffer.
    """
    out = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked") or key.startswith("fc."):
            continue
        new = key if "layer" in key else "stem." + key
        for i in range(1, 5):
            new = new.replace(f"layer{i}", f"res{i + 1}")
        for i in range(1, 4):
            new = new.replace(f"bn{i}", f"conv{i}.norm")
        new = new.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
        out[new] = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    return out


def detectron2_to_torchvision(model: dict) -> tuple[dict, list[str]]:
    """Inverse of :func:`torchvision_to_detectron2`; keys that are not backbone keys are returned as ignored."""
    state, ignored = {}, []
    for key, value in model.items():
        if not (key.startswith("stem.") or re.match(r"res[2-5]\.", key)):
            ignored.append(key)
            continue
        new = key[len("stem."):] if key.startswith("stem.") else key
        new = new.replace("shortcut.norm", "downsample.1").replace("shortcut", "downsample.0")
        for i in range(1, 4):
            new = new.replace(f"conv{i}.norm", f"bn{i}")
        for i in range(2, 6):
            new = re.sub(rf"^res{i}\.", f"layer{i - 1}.", new)
        state[new] = _as_tensor(value)
    return state, ignored


# ---------------------------------------------------------------------------------------------------------------------
# Building the backbone

def infer_arch(state: dict, path: Path) -> tuple[str, int]:
    """(arch, width) from torchvision-named keys: block counts per layer, bottleneck or basic, stem channels."""
    if "conv1.weight" not in state:
        raise InputError(f"{path}: no conv1.weight among the backbone keys; cannot tell the architecture")
    counts = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    bottleneck = "layer1.0.conv3.weight" in state
    if (counts, bottleneck) not in _ARCHS:
        raise InputError(f"{path}: block counts {counts} do not match a torchvision ResNet; pass --arch")
    return _ARCHS[(counts, bottleneck)], int(state["conv1.weight"].shape[0])


# conv1's kernel side → stem: torchvision's 7×7 stride-2 conv, or the small stem's 3×3 stride-1 conv.
_STEM_OF_KERNEL = {7: "imagenet", 3: "small"}


def infer_stem(state: dict, path: Path) -> str:
    """The stem conv1's kernel implies (checkpoints that do not record it: third-party ones, sslcli before stems)."""
    if "conv1.weight" not in state:
        raise InputError(f"{path}: no conv1.weight among the backbone keys; cannot tell the stem")
    kernel = tuple(state["conv1.weight"].shape[-2:])
    stem = _STEM_OF_KERNEL.get(kernel[0]) if kernel[0] == kernel[1] else None
    if stem is None:
        raise InputError(f"{path}: conv1.weight has a {kernel[0]}×{kernel[1]} kernel; expected 7×7 (ImageNet stem) or "
                         "3×3 (small stem)")
    return stem


def load_state(path: str | os.PathLike, trust: bool = False, prefix: str | None = None):
    """(format, torchvision-named state dict, ignored keys, arch, width, stem) without building a network."""
    path = Path(path)
    obj = read_checkpoint_file(path, trust)
    fmt, state, ignored, meta = detect_and_convert(obj, path, prefix)
    state = {k: _as_tensor(v) for k, v in state.items()}
    arch, width = meta.get("arch"), meta.get("width")
    if not arch or not width:
        arch, width = infer_arch(state, path)
    stem = meta.get("stem") or infer_stem(state, path)
    if stem not in STEMS:
        raise InputError(f"{path}: stem {stem!r}: expected one of {', '.join(STEMS)}")
    return fmt, state, ignored, arch, int(width), stem


def load_backbone(path: str | os.PathLike, arch: str | None = None, width: int | None = None, trust: bool = False,
                  prefix: str | None = None, **backbone_kwargs) -> tuple[ResNetBackbone, LoadReport]:
    """Build the checkpoint's backbone (eval mode) and report what was loaded.

    ``arch``/``width`` default to what the checkpoint says or implies; given explicitly they must agree with it.
    ``backbone_kwargs`` go to `build_backbone` (e.g. ``dilate_res5=True``: dilation does not change any weight).
    Raises InputError on missing backbone keys or shape mismatches: a partial load is never returned.
    """
    path = Path(path)
    fmt, state, ignored, found_arch, found_width, stem = load_state(path, trust, prefix)
    if arch is not None and arch != found_arch:
        raise InputError(f"{path}: --arch {arch} but the checkpoint holds a {found_arch}")
    if width is not None and width != found_width:
        raise InputError(f"{path}: --width {width} but the checkpoint's stem has {found_width} channels")
    try:
        backbone = build_backbone(found_arch, found_width, stem=stem, **backbone_kwargs)
    except (ValueError, NotImplementedError) as exc:  # e.g. torchvision cannot dilate BasicBlock ResNets
        raise InputError(f"{path}: cannot build {found_arch} with {backbone_kwargs}: {exc}") from None
    expected = backbone.state_dict()
    # num_batches_tracked only matters for momentum=None BN; third-party formats do not store it.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing:
        raise InputError(f"{path}: {fmt} checkpoint lacks {len(missing)} of {len(expected)} backbone tensors "
                         f"(e.g. {', '.join(missing[:4])}); refusing a partial load")
    for key, ref in expected.items():
        if key in state and state[key].shape != ref.shape:
            raise InputError(f"{path}: {key} has shape {tuple(state[key].shape)}, expected {tuple(ref.shape)} "
                             f"for {found_arch} width {found_width} with the {stem} stem")
    loadable = {k: v.to(expected[k].dtype) for k, v in state.items() if k in expected}
    broken = next((k for k, v in loadable.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if broken is not None:
        raise InputError(f"{path}: {broken} holds NaN or inf: the checkpoint's weights diverged; use an earlier "
                         "checkpoint")
    backbone.load_state_dict(loadable, strict=False)
    backbone.eval()
    report = LoadReport(str(path), fmt, found_arch, found_width, file_sha256(path), loaded=sorted(loadable),
                        missing=[], unexpected=unexpected, ignored=ignored, prefix=prefix, stem=stem)
    return backbone, report


# ---------------------------------------------------------------------------------------------------------------------
# Export

EXPORT_FORMATS = ("torchvision", "detectron2")


def export_backbone(path: str | os.PathLike, out: str | os.PathLike, to: str = "torchvision", trust: bool = False,
                    prefix: str | None = None) -> tuple[LoadReport, int]:
    """Write the checkpoint's backbone as a torchvision state dict (torch.save) or a detectron2 ``.pkl``, atomically.

    Returns the load report and the number of tensors written."""
    if to not in EXPORT_FORMATS:
        raise InputError(f"--to {to!r}: expected one of {', '.join(EXPORT_FORMATS)}")
    if Path(out).is_dir():
        raise InputError(f"--out {out}: is a directory; expected a file name (e.g. {Path(out) / 'backbone.pkl'})")
    check_writable_dir(Path(out).parent, f"--out {out}: folder")
    backbone, report = load_backbone(path, trust=trust, prefix=prefix)
    state = backbone.state_dict()
    with atomic_path(out) as tmp:
        if to == "torchvision":
            torch.save(state, tmp)
            written = len(state)
        else:
            payload = {"model": torchvision_to_detectron2(state), "__author__": "sslcli", "matching_heuristics": True}
            with open(tmp, "wb") as fh:
                pickle.dump(payload, fh)
            written = len(payload["model"])
    return report, written
