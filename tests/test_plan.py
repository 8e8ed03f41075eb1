"""Plans: bounds against a simulation of how each backend runs a schedule, and the default choice."""

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cascade.plan import PlanBackend, bound, choose_plan, pool_forwards
from cascade.schedule import make_schedule

TABLE = json.loads((Path(__file__).parent.parent / "cascade/weights/tiny-shapes/plans.json").read_text())["plans"]


def simulated_pool_time(schedule, workers: int) -> int:
    """The pool's own loop (backend/rank.py) with unit forwards and free sends, step by step: in
    each tick a worker runs its items in turn, each once the K/V of every lower block owned by
    another worker from the previous tick were posted, and posts its K/V when its items are done."""
    free = [0] * workers
    posted_before: dict[int, int] = {}
    for tick in schedule.ticks:
        posted = {}
        for worker in range(workers):
            clock = free[worker]
            for item in (i for i in tick if i.block % workers == worker):
                owners = {b % workers for b in range(item.block)} - {worker}
                clock = max([clock] + [posted_before.get(o, 0) for o in owners]) + 1
            posted[worker] = free[worker] = clock
        posted_before = posted
    return max(free)


@settings(max_examples=300, deadline=None)
@given(blocks=st.integers(1, 10), steps=st.integers(1, 6), window=st.integers(1, 8), stride=st.integers(1, 7),
       workers=st.integers(1, 5), recache=st.booleans())
def test_pool_bound_equals_a_simulation_of_the_pool_loop(blocks, steps, window, stride, workers, recache):
    stride = min(stride, steps + recache)
    schedule = make_schedule(blocks, steps, window=window, stride=stride, recache=recache)
    assert pool_forwards(schedule, workers) == simulated_pool_time(schedule, workers)
    serial = make_schedule(blocks, steps, recache=recache)
    assert bound(serial, schedule, PlanBackend("distributed", workers)) == pytest.approx(
        serial.num_items / simulated_pool_time(schedule, workers))
    assert bound(serial, schedule, PlanBackend("distributed", workers)) <= min(workers, serial.num_ticks / schedule.num_ticks) + 1e-9


@settings(max_examples=200, deadline=None)
@given(blocks=st.integers(1, 10), steps=st.integers(1, 6), window=st.integers(1, 8), stride=st.integers(1, 7),
       workers=st.integers(1, 5), first=st.floats(0.01, 2.0), growth=st.lists(st.floats(0.0, 2.0), min_size=7, max_size=7))
def test_joint_tokens_bound_equals_a_simulation_of_the_tokens_loop(blocks, steps, window, stride, workers, first,
                                                                   growth):
    """The tokens placement with free exchanges: in each tick every worker runs the tick's one joint
    forward on its 1/W of the tokens, 1/W of that forward's measured seconds on one worker; serial
    runs every item on one worker, a one-block forward each. Costs grow with the blocks of a forward."""
    costs = [first]
    for extra in growth:
        costs.append(costs[-1] + extra)
    seconds = lambda n, joint: costs[n - 1]  # noqa: E731
    stride = min(stride, steps + 1)
    schedule = make_schedule(blocks, steps, window=window, stride=stride, recache=True, joint=True)
    serial = make_schedule(blocks, steps)
    simulated = sum(costs[len(tick) - 1] / workers for tick in schedule.ticks)
    reach = bound(serial, schedule, PlanBackend("distributed", workers, seconds, placement="tokens"), joint=True)
    assert reach == pytest.approx(serial.num_items * first / simulated)
    # W times the one-device joint bound, in the same unit (a forward of one block), and no more
    # than W times the tick ratio: no tick of one forward costs less than a one-block forward
    assert reach == pytest.approx(workers * bound(serial, schedule, PlanBackend("local", 1, seconds), joint=True))
    assert reach <= workers * serial.num_ticks / schedule.num_ticks + 1e-9


