"""Checkpoint formats load to identical backbones; partial/untrusted loads are refused; exports round-trip."""

from __future__ import annotations

import argparse
import fractions
import json
import pickle

import numpy as np
import pytest
import torch

from sslcli.backbone_checkpoints import backbone_to_haiku, load_backbone
from sslcli.errors import InputError
from sslcli.models.backbone import build_backbone


def _random_backbone(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_backbone(arch, width=8)
    with torch.no_grad():  # non-trivial BN statistics and affine terms, so a mix-up of any of them shows
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.3, 0.3)
                module.running_var.uniform_(0.5, 2.0)
    return net.eval()


def _save_all_formats(net, tmp_path):
    """The same weights as sslcli, torchvision (+fc), MoCo-v2, SoCo and DetCon/haiku .npy files."""
    state = net.state_dict()
    paths = {}
    paths["sslcli"] = tmp_path / "ours.pt"
    torch.save({"format": "sslcli-checkpoint", "arch": net.arch, "width": net.width, "backbone": state,
                "step": 3, "method": {"name": "moco"}}, paths["sslcli"])
    paths["torchvision"] = tmp_path / "tv.pth"
    torch.save({**state, "fc.weight": torch.zeros(10, net.out_channels), "fc.bias": torch.zeros(10)},
               paths["torchvision"])
    other = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}
    paths["moco"] = tmp_path / "moco.pth.tar"
    moco = {f"module.encoder_q.{k}": v for k, v in state.items()}
    moco.update({f"module.encoder_k.{k}": v for k, v in other.items()})
    moco.update({"module.encoder_q.fc.0.weight": torch.zeros(4, net.out_channels), "module.encoder_q.fc.0.bias":
                 torch.zeros(4), "module.queue": torch.zeros(4, 16), "module.queue_ptr": torch.zeros(1)})
    torch.save({"epoch": 200, "arch": net.arch, "state_dict": moco, "optimizer": {}}, paths["moco"])
    paths["soco"] = tmp_path / "soco.pth"
    soco = {f"module.encoder.{k}": v for k, v in state.items()}
    soco.update({f"module.encoder_k.{k}": v for k, v in other.items()})  # must NOT be taken for the encoder
    soco["module.projector.linear1.weight"] = torch.zeros(4, 4)
    torch.save({"opt": argparse.Namespace(arch=net.arch, lr=1.0), "model": soco, "optimizer": {}, "scheduler": {},
                "epoch": 100, "amp": None}, paths["soco"])
    paths["haiku"] = tmp_path / "detcon.npy"
    tree = {f"res_net/~/{module}": params for module, params in backbone_to_haiku(state).items()}
    np.save(paths["haiku"], tree, allow_pickle=True)
    return paths


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_every_format_loads_the_same_backbone(tmp_path, arch):
    net = _random_backbone(arch)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = net.features(x)
    for fmt, path in _save_all_formats(net, tmp_path).items():
        loaded, report = load_backbone(path, trust=(fmt == "soco"))
        assert report.format == fmt
        assert (report.arch, report.width) == (arch, 8)
        assert report.missing == [] and report.unexpected == []
        assert not loaded.training
        with torch.no_grad():
            out = loaded.features(x)
        for stage, ref in reference.items():
            torch.testing.assert_close(out[stage], ref, rtol=0, atol=0, msg=f"{fmt} {stage}")
        assert fmt in report.summary()


def test_moco_and_soco_report_ignored_keys(tmp_path):
    paths = _save_all_formats(_random_backbone("resnet18"), tmp_path)
    _, moco = load_backbone(paths["moco"])
    assert "fc.0.weight" in moco.ignored and "module.queue" in moco.ignored
    assert any(k.startswith("module.encoder_k.") for k in moco.ignored)
    _, soco = load_backbone(paths["soco"], trust=True)
    assert any(k.startswith("module.encoder_k.") for k in soco.ignored)


def test_soco_without_trust_is_refused_with_the_reason(tmp_path, cli):
    paths = _save_all_formats(_random_backbone("resnet18"), tmp_path)
    with pytest.raises(InputError, match="trust-checkpoint"):
        load_backbone(paths["soco"])
    code, _, err = cli(["export", paths["soco"], "--to", "torchvision", "--out", tmp_path / "x.pth"])
    assert code == 2
    assert "argparse.Namespace" in err and "arbitrary code" in err and "--trust-checkpoint" in err
    assert not (tmp_path / "x.pth").exists()
    code, _, _ = cli(["export", paths["soco"], "--to", "torchvision", "--out", tmp_path / "x.pth",
                      "--trust-checkpoint"])
    assert code == 0 and (tmp_path / "x.pth").is_file()


