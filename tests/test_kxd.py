"The seeds' K x d table: its numbers and sources, the grid in proportion, params/kxd.yaml, the trend verdicts and the report."
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from sdlms.kxd import kxd_comparison, kxd_grid, seed_kxd

ROOT = Path(__file__).resolve().parent.parent


def test_seed_table_holds_the_seeds_numbers():
    s = seed_kxd()
    assert (s.d_in == 2048).all() and s.source.str.contains("seeds/00[23]").all()
    r = s.set_index(["k", "d_sae"])
    # seeds 002 and 003: death 32.0 / 11.1 / 0 / 0 % at d 512, 17.2 % at d 250; specialization 19.5 / 19.2 / 4.6 / 0 %, 7.4 % at d 250
    assert r.dead_frac.to_dict() == {(50, 512): .32, (75, 512): .111, (100, 512): 0, (200, 512): 0, (50, 250): .172}
    assert r.spec_rate.to_dict() == {(50, 512): .195, (75, 512): .192, (100, 512): .046, (200, 512): 0, (50, 250): .074}
    assert r.explained_variance[(50, 512)] == .849 and r.explained_variance[(50, 250)] == .844 and np.isnan(r.explained_variance[(75, 512)])
    # internal consistency: dead counts, live counts and specialized counts give the stated shares
    d = s.d_sae.values
    assert np.allclose(s.dead_latents / d, s.dead_frac, atol=6e-4) and (s.live_latents == d - s.dead_latents).all()
    c = s.spec_analyzed.notna()
    assert np.allclose(s.spec_features[c] / s.spec_analyzed[c], s.spec_rate[c], atol=6e-4)


def test_params_file_is_the_grid_in_proportion():
    p = yaml.safe_load((ROOT / "params" / "kxd.yaml").read_text())
    assert p["models"] == ["micro-m", "smollm2-135m"]
    o = p["overrides"]
    assert o["micro-m"]["layers"] == [1] and o["smollm2-135m"]["layers"] == [0.5]
    for model, d_in in (("micro-m", 1024), ("smollm2-135m", 1536)):
        g = kxd_grid(d_in)
        assert o[model]["sae"]["k"] == sorted(g.k.unique().tolist())
        assert o[model]["sae"]["d_sae"] == sorted(g.d_sae.unique().tolist(), reverse=True)
        assert np.allclose(g.k_share, g.seed_k_share, rtol=0.02) and np.allclose(g.d_over_k, g.seed_d_over_k, rtol=0.02)
        assert (g.k < g.d_sae).all() and g.in_seeds.sum() == 5


def test_params_file_validates():
    from sdlms.config import sae_grid
    from sdlms.params import load_params
    if len(sae_grid({"k": [1], "d_sae": [2, 3]})) < 2:
        pytest.skip("sae_grid does not cross k with a list of d_sae yet (a library change params/kxd.yaml needs)")
    p = load_params(ROOT / "params" / "kxd.yaml")
    for model, d_in in (("micro-m", 1024), ("smollm2-135m", 1536)):
        got = {(g["k"], g["d_sae"]) for g in sae_grid(p.for_model(model).sae)}
        assert got == set(zip(kxd_grid(d_in).k, kxd_grid(d_in).d_sae))


def _ours_from_seeds(d_in=1024):
    "The seeds' own numbers on the grid mapped to `d_in`: a site that must agree with every trend the seeds report."
    s = seed_kxd()
    g = kxd_grid(d_in).merge(s.rename(columns={"k": "seed_k", "d_sae": "seed_d"}), on=["seed_k", "seed_d"])
    return g.assign(model="m", layer=3, d_in=d_in, dead_frac_train=g.dead_frac)[
        ["model", "layer", "d_in", "k", "d_sae", "explained_variance", "dead_frac", "dead_frac_train", "spec_rate"]]


def test_seeds_agree_with_themselves():
    table, v = kxd_comparison(_ours_from_seeds())
    assert len(table) == 5 and np.allclose(table.dead_frac, table.seed_dead_frac)
    assert len(v) == 8 and (v.verdict == "agree").all(), v[["trend", "verdict"]]
    # a flipped trend is read as a disagreement, a missing metric as not measured
    o = _ours_from_seeds()
    o.loc[o.d_sae == 256, "dead_frac"] = [0, 0, .111, .32]         # death rises with K along the larger dictionary
    _, v = kxd_comparison(o.drop(columns="spec_rate"))
    vv = v.set_index("trend").verdict
    assert vv["dead (probe tokens) vs K"] == "disagree" and vv["dead (training tokens) vs K"] == "agree"
    assert vv["specialization rate vs K"] == "not measured" and vv["smaller dictionary: specialization rate"] == "not measured"


def test_report_shows_the_table_and_verdicts(tmp_path):
    from sdlms.report import _fallback_site, check_quarto_project, write_quarto_project
    run = tmp_path / "run"; (run / "sae_summary").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"status": "complete"}))
    table, v = kxd_comparison(_ours_from_seeds())
    table.to_csv(run / "sae_summary" / "kxd.csv", index=False); v.to_csv(run / "sae_summary" / "kxd_verdicts.csv", index=False)
    write_quarto_project(run)
    q = (run / "index.qmd").read_text()
    assert "## K x d: our table beside the seeds'" in q and "seed_spec_rate" in q
    assert "- m L3, specialization rate vs K: **agree**." in q and check_quarto_project(run) == []
    page = _fallback_site(run).read_text()
    assert "K x d: our table beside the seeds" in page and "<strong>agree</strong>" in page and "seed_dead_frac" in page
    # a run without the comparison has no such section
    (run / "sae_summary" / "kxd.csv").unlink(); write_quarto_project(run)
    assert "K x d" not in (run / "index.qmd").read_text()
