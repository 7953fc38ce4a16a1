"The specialization stage in a run: SI with its baselines, modularity with its null, ablations, bad input."
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sdlms.params import parse_params
from sdlms.core import SdlmsError
from sdlms.runner import execute_stage
from sdlms.modularity import q_verdict

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "params" / "smoke.yaml"
TASKS = ["arith", "code", "prose", "ioi", "induction", "dialogue"]


def test_si_modularity_table(smoke_run):
    df = pd.read_csv(smoke_run / "si_modularity.csv")
    assert sorted(zip(df.layer, df.unit_kind)) == [(0, "neuron"), (0, "neuron_init"), (1, "neuron"), (1, "neuron_init")]
    for col in ["model", "params", "relative_depth", "d_mlp", "active", "n_units", "n_live", "tokens", "si_mean", "si_mean_lo",
                "si_mean_hi", "si_null_mean", "si_excess", "si_excess_lo", "frac_si_ge_0.5", "Q", "Q_null_a_mean", "Q_null_a_sd", "z_a",
                "Q_null_b_mean", "Q_null_b_sd", "z_b", "q_verdict", "n_communities", "pair_method", "pair_tokens", "edge_replication"]:
        assert col in df, col
    assert not {"Q_null_mean", "Q_null_sd", "z"} & set(df)     # the old single (token-order) null is gone
    assert (df.n_units == 128).all() and (df.tokens == 6 * 256).all() and (df.active == "top 0.1 of own distribution").all()
    assert (df.si_mean_lo <= df.si_mean_debiased).all() and (df.si_mean_debiased <= df.si_mean_hi).all()
    assert (df.si_mean_debiased <= df.si_mean).all()          # sampling noise inflates SI; the bootstrap takes it out
    assert (df.pair_tokens == 6 * 256).all()                   # small layers: pair counts on every token
    assert df.si_null_mean.between(0, 0.2).all()
    # modularity: both nulls ran (3 repeats each, with spread), and the verdict is the one their z-scores give
    assert (df.n_null_q == 3).all() and (df.Q_null_a_sd > 0).all() and (df.Q_null_b_sd > 0).all()
    assert np.isfinite(df.z_a).all() and np.isfinite(df.z_b).all()
    assert list(df.q_verdict) == [q_verdict(a, b, c) for a, b, c in zip(df.z_a, df.z_b, df.z_cut)]
    # per-unit table: SI, null, preferred task, community and rates for each kind
    u = pd.read_parquet(smoke_run / "specialization/micro-tiny/L1/units.parquet")
    assert len(u) == 2 * 128 and set(u.preferred_task.dropna()) <= set(TASKS)
    assert {f"rate_{t}" for t in TASKS} <= set(u.columns) and u.si.between(0, 1).all()
    c = pd.read_csv(smoke_run / "specialization/micro-tiny/L1/communities.csv")
    n = u[u.unit_kind == "neuron"].community.value_counts()
    assert dict(zip(c[c.unit_kind == "neuron"].community, c[c.unit_kind == "neuron"]["size"])) == n[n > 1].to_dict()
    for f in ["si_hist", "community_enrichment", "communities_graph", "ablation_matrix"]:
        assert (smoke_run / f"specialization/micro-tiny/L1/{f}.html").exists(), f
    assert (smoke_run / "scaling/si_vs_size.html").exists() and (smoke_run / "scaling/q_vs_size.html").exists()
    q = (smoke_run / "index.qmd").read_text()
    assert "## Are MLP units task-specialized?" in q and "### Specialization and modularity of the neurons" in q


def test_ablation_matrix(smoke_run):
    a = pd.read_csv(smoke_run / "ablation.csv")
    top = a[a.kind == "top_si"]
    assert sorted(top.set.unique()) == sorted(f"top_si:{t}" for t in TASKS)
    assert (top.groupby(["layer", "set"]).size() == 6).all()                 # every task measured for every set
    assert (top.n_units == round(0.05 * 128)).all() and (a.n_controls == 3).all()
    assert set(a[a.kind == "community"].target) <= set(TASKS)


def test_missing_capture_names_the_stage(tmp_path):
    d = tmp_path / "run"; d.mkdir()
    shutil.copy(SMOKE, d / "params.yaml")
    (d / "run.json").write_text("{}")
    (d / "suite").mkdir()
    (d / "suite" / "models.json").write_text('{"micro-tiny": {"path": "nowhere", "init_path": null}}')
    with pytest.raises(SdlmsError, match=r"missing the activation cache of micro-tiny layer 1.*run the capture stage first"):
        execute_stage("30_specialization.ipynb", str(d), "specialization/micro-tiny/L1", "micro-tiny", extra={"layer": 1})
    assert not (d / "specialization/micro-tiny/L1").exists()


@pytest.mark.parametrize("bad, msg", [
    ({"tasks": ["arith"]}, "at least 2 probe tasks, got 1"),
    ({"tokens_per_task": 128, "block_size": 64}, "below specialization.min_task_tokens (256)"),
    ({"capture": {"cache": False}}, "set capture.cache: true or specialization.enabled: false"),
    ({"specialization": {"active": "gt1"}}, "specialization.active: 'gt1' is not one of"),
    ({"specialization": {"ablation_frac": 2}}, "specialization.ablation_frac: must be in (0, 1)"),
])
def test_bad_specialization_params(bad, msg):
    with pytest.raises(SdlmsError) as e:
        parse_params(bad)
    assert msg in str(e.value)