def test_partial_load_is_refused(tmp_path):
    state = _random_backbone("resnet18").state_dict()
    del state["layer3.1.bn2.running_var"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(InputError, match="layer3.1.bn2.running_var"):
        load_backbone(path)


def test_wrong_arch_and_unknown_format_are_input_errors(tmp_path):
    path = tmp_path / "tv.pth"
    torch.save(_random_backbone("resnet18").state_dict(), path)
    with pytest.raises(InputError, match="resnet50"):
        load_backbone(path, arch="resnet50")
    junk = tmp_path / "junk.pth"
    torch.save({"weights": torch.zeros(3)}, junk)
    with pytest.raises(InputError, match="unrecognised checkpoint format"):
        load_backbone(junk)


def test_npy_with_python_objects_needs_trust(tmp_path):
    net = _random_backbone("resnet18")
    tree = backbone_to_haiku(net.state_dict())
    tree["config"] = {"ratio": fractions.Fraction(1, 2)}  # unpickling it would import and call fractions.Fraction
    path = tmp_path / "odd.npy"
    np.save(path, tree, allow_pickle=True)
    with pytest.raises(InputError, match="fractions.Fraction"):
        load_backbone(path)
    _, report = load_backbone(path, trust=True)
    assert report.format == "haiku" and "config/ratio" in report.ignored


def test_detectron2_export_round_trips_key_by_key(tmp_path, cli):
    net = _random_backbone("resnet50")
    src = tmp_path / "tv.pth"
    torch.save(net.state_dict(), src)
    out = tmp_path / "d2.pkl"
    code, stdout, _ = cli(["export", src, "--to", "detectron2", "--out", out, "--json"])
    assert code == 0, stdout
    assert json.loads(stdout)["keys"] == len([k for k in net.state_dict() if not k.endswith("num_batches_tracked")])
    with open(out, "rb") as fh:
        payload = pickle.load(fh)
    assert payload["matching_heuristics"] is True and "__author__" in payload
    model = payload["model"]
    expected_names = {  # METHODS.md §8, written out by hand
        "conv1.weight": "stem.conv1.weight", "bn1.running_var": "stem.conv1.norm.running_var",
        "layer1.0.conv3.weight": "res2.0.conv3.weight", "layer1.2.bn3.bias": "res2.2.conv3.norm.bias",
        "layer2.0.downsample.0.weight": "res3.0.shortcut.weight",
        "layer4.0.downsample.1.running_mean": "res5.0.shortcut.norm.running_mean",
    }
    for tv, d2 in expected_names.items():
        np.testing.assert_array_equal(model[d2], net.state_dict()[tv].numpy())
    tv_keys = [k for k in net.state_dict() if not k.endswith("num_batches_tracked")]
    assert len(model) == len(tv_keys)
    assert all(isinstance(v, np.ndarray) for v in model.values())
    # back to torchvision names: every tensor identical, key by key
    loaded, report = load_backbone(out)
    assert report.format == "detectron2"
    for key in tv_keys:
        torch.testing.assert_close(loaded.state_dict()[key], net.state_dict()[key], rtol=0, atol=0)


def test_torchvision_export_loads_into_torchvision(tmp_path, cli):
    import torchvision

    torch.manual_seed(0)
    ref = torchvision.models.resnet18(weights=None).eval()
    src = tmp_path / "moco.pth.tar"
    torch.save({"epoch": 1, "arch": "resnet18", "optimizer": {},
                "state_dict": {f"module.encoder_q.{k}": v for k, v in ref.state_dict().items()}}, src)
    out = tmp_path / "r18.pth"
    code, _, err = cli(["export", src, "--to", "torchvision", "--out", out])
    assert code == 0, err
    net = torchvision.models.resnet18(weights=None)
    result = net.load_state_dict(torch.load(out, weights_only=True), strict=False)
    assert result.missing_keys == ["fc.weight", "fc.bias"] and result.unexpected_keys == []
    for key, value in ref.state_dict().items():
        if not key.startswith("fc."):
            torch.testing.assert_close(net.state_dict()[key], value, rtol=0, atol=0)


def test_byol_style_online_and_target_trees_need_a_prefix(tmp_path):
    net = _random_backbone("resnet50")
    tree = backbone_to_haiku(net.state_dict())
    params = {f"res_net50/~/{m}": v for m, v in tree.items() if "_ema" not in m}
    state = {f"res_net50/~/{m}": v for m, v in tree.items() if "_ema" in m}
    shuffled = {m: {p: np.random.default_rng(0).normal(size=a.shape) for p, a in v.items()} for m, v in params.items()}
    path = tmp_path / "byol.npy"
    np.save(path, {"online_params": params, "online_state": state, "target_params": shuffled, "target_state": state},
            allow_pickle=True)
    with pytest.raises(InputError, match="several prefixes"):
        load_backbone(path)
    loaded, report = load_backbone(path, prefix="online_")
    assert report.format.startswith("haiku")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_map(x), net.forward_map(x), rtol=0, atol=0)


