"""Properties of serial and cascaded schedules over many sizes."""

import itertools

import pytest

from cascade.plan import tick_ratio
from cascade.schedule import RECACHE, WorkItem, make_schedule, serial_schedule

SIZES = list(itertools.product([1, 2, 3, 5, 8], [1, 2, 4], [1, 2, 3, 5], [False, True]))


def cases():
    for blocks, steps, window, recache in SIZES:
        for stride in range(1, steps + int(recache) + 1):
            yield blocks, steps, window, stride, recache


def positions(schedule):
    return {item: tick for tick, items in enumerate(schedule.ticks) for item in items}


@pytest.mark.parametrize("blocks,steps,window,stride,recache", list(cases()))
def test_schedule_properties(blocks, steps, window, stride, recache):
    schedule = make_schedule(blocks, steps, window=window, stride=stride, recache=recache)
    where = positions(schedule)
    every_item = [item for b in range(blocks) for item in schedule.block_items(b)]
    # every item exactly once
    assert sorted(map(str, every_item)) == sorted(str(i) for tick in schedule.ticks for i in tick)
    assert schedule.num_items == len(every_item) == len(where)
    for b in range(blocks):
        items = schedule.block_items(b)
        ticks = [where[item] for item in items]
        # a block's items in order, one per tick, without gaps once started
        assert ticks == list(range(ticks[0], ticks[0] + len(items)))
        if b > 0:
            # the start rule: block b starts in the first allowed tick after block b-1 has done
            # `stride` items (it may wait for a free slot in the window, never for nothing)
            earliest = where[schedule.block_items(b - 1)[stride - 1]] + 1
            assert ticks[0] >= earliest
            if ticks[0] > earliest:
                assert len(schedule.ticks[ticks[0] - 1]) == window
    for tick in schedule.ticks:
        assert 1 <= len(tick) <= window  # the window bound
        assert len({item.block for item in tick}) == len(tick)


@pytest.mark.parametrize("blocks,steps,recache", [(1, 1, False), (4, 4, True), (7, 3, False)])
def test_window_one_or_full_stride_is_serial(blocks, steps, recache):
    serial = serial_schedule(blocks, steps, recache=recache)
    expected = tuple((item,) for b in range(blocks) for item in serial.block_items(b))
    assert serial.ticks == expected
    assert serial.num_ticks == blocks * (steps + int(recache)) - int(recache)
    full_stride = steps + int(recache)
    for window in (1, 2, 4):
        assert make_schedule(blocks, steps, window=window, stride=full_stride, recache=recache).ticks == expected
    for stride in range(1, full_stride + 1):
        assert make_schedule(blocks, steps, window=1, stride=stride, recache=recache).ticks == expected


def test_cascade_stride_one_window_four_shape():
    schedule = make_schedule(8, 4, window=4, stride=1, recache=False)
    assert schedule.ticks[0] == (WorkItem(0, 0),)
    assert schedule.ticks[1] == (WorkItem(0, 1), WorkItem(1, 0))
    assert schedule.ticks[3] == (WorkItem(0, 3), WorkItem(1, 2), WorkItem(2, 1), WorkItem(3, 0))
    assert schedule.num_ticks == 8 + 4 - 1
    assert tick_ratio(serial_schedule(8, 4, recache=False), schedule) == pytest.approx(32 / 11)


def test_recache_is_the_last_item_of_a_block_but_the_last_block_has_none():
    schedule = make_schedule(2, 2, window=2, stride=1, recache=True)
    assert schedule.block_items(0)[-1] == WorkItem(0, RECACHE)
    assert WorkItem(0, RECACHE).is_recache
    assert schedule.block_items(1) == [WorkItem(1, 0), WorkItem(1, 1)]
    assert schedule.as_lists() == [[(0, 0)], [(0, 1), (1, 0)], [(0, RECACHE), (1, 1)]]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(num_blocks=0, num_steps=4), "num_blocks"),
        (dict(num_blocks=2, num_steps=0), "num_steps"),
        (dict(num_blocks=2, num_steps=4, window=0), "window"),
        (dict(num_blocks=2, num_steps=4, stride=6), "stride"),
        (dict(num_blocks=2, num_steps=4, stride=5, recache=False), "stride"),
    ],
)
def test_bad_arguments_are_explained(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_schedule(**kwargs)
