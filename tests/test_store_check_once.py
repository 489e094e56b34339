"""The stale-store check (every training image hashed against the digests a region store records) runs once per run:
a check passed on the very same files (the store and every image, by path, size and modification time) is not
redone, in this process or in the ranks a launcher spawns (they inherit the record from the environment); a file
replaced since makes the check run again."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
from PIL import Image

from sslcli.data.stores import digests
from sslcli.data.stores.store import RegionStore
from sslcli.errors import InputError


@pytest.fixture
def scenes_with_store(tmp_path, cli, monkeypatch):
    from sslcli.data.scenes.synthetic import generate

    monkeypatch.delenv(digests.CHECKED_ENV, raising=False)  # restored (removed) after the test
    root = tmp_path / "scenes"
    generate(root, n_train=6, n_val=0, seed=0, size=64)
    code, _, err = cli(["prepare", "masks", root, "--method", "grid", "--grid", "2", "--workers", "1"])
    assert code == 0, err
    store = RegionStore(next((root / "sslcli").glob("grid*.h5")))
    return root, store, SimpleNamespace(root=str(root), split="train2017", format="auto")


def _count_hashing(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = digests.content_digests

    def counting(source, indices, threads=8):
        calls.append(len(indices))
        return real(source, indices, threads)

    monkeypatch.setattr(digests, "content_digests", counting)
    return calls


def test_a_passed_check_is_recorded_and_not_redone_on_the_same_files(scenes_with_store, monkeypatch):
    root, store, data = scenes_with_store
    calls = _count_hashing(monkeypatch)
    digests.require_store_matches(store, data, "method.masks.path")
    assert calls == [6]  # every training image hashed once
    recorded = os.environ[digests.CHECKED_ENV].split(",")
    assert len(recorded) == 1 and len(recorded[0]) == 64  # one sha256 fingerprint, inherited by spawned ranks
    digests.require_store_matches(store, data, "method.masks.path")
    assert calls == [6]  # the second check (a rank's) trusted the first


def test_an_image_replaced_since_the_check_is_hashed_again_and_refused(scenes_with_store, monkeypatch):
    root, store, data = scenes_with_store
    digests.require_store_matches(store, data, "method.masks.path")
    calls = _count_hashing(monkeypatch)
    image = sorted((root / "train2017").glob("*.jpg"))[0]
    pixels = Image.open(image)
    pixels.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(image, quality=90)  # same size and id, other content
    with pytest.raises(InputError, match="was computed from other images: 1 of the 6"):
        digests.require_store_matches(store, data, "method.masks.path")
    assert calls == [6]
