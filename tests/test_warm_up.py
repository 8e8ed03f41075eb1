"""Service.warm_up runs every executor a caller will use once before the first request, so that
on a GPU their first CUDA kernels (and a pool's first exchange) are not paid by a visitor."""

from dataclasses import replace
from types import SimpleNamespace

import pytest

from cascade.backend import LocalExecutor
from cascade.backend.pool import DistributedExecutor
from cascade.service import GenerateRequest, Service
from cascade.ui.warm_up import Backend

POOL = GenerateRequest(prompt="a red circle moving right", model="random-tiny", blocks=3, steps=2, executor="distributed",
                       workers=2, threads=1)


@pytest.fixture
def executed(monkeypatch):
    """The executors that ran a schedule, by name, in order (local, batched or distributed)."""
    ran = []
    for executor in (LocalExecutor, DistributedExecutor):
        def spy(self, *args, _run=executor.execute, **kwargs):
            ran.append(self.name)
            return _run(self, *args, **kwargs)

        monkeypatch.setattr(executor, "execute", spy)
    return ran


@pytest.fixture
def service(tmp_path):
    with Service(output_root=tmp_path / "out", device="cpu") as svc:
        yield svc


def test_a_pools_warm_up_runs_the_pool_and_the_one_device_serial_side(service, executed):
    service.warm_up(POOL)
    assert set(executed) == {"local", "distributed"}


def test_the_executors_a_page_offers_besides_each_get_a_warm_up_run(service, executed):
    service.warm_up(POOL, executors=("distributed", "batched"))
    assert set(executed) == {"local", "distributed", "batched"}
    # the one-device backend's plan measured its forward costs during the warm-up, on the whole device
    assert ("random-tiny", None) in service._forward_costs
    executed.clear()
    service.compare(replace(POOL, executor="batched", threads=None))
    assert executed == ["batched", "batched"]  # serial and cascade, nothing left to warm


def test_an_executor_that_cannot_run_fails_before_any_warm_up_work(service, executed):
    with pytest.raises(ValueError, match="executor must be one of"):
        service.warm_up(POOL, executors=("gpu-cluster",))
    assert executed == [] and not service._pools


@pytest.mark.parametrize("device, executors", [("cuda", ("distributed", "batched")), ("cpu", ())])
def test_the_page_warms_every_backend_it_offers_on_a_gpu_and_only_its_default_on_a_cpu(device, executors):
    """cascade.ui.warm_up.Backend: what the page's warm-up asks of the Service."""
    asked = []
    service = SimpleNamespace(device=device, warm_up=lambda request, executors: asked.append((request, executors)))
    offer = SimpleNamespace(defaults=POOL)
    Backend(service, offer, background=False).wait_until_ready()
    assert asked == [(POOL, executors)]
