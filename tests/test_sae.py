"SAE stage library: training streams, SAELens training, format round trips, resume, failures, bad input, non-degenerate SAEs."
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sdlms.capture import ActivationCache, write_array_cache
from sdlms.core import SdlmsError
from sdlms.config import ARCHITECTURES, parse_sae_params
from sdlms.streams import ActivationStream
from sdlms.sae import TrainingError, evaluate, train_sae


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
    stream = ActivationStream.from_cache(cdir, 0.2, seed=0)
    r = train_sae(stream, tmp_path / "out", {**SMALL, "architecture": arch}, progress=False)
    sae = SAE.load_from_disk(r["path"])
    assert sae.cfg.d_in == 16 and sae.cfg.d_sae == 64
    x = stream.holdout[:50].float()
    assert torch.allclose(sae(x), SAE.load_from_disk(r["path"])(x))
    ev = evaluate(sae, stream.holdout)
    assert np.isfinite(ev["explained_variance"]) and ev["l0"] > 0 and ev["tokens"] == stream.n_holdout == 800
    if arch in ("batchtopk", "matryoshka_batchtopk"):      # calibrated threshold: inference L0 close to k
        assert abs(ev["l0"] - 2) < 0.5, ev["l0"]
    cur = pd.read_csv(tmp_path / "out" / "curves.csv")
    assert len(cur) == 40 and cur.holdout_mse.notna().sum() == 4 and (cur.holdout_tokens.dropna() == 800).all()
    assert r["epochs"] == 2.5 and r["stream_tokens"] == 3200      # a small cache is revisited, and the summary says so


def test_split_is_by_whole_blocks_and_stratified(tmp_path):
    from sdlms.streams import split_blocks
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
                        ({"holdout_tokens": 0}, "sae.holdout_tokens: must be >= 1"),
                        ({"decoder_init_norm": 0}, "sae.decoder_init_norm: must be > 0 or null"),
                        ({"min_ablation_cost": -0.1}, "sae.min_ablation_cost: must be >= 0"),
                        ({"min_distinct_frac": 1.5}, r"sae.min_distinct_frac: must be in \[0, 1\)"),
                        ({"val_frac": 0.2}, "unknown key 'sae.val_frac'")]:
        with pytest.raises(SdlmsError, match=needle):
            train_sae(cdir, tmp_path / "out", {**SMALL, **bad}, progress=False)
    assert not (tmp_path / "out" / "sae").exists()


def test_training_stream_is_training_text_run_through_the_model(tmp_path, tiny_models):
    from transformers import AutoTokenizer
    from sdlms.corpus import GENERATORS, generate_items
    from sdlms.models import load_model, mlp_sites
    from sdlms.streams import site_stream, stream_blocks
    lm, tok = load_model(str(tiny_models["gpt_neox"]))
    site = mlp_sites(lm)[1]
    p = parse_sae_params({"train_tokens": 2048, "holdout_tokens": 256, "batch_size": 256})
    s = site_stream(lm, tok, site.module, p, block_size=64, batch_size=8)
    assert s.d == 128 and s.n_holdout == 256 and s.n_train >= 2048 and s.train.dtype == torch.float16
    assert s.meta["train_data"] == "generated corpus, train split" and s.meta["stream_seed"] == 1
    # the same text through the whole model, hooked at the site: the same activations (the stream stops at the site)
    ids = stream_blocks(tok, "generated", 2048 + 256, 64, p.stream_seed)
    full = []
    h = site.module.register_forward_pre_hook(lambda m, i: full.append(i[0].reshape(-1, 128)))
    with torch.no_grad():
        for i in range(0, len(ids), 8): lm(input_ids=torch.as_tensor(ids[i:i + 8]))
    h.remove()
    full = torch.cat(full)
    assert torch.allclose(torch.cat([s.holdout, s.train]).float(), full, atol=2e-3)
    # every generated task, from the train split: no probe item is in the training text
    text = tok.decode(ids.reshape(-1).tolist())
    probe = [next(generate_items(t, "probe", 0)) for t in GENERATORS]
    assert not any(x in text for x in probe if len(x) > 20)
    # a local text file as training data, and a clear error when it is too small
    f = tmp_path / "text.txt"
    f.write_text("\n".join(f"line {i}: the quick brown fox jumps over the lazy dog" for i in range(400)))
    s2 = site_stream(lm, tok, site.module, parse_sae_params({"train_tokens": 1024, "holdout_tokens": 128, "batch_size": 256,
                                                            "train_data": str(f)}), block_size=64)
    assert s2.n_train == 1024 and s2.n_holdout == 128 and s2.meta["train_data"] == str(f)
    with pytest.raises(SdlmsError, match="holds .* tokens, fewer than"):
        site_stream(lm, tok, site.module, parse_sae_params({"train_tokens": 10 ** 6, "train_data": str(f)}), block_size=64)


