"""Hostile model folders: a config.json that disagrees with the weights or holds the wrong types, a
processor_config.json with unknown keys or text where numbers belong. Each is a ValueError naming
the file and the setting before any full-size model is built."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import damo
from damo.model.modeling_damo import DamoModel
from damo.pipeline import DamoPipeline
from test_ground import model_dir  # noqa: F401 (the scripted tiny model)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def folder(model_dir, tmp_path) -> Path:
    return Path(shutil.copytree(model_dir, tmp_path / "model"))


def edit(path: Path, **changes) -> None:
    d = json.loads(path.read_text())
    for key, value in changes.items():
        *parents, last = key.split("__")
        node = d
        for p in parents:
            node = node[p]
        node[last] = value
    path.write_text(json.dumps(d))


@pytest.mark.parametrize("key, value, message", [
    ("llm__hidden", 1_000_000, r"is \[32\] in the weights but \[1000000\] by the config \(and \d+ more\)"),
    ("fuser__width", 48, r"is \[.*\] in the weights but \[.*48.*\] by the config"),
    ("llm__layers", 10_000, r"model\.llm\.layers must be between 0 and 512, got 10000"),
    ("llm__layers", 3, r"the config has \d+ tensors, 12 of them not in the weights \(e\.g\. \['llm\.model\.layers\.2\."),
    ("llm__layers", 1, r"and the weights 12 tensors the config has no place for \(e\.g\. \['llm\.model\.layers\.1\."),
    ("llm__hidden", "128", r"model\.llm\.hidden must be a whole number, got '128'"),
    ("fps", "fast", r"model\.fps must be a finite number, got 'fast'"),
    ("llm", 7, r"model\.llm must be a mapping"),
])
def test_a_config_that_disagrees_with_the_weights_is_refused_before_building(folder, key, value, message):
    edit(folder / "config.json", **{key: value})
    with pytest.raises(ValueError, match=message) as e:
        DamoModel.load(folder)
    assert str(e.value).startswith(str(folder / "config.json"))


def test_the_refusal_costs_no_memory(folder):
    """A fresh process loading the 1,000,000-wide config (a 4 TB model had it been built)."""
    edit(folder / "config.json", llm__hidden=1_000_000)
    code = ("import resource, sys\nresource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
            "from damo.model.modeling_damo import DamoModel\n"
            "try:\n    DamoModel.load(sys.argv[1])\nexcept ValueError as e:\n    print('refused:', e)\n")
    out = subprocess.run([sys.executable, "-c", code, str(folder)], cwd=str(REPO), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("refused: ") and "does not match" in out.stdout, out.stderr


def test_a_model_config_that_is_not_json_or_not_an_object(folder):
    (folder / "config.json").write_text("[" * 100_000)
    with pytest.raises(ValueError, match=r"config\.json: config\.json: JSON nested more than 64"):
        DamoModel.load(folder)
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a DaMO model config"):
        DamoModel.load(folder)


@pytest.mark.parametrize("changes, message", [
    ({"colour": "red"}, r"unknown keys \['colour'\]"),
    ({"max_query_tokens": "256"}, r"processor\.max_query_tokens must be a whole number, got '256'"),
    ({"fps": None}, r"processor\.fps must be a finite number, got None"),
    ({"evidence_alpha": "2"}, r"processor\.evidence_alpha must be a finite number"),
    ({"budget": [1, 2]}, r"processor\.budget must be an object or null"),
    ({"layout": 3}, r"processor\.layout must be text, got 3"),
])
def test_a_processor_config_with_wrong_keys_or_types_names_the_file(folder, changes, message):
    edit(folder / "processor_config.json", **changes)
    with pytest.raises(ValueError, match=message) as e:
        damo.load(folder)
    assert str(e.value).startswith(str(folder / "processor_config.json"))


def test_an_untouched_folder_still_loads(folder):
    assert DamoPipeline.load(folder).processor.config.max_query_tokens == 256
