"""Gradio's queue polls less often, so that it leaves the cores to the runs.

Gradio's queue wakes its event loop every millisecond to look for new jobs, even while one runs
(``Queue.sleep_when_free``, 1 ms off Windows), and every 10 ms for progress to send. On a 2-core
box whose two cores run the pool's two workers, those thousand wake-ups a second took 0.13-0.16 s
of CPU per default comparison and preempted a worker each time; through the app the cascade ran
about 10% slower than the same Service called directly (``benchmarks/bench_app.py``). Gradio has
no setting for either interval, so they are set on the queue ``Blocks.queue`` made.
"""

JOB_POLL_S = 0.01  # a queued comparison starts at most this long after the one before it ends
PROGRESS_POLL_S = 0.05  # the progress bar moves 20 times a second


def quiet_queue(demo):
    """``demo`` (after ``demo.queue()``) with its queue polling every ``JOB_POLL_S`` for jobs and
    every ``PROGRESS_POLL_S`` for progress; raises if this Gradio's queue has no such intervals."""
    queue = demo._queue
    for name, seconds in (("sleep_when_free", JOB_POLL_S), ("progress_update_sleep_when_free", PROGRESS_POLL_S)):
        if not isinstance(getattr(queue, name, None), float):
            raise RuntimeError(f"Gradio's queue has no {name} interval to set: check cascade/ui/quiet_queue.py "
                               "against this Gradio version")
        setattr(queue, name, seconds)
    return demo