def test_sparse_step_matches_saelens_dense_step_over_many_steps_with_dead_latents(tmp_path):
    "The sparse TopK step against SAELens's own step: same run for 150 steps with AuxK active, then the same gradients."
    from sae_lens import TopKTrainingSAE
    from sae_lens.saes.sae import TrainStepInput
    from sdlms.sae import build_training_sae, sparse_topk_sae_class
    cdir, _ = planted(tmp_path, n=12000, d_in=32, n_feat=48, k_true=3)
    stream = ActivationStream.from_cache(cdir, 0.1, seed=0)
    base = {"k": 3, "expansion": 8, "batch_size": 256, "train_tokens": 256 * 150, "eval_every": 25, "patience": 0,
            "checkpoint_every": 100, "dead_feature_window": 5, "lr": 3e-3}
    runs = {s: train_sae(stream, tmp_path / s, {**base, "step": s}, progress=False) for s in ("sparse", "dense")}
    cs, cd = (pd.read_csv(tmp_path / s / "curves.csv") for s in ("sparse", "dense"))
    aux = cs.train_auxiliary_reconstruction_loss
    assert (aux > 0).sum() > 100                                          # dead latents present: AuxK active most of the run
    assert np.allclose(cs.loss[:40], cd.loss[:40], rtol=1e-3)             # the same trajectory (float noise grows later)
    assert np.allclose(cs.holdout_explained_variance.dropna(), cd.holdout_explained_variance.dropna(), atol=0.02)
    assert abs(runs["sparse"]["dead_frac_train"] - runs["dense"]["dead_frac_train"]) < 0.05
    # mid-run state with its dead latents: one step of each gives the same losses and gradients
    ck = tmp_path / "sparse" / "checkpoints" / "step_100"
    st = torch.load(ck / "trainer_state.pt")
    dead = st["n_forward_passes_since_fired"] > base["dead_feature_window"]
    assert dead.sum() > 20
    p = parse_sae_params({**base, "step": "dense"}, 32)
    state = TopKTrainingSAE.load_from_disk(str(ck)).state_dict()
    scale = json.loads((ck / "activation_scaler.json").read_text())["scaling_factor"]
    x = stream.train[:256].float() * scale
    outs, grads = [], []
    for cls in (TopKTrainingSAE, sparse_topk_sae_class()):
        m = cls(build_training_sae(p, 32).cfg); m.load_state_dict(state)
        o = m.training_forward_pass(TrainStepInput(sae_in=x, dead_neuron_mask=dead, coefficients={}, n_training_steps=100, is_logging_step=False))
        m.zero_grad(); o.loss.backward()
        outs.append(o); grads.append({n: q.grad.clone() for n, q in m.named_parameters()})
    for n in outs[0].losses: assert torch.allclose(outs[0].losses[n], outs[1].losses[n], rtol=1e-5), n
    for n in grads[0]: assert torch.allclose(grads[0][n], grads[1][n], atol=1e-5, rtol=1e-4), n


def test_trained_saes_are_not_degenerate(tmp_path):
    """On MLP-like activations, a trained TopK SAE has few near-duplicate latents (< 10% of the live ones); SAELens's
    decoder_init_norm 0.1 at the same lr collapses latents onto each other (the degenerate SAEs of the old default)."""
    from sae_lens import SAE
    from sdlms.streams import mlp_like_stream
    from sdlms.sae_eval import duplicate_latents
    stream = mlp_like_stream(seed=0)                                          # d_in 512
    dup = {}
    for name, extra in {"default": {}, "init_0.1": {"decoder_init_norm": 0.1}}.items():
        r = train_sae(stream, tmp_path / name, {"k": 8, "expansion": 4, "batch_size": 512, "train_tokens": 512 * 60, "lr": 3e-3,
                                                "eval_every": 30, "patience": 0, "checkpoint_every": 0, **extra}, progress=False)
        sae = SAE.load_from_disk(r["path"])
        act = torch.cat([sae.encode(b.float()) > 0 for b in stream.holdout.split(1024)]).numpy()
        dup[name] = duplicate_latents(act, sae.W_dec.detach())
    assert dup["default"]["dup_frac"] < 0.1, dup["default"]["dup_frac"]
    assert dup["init_0.1"]["dup_frac"] > 0.15, dup["init_0.1"]["dup_frac"]     # the test sees the degenerate behaviour (0.23)


def test_loss_recovered_only_where_the_site_matters(tiny_models):
    from sdlms.models import load_model, mlp_sites
    from sdlms.sae_eval import loss_recovered, spliced_losses
    lm, tok = load_model(str(tiny_models["gpt_neox"]))
    site = mlp_sites(lm)[1]
    ids = np.random.default_rng(0).integers(0, 512, (4, 32))
    L = spliced_losses(lm, ids, np.array([0, 0, 1, 1]), ["a", "b"], site.module,
                       {"clean": None, "sae": lambda a: a.clone(), "zero": lambda a: torch.zeros_like(a)}, batch_size=2)
    w = L.pivot(index="task", columns="variant", values="loss")
    assert np.allclose(w["clean"], w["sae"]) and not np.allclose(w["clean"], w["zero"])
    assert np.allclose(loss_recovered(L, "zero", min_cost=0.0).recovered, 1.0)
    r = loss_recovered(L, "zero", min_cost=10.0)                  # a random-init site costs far less than 10 nats
    assert r.recovered.isna().all() and r.note.str.contains("< sae.min_ablation_cost 10: the model does not use this MLP").all()


