"""The trainer: resumable to the bit, exports a loadable model, resumes from an export."""

from pathlib import Path

import torch

from cascade.model.presets import load_model
from cascade.toy.train import NoiseLevels, TrainConfig, Trainer, block_causal_mask, training_clips


def small_config(tmp_path, steps: int) -> TrainConfig:
    return TrainConfig(out=str(tmp_path / "run"), export=str(tmp_path / "export"), init_from="", steps=steps,
                       batch_size=2, clip_blocks=2, render_blocks=3, threads=1, log_every=1, save_every=2,
                       export_every=100)


def weights(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.params]


def test_block_causal_mask():
    mask = block_causal_mask(3, 2)
    assert mask.shape == (6, 6)
    assert mask[0, :2].all() and not mask[0, 2:].any()
    assert mask[5].all() and not mask[2, 4:].any() and mask[3, :4].all()


def test_noise_levels_have_clean_blocks_and_inference_levels():
    levels = NoiseLevels(TrainConfig())
    sigmas = levels.draw(torch.Generator().manual_seed(0), 200, 4)
    clean = (sigmas == 0).float().mean().item()
    assert 0.2 < clean < 0.3
    assert ((sigmas >= 0) & (sigmas <= 1)).all()
    on_grid = torch.isin(sigmas, levels.inference_sigmas).float().mean().item()
    assert on_grid > 0.3


def test_resume_from_checkpoint_continues_exactly(tmp_path):
    straight = Trainer(small_config(tmp_path / "a", 4))
    straight.run(log=lambda line: None)

    first = Trainer(small_config(tmp_path / "b", 2))
    first.run(log=lambda line: None)
    second = Trainer(small_config(tmp_path / "b", 4))
    assert second.resume() == str(second.checkpoint_path) and second.step == 2
    second.run(log=lambda line: None)
    for a, b in zip(weights(straight), weights(second)):
        assert torch.equal(a, b)


def test_loader_processes_give_the_same_run_as_inline_rendering(tmp_path):
    inline = Trainer(small_config(tmp_path / "a", 3))
    inline.run(log=lambda line: None)
    config = small_config(tmp_path / "b", 3)
    pooled = Trainer(TrainConfig(**{**config.__dict__, "loader_workers": 2}))
    pooled.run(log=lambda line: None)
    for a, b in zip(weights(inline), weights(pooled)):
        assert torch.equal(a, b)


def test_clips_are_a_pure_function_of_the_step():
    config = TrainConfig(batch_size=3)
    a, captions_a = training_clips(config, 7)
    b, captions_b = training_clips(config, 7)
    c, _ = training_clips(config, 8)
    assert (a == b).all() and captions_a == captions_b
    assert not (a == c).all()
    assert a.shape == (3, config.clip_blocks * 3, 64, 64, 3)
    assert all(len(clip) == config.clip_blocks and len(set(clip)) == 1 for clip in captions_a)


def test_switch_share_gives_crops_that_switch_prompt_inside_the_crop():
    config = TrainConfig(batch_size=64, switch_share=0.5)
    _, captions = training_clips(config, 3)
    switched = [clip for clip in captions if len(set(clip)) > 1]
    assert 16 <= len(switched) <= 48
    assert all(len(set(clip)) == 2 and clip[0] != clip[-1] for clip in switched)


def test_time_budget_stops_saves_and_exports(tmp_path):
    config = TrainConfig(**{**small_config(tmp_path, 1000).__dict__, "minutes": 1e-9})
    trainer = Trainer(config)
    lines = []
    trainer.run(log=lines.append)
    assert trainer.step == 1
    assert trainer.checkpoint_path.exists() and (tmp_path / "export" / "model.json").exists()
    assert lines[-1] == "stopped at step 1: the 1e-09-minute budget is spent"


def test_export_loads_as_a_model_and_training_resumes_from_it(tmp_path):
    config = small_config(tmp_path, 2)
    trainer = Trainer(config)
    trainer.run(log=lambda line: None)
    folder = trainer.export()
    model = load_model(str(folder))
    assert model.name == "tiny-shapes" and not model.random_weights
    assert model.local_window == config.clip_blocks * 3 and model.sampler.prediction == "sample"
    _, unknown = model.encode_text(["a red circle zooming"])
    assert unknown == [["zooming"]]

    fresh_run = TrainConfig(**{**config.__dict__, "out": str(tmp_path / "elsewhere"), "steps": 3,
                               "init_from": str(folder)})
    resumed = Trainer(fresh_run)
    assert resumed.resume() == str(folder) and resumed.step == 2
    for a, b in zip(resumed.ema_transformer.state_dict().values(), model.transformer.state_dict().values()):
        assert torch.equal(a, b)
    resumed.run(log=lambda line: None)
    assert resumed.step == 3


def test_training_never_writes_the_shipped_weights_unless_told_to(tmp_path):
    import hashlib

    from cascade.model.presets import WEIGHTS_ROOT

    def shipped() -> dict:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (WEIGHTS_ROOT / "tiny-shapes").iterdir()}

    before = shipped()
    config = TrainConfig(**{**small_config(tmp_path, 2).__dict__, "export": "", "init_from": TrainConfig().init_from})
    assert Path(config.init_from) == WEIGHTS_ROOT / "tiny-shapes"
    trainer = Trainer(config)
    assert trainer.resume() == config.init_from  # started from the shipped weights, read only
    assert trainer.export() == tmp_path / "run" / "export"
    assert (tmp_path / "run" / "export" / "model.json").exists()
    assert shipped() == before
