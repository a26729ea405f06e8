import json
import subprocess
import sys

import pytest
import yaml

from gmnr import config
from tests.conftest import ROOT, env_with_venv, run_cli


def _defaults() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_project_params_are_valid_and_resolve_the_dataset_camera():
    p = config.load_params()
    assert p.dataset == "demo" and p.camera().fov_deg == 12.6
    assert str(p.raw_dir()) == "data/raw/demo"


@pytest.mark.parametrize("override, message", [
    ("bogus=1", "unknown key 'bogus'"),
    ("synth.colour=red", "unknown key 'synth.colour'"),
    ("synth.count=abc", "'synth.count': Input should be a valid integer"),
    ("synth.count=-3", "'synth.count': Input should be greater than 0"),
    ("landmarks.min_confidence=1.5", "'landmarks.min_confidence': Input should be less than or equal to 1"),
    ("dataset=imagenet", "'dataset': Input should be 'demo', 'ffhq256'"),
    ("cameras.ffhq.depth_range=[1.2, 0.9]", "near < far"),
])
def test_bad_params_fail_with_one_line_naming_the_key(override, message):
    with pytest.raises(config.ParamsError) as err:
        config.load_params(overrides=[override])
    text = str(err.value)
    assert message in text and "\n" not in text


def test_missing_camera_family_is_named():
    data = _defaults()
    del data["cameras"]["afhq"]
    with pytest.raises(config.ParamsError, match=r"missing \['afhq'\]"):
        config.validate(data)


def test_committed_schema_matches_the_models():
    committed = json.loads(config.SCHEMA_PATH.read_text())
    assert committed == json.loads(json.dumps(config.json_schema())), \
        "workflow/schemas/params.schema.json is stale: run `gmnr params --write-schema`"


def test_schema_and_models_agree_on_good_and_bad_params():
    import jsonschema
    schema = json.loads(config.SCHEMA_PATH.read_text())
    jsonschema.validate(_defaults(), schema)
    for bad in (["synth", "count", -1], ["pose", "backend", "magic"], ["surprise", None, 1]):
        data = _defaults()
        if bad[1] is None:
            data[bad[0]] = bad[2]
        else:
            data[bad[0]][bad[1]] = bad[2]
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(data, schema)
        with pytest.raises(config.ParamsError):
            config.validate(data)


def test_cli_bad_param_exits_nonzero_and_writes_nothing(tmp_path):
    out = tmp_path / "packed"
    done = run_cli("pack", "-S", "pack.resolution=-5", "--output", str(out), "--poses", str(tmp_path / "p.csv"))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "pack.resolution" in lines[0], done.stderr
    assert not out.exists()


def test_cli_missing_input_is_a_clear_error(tmp_path):
    done = run_cli("pose", "--landmarks", str(tmp_path / "nope.csv"), "--output", str(tmp_path / "o"))
    assert done.returncode == 2
    assert "nope.csv" in done.stderr and "gmnr landmarks" in done.stderr


def test_snakemake_rejects_bad_config_with_one_line_before_any_job(tmp_path):
    done = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--config", "seed=-4"],
                          cwd=ROOT, capture_output=True, text=True, env=env_with_venv(), timeout=120)
    assert done.returncode != 0
    assert "gmnr: params (params.yaml + --config): 'seed': Input should be greater than or equal to 0" in done.stderr


def test_override_parsing():
    assert config.parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    with pytest.raises(config.ParamsError, match="KEY=VALUE"):
        config.parse_override("novalue")


# Precedence: params.yaml (published) < demo section < a value changed in params.yaml < -S / --config.
def test_the_demo_section_replaces_published_values_and_overrides_win_over_it():
    data = _defaults()
    assert config.resolve(data).train.steps == data["demo"]["train"]["steps"]  # demo replaces the published 5000
    assert config.resolve(data, ["train.steps=7"]).train.steps == 7  # -S wins over the demo section
    assert config.resolve(data, ["demo.train.steps=3"]).train.steps == 3  # -S on the demo section takes effect
    assert config.resolve(data, ["dataset=ffhq256"]).train.steps == data["train"]["steps"]  # not the demo


def test_a_value_changed_in_params_yaml_wins_over_the_demo_section_as_dvc_exp_run_sets_it(tmp_path):
    """`dvc exp run -S train.steps=300` writes 300 into params.yaml (DVC's own code does it here): the
    demo run then trains 300 steps, not the demo section's 200."""
    from dvc.utils.hydra import apply_overrides
    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text())
    apply_overrides(str(path), ["train.steps=300"])
    assert config.load_params(path).train.steps == 300
    assert config.load_params(path, ["train.steps=9"]).train.steps == 9
    assert config.load_params(path).train.lr_g == _defaults()["demo"]["train"]["lr_g"]  # the rest: the demo's


def test_the_demo_section_cannot_hide_an_invalid_value_in_params_yaml():
    data = _defaults()
    data["train"]["steps"] = "abc"  # the demo section sets train.steps too
    with pytest.raises(config.ParamsError, match=r"'train.steps': Input should be a valid integer"):
        config.resolve(data)
    done = run_cli("params", "-S", "train.steps=abc")
    assert done.returncode == 2 and "train.steps" in done.stderr


def test_params_yaml_states_the_published_value_of_every_key_the_demo_section_sets():
    """The demo section applies where params.yaml still holds the published value (the schema default):
    a published value changed in params.yaml without the schema would silently stop the demo's."""
    data = _defaults()
    published = config.Params.model_validate({"cameras": data["cameras"]}).model_dump(mode="json")
    stated = config.validate(data).model_dump(mode="json")
    differ = [f"{s}.{k}: params.yaml {stated[s][k]!r}, schema {published[s][k]!r}"
              for s, values in data["demo"].items() for k in values if stated[s][k] != published[s][k]]
    assert not differ, "update the default in gmnr/config.py too: " + "; ".join(differ)


def test_named_ablations_are_checked_like_params():
    data = _defaults()
    data["ablations"] = {"no-vdr": {"model": "gmnr", "gmnr": {"vdr": False}}}
    params = config.resolve(data, ablation="no-vdr")
    assert (params.model, params.gmnr.vdr, params.train.steps) == ("gmnr", False, data["demo"]["train"]["steps"])
    data["ablations"]["bad"] = {"model": "gmnr", "gmnr": {"vdr": "maybe"}}
    with pytest.raises(config.ParamsError, match="ablation 'bad': 'gmnr.vdr'"):
        config.resolve(data)
    data["ablations"]["bad"] = {"model": "gmnr", "synth": {"count": 5}}
    with pytest.raises(config.ParamsError, match="may set the model sections .* not synth"):
        config.resolve(data)
    with pytest.raises(config.ParamsError, match="no ablation 'nope'"):
        config.resolve(_defaults(), ablation="nope")
