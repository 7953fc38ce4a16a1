"Params are validated before any compute: one clear error listing every problem and what is valid."
import os, time
from pathlib import Path

import pytest
import yaml

from sdlms.cli import main
from sdlms.params import load_params, parse_params
from sdlms.core import SdlmsError

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["default", "smoke", "smoke_sae", "pythia", "kxd", "checkpoints"])
def test_shipped_params_are_valid(name):
    p = load_params(ROOT / "params" / f"{name}.yaml")
    assert p.name == name.replace("_", "-")


@pytest.mark.parametrize("bad,needle", [
    ({"modles": ["micro-xs"]}, "unknown key 'modles'; valid keys: name, seed, models"),
    ({"seed": 1.5}, "seed: expected int, got float 1.5"),
    ({"workers": True}, "workers: expected int, got bool True"),
    ({"capture": {"cache": "yes"}}, "capture.cache: expected bool, got str"),
    ({"capture": {"pr_token_rate": 0}}, "capture.pr_token_rate: must be in (0, 1]"),
    ({"models": ["micro-xxl"]}, "unknown micro-suite model 'micro-xxl'; valid: micro-tiny, micro-xs"),
    ({"models": ["not a model"]}, "'not a model' is not a micro-suite name"),
    ({"tasks": ["arith", "sonnets"]}, "tasks: unknown ['sonnets']; known tasks: arith, code"),
    ({"models": ["micro-xs"], "layers": [0, 2]}, "layers for micro-xs: layer selection 2 out of range for a model with 2 layers"),
    ({"layers": [1.5]}, "layer selection 1.5 out of range"),
    ({"dtype": "int8"}, "dtype: 'int8' is not one of ['float32', 'bfloat16', 'float16']"),
    ({"device": "gpu"}, "device: 'gpu'; use cpu, cuda, cuda:<n> or auto"),
    ({"devices": {"dynamic_k": "cuda"}}, "devices.dynamic_k: no such model stage; per-stage devices: capture, sae, specialization"),
    ({"devices": {"sae": "tpu"}}, "devices.sae: 'tpu'; use cpu, cuda, cuda:<n> or auto"),
    ({"device_map": "everywhere"}, "device_map: 'everywhere' is not one of [None, 'auto', 'balanced', 'balanced_low_0', 'sequential']"),
    ({"executor": {"arrays": "yes"}}, "executor.arrays: expected bool, got str"),
    ({"tokens_per_task": 10, "block_size": 64}, "tokens_per_task (10) must be at least block_size (64)"),
    ({"suite": {"sizes": ["xl"]}}, "suite.sizes: no longer a parameter: the suite trains the micro models named in `models`"),
    ({"models": ["micro-xs"], "sae": {"d_sae": 64, "k": 100}}, "sae for micro-xs (MLP width 256): sae.k (100) is larger than d_sae (64)"),
    ({"models": ["micro-xs"], "block_size": 512, "tokens_per_task": 2048}, "block_size (512) is longer than the context of micro-xs"),
])
def test_bad_params_name_problem_and_fix(bad, needle):
    with pytest.raises(SdlmsError) as e: parse_params(bad)
    assert needle in str(e.value) and "sdlms params" in str(e.value)


def test_all_problems_reported_at_once():
    with pytest.raises(SdlmsError) as e: parse_params({"seed": "x", "foo": 1, "capture": {"bar": 2}})
    msg = str(e.value)
    assert "seed: expected int" in msg and "unknown key 'foo'" in msg and "unknown key 'capture.bar'" in msg


def test_local_model_layers_checked_from_its_config(tiny_models):
    p = parse_params({"models": [str(tiny_models["gpt2"])], "layers": [0.5]})
    assert p.models == [str(tiny_models["gpt2"])]
    with pytest.raises(SdlmsError, match="0..2"): parse_params({"models": [str(tiny_models["gpt2"])], "layers": [3]})


def test_cli_rejects_bad_params_before_creating_a_run(tmp_path, capsys):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump({"name": "bad", "models": ["micro-xs"], "tasks": ["nope"]}))
    before = set(os.listdir(os.environ["SDLMS_ARTIFACTS"])) if os.path.exists(os.environ["SDLMS_ARTIFACTS"]) else set()
    assert main(["run", str(f), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "sdlms: error: invalid params" in err and "tasks: unknown ['nope']" in err and "Traceback" not in err
    after = set(os.listdir(os.environ["SDLMS_ARTIFACTS"])) if os.path.exists(os.environ["SDLMS_ARTIFACTS"]) else set()
    assert after == before
    assert main(["run", "no-such-file.yaml"]) == 2
    assert "available in params/: checkpoints, default, kxd, pythia, real, smoke, smoke_sae" in capsys.readouterr().err
    f.write_text("name: [unclosed")
    assert main(["validate", str(f)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def _runs():
    d = os.environ["SDLMS_ARTIFACTS"]
    return set(os.listdir(d)) if os.path.exists(d) else set()


@pytest.mark.parametrize("text, needle", [
    ("", "the params file is empty"),
    ("# only a comment\n", "the params file is empty"),
    (yaml.safe_dump({"name": "hub", "models": ["sdlms-test/no-such-model"]}),
     "model 'sdlms-test/no-such-model': the Hugging Face hub cannot be reached from here"),
    (yaml.safe_dump({"name": "sae", "models": ["micro-tiny"], "sae": {"d_sae": 16, "k": 32}}),
     "sae for micro-tiny (MLP width 128): sae.k (32) is larger than d_sae (16)"),
])
def test_run_rejects_bad_input_before_any_compute(tmp_path, capsys, monkeypatch, text, needle):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")   # as on a machine without the hub
    f = tmp_path / "p.yaml"; f.write_text(text)
    before = _runs()
    t = time.perf_counter()
    assert main(["run", str(f), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err, err
    assert time.perf_counter() - t < 30 and _runs() == before     # no run folder, no training
    assert main(["validate", str(f)]) == 2 and needle in capsys.readouterr().err
