"""Plans: what a run needs besides its prompt, chosen for the backend that runs it (pure Python).

A plan is the schedule's knobs (window, stride, recache, causal or joint) and how its items spread
over the backend: on a pool, block ``b`` on worker ``b mod W`` (``blocks``); on one device, a
tick as one batched (or joint) forward; on one device unbatched, one item at a time. Every plan
has a **bound**: what that backend could reach with it if moving K/V took no time. It is the
page's "ideal", never the tick ratio, which no pool of fewer workers than the window reaches.

The bound of each backend follows from how it runs a schedule:

- pool (``backend/rank.py``): in each tick a worker runs its own items one after another, then
  posts their K/V, and an item waits only for the K/V of lower blocks from the previous tick. A
  tick therefore takes as long as its busiest worker, and the run
  ``sum(max items of one worker)`` forwards against serial's one per item (``pool_forwards``;
  tested against a simulation of that loop);
- batched: one forward per tick of ``n`` rows, whose cost was measured on the device
  (``PlanBackend.forward_seconds``); joint: one forward of ``n`` consecutive blocks, likewise;
- unbatched on one device: one forward per item, so no cascade is faster than its items;
- pool, ``tokens`` placement (sequence parallelism): every worker runs every item on its share of
  the tokens, so an item costs 1/W of a forward if exchanging Q/K/V were free; a joint tick, one
  forward there too, 1/W of that forward's measured cost on one worker. A joint plan on a pool
  needs it: the ``blocks`` placement runs each worker's own blocks item by item. Once a run has
  measured its exchanges, ``bound_with_communication`` counts them too.

Costs are counted in forwards of one block: a tick run as one forward of ``n`` blocks counts as
its measured seconds over one block's, so a run priced by forwards and one priced by measured
ticks share the unit.

The default plan (``choose_plan``) is the fastest on the backend whose measured quality (the
model folder's table of held-out evaluations) is within ``QUALITY_MARGIN`` of serial at the same
steps on every analyzer score. A model without such a table runs its own defaults, else one
block in flight per worker with a stride of a quarter of the steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil
from typing import Callable, Mapping, Sequence

from .schedule import Schedule, make_schedule

QUALITY_SCORES = ("colour", "shape", "motion", "one_object")  # the analyzer's accuracies (flicker is no share)
QUALITY_MARGIN = 0.02  # how far below serial a plan may score on any of them
# a pool's blocks placement and a tick that is one forward of several blocks
BLOCKS_REFUSES_ONE_FORWARD = ("placement blocks runs each worker's own blocks item by item, but this run has ticks "
                              "that are one forward of several blocks (a joint cascade, or a serial run's switch "
                              "pass): use placement tokens, or leave placement unset")


@dataclass(frozen=True)
class PlanBackend:
    """What a plan is fitted to: the executor, its workers and, for one device, the measured
    seconds of one forward of ``n`` items (``forward_seconds(n, joint)``: rows of a batch, or
    consecutive blocks in one joint forward)."""

    executor: str  # "local", "batched" or "distributed"
    workers: int = 1
    forward_seconds: Callable[[int, bool], float] | None = None
    placement: str = "blocks"  # distributed: "blocks" or "tokens" (every item on every worker)

    @property
    def splits_tokens(self) -> bool:
        return self.executor == "distributed" and self.placement == "tokens"

    def describe(self) -> str:
        if self.executor == "distributed":
            workers = f"{self.workers} worker{'s' if self.workers != 1 else ''}"
            return workers + (", each item split over their tokens" if self.splits_tokens else "")
        return "one device, batched" if self.executor == "batched" else "one device, one item at a time"


@dataclass(frozen=True)
class Plan:
    """The schedule's knobs a run uses, and why they were chosen."""

    window: int
    stride: int
    recache: bool
    joint: bool
    reason: str

    @property
    def name(self) -> str:
        return f"W{self.window} s{self.stride}{'' if self.recache else ' no recache'}{' joint' if self.joint else ''}"


# --- bounds --------------------------------------------------------------------------------


def busiest_worker(tick, workers: int) -> int:
    """The most items of ``tick`` that one worker of a pool of ``workers`` owns (block b on worker b mod W)."""
    owned = [0] * workers
    for item in tick:
        owned[item.block % workers] += 1
    return max(owned)


