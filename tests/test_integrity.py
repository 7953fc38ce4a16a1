"""Fault injection: each fault, on its own copy of the smoke run (or a tiny model), gives a clear error that names the
damage and the fix, or a correct repair. Nothing may finish "complete" with wrong numbers."""
import contextlib, io, json, os, shutil, subprocess, sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from sdlms.core import SdlmsError, write_json
from sdlms.rundir import run_status, verify_run
from sdlms.runner import run

ROOT = Path(__file__).resolve().parent.parent
SMOKE = str(ROOT / "params" / "smoke.yaml")
quiet = dict(progress=False, log=lambda *a: None)


def copy_run(smoke_run, tmp_path, name="copy") -> Path:
    "A private copy of the shared smoke run (faults never touch the original)."
    d = tmp_path / f"{smoke_run.name}-{name}"
    shutil.copytree(smoke_run, d, ignore=shutil.ignore_patterns(".lock"))
    return d


def cli(*args) -> tuple:
    "Exit code and printed output of `sdlms <args>`."
    from sdlms.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): rc = main(list(args))
    return rc, out.getvalue() + err.getvalue()


# 1. NaN that hides ---------------------------------------------------------------------------------------------

NAN_PLACES = {"up": ("gpt_neox.layers.1.mlp.dense_h_to_4h.weight", "layer 1"),
              "down": ("gpt_neox.layers.1.mlp.dense_4h_to_h.weight", "layer 1"),
              "attention": ("gpt_neox.layers.0.attention.query_key_value.weight", "layer 0"),
              "embedding": ("gpt_neox.embed_in.weight", ""),
              "logits": ("lm_head.weight", "")}


def nan_model(tiny_models, tmp_path, param: str) -> Path:
    "A copy of the tiny GPT-NeoX with one weight tensor all NaN."
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    m = AutoModelForCausalLM.from_pretrained(str(tiny_models["gpt_neox"]))
    with torch.no_grad(): dict(m.named_parameters())[param][:] = float("nan")
    d = tmp_path / f"nan-{param}"
    m.save_pretrained(d); AutoTokenizer.from_pretrained(str(tiny_models["gpt_neox"])).save_pretrained(d)
    return d


@pytest.mark.parametrize("place", list(NAN_PLACES))
def test_nan_weights_are_named_at_load(tiny_models, tmp_path, place):
    from sdlms.models import load_model
    param, layer = NAN_PLACES[place]
    with pytest.raises(SdlmsError, match=rf"weight {param.replace('.', '[.]')}{' [(]' + layer + '[)]' if layer else ''} holds"
                                         r" [\d,]+ non-finite values of [\d,]+ \(the first is nan\)"):
        load_model(str(nan_model(tiny_models, tmp_path, param)))


def test_nan_activations_fail_losses_capture_and_decoding(tiny_models):
    """NaN from finite weights (an overflow, say) stops every measurement that meets it, naming where. (A run on a model
    with NaN weights fails its capture stage and stays incomplete: tests/test_run.py.)"""
    import torch
    from sdlms.models import load_model, mlp_sites
    from sdlms.interventions import block_losses
    from sdlms.dynamic_k import decode_quality
    m, _ = load_model(str(tiny_models["gpt_neox"]))
    ids = np.random.default_rng(0).integers(0, 512, (4, 16)); task_B = np.array([0, 0, 1, 1])
    h = m.gpt_neox.layers[1].mlp.register_forward_hook(lambda mod, a, out: out * float("nan"))
    try:
        with pytest.raises(SdlmsError, match=r"the model's own probe loss per task .* is not finite: nan"):
            block_losses(m, ids, task_B, 2)
        with pytest.raises(SdlmsError, match=r"the dense model's log-probabilities on probe block 0 \(task a\) is not finite"):
            decode_quality(m, ids, task_B, ["a", "b"], timed=False)
    finally: h.remove()
    from sdlms.capture import capture
    from sdlms.data import ProbeBlocks
    site = mlp_sites(m)[1].module
    h = site.register_forward_pre_hook(lambda mod, a: (a[0] * float("nan"),))
    try:
        blocks = ProbeBlocks(ids_BT=ids, task_B=task_B, tasks=["a", "b"], block_size=16)
        with pytest.raises(SdlmsError, match=r"layer 1 \(gpt_neox.layers.1.mlp.dense_4h_to_h\): non-finite activations"):
            capture(m, blocks, [0, 1], progress=False)
    finally: h.remove()


def test_a_nan_in_a_measured_column_fails_publication(tmp_path):
    "A stage table holding a NaN loss is refused at publication (`jobs.execute_stage` calls this check)."
    from sdlms.rundir import check_measured
    d = tmp_path / "run"; (d / "x.partial").mkdir(parents=True)
    pd.DataFrame({"model": ["m"], "layer": [1], "mlp_zero_cost": [float("nan")], "frac_active": [0.2]}).to_csv(d / "x.partial" / "sparsity.csv", index=False)
    with pytest.raises(SdlmsError, match=r"sparsity.csv: column 'mlp_zero_cost' is nan in row 0 \(model=m, layer=1\)"):
        check_measured(d / "x.partial", "capture/m")


