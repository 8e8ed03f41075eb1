"""Real checkpoints from the Hub, on tiny stand-ins and without the network: conversion from the
original Wan names, LoRA merging, the converted folder in plain diffusers, the streaming VAE,
umT5 conditioning, the window conventions, clear failures, and every preset end to end through a
fake Hugging Face cache."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from huggingface_hub import constants

from cascade.backend import LocalExecutor
from cascade.backend.local import torch_threads
from cascade.model import convert, hub, hub_models
from cascade.model.checkpoints import HUB_PRESETS, local_attention_window
from cascade.model.kv_cache import KVCache
from cascade.model.presets import PresetLoader, load_model, load_transformer, preset_status
from cascade.model.transformer import CausalWanTransformer
from cascade.model.wan import UMT5TextEncoder, WanVideoDecoder
from cascade.pipeline import BlockCausalPipeline
from cascade.schedule import make_schedule
from hub_standins import (TINY_TRANSFORMER, TINY_VAE, UPSTREAM, WAN_REPO, FakeHubCache, lora_pairs, random_generator,
                          use_offline, write_checkpoint, write_peft_lora, write_project_repos, write_wan_repo)

LATENT = (4, 4)  # latent height, width of the stand-in videos (32×32 pixels)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from more threads, and lose much when the cores are shared."""
    with torch_threads(1):
        yield


def inputs(frames: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 4, frames, *LATENT, generator=g), torch.tensor([937.5]),
            torch.randn(1, 512, TINY_TRANSFORMER["text_dim"], generator=g))


def assert_same_output(a: torch.nn.Module, b: torch.nn.Module) -> None:
    """Float tolerance only: weights read back from a file may take other kernels' paths."""
    x, t, text = inputs()
    with torch.no_grad():
        torch.testing.assert_close(a(x, t, text).sample, b(x, t, text).sample, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- conversion

@pytest.fixture(scope="module")
def generators():
    return random_generator(1), random_generator(2)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, generators):
    plain, ema = generators
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", plain.state_dict(), ema.state_dict())


def test_original_checkpoint_converts_to_the_weights_and_output_of_the_model(checkpoint, generators):
    plain, ema = generators
    state, key = convert.convert_checkpoint(checkpoint, TINY_TRANSFORMER)
    assert key == "generator_ema"  # preferred without a preset or --key; FSDP parts and model. stripped
    assert state.keys() == ema.state_dict().keys()
    assert all(torch.equal(state[n], w) for n, w in ema.state_dict().items())
    loaded = hub_models.generator_from_state(TINY_TRANSFORMER, state, "cpu", torch.float32)
    ema.sinusoid_dtype = torch.float64  # the same weights loaded directly, computing as Wan does
    try:
        assert_same_output(loaded, ema)
    finally:
        ema.sinusoid_dtype = torch.float32
    state, key = convert.convert_checkpoint(checkpoint, TINY_TRANSFORMER, key="generator")
    assert key == "generator" and all(torch.equal(state[n], w) for n, w in plain.state_dict().items())


def test_checkpoint_key_choice_and_its_errors(tmp_path, generators):
    only_plain = write_checkpoint(tmp_path / "plain.pt", generator=generators[0].state_dict())
    assert convert.convert_checkpoint(only_plain, TINY_TRANSFORMER)[1] == "generator"
    with pytest.raises(ValueError, match=r"no weights under 'generator_ema'; it has: generator"):
        convert.convert_checkpoint(only_plain, TINY_TRANSFORMER, key="generator_ema")
    torch.save({"optimizer": {}, "step": 3}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="neither generator_ema nor generator"):
        convert.convert_checkpoint(tmp_path / "other.pt", TINY_TRANSFORMER)
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read .*broken.pt as a torch checkpoint"):
        convert.convert_checkpoint(tmp_path / "broken.pt", TINY_TRANSFORMER)


def test_bad_checkpoints_name_missing_unexpected_and_misshapen_keys(tmp_path, generators):
    state = dict(generators[0].state_dict())
    del state["blocks.1.attn2.to_k.weight"]
    state["blocks.0.attn1.to_q.bias"] = torch.zeros(3)
    state["blocks.7.extra.weight"] = torch.zeros(1)
    path = write_checkpoint(tmp_path / "bad.pt", generator=state)
    with pytest.raises(ValueError) as error:
        convert.convert_checkpoint(path, TINY_TRANSFORMER)
    message = str(error.value)
    assert "1 missing: blocks.1.attn2.to_k.weight" in message
    assert "1 unexpected: blocks.7.extra.weight" in message
    assert "1 wrongly shaped: blocks.0.attn1.to_q.bias [3] (expected [16])" in message


