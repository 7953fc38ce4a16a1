"End to end: `sdlms run params/smoke.yaml`, the report, determinism, resume, failures and the stage notebook alone."
import json, os, shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from sdlms.core import SdlmsError, read_jsonl
from sdlms.rundir import run_status
from sdlms.dynamic_k import TIMED_COLS as DK_TIMED
from sdlms.runner import execute_stage, run

ROOT = Path(__file__).resolve().parent.parent
SMOKE = str(ROOT / "params" / "smoke.yaml")
quiet = dict(progress=False, log=lambda *a: None)


def test_smoke_run_outputs(smoke_run):
    st = run_status(smoke_run)
    assert st["status"] == "complete" and st["stages"] == ["suite", "capture/micro-tiny", "specialization/micro-tiny/L0",
                                                           "specialization/micro-tiny/L1", "dynamic_k/micro-tiny", "scaling"]
    meta = read_jsonl(smoke_run / "meta.jsonl")
    done = [m["stage"] for m in meta if m.get("event") == "stage"]
    assert sorted(s for s in done if not s.startswith("train/")) == sorted(st["stages"])    # every planned stage ran once
    # each job ran after the jobs it reads (the scheduler starts jobs as their inputs finish)
    assert done.index("suite") < done.index("capture/micro-tiny") < done.index("specialization/micro-tiny/L1") < done.index("scaling")
    df = pd.read_csv(smoke_run / "sparsity.csv")
    for col in ["model", "params", "layer", "relative_depth", "site", "tokens", "frac_active", "top10_mass", "pr",
                "pr_over_d", "pr_tokens", "pr_method", "init_frac_active", "init_pr", "init_pr_over_d",
                "mlp_zero_cost", "mlp_mean_cost", "importance_tokens", "init_mlp_zero_cost", "init_mlp_mean_cost"]:
        assert col in df, col
    assert df.layer.tolist() == [0, 1] and df.relative_depth.tolist() == [0.0, 1.0]
    assert (df.tokens == 6 * 256).all() and df.frac_active.between(0, 1).all()
    assert (df.importance_tokens == 6 * 256).all()                # site importance on every probe token by default
    assert (df.mlp_zero_cost.abs() > df.init_mlp_zero_cost.abs()).all()   # the trained model uses its MLPs more than init
    assert df.init_frac_active.between(0.45, 0.55).all()     # random-init GELU: about half the entries are positive
    # the activation cache (per-task rates are computed by the specialization stage, from the cache)
    assert not list((smoke_run / "capture/micro-tiny").glob("rates_L*.npz"))
    from sdlms.capture import ActivationCache
    c = ActivationCache(smoke_run / "capture/micro-tiny/cache/L1", verify=True)
    assert c.n_tokens == 1536 and c.d == 128 and len(c.shards) == 3    # 512-token shards
    assert (c.index.groupby("task").size() == 256).all()
    acts = np.concatenate([np.asarray(s, dtype=np.float32) for s in c.shards])
    assert abs((acts > 0).mean() - df.frac_active[1]) < 2e-3     # cache agrees with the streamed statistic
    # provenance
    meta = read_jsonl(smoke_run / "meta.jsonl")
    assert meta[0]["event"] == "run" and meta[0]["versions"]["torch"]
    cap = [m for m in meta if m.get("stage") == "capture/micro-tiny"][0]
    assert len(cap["model_hash"]) == 64 and len(cap["data_hash"]) == 64 and cap["seconds"] > 0
    assert yaml.safe_load((smoke_run / "params.yaml").read_text())["name"] == "smoke"
    # figures saved standalone next to their CSVs
    for f in ["scaling/as_vs_size.html", "scaling/pr_vs_size.json", "capture/micro-tiny/sparsity_by_layer.html"]:
        assert (smoke_run / f).exists(), f


