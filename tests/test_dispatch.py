"""Tests for orloj_jax.dispatch: the load board and the dispatchers (numbers derived by hand)."""

from __future__ import annotations

import numpy as np
import pytest

from orloj_jax.dispatch import (
    DeadlineDispatcher,
    DeviceView,
    LoadBoard,
    _SortedIndex,
    dispatcher_names,
    make_dispatcher,
)
from orloj_jax.latency import LatencyModel
from orloj_jax.request import Request
from orloj_jax.scheduler import ModelSpec

SPEC = ModelSpec("m", (1, 2, 4))  # max batch 4


def req(deadline: float, now: float = 0.0, tag: str = "a") -> Request:
    return Request("m", tag, now, deadline)


def view(samples=(10.0, 20.0, 30.0, 40.0)) -> DeviceView:
    """Class 'a' with the given solo samples; g(b) = 1 + 0.1 (b - 1) (the prior)."""
    lat = LatencyModel()
    lat.seed("m", "a", np.asarray(samples))
    lat.mark_all_warm("m")
    return DeviceView({"m": SPEC}, lat)


def test_registry():
    assert dispatcher_names() == ["deadline", "jsq", "round-robin"]
    with pytest.raises(ValueError, match="unknown dispatcher"):
        make_dispatcher("nope")
    with pytest.raises(ValueError, match="target"):
        DeadlineDispatcher(target=1.5)


def test_sorted_index_rekeys_and_searches():
    ix = _SortedIndex(4)
    for dev, key in enumerate([5.0, 1.0, 3.0, 9.0]):
        ix.set(dev, key)
    assert ix.smallest(2) == [(1.0, 1), (3.0, 2)]
    ix.set(1, 7.0)  # re-key: the old entry goes away
    ix.set(3, None)  # absent
    assert ix.smallest(9) == [(3.0, 2), (5.0, 0), (7.0, 1)]
    assert ix.largest_at_most(6.0, 2) == [(5.0, 0), (3.0, 2)]
    assert ix.largest_at_most(2.0, 2) == []


def test_board_backlog_follows_events():
    """Device 0 queues r1 (cost 10) and r2 (cost 6): backlog 16. A batch of r1 predicted to
    take 30 ms starts at t=100: backlog at t=110 = 20 left + 6 queued = 26. r2 is dropped
    (left): 20. The batch ends: 0."""
    b = LoadBoard(2)
    r1, r2 = req(1e9), req(1e9)
    b.queued(0, r1, 10.0, 12.0)
    b.queued(0, r2, 6.0, 8.0)
    d = b.devices[0]
    assert (d.queued_n, d.queued_ms, d.queued_solo_ms) == (2, 16.0, 20.0)
    assert b.least_loaded(0.0, 2) == [(0.0, 1), (16.0, 0)]
    b.started(0, [r1], 30.0, now=100.0)
    assert d.backlog_ms(110.0) == pytest.approx(26.0)
    assert (d.running_n, d.outstanding) == (1, 2)
    assert b.shortest_queue() == 1
    b.left([r2, r2])  # twice: the second is a no-op
    assert d.backlog_ms(110.0) == pytest.approx(20.0) and d.queued_n == 0
    assert b.least_loaded(110.0, 1) == [(0.0, 1)]
    b.finished(0)
    assert d.backlog_ms(110.0) == 0.0 and d.outstanding == 0
    assert d.mean_batch == pytest.approx(1.0)  # EWMA of one batch of 1


def test_board_fitting_is_most_loaded_first():
    b = LoadBoard(3)
    b.queued(0, req(1e9), 10.0)
    b.queued(1, req(1e9), 30.0)
    b.queued(2, req(1e9), 50.0)
    assert b.fitting(0.0, 40.0, 3) == [(30.0, 1), (10.0, 0)]