def test_sae_stage_end_to_end_with_a_k_grid():
    from sae_lens import SAE
    from sdlms.rundir import run_status
    from sdlms.runner import run
    root = Path(__file__).resolve().parent.parent
    d = run(str(root / "params" / "smoke_sae.yaml"), progress=False, log=lambda *a: None)
    assert run_status(d)["status"] == "complete"
    # layer 0 of a parallel-residual GPT-NeoX reads only the embedding: a token lookup, no SAE (and the CSV says why)
    m0 = pd.read_csv(d / "sae/micro-tiny/L0/sae_metrics.csv")
    assert (~m0.trained).all() and m0.skip_reason.str.contains("function of the token").all() and (m0.distinct_inputs < 600).all()
    m = pd.read_csv(d / "sae/micro-tiny/L1/sae_metrics.csv")
    assert m.k.tolist() == [4, 8] and (m.d_sae == 256).all() and m.trained.all()
    assert np.allclose(m.l0, m.k)                                           # TopK: exactly k per token
    assert (m.explained_variance > 0).all() and m.explained_variance.is_monotonic_increasing   # more k, more EV
    assert (m.eval_tokens == 3072).all() and np.allclose(m.dead_min_density, 1 / 3072)         # every probe token evaluates
    assert (m.train_tokens >= 20000).all() and (m.epochs <= 1).all() and (m.dead_train_tokens > 0).all()
    assert (m.dup_frac < 0.1).all(), m.dup_frac.tolist()
    assert {"si_mean", "si_null_mean", "specialized_frac"}.isdisjoint(m.columns)      # SI belongs to the specialization stage
    ok = m.cost_zero >= m.min_ablation_cost
    assert ((m.recovered_zero > 0) & (m.recovered_zero <= 1.05))[ok].all() and m.recovered_zero[~ok].isna().all()
    assert m.recovered_note[~ok].str.contains("sae.min_ablation_cost").all()
    units = pd.read_parquet(d / "specialization/micro-tiny/L1/units.parquet")
    for name in m.sae:
        sae = SAE.load_from_disk(str(d / f"sae/micro-tiny/L1/{name}/sae"))
        assert sae.cfg.d_in == 128
        f = pd.read_parquet(d / f"sae/micro-tiny/L1/{name}/features.parquet")
        assert len(f) == 256 and f.density.between(0, 1).all()
        u = units[units.unit_kind == f"sae:{name}"].sort_values("unit")       # one SI: the same numbers in both stages
        assert np.allclose(f.si, u.si, equal_nan=True) and np.allclose(f.density, u.density)
        page = (d / f"sae/micro-tiny/L1/{name}/feature_browser.html").read_text()
        assert f"{(f.density > 0).sum()} live features of 256" in page and "<mark>" in page and "http" not in page
    st = pd.read_csv(d / f"sae/micro-tiny/L1/{m.sae[0]}/steering.csv", index_col=0)
    assert {"clean", "ablate", "amplify x4"} <= set(st.columns) and "all" in st.index
    # the specialization stage analyses each SAE's features next to the neurons
    spec = pd.read_csv(d / "si_modularity.csv")
    assert set(spec.unit_kind) == {"neuron", "neuron_init", "sae:topk_k4_d256", "sae:topk_k8_d256"}
    feat = spec[spec.unit_kind.str.startswith("sae:")]
    assert (feat.n_units == 256).all() and (feat.active == "feature > 0").all() and feat.Q.notna().all()
    assert (d / "_site" / "sae" / "micro-tiny" / "L1" / "20_sae.html").exists()
    summ = pd.read_csv(d / "sae_summary" / "sae_summary.csv")
    assert len(summ) == 2 and set(summ.k) == {4, 8} and (summ.params > 0).all() and summ["frac_si_ge_0.5"].notna().all()
    assert (d / "sae_summary" / "death_vs_k.html").exists() and (d / "sae_summary" / "specialization_vs_k.html").exists()
    from sdlms.report import check_quarto_project
    assert check_quarto_project(d) == []
    q = (d / "index.qmd").read_text()
    assert "## What do sparse autoencoders expose?" in q and 'data-fig="fig-sae-0"' in q
    assert "feature_browser.html" in (d / "models" / "micro-tiny.qmd").read_text() and (d / "_site/sae/micro-tiny/L1/topk_k4_d256/feature_browser.html").exists()


def test_ground_truth_recovery_beats_random_init(tmp_path):
    from sdlms.sae_eval import ground_truth_check
    gt = ground_truth_check(tmp_path)              # 64 true features in 32 dims, 3 active per token on average
    assert gt["trained"]["matched_frac"] > 0.7 and gt["random_init"]["matched_frac"] == 0.0
    assert gt["trained"]["mcc"] > gt["random_init"]["mcc"] + 0.3
    assert gt["duplicates"]["dup_frac"] < 0.1