def test_dynamic_k_stage(smoke_run):
    "The smoke run's dynamic-k stage: the kernel keeping every neuron reproduces the dense model; every method at every keep."
    df = pd.read_csv(smoke_run / "dynamic_k/micro-tiny/dynamic_k.csv")
    assert set(df.method) == {"all", "oracle", "threshold", "predictor", "teal", "task_static", "task_static_other"}
    assert set(df.keep) == {1.0, 0.5, 0.3} and set(df.seed) == {0, 1}
    ex = df[df.method == "all"]
    assert (ex.kl < 1e-6).all() and (ex.top1 == 1).all() and ((ex.ppl_sparse - ex.ppl_dense).abs() < 0.01).all()
    s = pd.read_csv(smoke_run / "dynamic_k/micro-tiny/dynamic_k_summary.csv").set_index(["method", "keep"])
    for m in ("oracle", "threshold", "predictor", "teal", "task_static", "task_static_other"):
        assert s.kl[(m, 0.3)] > s.kl[(m, 0.5)] > 0, m                      # less kept, more damage
        assert abs(s.keep_realised[(m, 0.5)] - 0.5) < (0.1 if m == "teal" else 0.05), m
    # speed: every row timed against dense; the ideal speedups follow from the weights each method reads
    assert (df.tokens_per_s > 0).all() and (df.tokens_per_s_dense > 0).all() and (ex.ideal_speedup == 1).all()
    st = df[df.method == "task_static"]
    assert ((st.ideal_mlp_speedup - 1 / st.keep_realised).abs() < 1e-9).all() and (st.ideal_speedup < st.ideal_mlp_speedup).all()
    assert (df[df.method == "oracle"].ideal_mlp_speedup < 1.6).all()     # it computes every neuron's h
    for f in ("dk_frontier.html", "dk_speed.html", "dk_tasks.html"): assert (smoke_run / "dynamic_k/micro-tiny" / f).exists(), f
    assert set(pd.read_csv(smoke_run / "scaling/dynamic_k.csv").method) == set(df.method) - {"all"}
    meta = json.loads((smoke_run / "dynamic_k/micro-tiny/meta.json").read_text())
    assert meta["keep1_max_kl"] < 1e-6


def test_report_site_and_quarto_config(smoke_run):
    from sdlms.report import check_quarto_project
    assert check_quarto_project(smoke_run) == []
    cfg = yaml.safe_load((smoke_run / "_quarto.yml").read_text())
    assert cfg["project"]["type"] == "website" and cfg["execute"]["enabled"] is False
    assert set(cfg["project"]["render"]) == {"index.qmd", "methods.qmd", "notebooks.qmd", "models/micro-tiny.qmd", "suite/00_suite.ipynb", "capture/micro-tiny/10_capture.ipynb",
                                             "specialization/micro-tiny/L0/30_specialization.ipynb",
                                             "specialization/micro-tiny/L1/30_specialization.ipynb", "scaling/90_scaling.ipynb",
                                             "dynamic_k/micro-tiny/40_dynamic_k.ipynb"}
    yaml.safe_load((ROOT / "_quarto.yml").read_text())
    for rel in [r for r in cfg["project"]["render"] if r.endswith(".ipynb")]:
        nb = json.loads((smoke_run / rel).read_text())
        assert not nb["metadata"]["papermill"]["exception"]
        plots = [o for c in nb["cells"] for o in c.get("outputs", []) if "application/vnd.plotly.v1+json" in o.get("data", {})]
        assert plots and all("text/html" in o["data"] for o in plots), rel     # figures survive nbconvert/Quarto
    index = (smoke_run / "_site" / "index.html").read_text()
    assert "Sparsity and participation ratio" in index and "frac_active" in index
    for rel in cfg["project"]["render"]:
        page = smoke_run / "_site" / (rel.rsplit(".", 1)[0] + ".html")
        assert page.exists(), rel
        if rel.endswith(".ipynb") or rel in ("index.qmd", "models/micro-tiny.qmd"): assert "plotly" in page.read_text(), rel


def same_dynamic_k(a, b):
    "Two runs' dynamic_k.csv agree to the byte on everything but the measured decode speed (wall-clock timings)."
    x, y = (pd.read_csv(r / "dynamic_k/micro-tiny/dynamic_k.csv") for r in (a, b))
    timed = [c for c in DK_TIMED if c in x]
    assert len(timed) == 4 and x.drop(columns=timed).to_csv().encode() == y.drop(columns=timed).to_csv().encode()