def pool_forwards(schedule: Schedule, workers: int) -> int:
    """Forwards one after another on a pool of ``workers`` with free communication: per tick, the
    most items one worker owns."""
    return sum(busiest_worker(tick, workers) for tick in schedule.ticks)


def run_cost(schedule: Schedule, backend: PlanBackend, joint: bool = False) -> float:
    """What ``schedule`` costs on ``backend`` with free communication, in forwards of one block
    (a tick run as one forward counts its measured seconds over one block's)."""
    if backend.executor == "distributed" and not backend.splits_tokens:
        if joint:
            raise ValueError(BLOCKS_REFUSES_ONE_FORWARD)
        return pool_forwards(schedule, backend.workers)
    share = backend.workers if backend.splits_tokens else 1  # tokens: each forward shared by every worker
    if not (joint or backend.executor == "batched"):
        return schedule.num_items / share
    seconds = backend.forward_seconds
    if seconds is None:
        raise ValueError("a batched or joint plan's bound needs the measured cost of its forwards")
    return sum(seconds(len(tick), joint) for tick in schedule.ticks) / seconds(1, False) / share


def bound(serial: Schedule, schedule: Schedule, backend: PlanBackend, joint: bool = False) -> float:
    """The most ``schedule`` can gain over ``serial`` on ``backend`` if communication were free."""
    return run_cost(serial, _serial_side(backend)) / run_cost(schedule, backend, joint)


def _serial_side(backend: PlanBackend) -> PlanBackend:
    """Serial runs one item per tick: on a pool, on one worker of the pool's kind (how the
    comparison counts it), so a forward costs the same unit."""
    return PlanBackend("local") if backend.executor == "distributed" else backend


def tick_ratio(serial: Schedule, schedule: Schedule) -> float:
    """Critical paths in ticks: what a backend with a worker per block in flight would gain."""
    return serial.num_ticks / schedule.num_ticks


def bound_with_communication(serial_latency_s: float, compute_bound: float, communication_s: float) -> float:
    """The most a run of serial's forwards can gain over serial once the communication it measured
    is counted (the tokens placement: every forward split over the workers).

    With N forwards, serial's time per forward c = ``serial_latency_s`` / N, the bound with free
    communication B = ``compute_bound`` (W × BWCache's cut: each forward's compute shared by the
    W workers, minus what the cache skips) and the measured communication per forward
    m = ``communication_s`` / N (the seconds a worker spent in collectives, averaged over the
    workers, over N)::

        bound = serial_latency_s / (N × (c / B + m)) = serial_latency_s / (serial_latency_s / B + communication_s)

    Never above B (equal to it without communication). A true bound wherever the workers' shares
    of a forward's compute take c / B or more on average (W shares of 1/W of the tokens: together
    at least serial's forward, less what the cache skips): the run lasts at least as long as any
    worker's compute plus its collectives, so at least their mean over the workers,
    N × c / B + ``communication_s``. The mean, not the busiest worker's: a worker
    that waits in a collective for a slower peer's compute counts that wait as communication."""
    if serial_latency_s <= 0 or compute_bound <= 0 or communication_s < 0:
        raise ValueError(f"a bound needs a positive latency and bound and no negative communication, got "
                         f"{serial_latency_s}, {compute_bound}, {communication_s}")
    return serial_latency_s / (serial_latency_s / compute_bound + communication_s)


def describe(plan: Plan, schedule: Schedule, backend: PlanBackend, bound_value: float) -> str:
    """One line for the page, e.g. "W2 s2 on 2 workers: 21 ticks, at most 1.86× here, one item per
    worker per tick"."""
    where = f"on {backend.describe()}"
    line = f"{plan.name} {where}: {schedule.num_ticks} ticks, at most {bound_value:.2f}× here"
    if backend.splits_tokens:
        joint = ", each tick one joint forward whose cost was measured on one worker" if plan.joint else ""
        return line + ", every worker on its share of each forward's tokens" + joint
    if backend.executor == "distributed":
        busiest = max(busiest_worker(tick, backend.workers) for tick in schedule.ticks)
        return line + (", one item per worker per tick" if busiest == 1 else
                       f", up to {busiest} items of one worker in a tick (the window is wider than the workers)")
    if backend.executor == "batched" or plan.joint:
        return line + ", each tick one forward whose cost was measured on this device"
    return line + ", one item at a time: a cascade cannot be faster here"


