"""`sslcli prepare masks|boxes|inspect`: region proposals precomputed into HDF5 stores (docs/regions.md)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from sslcli.cli.apps import prepare_app
from sslcli.cli.common import command
from sslcli.errors import InputError

if TYPE_CHECKING:  # the readers (OpenCV, numpy) load when a command runs, not at CLI start-up
    from sslcli.data.readers.sources import ImageSource
    from sslcli.proposals.runner import Job

MASK_METHODS = ("fh", "grid", "gt", "mcg")
WORKERS_HELP = ("Worker processes (default: one per core this process may use, its CPU affinity; results do not "
                "depend on it).")
SLURM = "Slurm (--executor slurm --shards N; docs/slurm.md)"
# Options of this command that the Slurm shards do not repeat (they get --shard I/N and the resolved --out).
NOT_FOR_SHARDS = {"executor", "shards", "partition", "account", "time_limit", "cpus_per_task", "mem", "sbatch",
                  "shard", "out", "json_output", "quiet", "debug"}
# Options of both `prepare masks` and `prepare boxes`, declared once (the Slurm ones in their own help panel).
Root = Annotated[Path, typer.Argument(help="Data-set root (COCO, ImageFolder, a folder of images or a manifest).")]
Split = Annotated[str, typer.Option("--split", help="COCO split (annotations/instances_<split>.json).")]
Workers = Annotated[int | None, typer.Option("--workers", help=WORKERS_HELP)]
FlushEvery = Annotated[int, typer.Option("--flush-every",
                                         help="Images per crash-safe block (the unit a killed run resumes from).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace a store or partial run with other parameters.")]
Executor = Annotated[str, typer.Option("--executor", help="local | slurm: the --shards N shards as a Slurm job array, "
                                       "then the merge (docs/slurm.md).")]
Shards = Annotated[int | None, typer.Option("--shards", help="slurm: the number of shards (array tasks).")]
Partition = Annotated[str | None, typer.Option("--partition", help="slurm: sbatch --partition.", rich_help_panel=SLURM)]
Account = Annotated[str | None, typer.Option("--account", help="slurm: sbatch --account.", rich_help_panel=SLURM)]
TimeLimit = Annotated[str | None, typer.Option("--time", help="slurm: sbatch --time per shard (default 24:00:00).",
                                               rich_help_panel=SLURM)]
CpusPerTask = Annotated[int | None, typer.Option("--cpus-per-task", min=1, rich_help_panel=SLURM,
                                                 help="slurm: CPUs per shard (give --workers as many).")]
Mem = Annotated[str | None, typer.Option("--mem", help="slurm: memory per shard, e.g. 8G.", rich_help_panel=SLURM)]
Sbatch = Annotated[list[str] | None, typer.Option("--sbatch", rich_help_panel=SLURM,
                                                  help="slurm: an extra sbatch option, e.g. --sbatch=--qos=high "
                                                       "(repeatable).")]
SHARD_HELP = ("Compute only part I of N (0 <= I < N) into <store>.shard-IIII-of-NNNN.h5; join the N parts with "
              "`prepare merge`.")
Shard = Annotated[str | None, typer.Option("--shard", help=SHARD_HELP)]


def parse_scales(text: str) -> list[int]:
    try:
        scales = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise InputError(f"--scales {text!r}: expected comma-separated positive integers, e.g. 500,1000,1500") from None
    if not scales or any(s <= 0 for s in scales):
        raise InputError(f"--scales {text!r}: expected comma-separated positive integers, e.g. 500,1000,1500")
    return scales


def default_store_path(root: Path, source: ImageSource, name: str, split: str) -> Path:
    """``ROOT/sslcli/<name>.h5`` (a manifest's folder for manifests); non-train COCO splits get a ``-<split>`` suffix."""
    if source.kind == "coco" and split != "train2017":
        name = f"{name}-{split}"
    if root.is_file():  # a manifest: keep its stores beside it, named after it
        return root.parent / "sslcli" / f"{root.stem}-{name}.h5"
    return root / "sslcli" / f"{name}.h5"


@command(prepare_app, "masks")
def prepare_masks(
    root: Root,
    method: str = typer.Option("fh", "--method", help="fh | grid | gt | mcg"),
    split: Split = "train2017",
    out: Path | None = typer.Option(None, "--out", help="Store path (default: ROOT/sslcli/<method>-<params>.h5; "
                                    "docs/regions.md lists the names)."),
    workers: Workers = None,
    scales: str = typer.Option("500,1000,1500", "--scales", help="fh: FH scales; min size = scale."),
    sigma: float = typer.Option(0.8, "--sigma", help="fh: Gaussian pre-smoothing."),
    grid: int = typer.Option(5, "--grid", help="grid: n for n×n cells."),
    mcg_dir: Path | None = typer.Option(None, "--mcg-dir", help="mcg: folder of per-image MCG .mat files."),
    flush_every: FlushEvery = 64, overwrite: Overwrite = False, shard: Shard = None, executor: Executor = "local",
    shards: Shards = None, partition: Partition = None, account: Account = None, time_limit: TimeLimit = None,
    cpus_per_task: CpusPerTask = None, mem: Mem = None, sbatch: Sbatch = None,
):
    """Precompute region masks into an HDF5 store (resumable: rerun the same command after a crash or kill).

    Example: sslcli prepare masks coco/ --method fh --scales 500,1000,1500 --workers 8
    """
    from sslcli.data.readers.sources import open_source

    given = dict(locals())  # this command's options, for its Slurm shards
    part = _parse_shard(shard)
    slurm = _slurm_options(executor, shards, part, {"partition": partition, "account": account, "time": time_limit,
                                                    "cpus_per_task": cpus_per_task, "mem": mem, "sbatch": sbatch})
    if method not in MASK_METHODS:
        raise InputError(f"--method {method!r}: expected one of {', '.join(MASK_METHODS)}")
    source = open_source(root, split)
    job, compute, name = _mask_job(method, source, root, split, scales, sigma, grid, mcg_dir)
    path = out if out is not None else default_store_path(root, source, name, split)
    if slurm is not None:
        return _on_slurm("masks", given, path, slurm, overwrite)
    return _run_here(source, path, part, job, compute, workers, flush_every, overwrite)


def _mask_job(method: str, source: ImageSource, root: Path, split: str, scales: str, sigma: float, grid: int,
              mcg_dir: Path | None) -> tuple[Job, Callable, str]:
    """What `prepare masks --method METHOD` computes: the store's job, the per-image function and the store name."""
    from sslcli.data.readers.sources import CocoSource
    from sslcli.proposals import fh, gt, mcg
    from sslcli.proposals import grid as grid_masks
    from sslcli.proposals.runner import Job

    if method == "fh":
        scale_list = parse_scales(scales)
        if sigma < 0:
            raise InputError(f"--sigma {sigma}: expected a non-negative number")
        name = "fh-s" + "_".join(map(str, scale_list)) + ("" if sigma == fh.DEFAULT_SIGMA else f"-sigma{sigma:g}")
        return (Job("masks", "fh", {"scales": scale_list, "min_sizes": scale_list, "sigma": sigma}),
                functools.partial(fh.compute_fh, scales=tuple(scale_list), sigma=sigma), name)
    if method == "grid":
        if grid < 1:
            raise InputError(f"--grid {grid}: expected a positive integer")
        return Job("masks", "grid", {"grid": grid}), functools.partial(grid_masks.compute_grid, n=grid), f"grid-{grid}"
    if method == "gt":
        if not isinstance(source, CocoSource):
            raise InputError(f"{root}: --method gt needs a COCO root with annotations/instances_{split}.json")
        return (Job("masks", "gt", {"paint_order": "largest_first"}, region_values_name="iscrowd",
                    needs_annotations=True), gt.compute_gt, "gt")
    if mcg_dir is None:
        raise InputError("--method mcg needs --mcg-dir DIR (a folder of per-image MCG .mat files)")
    index = mcg.index_mcg_dir(mcg_dir)
    return (Job("masks", "mcg", {"top_k": mcg.TOP_K}, region_values_name="score"),
            functools.partial(mcg.compute_mcg, mcg_index=index), "mcg")


def _run_here(source: ImageSource, path: Path, part, job: Job, compute: Callable, workers: int | None,
              flush_every: int, overwrite: bool) -> dict:
    """Compute the store (or, with --shard I/N, its part) in this process and its workers."""
    from sslcli.proposals.runner import run_job

    return run_job(source, path if part is None else part.part_path(path), job, compute, workers=workers,
                   flush_every=flush_every, overwrite=overwrite, shard=part)


def _slurm_options(executor: str, shards: int | None, part, flags: dict):
    """The Slurm options when --executor slurm (with --shards N), else None; wrong combinations in one line."""
    from sslcli.slurm import options_from

    given = [f"--{k.replace('_', '-')}" for k, v in flags.items() if v not in (None, [], ())]
    if executor not in ("local", "slurm"):
        raise InputError(f"--executor {executor!r}: expected local or slurm")
    if executor == "local":
        if given or shards is not None:
            raise InputError(f"{', '.join(given + (['--shards'] if shards is not None else []))}: need "
                             "--executor slurm")
        return None
    if shards is None or shards < 1:
        raise InputError(f"--executor slurm: give --shards N (N >= 1), got {shards}")
    if part is not None:
        raise InputError("--shard I/N with --executor slurm: the executor runs every shard; drop --shard")
    return options_from({}, flags, "slurm options"), shards


def _on_slurm(name: str, given: dict, store: Path, slurm: tuple, overwrite: bool) -> dict:
    """Every shard of this very command (``given``: its options) as a Slurm array task with ``--shard I/N``, then
    the merge."""
    import typer.main

    from sslcli.cli.common import current
    from sslcli.proposals.slurm_shards import prepare_on_slurm

    args = ["prepare", name]
    for param in typer.main.get_command(prepare_app).commands[name].params:  # type: ignore[attr-defined]
        value = given.get(param.name)
        if param.name in NOT_FOR_SHARDS or value is None or value is False:
            continue
        if param.param_type_name == "argument":
            args.append(str(value))
        elif param.is_flag:
            args.append(param.opts[0])
        else:
            args += [param.opts[0], str(value)]
    options, count = slurm
    return prepare_on_slurm(lambda shard: [*args, "--out", str(store), "--shard", str(shard)], store, count,
                            options, overwrite, current().info)


def _parse_shard(text: str | None):
    from sslcli.proposals.shards import Shard

    return None if text is None else Shard.parse(text)


@command(prepare_app, "boxes")
def prepare_boxes(
    root: Root,
    method: str = typer.Option("selective-search", "--method", help="selective-search"),
    box_filter: str = typer.Option("soco", "--filter", help="soco | none"),
    backend: str = typer.Option("vectorized", "--backend",
                                help="vectorized (fast) | opencv (ximgproc) | reference (the selectivesearch package)"),
    strategies: str | None = typer.Option(
        None, "--strategies", help="vectorized: diverse (default: SoCo's similarity + 3 of Uijlings' "
        "diversifications; higher recall) | soco (colour+texture+size+fill only, as SoCo). Other backends: soco."),
    split: Split = "train2017",
    out: Path | None = typer.Option(None, "--out", help="Store path (default: ROOT/sslcli/ss-<filter>[-<backend>]"
                                    "[-soco-strategies].h5; docs/regions.md lists the names)."),
    workers: Workers = None,
    flush_every: FlushEvery = 64, overwrite: Overwrite = False, shard: Shard = None, executor: Executor = "local",
    shards: Shards = None, partition: Partition = None, account: Account = None, time_limit: TimeLimit = None,
    cpus_per_task: CpusPerTask = None, mem: Mem = None, sbatch: Sbatch = None,
):
    """Precompute box proposals into an HDF5 store (resumable: rerun the same command after a crash or kill).

    Example: sslcli prepare boxes coco/ --method selective-search --filter soco --workers 8
    """
    from sslcli.data.readers.sources import open_source

    given = dict(locals())  # this command's options, for its Slurm shards
    part = _parse_shard(shard)
    slurm = _slurm_options(executor, shards, part, {"partition": partition, "account": account, "time": time_limit,
                                                    "cpus_per_task": cpus_per_task, "mem": mem, "sbatch": sbatch})
    job, compute, name = _box_job(method, box_filter, backend, strategies)
    source = open_source(root, split)
    path = out if out is not None else default_store_path(root, source, name, split)
    if slurm is not None:
        return _on_slurm("boxes", given, path, slurm, overwrite)
    return _run_here(source, path, part, job, compute, workers, flush_every, overwrite)


def _box_job(method: str, box_filter: str, backend: str, strategies: str | None) -> tuple[Job, Callable, str]:
    """What `prepare boxes` computes: the store's job, the per-image function and the store name."""
    from sslcli.proposals import selective_search as ss
    from sslcli.proposals.runner import Job

    if method != "selective-search":
        raise InputError(f"--method {method!r}: expected selective-search")
    if box_filter not in ("soco", "none"):
        raise InputError(f"--filter {box_filter!r}: expected soco or none")
    if backend not in ss.BACKENDS:
        raise InputError(f"--backend {backend!r}: expected one of {', '.join(ss.BACKENDS)}")
    if strategies is None:
        strategies = ss.default_strategies(backend)
    if strategies not in ss.STRATEGIES:
        raise InputError(f"--strategies {strategies!r}: expected one of {', '.join(ss.STRATEGIES)}")
    if strategies != "soco" and backend != "vectorized":
        raise InputError(f"--strategies {strategies}: only the vectorized backend diversifies")
    job = Job("boxes", "selective-search", {"scale": ss.SCALE, "sigma": ss.SIGMA, "min_size": ss.MIN_SIZE,
                                            "backend": backend, "filter": box_filter, "strategies": strategies})
    compute = functools.partial(ss.compute_boxes, backend=backend, box_filter=box_filter, strategies=strategies)
    name = f"ss-{box_filter}" + ("" if backend == ss.DEFAULT_BACKEND else f"-{backend}")
    if backend == "vectorized" and strategies != ss.DEFAULT_STRATEGIES:
        name += f"-{strategies}-strategies"
    return job, compute, name


@command(prepare_app, "merge")
def prepare_merge(
    parts: list[Path] = typer.Argument(..., help="Every part of one sharded run (<store>.shard-IIII-of-NNNN.h5)."),
    out: Path = typer.Option(..., "--out", help="The store to write (what one unsharded run would have written)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing store."),
):
    """Join the parts of a `--shard I/N` run into one store, the same value for value as an unsharded run.

    Example: sslcli prepare merge coco/sslcli/fh-s1000.shard-*-of-0016.h5 --out coco/sslcli/fh-s1000.h5
    """
    from sslcli.proposals.shards import merge_parts

    return merge_parts(parts, out, overwrite=overwrite)


@command(prepare_app, "inspect")
def prepare_inspect(
    store: Path = typer.Argument(..., help="An HDF5 region store."),
    gt: Path | None = typer.Option(None, "--gt", help="COCO root: measure ABO / recall against its instances."),
    split: str = typer.Option("train2017", "--split", help="COCO split of the ground truth."),
    limit: int | None = typer.Option(None, "--limit", help="Only the first N stored images."),
    render: Path | None = typer.Option(None, "--render", help="Write PNGs of a few images with their regions here "
                                       "(needs --gt ROOT: the images are read from the data set)."),
    render_count: int = typer.Option(4, "--render-count", help="How many images --render draws."),
):
    """Summarise a region store and measure its quality against ground truth.

    Example: sslcli prepare inspect coco/sslcli/fh-s1000.h5 --gt coco/
    """
    from sslcli.analysis.quality import render_regions, store_report

    if limit is not None and limit < 1:
        raise InputError(f"--limit {limit}: expected a positive number of images")
    if render is not None and render_count < 1:  # a negative count would slice "all but the last" images
        raise InputError(f"--render-count {render_count}: expected a positive number of images")
    if render is not None and gt is None:
        raise InputError("--render needs --gt ROOT (the data set, to read the images)")
    report = store_report(store, gt, split, limit)
    if render is not None:
        report["rendered"] = render_regions(store, gt, render, render_count, split)
    return report