def lora_file(tmp_path, generators, rank: int, drop: str | None = None, extra: bool = False):
    targets = sorted(convert.lora_targets(TINY_TRANSFORMER))
    shapes = {n: t.shape for n, t in generators[1].state_dict().items()}
    pairs = lora_pairs([t for t in targets if t != drop], shapes, rank, seed=3)
    if extra:
        pairs["blocks.0.attn1.to_extra.weight"] = pairs[targets[0]]
    return write_peft_lora(tmp_path / f"lora{rank}{drop}{extra}.pt", pairs), pairs


def test_peft_lora_merges_into_every_linear_of_every_block(tmp_path, checkpoint, generators):
    path, pairs = lora_file(tmp_path, generators, rank=4)
    assert len(pairs) == 10 * TINY_TRANSFORMER["num_layers"]  # q, k, v, o of both attentions + 2 ffn
    state, _ = convert.convert_checkpoint(checkpoint, TINY_TRANSFORMER, lora=path, lora_rank=4, lora_alpha=8.0)
    base = generators[1].state_dict()
    for name, weight in state.items():
        if name in pairs:
            a, b = pairs[name]
            torch.testing.assert_close(weight, base[name] + 2.0 * (b @ a), rtol=0, atol=1e-6)
        else:
            assert torch.equal(weight, base[name]), name


def test_lora_of_another_rank_or_coverage_is_a_clear_error(tmp_path, checkpoint, generators):
    path, _ = lora_file(tmp_path, generators, rank=4)
    with pytest.raises(ValueError, match=r"is a LoRA of rank 4; this preset's LoRA has rank 256"):
        convert.convert_checkpoint(checkpoint, TINY_TRANSFORMER, lora=path, lora_rank=256, lora_alpha=256.0)
    path, _ = lora_file(tmp_path, generators, rank=4, drop="blocks.1.ffn.net.2.weight")
    with pytest.raises(ValueError, match=r"1 weights without a LoRA: blocks.1.ffn.net.2.weight"):
        convert.convert_checkpoint(checkpoint, TINY_TRANSFORMER, lora=path)
    path, _ = lora_file(tmp_path, generators, rank=4, extra=True)
    with pytest.raises(ValueError, match=r"1 LoRA weights for no linear layer: blocks.0.attn1.to_extra.weight"):
        convert.convert_checkpoint(checkpoint, TINY_TRANSFORMER, lora=path)
    state, targets = generators[1].state_dict(), convert.lora_targets(TINY_TRANSFORMER)
    adapters = {n: (torch.zeros(4, state[n].shape[1]), torch.zeros(state[n].shape[0], 4)) for n in targets}
    adapters["blocks.0.attn1.to_q.weight"] = (torch.zeros(4, 3), torch.zeros(16, 4))
    with pytest.raises(ValueError, match=r"1 wrongly shaped LoRA products: blocks.0.attn1.to_q.weight"):
        convert.merge_lora(state, adapters, 1.0, targets, "lora.pt")


def run_convert(*argv) -> int:
    import argparse

    parser = argparse.ArgumentParser()
    convert.add_arguments(parser)
    return convert.main(parser.parse_args([str(a) for a in argv]))


def test_convert_command_writes_a_folder_plain_diffusers_loads(tmp_path, checkpoint, generators, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(TINY_TRANSFORMER))
    out = tmp_path / "converted"
    assert run_convert(checkpoint, "--config", config, "--out", out, "--key", "generator") == 0
    assert "[generator]" in capsys.readouterr().out
    plain = generators[0]
    diffusers_model = WanTransformer3DModel.from_pretrained(out).eval()
    assert type(diffusers_model) is WanTransformer3DModel
    assert all(torch.equal(diffusers_model.state_dict()[n], w) for n, w in plain.state_dict().items())
    assert_same_output(CausalWanTransformer.from_pretrained(out).eval(), plain)
    assert_same_output(diffusers_model, plain)
    assert json.loads((out / convert.PROVENANCE_FILE).read_text())["preset"] is None
    with pytest.raises(ValueError, match="converted with --config and belongs to no preset"):
        load_model(str(out))


