"""The training-checkpoint axis on the smoke suite: each (model, revision) is a model of the run with its own jobs; the
last checkpoint is the trained model and step 0 its random initialisation, so both must reproduce what the plain model's
run measures; the scaling stage puts the checkpoints on a step axis."""
from pathlib import Path

import pandas as pd
import yaml

from sdlms.params import parse_params
from sdlms.rundir import run_status
from sdlms.runner import run

ROOT = Path(__file__).resolve().parent.parent


def test_checkpoints_are_models_of_the_run(smoke_run):
    p = yaml.safe_load((ROOT / "params" / "smoke.yaml").read_text())
    steps = parse_params(p).suite.checkpoint_steps()
    first, mid, last = steps[0], steps[len(steps) // 2], steps[-1]
    assert first == 0 and 0 < mid < last
    p.update(models=["micro-tiny", *(f"micro-tiny@step{s}" for s in (first, mid, last))], dynamic_k={"enabled": False}, workers=2,
             layers=[1])                                  # one site: half the jobs
    d = run(p, progress=False, log=lambda *a: None)
    st = run_status(d)
    assert st["status"] == "complete" and f"capture/micro-tiny__step{mid}" in st["stages"]
    assert f"specialization/micro-tiny__step{last}/L1" in st["stages"]
    sp = pd.read_csv(d / "sparsity.csv")
    rows = {m: sp[sp.model == m].drop(columns="model").reset_index(drop=True) for m in sp.model.unique()}
    # the last checkpoint is the trained model: every number equal; it is also the plain smoke run's model
    pd.testing.assert_frame_equal(rows[f"micro-tiny@step{last}"], rows["micro-tiny"])
    smoke = pd.read_csv(smoke_run / "capture/micro-tiny/sparsity.csv")
    pd.testing.assert_frame_equal(pd.read_csv(d / "capture/micro-tiny/sparsity.csv"), smoke[smoke.layer == 1].reset_index(drop=True))
    # step 0 is the init twin the plain model is measured against
    zero, plain = rows["micro-tiny@step0"], rows["micro-tiny"]
    assert (zero.frac_active == plain.init_frac_active).all()
    # PR: the init twin's is streamed in float32, a model's own is read back from its float16 cache (`pr_method` says so)
    assert ((zero.pr - plain.init_pr).abs() < 1e-4 * plain.init_pr).all() and zero.pr_method.str.contains("cache").all()
    assert (rows[f"micro-tiny@step{mid}"].frac_active != zero.frac_active).all()        # training moved it
    si = pd.read_csv(d / "si_modularity.csv")
    a, b = (si[si.model == m].drop(columns="model").reset_index(drop=True) for m in ("micro-tiny", f"micro-tiny@step{last}"))
    pd.testing.assert_frame_equal(a, b)
    # the step axis: every metric at the three steps, per layer; the figure in the report
    ck = pd.read_csv(d / "scaling/checkpoints.csv")
    assert set(ck.base_model) == {"micro-tiny"} and sorted(ck.step.unique()) == [first, mid, last]
    assert ck.groupby(["metric", "layer"]).size().eq(3).all() and ck.metric.nunique() == 5
    z = ck[(ck.metric == "activation fraction (> 0)") & (ck.step == 0)].sort_values("layer").value.tolist()
    assert z == plain.init_frac_active.tolist()
    assert (d / "scaling/checkpoints.html").exists() and "When during training does it form?" in (d / "index.qmd").read_text()
    assert 'data-fig="fig-checkpoints-0"' in (d / "index.qmd").read_text()          # the step-axis figure is drawn on the overview