# 2. corrupt caches ----------------------------------------------------------------------------------------------

def test_corrupt_shard_is_named_and_repaired(smoke_run, tmp_path):
    d = copy_run(smoke_run, tmp_path, "bits")
    shard = d / "capture/micro-tiny/cache/L1/shard_00001.npy"
    b = bytearray(shard.read_bytes())
    for i in np.random.default_rng(0).choice(np.arange(200, len(b), 2), 200, replace=False): b[i + 1] ^= 0x40   # exponent bits
    shard.write_bytes(bytes(b))
    rc, out = cli("verify", str(d))
    assert rc == 1 and "capture/micro-tiny/cache/L1/shard_00001.npy: content changed" in out
    assert "written by the stage capture/micro-tiny" in out and f"sdlms run --resume {d.name} --repair" in out
    with pytest.raises(SdlmsError, match="is complete and is never overwritten"):   # a plain resume compares sizes only
        run(resume=str(d), **quiet)
    from sdlms.rundir import StageContext
    from sdlms.params import load_params
    import time
    with pytest.raises(SdlmsError, match="shard_00001.npy: content changed"):   # the stages that read it refuse it
        StageContext(load_params(SMOKE), d, d / "x", time.perf_counter()).upstream("capture/micro-tiny/cache/L1", "cache", "capture")
    logs = []
    assert run(resume=str(d), repair=True, progress=False, log=logs.append) == d
    assert any("damaged capture/micro-tiny" in l for l in logs)
    rep = [l for l in logs if l.strip().startswith("repaired capture/micro-tiny")]
    assert rep and "byte-identical" in rep[0] and "differ" not in rep[0], rep      # the seeded capture is reproduced exactly
    assert verify_run(d) == {} and cli("verify", str(d))[0] == 0
    assert (d / "_damaged").is_dir() and run_status(d)["status"] == "complete" and run_status(d)["report"] == "built"
    assert shard.read_bytes() == (smoke_run / "capture/micro-tiny/cache/L1/shard_00001.npy").read_bytes()
    assert (d / "sparsity.csv").read_bytes() == (smoke_run / "sparsity.csv").read_bytes()
    assert "damaged" not in "".join(l for l in logs if "specialization" in l)       # only the damaged stage re-ran
    logs.clear()
    run(resume=str(d), repair=True, progress=False, log=logs.append)
    assert any("is intact" in l for l in logs)


def test_truncated_shard_and_deleted_manifest_are_named(smoke_run, tmp_path):
    from sdlms.capture import ActivationCache
    from sdlms import load_run
    d = copy_run(smoke_run, tmp_path, "trunc")
    shard = d / "capture/micro-tiny/cache/L0/shard_00000.npy"
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(SdlmsError, match=r"cache shard .*L0/shard_00000.npy is truncated .* repair the run"):
        ActivationCache(d / "capture/micro-tiny/cache/L0")
    (d / "capture/micro-tiny/cache/L1/manifest.json").unlink()
    with pytest.raises(SdlmsError, match=r"L1 has shards but no manifest.json: it is damaged; repair the run with"):
        ActivationCache(d / "capture/micro-tiny/cache/L1")
    bad = verify_run(d, content=False)["capture/micro-tiny"]
    assert "capture/micro-tiny/cache/L1/manifest.json: missing" in bad and any("L0/shard_00000.npy: 1,000 bytes" in x for x in bad)
    assert load_run(str(d)).damaged == ["capture/micro-tiny"] and "capture/micro-tiny" in load_run(str(d)).missing
    rc, out = cli("status", str(d))
    assert rc == 0 and "1 damaged" in out


# 3. edited params -----------------------------------------------------------------------------------------------

def test_resume_refuses_edited_params(smoke_run, tmp_path):
    d = copy_run(smoke_run, tmp_path, "edited")
    st = run_status(d); st["status"] = "running"; write_json(d / "run.json", st)      # as if interrupted
    shutil.rmtree(d / "scaling")
    (d / "params.yaml").write_text((d / "params.yaml").read_text().replace("tokens_per_task: 256", "tokens_per_task: 512"))
    with pytest.raises(SdlmsError, match=r"params.yaml was edited after the run was created(.|\n)*tokens_per_task: 256 -> 512"):
        run(resume=str(d), **quiet)
    assert not (d / "scaling").exists()
    rc, out = cli("verify", str(d))
    assert rc == 1 and "tokens_per_task: 256 -> 512" in out


# 4. damaged results ---------------------------------------------------------------------------------------------