# ----------------------------------------------------------------------------- fidelity facts

def test_float64_sinusoid_is_wans_and_close_to_diffusers(generators):
    model = random_generator(5)
    t = torch.tensor([1000.0, 937.5, 833.3, 0.0])
    float32 = model._sinusoid(t)
    model.sinusoid_dtype = torch.float64
    float64 = model._sinusoid(t)
    half = TINY_TRANSFORMER["freq_dim"] // 2
    angles = t.double()[:, None] * 10000.0 ** (-torch.arange(half, dtype=torch.float64) / half)
    assert float64.dtype == torch.float64
    assert torch.equal(float64, torch.cat([angles.cos(), angles.sin()], dim=1))
    assert 0 < (float64 - float32.double()).abs().max() < 1e-4  # the float32 path rounds; both are Wan's formula


def test_prompts_are_padded_with_zeros_to_512_and_all_512_are_attended(tmp_path, generators):
    from transformers import UMT5Config, UMT5EncoderModel

    from hub_standins import TINY_UMT5
    from cascade.model.wan import HashingTokenizer

    torch.manual_seed(0)
    encoder = UMT5EncoderModel(UMT5Config(**TINY_UMT5)).eval()
    text = UMT5TextEncoder(HashingTokenizer(TINY_UMT5["vocab_size"]), encoder, "cpu", torch.float32)
    embedding, unknown = text.encode_prompts(["a red   cat", "a dog runs on the beach"])
    assert embedding.shape == (2, 512, TINY_UMT5["d_model"]) and unknown == [[], []]
    assert embedding[0, 4:].abs().max() == 0 and embedding[0, :4].abs().min() > 0  # 3 words + </s>
    assert embedding[1, 7:].abs().max() == 0 and embedding[1, :7].abs().min() > 0
    model, x = generators[0], torch.randn(1, 4, 3, *LATENT)
    with torch.no_grad():
        padded = model(x, torch.tensor([500.0]), embedding[:1]).sample
        trimmed = model(x, torch.tensor([500.0]), embedding[:1, :4]).sample
    assert (padded - trimmed).abs().max() > 1e-4  # the zero positions take part in cross-attention


def visible_frames(cache: KVCache, start: int, frames: int) -> set[int]:
    cache.filled = [True] * cache.num_frames
    return set(cache.context_frames(start, frames)) | set(range(start, start + frames))


def test_longlive_window_holds_3_sinks_and_the_9_most_recent_frames():
    longlive = UPSTREAM["longlive-1.3b"]
    assert local_attention_window(12, 3) == (longlive.local_window, longlive.sink_frames) == (9, 3)
    cache = KVCache(1, 30, 1, 1, 1, local_window=longlive.local_window, sink_frames=longlive.sink_frames)
    held: list[int] = []  # LongLive's cache: append the block's frames, evict the oldest non-sinks past 12
    for block in range(10):
        own = list(range(3 * block, 3 * block + 3))
        held += own
        while len(held) > 12:
            held.remove(next(f for f in held if f >= 3))
        assert visible_frames(cache, own[0], 3) == set(held), block
    with pytest.raises(ValueError):
        local_attention_window(3, 3)


# ----------------------------------------------------------------------------- the VAE

def test_block_by_block_decode_equals_whole_decode():
    torch.manual_seed(0)
    decoder = WanVideoDecoder(AutoencoderKLWan(**TINY_VAE).eval())
    latents = torch.randn(1, 4, 9, *LATENT)
    whole = decoder(latents)
    stream = decoder.new_stream()
    blocks = [stream(latents[:, :, i:i + 3]) for i in (0, 3, 6)]
    assert [b.shape[0] for b in blocks] == [9, 12, 12] and whole.shape == (33, 32, 32, 3)
    assert whole.dtype == np.uint8 and np.array_equal(np.concatenate(blocks), whole)
    again = decoder.new_stream()  # a fresh stream starts a new video
    assert np.array_equal(again(latents[:, :, :3]), blocks[0])


# ----------------------------------------------------------------------------- the Hub

@pytest.fixture(scope="module")
def standin_cache(tmp_path_factory):
    cache = FakeHubCache(tmp_path_factory.mktemp("hf") / "hub")
    write_wan_repo(cache)
    return cache, write_project_repos(cache)