def test_p_join_by_hand():
    """Samples 10/20/30/40 ms, g(b) = 1 + 0.1 (b - 1), max batch 4.

    Idle, empty device, deadline 25 ms away: F(25) = 0.5 (10 and 20 fit).
    Running batch ending in 5 ms, 1 queued: the request is member 2 of the next
    batch: F((25 - 5) / g(2)) = F(18.2) = 0.25.
    4 queued with mean solo 20: one full batch ahead, g(4) x 20 = 26 ms, then
    member 1: F((60 - 26) / 1) = F(34) = 0.75.
    """
    v = view()
    b = LoadBoard(1)
    assert v.p_join(req(25.0), b.devices[0], 0.0) == pytest.approx(0.5)
    d = b.devices[0]
    d.running_until, d.queued_n, d.queued_solo_ms = 5.0, 1, 20.0
    assert v.p_join(req(25.0), d, 0.0) == pytest.approx(0.25)
    d.running_until, d.queued_n, d.queued_solo_ms = None, 4, 80.0
    assert v.p_join(req(60.0), d, 0.0) == pytest.approx(0.75)
    assert v.solo_ms(req(1.0)) == pytest.approx(25.0)
    assert v.cost_ms(req(1.0), mean_batch=2.0) == pytest.approx(25.0 * 1.1 / 2)


def test_round_robin_and_jsq():
    rr = make_dispatcher("round-robin")
    rr.bind(LoadBoard(3), [view()] * 3)
    assert [rr.choose(req(1e9), 0.0) for _ in range(5)] == [0, 1, 2, 0, 1]
    jsq = make_dispatcher("jsq")
    board = LoadBoard(3)
    jsq.bind(board, [view()] * 3)
    for dev in (0, 0, 1, 2, 2):
        board.queued(dev, req(1e9), 1.0)
    assert jsq.choose(req(1e9), 0.0) == 1


def test_deadline_picks_highest_p_then_less_backlog():
    """Device 0 runs a batch ending in 15 ms, device 1 one ending in 5 ms, device 2 in 25 ms.
    Deadline 40 ms away: P = F(25) = 0.5, F(35) = 0.75, F(15) = 0.25: device 1.
    Deadline 1000 ms away: P = 1 everywhere: the least backlog, device 1 again; with
    device 1 slowed (its samples x 100, P = 0 for 40 ms) a 40 ms deadline goes to device 0."""
    board = LoadBoard(3)
    for dev, end in enumerate((15.0, 5.0, 25.0)):
        board.started(dev, [], end, now=0.0)
    d = make_dispatcher("deadline", target=None)
    d.bind(board, [view(), view(), view()])
    assert d.choose(req(40.0), 0.0) == 1
    assert d.choose(req(1000.0), 0.0) == 1
    d.bind(board, [view(), view((1000.0, 2000.0, 3000.0, 4000.0)), view()])
    assert d.choose(req(40.0), 0.0) == 0


def test_deadline_sticks_to_a_forming_batch_while_likely_on_time():
    """Target 0.7. The current device (0) has one queued request and is idle: joining as
    member 2 gives F(40 / 1.1) = F(36.4) = 0.75 >= 0.7: stay, although device 1 is empty.
    With a 30 ms deadline, F(27.3) = 0.5 < 0.7: move to the empty device 1 (F(30) = 0.75)."""
    board = LoadBoard(2)
    d = make_dispatcher("deadline", target=0.7)
    d.bind(board, [view(), view()])
    board.queued(0, req(1e9), 25.0, 25.0)
    d.current = 0
    assert d.choose(req(40.0), 0.0) == 0
    assert d.choose(req(30.0), 0.0) == 1
    assert d.current == 1


def test_admit_counts_the_request_on_its_device():
    board = LoadBoard(2)
    d = make_dispatcher("jsq")
    d.bind(board, [view(), view()])
    r = req(1e9)
    d.admit(1, r)
    dev = board.devices[1]
    assert dev.queued_n == 1 and dev.queued_solo_ms == pytest.approx(25.0)
    board.left([r])
    assert dev.queued_n == 0 and dev.queued_ms == 0.0