def test_truncated_tables_are_refused_or_merged_again(smoke_run, tmp_path):
    from sdlms.report import build_report
    from sdlms import load_run
    d = copy_run(smoke_run, tmp_path, "tables")
    whole = (d / "sparsity.csv").read_bytes()
    (d / "sparsity.csv").write_bytes(whole[:len(whole) // 2])                 # the run-wide table: merged again
    rc, out = cli("report", str(d))
    assert rc == 0 and "merged again" in out and (d / "sparsity.csv").read_bytes() == whole
    f = d / "capture/micro-tiny/sparsity.csv"
    f.write_bytes(f.read_bytes()[:len(f.read_bytes()) // 2])                  # a stage's own table: refused, named
    assert load_run(str(d)).damaged == ["capture/micro-tiny"]
    with pytest.raises(SdlmsError, match=r"capture/micro-tiny/sparsity.csv: [\d,]+ bytes, [\d,]+ when written \(written by the stage"):
        build_report(d)
    rc, out = cli("report", str(d))
    assert rc == 2 and "--repair" in out
    f.unlink()
    assert "capture/micro-tiny/sparsity.csv: missing" in verify_run(d)["capture/micro-tiny"]


def test_deleted_or_truncated_sae_weights_are_named(smoke_run, tmp_path):
    "An SAE stage's weights, deleted or cut: `sae_model` names the file and the repair instead of a bare error."
    from sdlms.core import file_manifest
    from sdlms import load_run
    d = copy_run(smoke_run, tmp_path, "sae")
    s = d / "sae/micro-tiny/L1"; (s / "topk_k8_d512" / "sae").mkdir(parents=True)
    (s / "topk_k8_d512" / "sae" / "cfg.json").write_text("{}")
    (s / "topk_k8_d512" / "sae" / "sae_weights.safetensors").write_bytes(b"\0" * 4096)
    write_json(s / "meta.json", {"files": file_manifest(s)})
    st = run_status(d); st["stages"].append("sae/micro-tiny/L1"); write_json(d / "run.json", st)
    w = s / "topk_k8_d512" / "sae" / "sae_weights.safetensors"
    w.write_bytes(b"\0" * 100)
    with pytest.raises(SdlmsError, match=r"sae/micro-tiny/L1/topk_k8_d512/sae/sae_weights.safetensors: 100 bytes, 4,096 when written"):
        load_run(str(d)).sae_model("micro-tiny", 1)
    shutil.rmtree(s / "topk_k8_d512")
    with pytest.raises(SdlmsError, match=r"sae_weights.safetensors: missing \(written by the stage sae/micro-tiny/L1\)"):
        load_run(str(d)).sae_model("micro-tiny", 1, "topk_k8_d512")


# 5. two builders of one cached model ------------------------------------------------------------------------------

BUILD = """
import sys, json
from sdlms.config import SuiteParams
from sdlms.suite import build_suite
cfg = SuiteParams(train_tokens=4096, seq_len=64, batch_size=8, vocab_size=512, tokenizer_chars=20_000)
print(json.dumps(build_suite(cfg, ["tiny"], seed=3, workers=1, progress=False)["micro-tiny"]["model_hash"]))
"""


def test_two_runs_building_one_model_at_once(tmp_path):
    env = {**os.environ, "SDLMS_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    from sdlms.config import SuiteParams
    from sdlms.suite import suite_dir       # a dead builder's leftovers, as a killed run leaves them
    old = os.environ["SDLMS_CACHE"]; os.environ["SDLMS_CACHE"] = env["SDLMS_CACHE"]
    try:
        root = suite_dir(SuiteParams(train_tokens=4096, seq_len=64, batch_size=8, vocab_size=512, tokenizer_chars=20_000), 3)
    finally: os.environ["SDLMS_CACHE"] = old
    (root / "tokenizer.partial").mkdir(parents=True); (root / "tokenizer.partial" / "junk").write_text("x")
    procs = [subprocess.Popen([sys.executable, "-c", BUILD], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    hashes = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert hashes[0] == hashes[1] and len(hashes[0]) == 64
    assert not list(root.rglob("*.partial")) and (root / "tokenizer" / "tokenizer.json").exists()
    assert any("waiting for pid" in o[0] for o in outs)          # the second builder said it waited


# 6. a full disk while writing the report ---------------------------------------------------------------------------

def test_full_disk_during_the_report(smoke_run, tmp_path):
    from sdlms.jobs import build_run_report
    mnt = tmp_path / "small"; mnt.mkdir()
    src_mb = sum(f.stat().st_size for f in smoke_run.rglob("*") if f.is_file() and "_site" not in f.parts) / 2**20
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(src_mb) + 3}m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode: pytest.skip(f"cannot mount a small filesystem here ({r.stderr.strip() or r.returncode}): the disk-full path is untested")
    try:
        d = mnt / smoke_run.name
        shutil.copytree(smoke_run, d, ignore=shutil.ignore_patterns(".lock", "_site", "plotly.min.js"))
        with pytest.raises(SdlmsError, match=r"the report of run .* could not be written: No space left on device .*sdlms report"):
            build_run_report(d, log=lambda *a: None)
        st = run_status(d)
        assert st["status"] == "complete" and st["report"].startswith("failed: the report of run")
        assert not (d / "_site.partial").exists() and not (d / "_site").exists()
        rc, out = cli("status", str(d))
        assert "complete (report failed:" in out
        with pytest.raises(SdlmsError, match="its report was not built"):
            run(resume=str(d), **quiet)
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
