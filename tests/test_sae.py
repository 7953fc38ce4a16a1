"SAE stage library: SAELens training from the activation cache, format round trips, resume, failures, bad input."
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sdlms.capture import ActivationCache, write_array_cache
from sdlms.core import SdlmsError
from sdlms.sae import ARCHITECTURES, TrainingError, evaluate, parse_sae_params, train_sae


def planted(d, n=4000, d_in=16, n_feat=32, k_true=2, seed=0):
    "A cache of sparse combinations of known unit directions (ground truth for recovery): 40 blocks, 4 tasks."
    g = torch.Generator().manual_seed(seed)
    D = torch.nn.functional.normalize(torch.randn(n_feat, d_in, generator=g), dim=1)
    idx = torch.stack([torch.randperm(n_feat, generator=g)[:k_true] for _ in range(n)])
    X = torch.zeros(n, n_feat).scatter_(1, idx, torch.rand(n, k_true, generator=g) + 0.5) @ D
    return write_array_cache(Path(d) / "L0", X, block_size=100, n_tasks=4, shard_tokens=1500), D


SMALL = {"batch_size": 200, "train_tokens": 200 * 40, "eval_every": 10, "patience": 0, "checkpoint_every": 10, "k": 2}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_trains_and_loads_back_through_saelens(tmp_path, arch):
    from sae_lens import SAE
    cdir, _ = planted(tmp_path)
    r = train_sae(cdir, tmp_path / "out", {**SMALL, "architecture": arch}, progress=False)
    sae = SAE.load_from_disk(r["path"])
    assert sae.cfg.d_in == 16 and sae.cfg.d_sae == 64
    c = ActivationCache(cdir)
    val = np.load(tmp_path / "out" / "split.npz")["val"]
    x = c[val[:50]]
    assert torch.allclose(sae(x), SAE.load_from_disk(r["path"])(x))
    ev = evaluate(sae, c, val)
    assert np.isfinite(ev["explained_variance"]) and ev["l0"] > 0
    if arch in ("batchtopk", "matryoshka_batchtopk"):      # calibrated threshold: inference L0 close to k
        assert abs(ev["l0"] - 2) < 0.5, ev["l0"]
    cur = pd.read_csv(tmp_path / "out" / "curves.csv")
    assert len(cur) == 40 and cur.val_mse.notna().sum() == 4


def test_split_is_by_whole_blocks_and_stratified(tmp_path):
    from sdlms.sae import split_blocks
    cdir, _ = planted(tmp_path)
    ix = ActivationCache(cdir).index
    tr, va = split_blocks(ix, 0.2, seed=0)
    assert len(tr) + len(va) == len(ix) and not set(tr) & set(va)
    vb = ix.set_index("token").loc[va]
    assert (vb.groupby("task").block.nunique() == 2).all()          # 10 blocks per task -> 2 held out each
    assert set(ix.set_index("token").loc[tr].block) .isdisjoint(set(vb.block))


def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path):
    from sae_lens import SAE
    cdir, _ = planted(tmp_path)
    full = train_sae(cdir, tmp_path / "full", SMALL, progress=False)
    assert train_sae(cdir, tmp_path / "cut", SMALL, progress=False, stop_after_steps=25) == {"interrupted_at": 25}
    assert (tmp_path / "cut" / "checkpoints" / "step_20").exists() and not (tmp_path / "cut" / "sae").exists()
    resumed = train_sae(cdir, tmp_path / "cut", SMALL, progress=False)
    assert resumed["steps"] == full["steps"] == 40
    a, b = SAE.load_from_disk(full["path"]), SAE.load_from_disk(resumed["path"])
    assert torch.allclose(a.W_enc, b.W_enc, atol=1e-6) and torch.allclose(a.b_dec, b.b_dec, atol=1e-6)


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(tmp_path):
    cdir, _ = planted(tmp_path)
    with pytest.raises(TrainingError, match=r"non-finite SAE loss at step 24 .*last good checkpoint kept at .*step_20"):
        train_sae(cdir, tmp_path / "out", SMALL, progress=False, _poison={25})
    assert (tmp_path / "out" / "checkpoints" / "step_20" / "sae_weights.safetensors").exists()
    assert not (tmp_path / "out" / "sae").exists()


