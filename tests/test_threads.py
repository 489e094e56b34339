"""The per-rank thread policy (sslcli.engine.threads): hand-worked cases, overrides, and what the engine sets."""

from __future__ import annotations

import pytest
import torch

from sslcli.engine.data import _WorkerInit
from sslcli.engine.threads import choose_threads, compute_threads, configure_threads
from sslcli.errors import InputError
from sslcli.spec import parse_spec


@pytest.mark.parametrize("cores, ranks, workers, expected", [
    (2, 1, 0, 2),     # one CPU process, loading in the main process: both cores compute
    (2, 1, 2, 1),     # 2 workers take both cores: the compute keeps one thread (never 0)
    (16, 1, 4, 12),   # one GPU on a 16-core node: 16 − 4 workers
    (16, 8, 4, 1),    # 8 ranks share 16 cores: 2 each, both taken by 4 workers → floor of 1
    (64, 4, 8, 8),    # 4 ranks: 16 cores each, 8 to the workers
    (96, 8, 6, 6),    # 12 cores per rank, 6 to the workers
    (2, 4, 0, 1),     # more ranks than cores
    (1, 1, 0, 1),
])
def test_compute_threads_hand_worked(cores, ranks, workers, expected):
    assert compute_threads(cores, ranks, workers) == expected


def test_compute_threads_refuses_impossible_input():
    with pytest.raises(ValueError, match="cores=0"):
        compute_threads(0, 1, 0)


def test_overrides_take_precedence_in_order():
    assert choose_threads(3, 1, 0, env={"OMP_NUM_THREADS": "5"}, cores=8)[0] == 3  # the spec field first
    assert choose_threads(None, 1, 0, env={"OMP_NUM_THREADS": "5"}, cores=8) == (5, "OMP_NUM_THREADS")
    threads, why = choose_threads(None, 2, 1, env={}, cores=8)
    assert threads == 3 and "8 core(s)" in why and "2 rank(s)" in why and "1 DataLoader worker" in why
    assert choose_threads(None, 2, 1, env={}, cores=6)[0] == 2  # 6 / 2 − 1
    with pytest.raises(InputError, match="OMP_NUM_THREADS='x'"):
        choose_threads(None, 1, 0, env={"OMP_NUM_THREADS": "x"}, cores=8)


def test_spec_field_is_validated():
    base = {"data": {"root": "d"}, "method": {"name": "moco", "queue_size": 256}, "batch_size": 16}
    assert parse_spec({**base, "data": {"root": "d", "threads": 2}}).data.threads == 2
    with pytest.raises(InputError, match="data.threads"):
        parse_spec({**base, "data": {"root": "d", "threads": 0}})


def test_configure_threads_sets_torch_and_describes_the_choice(monkeypatch, capsys):
    spec = parse_spec({"data": {"root": "d", "workers": 1, "threads": 1}, "method": {"name": "moco", "queue_size": 256},
                       "batch_size": 16})
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the spec field wins over the environment
        note = configure_threads(spec)
        assert torch.get_num_threads() == 1
        assert "threads: 1 compute thread(s) per rank (data.threads)" in note
        assert capsys.readouterr().err == ""  # the trainer logs the line, after the run's inputs are checked
    finally:
        torch.set_num_threads(before)


def test_worker_init_sets_one_thread():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        _WorkerInit(seed=0, epoch=0, rank=0)(worker_id=0)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
