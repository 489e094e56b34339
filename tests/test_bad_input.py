"""Bad input, table-driven: every case exits with its code, one line on stderr naming the file/field/value, no
traceback, and under --json exactly one JSON object {"error", "exit_code"} on stdout.

Each case builds its input in tmp_path and returns the command line; ``expect`` is the exit code and the texts
the line must contain (the file, field or value at fault).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

GOOD_SPEC = {"data": {"root": "DATA", "format": "coco", "image_size": 32, "workers": 0, "pin_memory": False},
             "model": {"arch": "resnet18", "width": 4},
             "method": {"name": "simclr", "dim": 8, "hidden_dim": 16},
             "batch_size": 2, "epochs": 1, "max_steps": 1, "output_dir": "OUT"}


def coco(tmp: Path, mutate=None) -> Path:
    """A 2-image COCO split (train2017) with one annotation each; ``mutate(dataset)`` spoils it."""
    root = tmp / "coco"
    (root / "train2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    images, anns = [], []
    for i in (1, 2):
        cv2.imwrite(str(root / "train2017" / f"{i:012d}.jpg"), np.full((40, 48, 3), 40 * i, np.uint8))
        images.append({"id": i, "file_name": f"{i:012d}.jpg", "width": 48, "height": 40})
        anns.append({"id": i, "image_id": i, "category_id": 1, "bbox": [4, 4, 20, 20], "area": 400, "iscrowd": 0,
                     "segmentation": [[4, 4, 24, 4, 24, 24, 4, 24]]})
    dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}
    if mutate is not None:
        dataset = mutate(dataset)
    text = dataset if isinstance(dataset, str) else json.dumps(dataset)
    (root / "annotations" / "instances_train2017.json").write_text(text)
    return root


def spec(tmp: Path, data: Path | str | None = None, text: str | None = None, **changes) -> Path:
    """A run spec file: GOOD_SPEC on ``data`` (default: a good COCO split) with dotted ``changes``, or raw text."""
    path = tmp / "spec.yaml"
    if text is not None:
        path.write_text(text)
        return path
    body = json.loads(json.dumps(GOOD_SPEC))
    body["data"]["root"] = str(data if data is not None else coco(tmp))
    body["output_dir"] = str(tmp / "run")
    for key, value in changes.items():
        node = body
        *parents, last = key.split("__")
        for part in parents:
            node = node[part]
        node[last] = value
    path.write_text(yaml.safe_dump(body))
    return path


def a_file(tmp: Path) -> Path:
    path = tmp / "plain-file"
    path.write_text("not a folder")
    return path


def random_bytes(tmp: Path) -> Path:
    path = tmp / "random.pt"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


def backbone_file(tmp: Path) -> Path:
    import torch

    from sslcli.models.backbone import build_backbone

    path = tmp / "net.pth"
    torch.save(build_backbone("resnet18", width=4).state_dict(), path)
    return path


def damaged_mask_store(tmp: Path) -> Path:
    """A mask store of `coco`'s two images whose first blob was overwritten on disk (a bad disk, a partial copy)."""
    import h5py

    from sslcli.data.stores.store import ImageResult, encode, write_store

    rng = np.random.default_rng(0)
    results = [encode(ImageResult(str(i), masks=rng.integers(0, 4, (1, 40, 48)).astype(np.int32)), "masks")
               for i in (1, 2)]
    path = tmp / "fh.h5"
    write_store(path, "masks", {"method": "fh", "parameters": '{"scales": [500]}', "input_hash": "x", "n_inputs": 2,
                                "sslcli_version": "test"},
                results, {"images": 2, "payload": sum(len(r.payload) for r in results), "values": 0})
    with h5py.File(path, "r") as f:
        start = f["blobs"].id.get_chunk_info(0).byte_offset
        length = int(f["offsets"][1])
    with open(path, "r+b") as fh:
        fh.seek(start + 2)  # keep the zlib header, overwrite the compressed data of image 1
        fh.write(b"\xff" * (length - 2))
    return path


def study_named(tmp: Path, name: str) -> Path:
    """studies/tiny.yaml under another name."""
    text = (Path(__file__).resolve().parents[1] / "studies" / "tiny.yaml").read_text()
    path = tmp / "study.yaml"
    path.write_text(text.replace("\nname: tiny\n", f"\nname: {json.dumps(name)}\n"))
    return path