def test_bad_input_fails_before_training(tmp_path):
    with pytest.raises(SdlmsError, match="no activation cache.*run the capture stage"):
        train_sae(tmp_path / "nope", tmp_path / "out", SMALL)
    cdir, _ = planted(tmp_path)
    for bad, needle in [({"k": 100, "expansion": 2}, r"sae.k \(100\) is larger than d_sae \(32\)"),
                        ({"train_tokens": 0}, "sae.train_tokens: must be >= 1"),
                        ({"batch_size": -1}, "sae.batch_size: must be >= 1"),
                        ({"architecture": "vanilla"}, "'vanilla' is not one of"),
                        ({"val_frac": 1.5}, r"sae.val_frac: must be in \(0, 1\)")]:
        with pytest.raises(SdlmsError, match=needle):
            train_sae(cdir, tmp_path / "out", {**SMALL, **bad}, progress=False)
    assert not (tmp_path / "out" / "sae").exists()


def test_spliced_losses_identity_recovers_everything(tiny_models):
    from sdlms.models import load_model, mlp_sites
    from sdlms.sae import loss_recovered, spliced_losses
    lm, tok = load_model(str(tiny_models["gpt_neox"]))
    site = mlp_sites(lm)[1]
    ids = np.random.default_rng(0).integers(0, 512, (4, 32))
    L = spliced_losses(lm, ids, np.array([0, 0, 1, 1]), ["a", "b"], site.module,
                       {"clean": None, "sae": lambda a: a.clone(), "zero": lambda a: torch.zeros_like(a)}, batch_size=2)
    w = L.pivot(index="task", columns="variant", values="loss")
    assert np.allclose(w["clean"], w["sae"]) and not np.allclose(w["clean"], w["zero"])
    assert np.allclose(loss_recovered(L, "zero"), 1.0)


def test_sae_stage_end_to_end_with_a_k_grid():
    from sae_lens import SAE
    from sdlms.runner import run, run_status
    root = Path(__file__).resolve().parent.parent
    d = run(str(root / "params" / "smoke_sae.yaml"), progress=False, log=lambda *a: None)
    assert run_status(d)["status"] == "complete"
    for layer in (0, 1):
        m = pd.read_csv(d / f"sae/micro-tiny/L{layer}/sae_metrics.csv")
        assert m.k.tolist() == [4, 8] and (m.d_sae == 256).all()
        assert np.allclose(m.l0, m.k)                                           # TopK: exactly k per token
        assert (m.explained_variance > 0).all() and m.explained_variance.is_monotonic_increasing   # more k, more EV
        assert ((m.recovered_zero > 0) & (m.recovered_zero <= 1.05)).all()
        assert (m.si_mean > m.si_null_mean).all()                              # features beat the label-shuffle null
        for name in m.sae:
            sae = SAE.load_from_disk(str(d / f"sae/micro-tiny/L{layer}/{name}/sae"))
            assert sae.cfg.d_in == 128
            f = pd.read_parquet(d / f"sae/micro-tiny/L{layer}/{name}/features.parquet")
            assert len(f) == 256 and f.density.between(0, 1).all()
            page = (d / f"sae/micro-tiny/L{layer}/{name}/feature_browser.html").read_text()
            assert f"{(f.density > 0).sum()} live features of 256" in page and "<mark>" in page and "http" not in page
        st = pd.read_csv(d / f"sae/micro-tiny/L{layer}/{m.sae[0]}/steering.csv", index_col=0)
        assert {"clean", "ablate", "amplify x4"} <= set(st.columns) and "all" in st.index
    # the specialization stage analyses each SAE's features next to the neurons
    spec = pd.read_csv(d / "si_modularity.csv")
    assert set(spec.unit_kind) == {"neuron", "neuron_init", "sae:topk_k4_d256", "sae:topk_k8_d256"}
    feat = spec[spec.unit_kind.str.startswith("sae:")]
    assert (feat.n_units == 256).all() and (feat.active == "feature > 0").all() and feat.Q.notna().all()
    assert (d / "_site" / "sae" / "micro-tiny" / "L0" / "20_sae.html").exists()
    summ = pd.read_csv(d / "sae_summary" / "sae_summary.csv")
    assert len(summ) == 4 and set(summ.k) == {4, 8} and (summ.params > 0).all()
    assert (d / "sae_summary" / "death_vs_k.html").exists()
    from sdlms.report import check_quarto_project
    assert check_quarto_project(d) == []
    assert "{{< embed sae_summary/91_sae_summary.ipynb#fig-death >}}" in (d / "index.qmd").read_text()


def test_ground_truth_recovery_beats_random_init(tmp_path):
    from sdlms.sae import ground_truth_check
    gt = ground_truth_check(tmp_path)              # 64 true features in 32 dims, 3 active per token on average
    assert gt["trained"]["matched_frac"] > 0.7 and gt["random_init"]["matched_frac"] == 0.0
    assert gt["trained"]["mcc"] > gt["random_init"]["mcc"] + 0.3