def test_submitit_local_executor_gives_the_same_results(smoke_run):
    "The smoke params through submitit's local executor (Slurm's code path) fill a run folder like the process pool's."
    p = yaml.safe_load(Path(SMOKE).read_text()); p.update(executor={"kind": "submitit_local"}, dynamic_k={"enabled": False})
    d = run(p, report=False, **quiet)                      # (dynamic-k's own determinism: the resume test)
    assert run_status(d)["status"] == "complete"
    for f in ["sparsity.csv", "si_modularity.csv", "ablation.csv",
              "specialization/micro-tiny/L1/communities.csv", "specialization/micro-tiny/L0/units.parquet"]:
        assert (d / f).read_bytes() == (smoke_run / f).read_bytes(), f
    from sdlms.rundir import job_table
    t = job_table(d)
    assert (t.state == "done").all() and t.job_id.notna().all() and (d / "_jobs").is_dir()
    sub = [m for m in read_jsonl(d / "meta.jsonl") if m.get("event") == "submitted"]
    assert {m["stage"] for m in sub} >= set(run_status(d)["stages"]) and all(Path(m["stdout"]).exists() for m in sub)


def test_resume_completes_an_interrupted_run_and_never_overwrites(smoke_run):
    """A run stopped after capture and resumed in a second process ends with the smoke run's results to the byte: the
    same seed gives identical tables, caches and dynamic-k decodes (timings aside), whichever process ran each stage."""
    d = run(SMOKE, stop_after="capture", report=False, **quiet)
    assert run_status(d)["status"] == "running" and not (d / "scaling").exists()
    cap_mtime = (d / "capture/micro-tiny/sparsity.csv").stat().st_mtime_ns
    (d / "scaling.partial").mkdir()                       # what a killed stage leaves behind
    (d / "scaling.partial" / "junk.csv").write_text("half")
    logs = []
    assert run(resume=str(d), progress=False, log=logs.append) == d
    assert any("skip capture/micro-tiny (complete)" in l for l in logs)
    assert (d / "capture/micro-tiny/sparsity.csv").stat().st_mtime_ns == cap_mtime   # finished stage untouched
    assert run_status(d)["status"] == "complete" and (d / "scaling/as_vs_size.html").exists()
    assert not (d / "scaling.partial").exists() and d != smoke_run
    for f in ["sparsity.csv", "si_modularity.csv", "ablation.csv",
              "specialization/micro-tiny/L1/communities.csv", "specialization/micro-tiny/L0/units.parquet"]:
        assert (d / f).read_bytes() == (smoke_run / f).read_bytes(), f
    same_dynamic_k(d, smoke_run)
    m1, m2 = (json.loads((r / "capture/micro-tiny/cache/L0/manifest.json").read_text()) for r in (smoke_run, d))
    assert [s["sha256"] for s in m1["shards"]] == [s["sha256"] for s in m2["shards"]]
    with pytest.raises(SdlmsError, match="is complete and is never overwritten"):
        run(resume=str(d), **quiet)


def test_missing_upstream_artifact_names_the_stage(tmp_path):
    d = tmp_path / "run"; d.mkdir()
    shutil.copy(SMOKE, d / "params.yaml")
    (d / "run.json").write_text("{}")
    with pytest.raises(SdlmsError, match=r"missing the micro-suite's models.json.*run the suite stage first"):
        execute_stage("10_capture.ipynb", str(d), "capture/micro-tiny", "micro-tiny")
    assert (d / "capture/micro-tiny.partial/10_capture.ipynb").exists()   # kept for debugging, clearly not complete
    assert not (d / "capture/micro-tiny").exists()
    with pytest.raises(SdlmsError, match="run the capture stage first"):
        execute_stage("90_scaling.ipynb", str(d), "scaling")


