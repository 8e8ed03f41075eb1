"""The memory plan: what each GPU holds (one pool worker per GPU with the transformer only; the
service's parts on cuda:0), when the text encoder goes to the CPU, the loader placing it by the
plan (with the stand-in checkpoints), and the README's table being the command's output."""

import re
from pathlib import Path

import pytest
import torch

from cascade.__main__ import main
from cascade.model import hub_models
from cascade.model.checkpoints import HUB_PRESETS
from cascade.model.placement import GB, WORKING_MEMORY, Parts, kv_cache_bytes, place, pool_workers
from cascade.model.presets import WAN_1_3B
from cascade.model.transformer import CausalWanTransformer
from cascade.placement_table import reference_parts
from cascade.service import Service
from hub_standins import TINY_TRANSFORMER, FakeHubCache, use_offline, write_project_repos, write_wan_repo

README = Path(__file__).resolve().parent.parent / "README.md"
PARTS = Parts(transformer=3 * GB, text_encoder=11 * GB, vae=GB // 2, kv_cache=6 * GB)
SERVICE = PARTS.transformer + PARTS.vae + PARTS.kv_cache + WORKING_MEMORY  # without the text encoder
REPLICA = PARTS.transformer + PARTS.kv_cache + WORKING_MEMORY

# Upstream facts (REFERENCES.md; the file sizes of Wan-AI/Wan2.1-T2V-1.3B-Diffusers, float32): a
# part's bf16 bytes are half its float32 files, less the few kilobytes of their headers.
WAN_TRANSFORMER_FP32_BYTES = 4_998_781_576 + 677_289_072
UMT5_FP32_BYTES = 4_972_389_712 + 4_899_225_672 + 4_966_309_504 + 4_999_880_704 + 2_885_866_152
VAE_FP32_BYTES = 507_591_892
SELF_FORCING_KV_BYTES = 30 * 2 * 32760 * 12 * 128 * 2  # 30 layers of [32760, 12, 128] for K and V, bf16


def parts_by_holder(plan, device: str) -> dict[str, list[str]]:
    return {holder: [h.part for h in held] for holder, held in plan.holders(device).items()}


def test_four_gpus_one_worker_each_with_the_transformer_only_and_the_services_parts_on_cuda0():
    plan = place(PARTS, gpus=4, gpu_bytes=80 * GB)
    assert plan.workers == 4 == pool_workers(4)
    assert parts_by_holder(plan, "cuda:0") == {
        "service": ["transformer", "VAE", "K/V cache", "working memory", "text encoder"],
        "worker 0": ["transformer", "K/V cache", "working memory"]}
    for gpu in (1, 2, 3):
        assert parts_by_holder(plan, f"cuda:{gpu}") == {f"worker {gpu}": ["transformer", "K/V cache", "working memory"]}
        assert plan.used(f"cuda:{gpu}") == REPLICA
    assert plan.used("cuda:0") == SERVICE + REPLICA + PARTS.text_encoder and plan.text_encoder_device == "cuda:0"
    assert plan.used("cpu") == 0


def test_one_gpu_runs_everything_on_it_with_no_pool():
    plan = place(PARTS, gpus=1, gpu_bytes=24 * GB)
    assert plan.workers == 0 == pool_workers(1)
    assert parts_by_holder(plan, "cuda:0") == {"service": ["transformer", "VAE", "K/V cache", "working memory",
                                                           "text encoder"]}


@pytest.mark.parametrize("gpus", [1, 2, 4])
def test_the_text_encoder_goes_to_the_cpu_exactly_when_cuda0_cannot_hold_it_too(gpus):
    cuda0 = SERVICE + (REPLICA if gpus > 1 else 0)
    assert place(PARTS, gpus, cuda0 + PARTS.text_encoder).text_encoder_device == "cuda:0"
    on_cpu = place(PARTS, gpus, cuda0 + PARTS.text_encoder - 1)
    assert on_cpu.text_encoder_device == "cpu" and on_cpu.used("cpu") == PARTS.text_encoder
    assert on_cpu.used("cuda:0") == cuda0


def test_parts_that_fit_nowhere_are_one_clear_line():
    with pytest.raises(ValueError, match=r"^m needs about 22\.8 GB on cuda:0 \(service: transformer, VAE, K/V cache "
                                         r"\(11\.6 GB\); worker 0: transformer, K/V cache \(11\.1 GB\)\) and 20\.0 GB "
                                         r"are free there; use GPUs with more memory$"):
        place(PARTS, 2, 20 * GB, name="m")
    with pytest.raises(ValueError, match=r"^m's text encoder needs about 11\.0 GB on the CPU \(cuda:0 has no room "
                                         r"for it\) and 4\.0 GB are free there$"):
        place(PARTS, 2, 24 * GB, host_bytes=4 * GB, name="m")
    with pytest.raises(ValueError, match="one GPU or more"):
        place(PARTS, 0, 24 * GB)


@pytest.mark.parametrize("config, pixels", [(TINY_TRANSFORMER, (8, 12)), (WAN_1_3B, (60, 104))])
def test_the_plans_kv_cache_is_what_the_cache_allocates(config, pixels):
    with torch.device("meta"):
        transformer = CausalWanTransformer(**config)
    cache = transformer.new_kv_cache(21, *pixels, device="meta", dtype=torch.bfloat16)
    assert kv_cache_bytes(config["num_layers"], config["num_attention_heads"], config["attention_head_dim"],
                          transformer.tokens_per_frame(*pixels), 21, 2) == cache.nbytes()


def test_the_readme_tables_parts_are_the_real_checkpoints_sizes():
    parts = reference_parts(HUB_PRESETS["self-forcing-1.3b"])
    assert parts.kv_cache == SELF_FORCING_KV_BYTES
    for counted, files in ((parts.transformer, WAN_TRANSFORMER_FP32_BYTES), (parts.text_encoder, UMT5_FP32_BYTES),
                           (parts.vae, VAE_FP32_BYTES)):
        assert 0 <= files / 2 - counted < 1e6, (counted, files)


def test_the_readme_shows_the_commands_table(capsys):
    assert main(["placement", "--table"]) == 0
    printed = capsys.readouterr().out
    shown = re.search(r"<!-- memory plan: python -m cascade placement --table -->\n(.*?)<!-- end memory plan -->",
                      README.read_text(), re.S)
    assert shown is not None and shown.group(1) == printed
    # the Space's hardware, 4 GPUs of 48 GB: everything on the GPUs; 4 of 24 GB: the text encoder on the CPU
    rows = {line.split(" | ")[0].strip("| "): line for line in printed.splitlines() if " GB | " in line}
    assert rows["4 × 48 GB"].split(" | ")[4] == "`cuda:0`"
    assert rows["4 × 24 GB"].split(" | ")[4].startswith("CPU")


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    cache = FakeHubCache(tmp_path_factory.mktemp("hub"))
    write_wan_repo(cache)
    write_project_repos(cache)
    return cache


@pytest.mark.parametrize("gpus, text_device", [(1, "cuda"), (2, "cpu")])
def test_the_loader_places_the_text_encoder_by_the_plan_for_this_machines_gpus(standins, monkeypatch, gpus,
                                                                               text_device):
    """With the stand-in checkpoints and a GPU one byte short of what cuda:0 holds on two GPUs with
    the text encoder: alone, it holds the text encoder; with a second GPU, pool worker 0 shares it
    and the text encoder moves to the CPU."""
    use_offline(monkeypatch, standins, pixels=32)
    preset = HUB_PRESETS["self-forcing-1.3b"]
    paths = {f: hub_models.cached(f) for f in preset.files()}
    parts = hub_models.memory_needs(preset, hub_models.read_config(paths[hub_models.TRANSFORMER_CONFIG]), paths,
                                    torch.bfloat16, preset.run_defaults["blocks"])
    short = place(parts, 2, 10**15).used("cuda:0") - 1
    monkeypatch.setattr(hub_models, "free_memory", lambda device: short if device.type == "cuda" else 64 * GB)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    status = hub_models.hub_preset_status(preset, torch.device("cuda"))
    assert status.runnable and status.reason == f"downloaded; runs on cuda, text encoder on {text_device}"


@pytest.mark.parametrize("gpus, executor, workers", [(1, "batched", 2), (2, "distributed", 2), (4, "distributed", 4)])
def test_the_services_default_backend_is_the_plans(monkeypatch, gpus, executor, workers):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    with Service(device="cuda") as service:
        request = service.default_request()
    assert (request.executor, request.workers) == (executor, workers)  # 2: the request's own default, unused