def test_the_issues_figures():
    serial = make_schedule(8, 4)
    pool = PlanBackend("distributed", 2)
    assert bound(serial, make_schedule(8, 4, window=4, stride=2), pool) == pytest.approx(39 / 24)  # 1.62x, not 2.17x
    assert bound(serial, make_schedule(8, 4, window=2, stride=2), pool) == pytest.approx(39 / 21)  # 1.86x
    serial16 = make_schedule(8, 16)
    assert bound(serial16, make_schedule(8, 16, window=4, stride=4), pool) == pytest.approx(135 / 75)  # 1.80x


def test_batched_bound_prices_each_tick_at_its_measured_forward():
    cost = {1: 1.0, 2: 1.5, 3: 1.8}
    backend = PlanBackend("batched", 1, lambda n, joint: cost[n])
    serial, cascade = make_schedule(2, 2, recache=False), make_schedule(2, 2, window=2, stride=1, recache=False)
    assert [len(t) for t in cascade.ticks] == [1, 2, 1]
    assert bound(serial, cascade, backend) == pytest.approx(4 * 1.0 / (1.0 + 1.5 + 1.0))
    assert bound(serial, cascade, PlanBackend("local")) == 1.0  # one item at a time: no gain


def test_default_plans_for_the_bundled_model_come_from_its_measured_quality():
    pool = PlanBackend("distributed", 2)
    at_4 = choose_plan(8, 4, pool, table=TABLE)
    assert (at_4.window, at_4.stride, at_4.recache, at_4.joint) == (2, 2, True, False)
    assert "W2 s1 would reach 1.95× but loses" in at_4.reason and "motion" in at_4.reason
    at_16 = choose_plan(8, 16, pool, table=TABLE)
    assert (at_16.window, at_16.stride) == (2, 3)  # W2 s2 is faster and loses 5 points of colour
    wide = choose_plan(8, 4, PlanBackend("distributed", 4), table=TABLE)
    assert (wide.window, wide.stride) == (3, 2)  # W4 s2's computation: three blocks can be in flight


def test_knobs_a_request_sets_are_kept_and_the_rest_planned_from_its_own_steps():
    pool = PlanBackend("distributed", 2)
    assert choose_plan(8, 4, pool, window=4, table=TABLE).stride == 2  # W4 s1 fails the quality bar
    unmeasured = choose_plan(8, 8, pool, table=TABLE)
    assert (unmeasured.window, unmeasured.stride) == (2, 2) and "no measured plan" in unmeasured.reason
    assert choose_plan(8, 16, pool).stride == 4  # no table: a quarter of the request's steps
    hub = choose_plan(7, 4, PlanBackend("distributed", 4), defaults={"window": 6, "recache": True})
    assert hub.window == 4  # the model's own window, fitted to the workers
    with pytest.raises(ValueError, match="^placement blocks runs each worker's own blocks item by item, but this "
                                         r"run has ticks that are one forward of several blocks \(a joint cascade, or "
                                         r"a serial run's switch pass\): use placement tokens, or leave placement unset$"):
        choose_plan(8, 4, pool, joint=True, table=TABLE)


def test_a_joint_plan_on_a_pool_runs_on_its_tokens_placement_with_its_own_window():
    """Rolling Forcing's own window (6 blocks, stride 1) is not fitted to the workers: every worker
    runs each tick's one forward; without a window given, the fastest by the measured costs."""
    tokens = PlanBackend("distributed", 2, lambda n, joint: 1.0 + 0.5 * (n - 1), placement="tokens")
    rolling = choose_plan(7, 5, tokens, defaults={"mode": "cascade", "window": 6, "stride": 1, "joint": True,
                                                  "recache": True})
    assert (rolling.window, rolling.stride, rolling.joint) == (6, 1, True)
    asked = choose_plan(8, 4, tokens, joint=True, stride=1, table=TABLE)
    assert asked.joint and asked.window == 5  # every block that can fill: cheaper ticks than one block each
    assert not choose_plan(8, 4, tokens, table=TABLE).joint  # a pool's plan is joint only when asked