@pytest.fixture
def offline_hub(standin_cache, monkeypatch):
    """The stand-in cache as HF_HUB_CACHE, offline, and the presets at 32×32 pixels."""
    cache, expected = standin_cache
    use_offline(monkeypatch, cache, pixels=32)
    return cache, expected


def assert_weights(transformer, expected: dict[str, torch.Tensor]) -> None:
    state = transformer.state_dict()
    assert state.keys() == expected.keys()
    for name, weight in expected.items():
        torch.testing.assert_close(state[name], weight, rtol=0, atol=1e-6)


def test_the_presets_are_the_four_upstream_projects():
    assert sorted(HUB_PRESETS) == sorted(UPSTREAM)


@pytest.mark.parametrize("name", list(UPSTREAM))
def test_each_preset_loads_through_the_cache_and_runs_its_schedules(offline_hub, name):
    _, expected = offline_hub
    model = load_model(name)
    upstream = UPSTREAM[name]
    assert_weights(model.transformer, expected[name])  # the project's key, LoRA merged (LongLive)
    assert model.transformer.sinusoid_dtype == torch.float64
    assert (model.sampler.timesteps, model.sampler.shift, model.sampler.warp) == (
        upstream.timesteps, upstream.shift, upstream.warp)
    assert (model.local_window, model.sink_frames, model.rolling_anchor, model.max_blocks) == (
        upstream.local_window, upstream.sink_frames, upstream.rolling_anchor, upstream.max_blocks)
    assert model.run_defaults == upstream.run_defaults
    assert model.layout.block_shape() == (1, 4, 3, *LATENT) and not model.random_weights
    defaults = model.run_defaults
    blocks = 2
    schedules = {"serial": (make_schedule(blocks, model.sampler.num_steps), False)}
    if defaults.get("mode") == "cascade":
        schedules["default"] = (make_schedule(blocks, model.sampler.num_steps, window=defaults["window"],
                                              stride=defaults["stride"], recache=defaults["recache"],
                                              joint=defaults["joint"]), defaults["joint"])
    for schedule, joint in schedules.values():
        out = BlockCausalPipeline(model)("a red cat runs on the beach", schedule, LocalExecutor(), seed=0, joint=joint)
        assert out.frames.shape == (1 + 4 * (3 * blocks - 1), 32, 32, 3)
        stream = model.block_decoder()
        streamed = np.concatenate([stream(out.latents[:, :, 3 * b:3 * b + 3]) for b in range(blocks)])
        assert np.array_equal(streamed, out.frames)


def test_a_converted_folder_runs_as_its_preset(offline_hub, tmp_path, capsys):
    cache, expected = offline_hub
    name, longlive = "longlive-1.3b", UPSTREAM["longlive-1.3b"]
    out = tmp_path / "longlive"
    assert run_convert(cache.path(longlive.repo, longlive.checkpoint), "--preset", name, "--out", out) == 0
    assert "+ LoRA" in capsys.readouterr().out
    assert_weights(WanTransformer3DModel.from_pretrained(out), expected[name])
    model = load_model(str(out))
    assert model.name == name and str(out) in model.description
    assert (model.local_window, model.sink_frames) == (9, 3)
    assert_weights(model.transformer, expected[name])
    assert_weights(load_transformer(str(out)), expected[name])


def test_a_pool_replica_loads_the_generator_alone(offline_hub, monkeypatch):
    _, expected = offline_hub

    def no_text_encoder(*args, **kwargs):
        raise AssertionError("a replica loaded the text encoder")

    monkeypatch.setattr(hub_models, "load_text_encoder", no_text_encoder)
    transformer = PresetLoader("causvid-1.3b")(torch.device("cpu"))
    assert_weights(transformer, expected["causvid-1.3b"])


def test_offline_without_the_files_names_repository_file_and_command(offline_hub, tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ValueError) as error:
        load_model("self-forcing-1.3b")
    message = str(error.value)
    assert "HF_HUB_OFFLINE is set" in message
    assert f"hf download {WAN_REPO} transformer/config.json" in message
    assert f'hf download {WAN_REPO} --include "text_encoder/*"' in message
    assert "hf download gdhe17/Self-Forcing checkpoints/self_forcing_dmd.pt" in message