def assumptions(backend: PlanBackend, bwcache: bool, joint: bool = False) -> str:
    """What a bound assumes, in one line."""
    if backend.splits_tokens and joint:
        text = ("“at most” assumes exchanging Q/K/V inside each forward takes no time: serial's forwards over "
                "the schedule's ticks, each one joint forward priced at its measured cost on one worker and "
                "shared by the workers")
    elif backend.splits_tokens:
        text = ("“at most” assumes exchanging Q/K/V inside each forward takes no time: serial's forwards over "
                "the schedule's items, each shared by the workers")
    elif backend.executor == "distributed":
        text = ("“at most” assumes sending K/V takes no time: serial's forwards over the forwards one worker "
                "runs in turn (the most items any one worker has in each tick, summed)")
    elif backend.executor == "batched":
        text = ("“at most” is serial's forwards over the schedule's ticks, each priced at the measured cost of "
                "one batched forward of its items on this device")
    else:
        text = "“at most” counts forwards: this executor runs one item at a time"
    return text + ("; with BWCache, times the measured cut in block computations" if bwcache else "")


# --- choosing -------------------------------------------------------------------------------


def effective_window(window: int, stride: int, items_per_block: int) -> int:
    """The blocks that can be in flight at once: a wider window changes nothing, since a block
    is done ``items_per_block`` items after it starts and the next starts ``stride`` items later."""
    return min(window, ceil(items_per_block / stride))


def computation(steps: int, window: int, stride: int, recache: bool, joint: bool) -> tuple:
    """What decides a cascade's frames (not its executor, nor a window wider than can fill)."""
    return (steps, effective_window(window, stride, steps + int(recache)), stride, recache, joint)


def measured_quality(table: Sequence[Mapping], steps: int) -> tuple[dict | None, dict[tuple, dict]]:
    """Serial's scores at ``steps``, and every measured cascade's by ``computation``, from a
    model's table of held-out evaluations (plain runs: no BWCache)."""
    serial, cascades = None, {}
    for entry in table:
        if entry["steps"] != steps or entry.get("bwcache") is not None:
            continue
        if entry["mode"] == "serial" and entry["recache"]:
            serial = entry["scores"]
        elif entry["mode"] == "cascade":
            key = computation(steps, entry["window"], entry["stride"], entry["recache"], entry["joint"])
            cascades[key] = entry
    return serial, cascades


def losses(scores: Mapping, serial: Mapping) -> dict[str, float]:
    """How many points (as shares) a plan scores below serial, per analyzer score it loses on."""
    return {k: serial[k] - scores[k] for k in QUALITY_SCORES if serial[k] - scores[k] > QUALITY_MARGIN}


def choose_plan(blocks: int, steps: int, backend: PlanBackend, *, window: int | None = None,
                stride: int | None = None, recache: bool | None = None, joint: bool | None = None,
                table: Sequence[Mapping] = (), defaults: Mapping | None = None) -> Plan:
    """The plan for ``blocks`` × ``steps`` on ``backend``; knobs given are kept, the others chosen.

    From ``table`` (the model's measured plans): the fastest on this backend whose quality stays
    within ``QUALITY_MARGIN`` of serial at ``steps``. Without a measured plan that fits the given
    knobs: ``defaults`` (the model's own settings), else one block in flight per worker (on one
    device, the window the measured batch costs favour) and a quarter of the steps as stride."""
    defaults = defaults or {}
    fixed = {"window": window, "stride": stride, "recache": recache, "joint": joint}
    if backend.executor == "distributed" and joint and not backend.splits_tokens:
        raise ValueError(BLOCKS_REFUSES_ONE_FORWARD)
    measured = _measured_plan(blocks, steps, backend, fixed, table)
    if measured is not None:
        return measured
    return _rule_plan(blocks, steps, backend, fixed, defaults, bool(table))