def test_failed_stage_leaves_no_complete_looking_artifact(tiny_models, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    bad = tmp_path / "nan-model"
    m = AutoModelForCausalLM.from_pretrained(str(tiny_models["gpt_neox"]))
    with torch.no_grad(): m.gpt_neox.layers[0].mlp.dense_h_to_4h.weight[:] = float("nan")
    m.save_pretrained(bad); AutoTokenizer.from_pretrained(str(tiny_models["gpt_neox"])).save_pretrained(bad)
    p = yaml.safe_load(open(SMOKE))
    p.update(models=[str(bad)], name="nan", layers=[0])
    with pytest.raises(SdlmsError, match=r"stage capture/.*failed: SdlmsError: model .*weight gpt_neox.layers.0.mlp.dense_h_to_4h.weight \(layer 0\) holds"):
        run(p, **quiet)
    runs = [r for r in Path(os.environ["SDLMS_ARTIFACTS"]).glob("*-nan")]
    assert len(runs) == 1 and run_status(runs[0])["status"] == "running"
    cap = runs[0] / "capture"
    assert [x.name for x in cap.iterdir()] == [f"{x.name}" for x in cap.glob("*.partial")]   # only .partial folders
    assert not (runs[0] / "sparsity.csv").exists()


def test_local_gpt2_and_llama_models_run_through_the_capture_stage(tiny_models):
    p = yaml.safe_load(open(SMOKE))
    p.update(name="local", models=[str(tiny_models["gpt2"]), str(tiny_models["llama"])], layers=[0.5],
             specialization={"enabled": False})                # capture and dynamic-k are what differ by architecture
    with pytest.raises(SdlmsError, match=r"dynamic_k: .*gpt2.* has no sparse MLP kernel"):   # refused before any work
        run(p, report=False, **quiet)
    p["overrides"] = {str(tiny_models["gpt2"]): {"dynamic_k": {"enabled": False}}}
    d = run(p, report=False, **quiet)
    assert len([x for x in (d / "dynamic_k").iterdir() if x.is_dir()]) == 1      # the Llama model's dynamic-k stage only
    df = pd.read_csv(d / "sparsity.csv")
    assert sorted(df.site) == ["model.layers.1.mlp.down_proj", "transformer.h.1.mlp.c_proj"]
    assert not (d / "suite").exists()                    # no micro models: no suite stage
    assert df.init_frac_active.notna().all()             # random-init twins built from the configs


def test_stage_notebook_runs_alone_on_its_defaults(tmp_path):
    "The capture notebook's parameters cell runs the smoke model as it stands (as in JupyterLab)."
    import papermill as pm
    from sdlms.runner import ensure_kernel, kernel_env, stages_dir
    kernel_env()
    out = tmp_path / "10_capture.ipynb"
    pm.execute_notebook(str(stages_dir() / "00_suite.ipynb"), str(tmp_path / "00_suite.ipynb"), kernel_name=ensure_kernel(),
                        cwd=str(stages_dir()), progress_bar=False)
    pm.execute_notebook(str(stages_dir() / "10_capture.ipynb"), str(out), kernel_name=ensure_kernel(),
                        cwd=str(stages_dir()), progress_bar=False, parameters={"out_dir": str(tmp_path / "cap")})
    df = pd.read_csv(tmp_path / "cap" / "sparsity.csv")
    assert df.model.tolist() == ["micro-tiny", "micro-tiny"]
    assert pm.inspect_notebook(str(stages_dir() / "10_capture.ipynb")).keys() >= {"run_dir", "out_dir", "model", "params_file"}


def test_compare_runs_plots_them_together(smoke_run, tmp_path):
    from sdlms.runner import compare
    p = yaml.safe_load(open(SMOKE)); p.update(name="layer0", layers=[0], dynamic_k={"enabled": False})   # another run: one (used) site
    other = run(p, report=False, **quiet)
    out = compare([str(smoke_run), other.name], log=lambda *a: None)
    df = pd.read_csv(out / "scaling" / "scaling.csv")
    assert sorted(df.run.unique()) == sorted([smoke_run.name, other.name])
    assert (out / "_site" / "index.html").exists() and run_status(out)["status"] == "complete"
    q = (out / "index.qmd").read_text()                    # the same overview, across both runs
    assert f"compares the runs {smoke_run.name}, {other.name}" in q and "## Are MLP units task-specialized?" in q
    assert f"{smoke_run.name}: **micro-tiny**" in q and f"{other.name}: **micro-tiny**" in q      # one line per run, never averaged
    with pytest.raises(SdlmsError, match="no run 'nope'"):
        compare(["nope"])


def test_suite_training_is_bit_reproducible(tmp_path, monkeypatch):
    from sdlms.config import SuiteParams
    from sdlms.suite import build_suite
    cfg = SuiteParams(train_tokens=4096, seq_len=64, batch_size=8, vocab_size=512, tokenizer_chars=20_000)
    hashes = []
    for i in range(2):
        monkeypatch.setenv("SDLMS_CACHE", str(tmp_path / f"c{i}"))     # fresh caches: both train from scratch
        hashes.append(build_suite(cfg, ["tiny"], seed=7, workers=1, progress=False)["micro-tiny"]["model_hash"])
    assert hashes[0] == hashes[1]
    monkeypatch.setenv("SDLMS_CACHE", str(tmp_path / "c2"))
    assert build_suite(cfg, ["tiny"], seed=8, workers=1, progress=False)["micro-tiny"]["model_hash"] != hashes[0]