def test_a_partial_cache_reports_just_what_is_missing(offline_hub):
    cache, _ = offline_hub
    name = "rolling-forcing-1.3b"
    shard = next(cache.path(WAN_REPO, "text_encoder").glob("model-*.safetensors"))
    kept = shard.read_bytes()
    shard.unlink()
    try:
        with pytest.raises(ValueError, match=rf"needs 1 file\(s\).*\n  {WAN_REPO}: text_encoder/{shard.name}\n"):
            load_model(name)
        status = {s.name: s for s in preset_status("cpu")}
        assert not status[name].runnable and shard.name in status[name].reason
    finally:
        shard.write_bytes(kept)
    status = {s.name: s for s in preset_status("cpu")}
    assert all(status[n].runnable for n in UPSTREAM), status
    assert status["tiny-shapes"].runnable and "text encoder on cpu" in status[name].reason


def test_too_little_memory_is_a_clear_error_and_a_short_gpu_moves_the_text_encoder(offline_hub, monkeypatch):
    needs = hub_models.Parts(transformer=3 * 2**30, vae=2**29, kv_cache=6 * 2**30, text_encoder=11 * 2**30)
    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    assert hub_models.place_text_encoder(gpu, needs, 40 * 2**30, 64 * 2**30, "m") == gpu
    assert hub_models.place_text_encoder(gpu, needs, 20 * 2**30, 64 * 2**30, "m") == cpu
    # a pool worker shares the model's GPU: its transformer and K/V leave no room for the text encoder
    assert hub_models.place_text_encoder(gpu, needs, 30 * 2**30, 64 * 2**30, "m", gpus=1) == gpu
    assert hub_models.place_text_encoder(gpu, needs, 30 * 2**30, 64 * 2**30, "m", gpus=2) == cpu
    with pytest.raises(ValueError, match=r"m needs about 12.3 GB on cuda:0 \(service: transformer, VAE, K/V cache "
                                         r"\(12.3 GB\)\) and 8.6 GB are free there"):
        hub_models.place_text_encoder(gpu, needs, 8 * 2**30, 64 * 2**30, "m")
    with pytest.raises(ValueError, match=r"m's text encoder needs about 11.8 GB on the CPU"):
        hub_models.place_text_encoder(gpu, needs, 20 * 2**30, 4 * 2**30, "m")
    monkeypatch.setattr(hub_models, "free_memory", lambda device: 2**20)
    with pytest.raises(ValueError, match=r"causvid-1.3b needs about 2.1 GB on the CPU and 0.0 GB are free"):
        load_model("causvid-1.3b")


class _Hub(BaseHTTPRequestHandler):
    """A loopback stand-in of the Hub's file endpoint: a gated repo, an absent file, a served file."""

    files = {"org/open/weights.pt": b"weights"}

    def do_HEAD(self):
        self._answer(body=False)

    def do_GET(self):
        self._answer(body=True)

    def _answer(self, body: bool):
        repo_file = self.path.replace("/resolve/main/", "/").lstrip("/")
        code, error, payload = 200, None, self.files.get(repo_file)
        if repo_file.startswith("org/gated/"):
            code, error = 401, "GatedRepo"
        elif repo_file.startswith("org/absent/"):
            code, error = 404, "RepoNotFound"
        elif payload is None:
            code, error = 404, "EntryNotFound"
        self.send_response(code)
        if error:
            self.send_header("X-Error-Code", error)
        else:
            self.send_header("ETag", '"0123abcd"')
            self.send_header("X-Repo-Commit", "1" * 40)
        self.send_header("Content-Length", str(len(payload or b"")))
        self.end_headers()
        if body and payload:
            self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def loopback_hub(tmp_path, monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_port}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    yield
    server.shutdown()
    server.server_close()


def test_online_lookups_name_gated_absent_and_unreachable_and_download_the_rest(loopback_hub, monkeypatch):
    files = [hub.HubFile("org/gated", "a.pt"), hub.HubFile("org/absent", "b.pt"), hub.HubFile("org/open", "c.pt")]
    with pytest.raises(ValueError) as error:
        hub.fetch(files, "demo")
    message = str(error.value)
    assert "org/gated is gated: accept its terms" in message
    assert "org/absent does not exist on the Hub" in message
    assert "org/open has no file c.pt" in message
    assert "hf download org/gated a.pt" in message
    served = hub.HubFile("org/open", "weights.pt")
    assert hub.fetch([served], "demo")[served].read_bytes() == b"weights"
    assert hub.cached(served) is not None  # in the cache now: found without asking
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", "http://127.0.0.1:9/{repo_id}/resolve/{revision}/{filename}")
    with pytest.raises(ValueError, match="the Hub cannot be reached from here"):
        hub.fetch([hub.HubFile("org/open", "other.pt"), files[0]], "demo")