def drop(key):
    def mutate(d):
        del d["images"][0][key]
        return d
    return mutate


def set_ann(key, value):
    def mutate(d):
        d["annotations"][1][key] = value
        return d
    return mutate


# (id, builder tmp -> argv, exit code, texts the one error line must contain)
CASES = [
    # usage errors (click/typer): one line naming the command and option, not the usage box
    ("unknown-option", lambda t: ["pretrain", "--no-such-flag"], 2, ["pretrain", "--no-such-flag"]),
    ("bad-int-option", lambda t: ["pretrain", spec(t), "--gpus", "two"], 2, ["--gpus", "integer"]),
    ("unknown-command", lambda t: ["nope"], 2, ["nope"]),
    ("missing-argument", lambda t: ["export", "--out", t / "x.pth"], 2, ["export", "checkpoint"]),
    # run specs
    ("spec-missing", lambda t: ["pretrain", t / "nope.yaml", "--dry-run"], 2, ["nope.yaml"]),
    ("spec-is-a-list", lambda t: ["pretrain", spec(t, text="- a\n- b\n"), "--dry-run"], 2, ["spec.yaml", "mapping"]),
    ("spec-not-yaml", lambda t: ["pretrain", spec(t, text="a: [1,\n"), "--dry-run"], 2, ["spec.yaml", "YAML"]),
    ("spec-lr-inf", lambda t: ["pretrain", spec(t, optimizer={"base_lr": float("inf")}), "--dry-run"], 2,
     ["spec.yaml", "optimizer.base_lr"]),
    ("spec-lr-nan-text", lambda t: ["pretrain", spec(t), "--dry-run", "--set", "optimizer.base_lr=.nan"], 2,
     ["optimizer.base_lr"]),
    ("spec-unknown-key", lambda t: ["pretrain", spec(t), "--dry-run", "--set", "data.colour=red"], 2,
     ["data.colour", "unknown key"]),
    ("spec-queue-beyond-memory", lambda t: ["pretrain", spec(t, method={"name": "moco", "dim": 128, "hidden_dim": 16}),
                                            "--dry-run", "--set", "method.queue_size=10000000000"], 2,
     ["spec.yaml", "method.queue_size", "10240.0 GB", "memory available on this machine"]),
    ("spec-two-problems", lambda t: ["pretrain", spec(t, precision="fp8", batch_size=0), "--dry-run"], 2,
     ["precision", "batch_size"]),
    ("spec-bad-set", lambda t: ["pretrain", spec(t), "--dry-run", "--set", "epochs"], 2, ["--set", "epochs"]),
    ("spec-set-yaml-tag", lambda t: ["pretrain", spec(t), "--dry-run", "--set", "epochs=!!python/object:os.system x"],
     2, ["--set", "epochs=", "not plain YAML"]),
    ("dry-run-missing-root", lambda t: ["pretrain", spec(t, data=t / "no-data"), "--dry-run"], 2,
     ["data.root", "no-data"]),
    ("dry-run-no-annotations", lambda t: ["pretrain", spec(t, data=(t / "annotations").mkdir() or t), "--dry-run"],
     2, ["instances_train2017.json"]),
    ("nodes-zero", lambda t: ["pretrain", spec(t), "--nodes", "0"], 2, ["--nodes 0"]),
    # COCO annotation files (pretrain opens the data before training)
    ("coco-no-file-name", lambda t: ["pretrain", spec(t, data=coco(t, drop("file_name")))], 2,
     ["instances_train2017.json", "images[0]", "file_name"]),
    ("coco-no-image-id", lambda t: ["pretrain", spec(t, data=coco(t, drop("id")))], 2, ["images[0]", '"id"']),
    ("coco-bbox-text", lambda t: ["pretrain", spec(t, data=coco(t, set_ann("bbox", "oops")))], 2,
     ["instances_train2017.json", "annotations[1].bbox", "oops"]),
    ("coco-segmentation-null", lambda t: ["pretrain", spec(t, data=coco(t, set_ann("segmentation", None)))], 2,
     ["annotations[1].segmentation", "null"]),
    ("coco-unknown-category", lambda t: ["pretrain", spec(t, data=coco(t, set_ann("category_id", 7)))], 2,
     ["annotations[1].category_id", "7"]),
    ("coco-empty-object", lambda t: ["pretrain", spec(t, data=coco(t, lambda d: {}))], 2,
     ["instances_train2017.json", '"images"']),
    ("coco-a-list", lambda t: ["pretrain", spec(t, data=coco(t, lambda d: []))], 2,
     ["instances_train2017.json", "list"]),
    ("coco-not-json", lambda t: ["pretrain", spec(t, data=coco(t, lambda d: "{oops"))], 2,
     ["instances_train2017.json", "JSON"]),
    ("coco-no-height-gt-masks", lambda t: ["prepare", "masks", coco(t, drop("height")), "--method", "gt", "--out",
                                           t / "gt.h5", "-q"], 2, ["instances_train2017.json", "image 1", '"height"']),
    # region stores
    ("store-damaged-bytes", lambda t: ["analyze", "abo", damaged_mask_store(t), "--gt", coco(t), "-q"], 2,
     ["fh.h5", "image '1'", "corrupt"]),
    # output folders that cannot be written, named before any work
    ("pretrain-output-under-file", lambda t: ["pretrain", spec(t, output_dir=str(a_file(t) / "run"))], 2,
     ["output_dir", "plain-file"]),
    ("pretrain-output-read-only", lambda t: ["pretrain", spec(t, output_dir="/sys/sslcli-test-run")], 2,
     ["output_dir", "/sys/sslcli-test-run", "not writable"]),
    ("export-out-under-file", lambda t: ["export", backbone_file(t), "--out", a_file(t) / "x.pth"], 2,
     ["--out", "plain-file"]),
    ("export-out-read-only", lambda t: ["export", backbone_file(t), "--out", "/sys/sslcli-test.pth"], 2,
     ["--out", "/sys"]),
    ("synthetic-out-under-file", lambda t: ["prepare", "synthetic", a_file(t) / "data", "--images", "2"], 2,
     ["plain-file"]),
    ("synthetic-out-read-only", lambda t: ["prepare", "synthetic", "/sys/sslcli-test-data", "--images", "2"], 2,
     ["/sys/sslcli-test-data", "not writable"]),
    ("synthetic-not-empty", lambda t: ["prepare", "synthetic", a_file(t).parent, "--images", "2"], 2,
     ["--force"]),
    ("analyze-out-read-only", lambda t: ["analyze", "positional", backbone_file(t), "--data", coco(t), "--out",
                                         "/sys/sslcli-test-analysis"], 2, ["--out", "/sys/sslcli-test-analysis"]),
    ("analyze-out-under-file", lambda t: ["analyze", "coupling", backbone_file(t), "--data", coco(t), "--out",
                                          a_file(t) / "res"], 2, ["--out", "plain-file"]),
    # studies
    ("study-name-climbs-out", lambda t: ["study", "run", study_named(t, "../../x"), "--dry-run"], 2,
     ["study.yaml", "name", "'../../x'", "plain folder name"]),
    # checkpoints
    ("checkpoint-random-bytes", lambda t: ["export", random_bytes(t), "--out", t / "x.pth"], 2,
     ["random.pt", "not a readable"]),
    ("checkpoint-missing", lambda t: ["export", t / "gone.pt", "--out", t / "x.pth"], 2, ["gone.pt", "not found"]),
    ("resume-missing", lambda t: ["pretrain", spec(t), "--resume", t / "gone.pt"], 2, ["gone.pt"]),
    ("resume-random-bytes", lambda t: ["pretrain", spec(t), "--resume", random_bytes(t)], 2,
     ["random.pt", "not a readable checkpoint"]),
    ("probe-missing-checkpoint", lambda t: ["probe", "knn", t / "gone.pt", "--data", coco(t)], 2, ["gone.pt"]),
]


@pytest.mark.parametrize(("builder", "code", "texts"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_naming_the_problem(cli, tmp_path, builder, code, texts):
    argv = [str(a) for a in builder(tmp_path)]
    for as_json in (False, True):
        exit_code, stdout, stderr = cli([*argv, "--json"] if as_json else argv)
        assert exit_code == code, stderr
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), stderr
        assert "Traceback" not in stderr and "weights_only" not in stderr
        for text in texts:
            assert text in lines[0], (text, lines[0])
        if as_json:
            report = json.loads(stdout)
            assert report == {"error": lines[0].removeprefix("error: "), "exit_code": code}
        else:
            assert stdout == ""


def test_the_table_covers_at_least_25_cases():
    assert len(CASES) >= 25 and len({c[0] for c in CASES}) == len(CASES)
