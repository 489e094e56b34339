"""Training data for the engine: a dataset over any `open_source` layout, a seeded per-rank batch sampler, the loader.

Determinism (what makes ``--resume`` and multi-process runs reproducible):
- the order of an epoch is a permutation drawn from ``(seed, epoch)`` only; global batch ``b`` is the slice
  ``perm[b·G:(b+1)·G]`` and rank ``r`` takes the contiguous part ``[r·G/W, (r+1)·G/W)`` of it, so the ranks together
  see exactly the batch a single process would see, in the same order after an all-gather;
- every sample's augmentation runs under RNG states (python ``random``, numpy, torch) seeded from
  ``(seed, epoch, index)``, so the views do not depend on the number of ranks, workers or prefetching, and a resumed
  run draws the same crops as an uninterrupted one. The global RNG states around the transform are restored, so a
  ``workers: 0`` run does not disturb the training loop's own random stream.
Corrupt images are replaced by the next readable image of the data set (deterministically), reported with their
path once, and counted; they never crash a run.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from sslcli.data.readers.images import EncodedImage
from sslcli.data.readers.sources import ImageSource, open_source
from sslcli.data.views.device_ops import CACHED_KEY, IMAGES_KEY, LIST_KEYS, CachedImage, DeviceViews
from sslcli.data.views.image_cache import ImageCache, hold_region_stores
from sslcli.engine.threads import worker_threads
from sslcli.errors import CorruptImageError, InputError, SslcliError
from sslcli.method_registry import import_target, method_entry
from sslcli.process import ignore_stop_signals
from sslcli.spec import RunSpec, available_memory

SKIPPED_KEY = "_skipped"  # per-sample list of corrupt images as (path, message), removed by `collate`

Sample = dict[str, Any]  # one image's views (a transform's output) or, collated, a batch of them
Transform = Callable[[Sample], Sample]


def derive_seed(*parts: int) -> int:
    """A 32-bit seed mixed from integers (numpy SeedSequence: well spread even for neighbouring inputs)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


@contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Seed python ``random``, numpy and torch (CPU) inside the block; restore the previous states after it."""
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    # The CPU generator only: torch.manual_seed would also reseed CUDA (unrestored below; with workers 0 that is the
    # training loop's CUDA RNG) and costs ~0.2 ms per sample.
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


class EpochBatchSampler:
    """Yields this rank's batches as lists of ``(epoch, index)`` keys; the last incomplete global batch is dropped.

    Call `set_epoch` before iterating; ``skip`` batches at the start of the epoch are left out (mid-epoch resume).
    """

    def __init__(self, num_samples: int, global_batch: int, rank: int, world_size: int, seed: int):
        if global_batch % world_size:
            raise InputError(f"batch_size: {global_batch} is not divisible by the number of processes {world_size}")
        if num_samples < global_batch:
            raise InputError(f"data: {num_samples} images is fewer than one global batch (batch_size {global_batch})")
        self.num_samples, self.global_batch = num_samples, global_batch
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.local_batch = global_batch // world_size
        self.epoch, self.skip = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        return self.num_samples // self.global_batch

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        return self.steps_per_epoch - self.skip

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        gen = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, 0x5A3))
        perm = torch.randperm(self.num_samples, generator=gen).tolist()
        for b in range(self.skip, self.steps_per_epoch):
            start = b * self.global_batch + self.rank * self.local_batch
            yield [(self.epoch, i) for i in perm[start:start + self.local_batch]]


class TrainDataset(Dataset[Sample]):
    """``dataset[(epoch, index)]`` = ``transform({"image": (H,W,3) uint8 RGB, "index": int, "image_id": id})``.

    With ``cached`` (``data.cache``: the image cache's `CachedImage` entries, no pixels) the image is the entry of the
    cache instead of the file's bytes; one that could not be cached is replaced like a corrupt file."""

    def __init__(self, source: ImageSource, transform: Transform, seed: int, cached: list[CachedImage] | None = None):
        self.source, self.transform, self.seed, self.cached = source, transform, seed, cached

    def __len__(self) -> int:
        return len(self.source)

    def _sample(self, i: int) -> Sample:
        if self.cached is not None:
            entry = self.cached[i]
            if entry.error is not None:
                raise CorruptImageError(entry.path, entry.error)
            return {"image": entry, "index": i, "image_id": self.source.records[i].image_id}
        if not getattr(self.transform, "accepts_encoded", False):
            return self.source.sample(i)
        # The transform decodes itself (at reduced size when its crops allow): hand it the bytes and header size.
        record = self.source.records[i]
        return {"image": EncodedImage.read(record.path), "index": i, "image_id": record.image_id}

    def __getitem__(self, key: tuple[int, int]) -> Sample:
        epoch, index = key
        skipped = []
        for offset in range(len(self.source)):
            i = (index + offset) % len(self.source)
            try:  # a transform that decodes raises CorruptImageError itself: the next image replaces it too
                sample = self._sample(i)
                with seeded_rng(derive_seed(self.seed, epoch, index)):
                    out = self.transform(sample)
                break
            except CorruptImageError as exc:
                skipped.append((exc.path, str(exc)))
        else:
            raise SslcliError(f"{self.source.root}: no image of the data set could be decoded")
        out[SKIPPED_KEY] = skipped
        return out


def collate(samples: list[Sample]) -> Sample:
    """`default_collate` over the samples, with the corrupt images (path, message) gathered into one flat list and the
    variable-size entries of the device pipeline (`LIST_KEYS`: file bytes, paths) kept as lists."""
    skipped = [msg for s in samples for msg in s.pop(SKIPPED_KEY, [])]
    lists = {k: [s.pop(k) for s in samples] for k in LIST_KEYS if k in samples[0]}
    batch: Sample = default_collate(samples)
    batch.update(lists)
    batch[SKIPPED_KEY] = skipped
    return batch


class DeviceLoader:
    """Iterates a DataLoader of `DeviceViews` parameter batches and yields the views computed on ``device``
    (``data.pipeline: gpu``); the corrupt-image messages pass through.

    On CUDA, batch k+1 is decoded and augmented on a side stream while the training step of batch k runs on the
    current stream: nvJPEG's hardware decoder and the augmentation kernels overlap the training kernels instead of
    running between steps. The current stream waits for a batch's event before using it, and its tensors are recorded
    on that stream so the allocator does not reuse their memory early.
    """

    def __init__(self, loader: DataLoader[Sample], views: DeviceViews, device: torch.device,
                 cache: ImageCache | None = None):
        self.loader, self.views, self.device, self.cache = loader, views, device, cache

    def __len__(self) -> int:
        return len(self.loader)

    def _apply(self, batch: Sample) -> Sample:
        if self.cache is not None:  # the views' `decode_fields` takes these instead of decoding
            if CACHED_KEY not in batch:
                raise InputError(f"data.cache: the device views {type(self.views).__name__} send no cache positions "
                                 "(their worker side does not call encoded_fields); use data.cache: none")
            batch[IMAGES_KEY] = self.cache.lookup(batch.pop(CACHED_KEY), self.device)
        out = self.views.apply(batch, self.device)
        out[SKIPPED_KEY] = batch[SKIPPED_KEY]
        return out

    def __iter__(self) -> Iterator[Sample]:
        if self.device.type != "cuda":
            for batch in self.loader:
                yield self._apply(batch)
            return
        side = torch.cuda.Stream(device=self.device)
        main = torch.cuda.current_stream(self.device)
        pending = None
        for batch in self.loader:
            with torch.cuda.stream(side):
                out = self._apply(batch)
                done = torch.cuda.Event()
                done.record(side)
            if pending is not None:
                yield _hand_over(*pending, main)
            pending = (out, done)
        if pending is not None:
            yield _hand_over(*pending, main)


def _hand_over(out: Sample, done: torch.cuda.Event, stream: torch.cuda.Stream) -> Sample:
    """Make ``stream`` wait for a side-stream batch and tie its tensors' memory to ``stream``."""
    stream.wait_event(done)
    for value in out.values():
        if isinstance(value, torch.Tensor) and value.is_cuda:
            value.record_stream(stream)
    return out


def stop_workers(loader: Iterable[Sample]) -> None:
    """Shut down the loader's persistent worker processes now, as torch does when their iterator goes away. The
    workers ignore stop signals, so none may be left for the interpreter's exit, which SIGTERMs leftover daemon
    processes and waits for them."""
    inner = loader.loader if isinstance(loader, DeviceLoader) else loader
    iterator = getattr(inner, "_iterator", None)  # where a DataLoader keeps its persistent workers
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
        setattr(inner, "_iterator", None)  # noqa: B010 - torch's own attribute, no typed way to reset it


def training_device() -> torch.device:
    """The device `sslcli.engine.launch` gives this rank: the current CUDA device if there is one, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


class _WorkerInit:
    """Gives each DataLoader worker one compute thread and seeds it from (seed, epoch, rank, worker); the per-sample
    seeding makes views independent of it, this only keeps any stray randomness in a worker reproducible too.
    Workers ignore stop signals (torch's own SIGTERM handler would end them): the training process stops them after
    its checkpoint (docs/pretrain.md, "Preemption and signals")."""

    def __init__(self, seed: int, epoch: int, rank: int):
        self.seed, self.epoch, self.rank = seed, epoch, rank

    def __call__(self, worker_id: int) -> None:
        worker_threads()
        ignore_stop_signals()
        s = derive_seed(self.seed, self.epoch, self.rank, worker_id)
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)


def build_device_views(spec: RunSpec, transform: Transform) -> DeviceViews:
    """The device views of the spec's method built from its CPU ``transform`` (the ``device_views`` hook of its registry
    entry; spec validation refuses ``data.pipeline: gpu`` for a method without one)."""
    name: str = spec.method.name  # type: ignore[attr-defined]  # every registered method spec has one
    hook = method_entry(name).device_views
    if hook is None:
        raise InputError(f"data.pipeline: 'gpu': method {name} has no device views; use data.pipeline: cpu")
    views: DeviceViews = import_target(hook)(transform)
    return views


def host_share() -> tuple[int, str]:
    """This rank's share of the host's available memory and its name: each rank of the node holds its own cache."""
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if ranks > 1:
        return available_memory() // ranks, f"of host memory available to each of this node's {ranks} ranks"
    return available_memory(), "of host memory available"


def cache_limit(where: str, device: torch.device) -> tuple[int, str]:
    """Bytes the image cache may take (``data.cache``) and which memory that is: the free memory of a CUDA device for
    ``device``, else this rank's share of the host's available memory."""
    if where == "device" and device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0], f"free on {device}"
    return host_share()


def build_image_cache(spec: RunSpec, source: ImageSource, views: DeviceViews, device: torch.device,
                      pin_memory: bool) -> ImageCache:
    """The image cache of ``data.cache``, built once in this (the training) process; workers get only its entries.
    The region stores the views read go into host memory first (the images' limit then counts them as taken)."""
    hold_region_stores(views.region_stores(), spec.data.cache, *host_share())
    limit, limit_name = cache_limit(spec.data.cache, device)
    return ImageCache.build([record.path for record in source.records], spec.data.cache, device, limit, limit_name,
                            pin=pin_memory and spec.data.cache == "memory")


def build_loader(spec: RunSpec, transform: Transform, rank: int, world_size: int, start_epoch: int,
                 pin_memory: bool) -> tuple[Iterable[Sample], EpochBatchSampler]:
    """The training DataLoader of this rank (workers, pinned memory, persistent workers) and its batch sampler.

    With ``data.pipeline: gpu`` the workers only sample parameters and read bytes (`DeviceViews`); the returned
    loader decodes and augments each batch on this rank's device. With ``data.cache`` the images are decoded once
    here, before the loader exists, and the workers read no file (`build_image_cache`).
    """
    source = open_source(spec.data.root, spec.data.split, spec.data.format)
    device_views = build_device_views(spec, transform) if spec.data.pipeline == "gpu" else None
    cache = None
    if device_views is not None and spec.data.cache != "none":
        cache = build_image_cache(spec, source, device_views, training_device(), pin_memory)
    dataset = TrainDataset(source, device_views or transform, spec.seed, cache.entries if cache else None)
    sampler = EpochBatchSampler(len(source), spec.batch_size, rank, world_size, spec.seed)
    workers = spec.data.workers
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
                        pin_memory=pin_memory, persistent_workers=workers > 0,
                        worker_init_fn=_WorkerInit(spec.seed, start_epoch, rank) if workers else None,
                        prefetch_factor=4 if workers else None,
                        # A private generator: the loader must not draw from the training loop's global RNG.
                        generator=torch.Generator().manual_seed(spec.seed))
    if device_views is not None:
        return DeviceLoader(loader, device_views, training_device(), cache), sampler
    return loader, sampler