@pytest.mark.parametrize("name", list(UPSTREAM))
def test_each_preset_compares_end_to_end_through_the_service(offline_hub, tmp_path, name):
    from cascade.service import GenerateRequest, Service

    defaults = UPSTREAM[name].run_defaults
    with Service(output_root=tmp_path, device="cpu") as service:
        result = service.compare(GenerateRequest(prompt="a red cat runs on the beach", model=name, blocks=2,
                                                 executor="batched"))
    serial, cascade = result.stats["serial"], result.stats["cascade"]
    assert serial["model"] == cascade["model"] == name
    assert (serial["window"], serial["joint"]) == (1, False)  # the comparison a user would otherwise make
    if defaults.get("mode") == "cascade":  # Rolling Forcing's own schedule is the cascade side
        assert (cascade["window"], cascade["stride"], cascade["joint"]) == (
            defaults["window"], defaults["stride"], defaults["joint"])
    frames = 1 + 4 * (3 * 2 - 1)  # Wan's causal VAE: 9 frames for the first block, 12 for each later one
    assert result.serial.frames.shape == result.cascade.frames.shape == (frames, 32, 32, 3)
    assert serial["fps"] == frames / serial["latency_s"]
    assert all(path.stat().st_size > 0 for path in result.files.values())


def test_causvid_refuses_a_video_longer_than_it_has_a_rule_for(offline_hub, tmp_path):
    """CausVid was trained on 7 blocks; its own longer videos restart from re-encoded frames."""
    from cascade.service import GenerateRequest, Service

    line = "causvid-1.3b runs at most 7 blocks, got 8: it was trained on 21 latent frames with global attention"
    with Service(output_root=tmp_path, device="cpu") as service:
        with pytest.raises(ValueError, match=line):
            service.generate(GenerateRequest(prompt="a red cat", model="causvid-1.3b", blocks=8, executor="batched"))
    model = load_model("causvid-1.3b")
    with pytest.raises(ValueError, match=line):
        BlockCausalPipeline(model)("a red cat", make_schedule(8, 3), LocalExecutor())


def test_rolling_forcing_compares_on_a_pool_with_its_joint_window_on_the_tokens_placement(offline_hub, tmp_path):
    """Its joint window is one forward of every block in flight: on a pool every worker runs it on
    its share of the tokens (planned when the placement is left unset), its serial side on one
    device as every pool comparison does. The workers load the preset's generator from a folder
    converted for it (the stand-in Hub cache is this process's only)."""
    from cascade.service import UNLIMITED, GenerateRequest, Service

    _, expected = offline_hub
    name = "rolling-forcing-1.3b"
    folder = convert.write_transformer_folder(tmp_path / "rf", expected[name], TINY_TRANSFORMER, {"preset": name})
    with Service(output_root=tmp_path / "out", device="cpu", limits=UNLIMITED) as service:
        result = service.compare(GenerateRequest(prompt="a red cat", model=str(folder), blocks=2,
                                                 executor="distributed", workers=2, threads=1))
    serial, cascade, plan = result.stats["serial"], result.stats["cascade"], result.stats["plan"]
    defaults = HUB_PRESETS[name].run_defaults
    assert (cascade["executor"], cascade["placement"], cascade["workers"]) == ("distributed", "tokens", 2)
    assert (cascade["window"], cascade["stride"], cascade["joint"]) == (defaults["window"], defaults["stride"], True)
    assert (serial["placement"], serial["joint"]) == ("one device", False)
    assert (plan["placement"], plan["joint"]) == ("tokens", True) and "joint" in plan["forward_ms"]
    assert cascade["model_calls"] == cascade["ticks"]  # each tick one forward, on every worker
    assert result.serial.frames.shape == result.cascade.frames.shape == (1 + 4 * (3 * 2 - 1), 32, 32, 3)
