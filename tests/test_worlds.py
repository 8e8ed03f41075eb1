"""A model folder names the world it was trained on (model.json "world"); its judge is found by
that name in ``cascade.worlds``, which the toy world fills in: the model side never imports it."""

import json
import shutil

import pytest

from cascade import worlds
from cascade.model.presets import WEIGHTS_ROOT, load_model
from cascade.service import UNLIMITED, GenerateRequest, Service
from cascade.toy import analyzer, data


def test_the_bundled_model_names_its_world_and_the_registry_holds_its_judge():
    assert load_model("tiny-shapes").world == data.WORLD
    assert worlds.judge_of(data.WORLD) is analyzer.judge
    assert worlds.judge_of(None) is None  # a model trained on no world with a judge
    assert load_model("random-tiny").world is None


def test_a_folder_naming_an_unknown_world_fails_at_load_with_one_line(tmp_path):
    folder = tmp_path / "elsewhere"
    shutil.copytree(WEIGHTS_ROOT / "tiny-shapes", folder)
    info = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**info, "world": "nowhere"}))
    with Service(output_root=tmp_path / "out", device="cpu", limits=UNLIMITED) as service:
        with pytest.raises(ValueError, match=r"^unknown world 'nowhere' in model.json \(known: shapes\)$"):
            service.resolve(GenerateRequest(prompt="a red circle moving right", model=str(folder)))