def _measured_plan(blocks, steps, backend, fixed, table) -> Plan | None:
    serial_scores, cascades = measured_quality(table, steps)
    if serial_scores is None:
        return None
    ranked = []  # (bound, -ticks, stride, causal): higher is better; then the window and the entry
    for entry in cascades.values():
        knobs = {name: entry[name] for name in ("window", "stride", "recache", "joint")}
        # a pool runs a joint plan when asked to (on the tokens placement), never by its own choice
        if (backend.executor == "distributed" and knobs["joint"] and not fixed["joint"]) or any(
                value is not None and value != knobs[name] for name, value in fixed.items() if name != "window"):
            continue
        items = steps + int(knobs["recache"])
        window = fixed["window"] or effective_window(knobs["window"], knobs["stride"], items)
        if effective_window(window, knobs["stride"], items) != effective_window(knobs["window"], knobs["stride"], items):
            continue  # a window that changes which blocks are in flight is another computation
        schedule = make_schedule(blocks, steps, window=window, stride=knobs["stride"], recache=knobs["recache"],
                                 joint=knobs["joint"])
        reach = bound(make_schedule(blocks, steps, recache=knobs["recache"]), schedule, backend, knobs["joint"])
        ranked.append((reach, -schedule.num_ticks, knobs["stride"], not knobs["joint"], window, entry))
    ranked.sort(key=lambda r: r[:4], reverse=True)
    passing = [r for r in ranked if not losses(r[5]["scores"], serial_scores)]
    if not passing:
        return None
    reach, _, _, _, window, entry = passing[0]
    reason = (f"the fastest plan on {backend.describe()} whose held-out quality ({entry['pairs']} pairs) is within "
              f"{QUALITY_MARGIN * 100:.0f} points of serial at {steps} steps on every analyzer score")
    faster = [r for r in ranked if r[0] > reach]
    if faster:
        better, _, _, _, better_window, better_entry = faster[0]
        lost = ", ".join(f"{v * 100:.0f} points of {k.replace('_', ' ')}"
                         for k, v in losses(better_entry["scores"], serial_scores).items())
        reason += f"; W{better_window} s{better_entry['stride']} would reach {better:.2f}× but loses {lost}"
    return Plan(window, entry["stride"], entry["recache"], entry["joint"], reason)


def _rule_plan(blocks, steps, backend, fixed, defaults, had_table: bool) -> Plan:
    chosen = {name: value if value is not None else defaults.get(name) for name, value in fixed.items()}
    sources = {name: "as set" if fixed[name] is not None else "the model's own" for name in fixed
               if chosen[name] is not None}
    recache = True if chosen["recache"] is None else chosen["recache"]
    joint = bool(chosen["joint"])
    stride = chosen["stride"]
    if stride is None:
        stride = min(max(1, steps // 4), steps + int(recache))
        sources["stride"] = "a quarter of the steps"
    window = chosen["window"]
    if backend.executor == "distributed" and not joint and fixed["window"] is None:  # a joint tick is one forward
        sources["window"] = ("the model's own, fitted to the workers" if window else "one block in flight per worker")
        window = min(window or backend.workers, backend.workers)
    elif window is None:
        window = _fastest_window(blocks, steps, stride, recache, joint, backend)
        sources["window"] = "the fastest on this device at this stride"
    why = "no measured plan fits these settings" if had_table else "this model has no measured quality table"
    said = "; ".join(f"{name} {value}: {sources[name]}" for name, value in
                     (("window", window), ("stride", stride)) if name in sources)
    return Plan(window, stride, recache, joint, f"{why}; {said}" if said else why)


def _fastest_window(blocks, steps, stride, recache, joint, backend) -> int:
    """On one device: the window with the highest bound at this stride (ties: the fewer ticks)."""
    items = steps + int(recache)
    widest = effective_window(blocks, stride, items)
    if backend.forward_seconds is None and (joint or backend.executor == "batched"):
        return widest
    serial = make_schedule(blocks, steps, recache=recache)
    return max(range(1, widest + 1), key=lambda w: (
        bound(serial, make_schedule(blocks, steps, window=w, stride=stride, recache=recache, joint=joint), backend,
              joint), w))
