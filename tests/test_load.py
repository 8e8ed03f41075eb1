"""Load and resources (issue 15): many visitors at once, a bounded queue, bounded disk, and the
same frames for the same request whatever ran before it.

Eight gradio_client clients at once on the small demo (``demo_support``): each gets exactly what
it gets alone (no state, cache, hook or file of one request reaches another); beyond the queue's
size a visitor is refused with a clear message. Two hundred requests on a short time to live
keep one folder on disk. Every executor gives identical frames for a request it ran before,
serial and cascaded, with and without BWCache. Throughput, latency and peak memory are measured
by ``benchmarks/bench_load.py`` (no timing is asserted here).
"""

import time
from dataclasses import replace

import imageio_ffmpeg
import numpy as np
import pytest

from cascade.service import FOLDER_NAME, MODES, GenerateRequest, Service
from demo_support import QUEUE_SIZE

CLIENTS = 8
PROMPTS = ["a red circle moving right", "a blue square moving up", "a green triangle falling",
           "a yellow ball bouncing", "a purple square circling", "an orange circle moving left",
           "a white triangle standing still", "a pink ball moving down"]


def frames_of(path: str) -> bytes:
    """A video's decoded frames: the same frames encode to the same video, and decode alike."""
    reader = imageio_ffmpeg.read_frames(path)
    next(reader)  # the metadata
    return b"".join(reader)


def shown(outputs) -> tuple:
    """What a visitor takes home from a comparison: both videos' frames, and whose request it was."""
    serial, cascade, _, stats = outputs
    return frames_of(serial), frames_of(cascade), stats["cascade"]["prompt"], stats["cascade"]["seed"]


def test_eight_visitors_at_once_each_get_exactly_what_they_get_alone(small):
    from gradio_client import Client

    requests = [dict(seed=i, backend="pool" if i % 2 else "batched") for i in range(CLIENTS)]
    clients = [Client(small.url, verbose=False) for _ in range(CLIENTS)]
    alone = [shown(clients[0].predict(prompt, api_name="/compare", **r)) for prompt, r in zip(PROMPTS, requests)]
    assert len({a[:2] for a in alone}) == CLIENTS  # every visitor's video is its own
    jobs = [client.submit(prompt, api_name="/compare", **r) for client, prompt, r in zip(clients, PROMPTS, requests)]
    together = [shown(job.result(timeout=600)) for job in jobs]  # the queue holds all of them: none is refused
    assert together == alone


def test_a_visitor_beyond_the_queue_size_is_refused_with_a_clear_message(small):
    from gradio_client import Client
    from gradio_client.utils import QueueError, Status

    client = Client(small.url, verbose=False)
    jobs = []
    with small.service._turns.turn():  # the backend is busy: every comparison waits, one of them in the service
        for i in range(QUEUE_SIZE + 2):
            jobs.append(client.submit(PROMPTS[i % CLIENTS], seed=i, blocks=1, api_name="/compare"))
            # the first runs (and waits in the service), the others wait in the queue or are refused,
            # each before the next one comes
            settled(jobs[-1], (Status.PROCESSING,) if i == 0 else (Status.IN_QUEUE,))
    refused = [job for job in jobs if job.done()]
    assert len(refused) == 1 and jobs[-1] in refused  # one runs, QUEUE_SIZE wait: the next is told
    with pytest.raises(QueueError, match="Queue is full"):
        refused[0].result()
    results = [job.result(timeout=600) for job in jobs[:-1]]
    assert [r[3]["cascade"]["seed"] for r in results] == list(range(QUEUE_SIZE + 1))


def settled(job, codes: tuple, timeout_s: float = 60) -> None:
    """Until ``job`` has one of the status ``codes``, or was refused."""
    deadline = time.monotonic() + timeout_s
    while not (job.done() or job.status().code in codes):
        assert time.monotonic() < deadline, job.status()
        time.sleep(0.01)


TINY = GenerateRequest(prompt="a red circle", model="random-tiny", blocks=1, steps=1, threads=1)


def test_two_hundred_requests_keep_one_folder_on_disk_with_a_short_time_to_live(tmp_path):
    folders = set()
    with Service(output_root=tmp_path, ttl_s=0, device="cpu") as service:
        for seed in range(200):
            folder = service.generate(replace(TINY, seed=seed)).files["stats.json"].parent
            folders.add(folder.name)
            assert list(tmp_path.iterdir()) == [folder]  # every earlier folder had expired
    assert len(folders) == 200 and all(FOLDER_NAME.fullmatch(name) for name in folders)


# --- determinism ---------------------------------------------------------------------------------

DETERMINISM = GenerateRequest(prompt="a red circle moving right", model="random-tiny", blocks=3, steps=4, window=2,
                              stride=1, workers=2, threads=1, seed=5, bwcache_threshold=float("inf"))
OTHER = dict(prompt="a blue square moving up", seed=9)


@pytest.fixture(scope="module")
def every_executor(tmp_path_factory):
    with Service(output_root=tmp_path_factory.mktemp("determinism"), device="cpu") as service:
        yield service


@pytest.mark.parametrize("bwcache", [False, True], ids=["plain", "bwcache"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("executor", ["local", "batched", "distributed"])
def test_a_request_gives_the_same_frames_again_whatever_ran_in_between(every_executor, executor, mode, bwcache):
    request = replace(DETERMINISM, executor=executor, mode=mode, bwcache=bwcache)
    first = every_executor.generate(request, files=False)
    every_executor.generate(replace(request, bwcache=not bwcache, **OTHER), files=False)  # its caches and hooks
    again = every_executor.generate(request, files=False)
    assert np.array_equal(first.frames, again.frames)
    assert first.stats["bwcache"] == again.stats["bwcache"]
    assert (first.stats["bwcache"]["reuse_rate"] > 0) == bwcache  # the cache did reuse where it was on