def test_single_gpu_moco_keys_without_module_prefix(tmp_path):
    net = _random_backbone("resnet18")
    path = tmp_path / "moco1gpu.pth"
    torch.save({"epoch": 1, "state_dict": {f"encoder_q.{k}": v for k, v in net.state_dict().items()}}, path)
    _, report = load_backbone(path)
    assert report.format == "moco"


def test_truncated_files_are_one_line_input_errors(tmp_path):
    net = _random_backbone("resnet18")
    paths = _save_all_formats(net, tmp_path)
    for fmt in ("torchvision", "haiku"):
        data = paths[fmt].read_bytes()
        broken = tmp_path / f"broken-{fmt}{paths[fmt].suffix}"
        broken.write_bytes(data[: len(data) // 2])
        with pytest.raises(InputError, match="broken-"):
            load_backbone(broken)
    with pytest.raises(InputError, match="not found"):
        load_backbone(tmp_path / "missing.pth")


def _haiku_by_hand(state: dict) -> dict:
    """METHODS.md §8 written out independently of sslcli.backbone_checkpoints: haiku module names, HWIO conv kernels,
    BN scale/offset as params and mean_ema/var_ema averages as state, every BN vector shaped (1, 1, 1, C)."""
    params, ema = {}, {}

    def module_of(tv: str) -> str:
        if tv in ("conv1", "bn1"):
            return {"conv1": "initial_conv", "bn1": "initial_batchnorm"}[tv]
        layer, block, rest = tv.split(".", 2)
        names = {"downsample.0": "shortcut_conv", "downsample.1": "shortcut_batchnorm",
                 "conv1": "conv_0", "conv2": "conv_1", "conv3": "conv_2",
                 "bn1": "batchnorm_0", "bn2": "batchnorm_1", "bn3": "batchnorm_2"}
        return f"block_group_{int(layer[5:]) - 1}/~/block_{block}/~/{names[rest]}"

    for key, value in state.items():
        tv_module, param = key.rsplit(".", 1)
        module = "res_net50/~/" + module_of(tv_module)
        array = value.numpy()
        if param == "weight" and array.ndim == 4:
            params.setdefault(module, {})["w"] = np.ascontiguousarray(np.transpose(array, (2, 3, 1, 0)))  # O,I,H,W -> H,W,I,O
        elif param in ("weight", "bias"):
            params.setdefault(module, {})["scale" if param == "weight" else "offset"] = array.reshape(1, 1, 1, -1)
        elif param in ("running_mean", "running_var"):
            ema[f"{module}/~/{'mean' if param == 'running_mean' else 'var'}_ema"] = {
                "average": array.reshape(1, 1, 1, -1), "hidden": np.zeros_like(array), "counter": np.zeros(())}
    return {"params": params, "state": ema}


def test_haiku_files_written_independently_load_exactly(tmp_path):
    """The haiku mapping is checked against a hand-written converter, not against backbone_to_haiku itself."""
    net = _random_backbone("resnet50")
    tree = _haiku_by_hand(net.state_dict())
    assert tree["params"]["res_net50/~/initial_conv"]["w"].shape == (7, 7, 3, 8)  # HWIO, as haiku stores it
    path = tmp_path / "detcon_by_hand.npy"
    np.save(path, tree, allow_pickle=True)
    loaded, report = load_backbone(path)
    assert report.format == "haiku" and (report.arch, report.width) == ("resnet50", 8)
    for key, value in net.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0, msg=key)
    assert all(k.endswith(("hidden", "counter")) for k in report.ignored)


def test_foreign_and_damaged_files_are_input_errors_not_crashes(tmp_path, cli):
    text = tmp_path / "notes.pth"
    text.write_text("error: this is a log file, not a checkpoint\n")
    garbage = tmp_path / "garbage.npy"
    garbage.write_text("garbage\n")
    header_only = tmp_path / "header.npy"
    header_only.write_bytes(b"\x93NUMPY\x01\x00")
    for path in (text, garbage, header_only):
        with pytest.raises(InputError, match=path.name) as info:
            load_backbone(path)
        assert "pickled Python objects" not in str(info.value)  # not a pickle of objects: no trust hint
        with pytest.raises(InputError, match=path.name):
            load_backbone(path, trust=True)
    ckpt = tmp_path / "tv.pth"
    torch.save(_random_backbone("resnet18").state_dict(), ckpt)
    code, _, err = cli(["export", ckpt, "--to", "detectron2", "--out", tmp_path])  # a folder, not a file name
    assert code == 2 and "directory" in err
