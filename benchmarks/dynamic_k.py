"""Dynamic-k MLP execution at batch-1 decode: the fused sparse kernel (`sdlms.sparse_mlp.PackedMLP`) against dense torch.

For each MLP shape, the MLP block (input -> output, biases included) of many layers is run one token at a time:
dense `torch` fp32 (two `F.linear` and the activation, one thread) against the fused kernel at several keep
fractions, with fresh random (sorted) neuron indices on every call. The calls cycle through enough layers that their
weights are at least `--min-mb` per path (one fp32 layer of Pythia-410m shapes is 32 MB; reusing one layer would
measure the cache, not memory). Ways alternate their order between rounds in one process; the best round of each
is reported (a shared machine only slows a run down), and ratios are what to read.

- shapes: `pythia410m` (GELU, d 1024, d_mlp 4096), `smollm2` (SwiGLU, d 576, d_mlp 1536); weights random at the
  scale of `nn.Linear`'s init (timing does not depend on values);
- kernels: fp32 weights, and bf16 weights widened in the kernel (half the bytes); the baseline is always dense fp32;
- methods: `neuron` (the neuron-major kernel on a random sorted neuron set: oracle, thresholds, predictor and static
  sets all run it) and `teal` (`sdlms.sparse_mlp.TealMLP`: input channels of the up/gate projections and rows of the
  down projection skipped below thresholds set per call at the `1 - keep` quantiles of that call's fresh |x| and |h|);
- reported per shape and dtype: microseconds per call, speedup over dense at each keep, the ideal speedup for the
  bytes read (1 / keep against the dense weights; 2 / keep for bf16), the fraction of the ideal reached, the kernel's
  own scaling (its time at keep 1 over its time at keep k, times k) and its overhead at keep 1 (dense over kernel).

    python benchmarks/dynamic_k.py            # writes benchmarks/results/dynamic_k.{json,md}
    python benchmarks/dynamic_k.py --quick    # fewer rounds and layers
"""
import argparse, json, math, os, time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np
import torch
import torch.nn.functional as F

from sdlms.core import package_versions
from sdlms.sparse_mlp import PackedMLP, TealMLP

HERE = Path(__file__).resolve().parent
SHAPES = {"pythia410m": ("gelu", 1024, 4096), "smollm2": ("swiglu", 576, 1536)}
KEEPS = (1.0, 0.7, 0.5, 0.4, 0.3, 0.1)


def layers_for(kind, d, d_mlp, n_layers, seed=0):
    "Random weights of `n_layers` MLPs at `nn.Linear`'s init scale: dense torch tensors and the packed fp32 / bf16 copies."
    g = torch.Generator().manual_seed(seed)
    u = lambda *shape, fan_in: (torch.rand(*shape, generator=g) * 2 - 1) / math.sqrt(fan_in)
    dense, packed = [], {"float32": [], "bfloat16": []}
    for _ in range(n_layers):
        if kind == "gelu":
            w = dict(W_in=u(d_mlp, d, fan_in=d), b_in=u(d_mlp, fan_in=d), W_out=u(d, d_mlp, fan_in=d_mlp), b_out=u(d, fan_in=d_mlp))
            for dt in packed: packed[dt].append(PackedMLP.gelu(w["W_in"].numpy(), w["b_in"].numpy(), w["W_out"].numpy(), w["b_out"].numpy(), dt))
        else:
            w = dict(W_gate=u(d_mlp, d, fan_in=d), W_up=u(d_mlp, d, fan_in=d), W_down=u(d, d_mlp, fan_in=d_mlp))
            for dt in packed: packed[dt].append(PackedMLP.swiglu(w["W_gate"].numpy(), w["W_up"].numpy(), w["W_down"].numpy(), dt))
        dense.append(w)
    return dense, packed


def dense_mlp(kind, w, x):
    "The dense torch MLP block for one token `x (1, d)`."
    if kind == "gelu": return F.linear(F.gelu(F.linear(x, w["W_in"], w["b_in"])), w["W_out"], w["b_out"])
    return F.linear(F.silu(F.linear(x, w["W_gate"])) * F.linear(x, w["W_up"]), w["W_down"])


def bench_shape(name, rounds, min_mb, calls_per_layer, seed=0):
    kind, d, d_mlp = SHAPES[name]
    dense_mb = (2 if kind == "gelu" else 3) * d * d_mlp * 4 / 2 ** 20
    n_layers = max(8, math.ceil(min_mb / dense_mb))
    dense, packed = layers_for(kind, d, d_mlp, n_layers, seed)
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal(d).astype(np.float32) for _ in range(n_layers)]
    xt = [torch.from_numpy(x)[None] for x in xs]
    n_calls = n_layers * calls_per_layer
    idx = {k: [np.sort(rng.choice(d_mlp, max(1, round(k * d_mlp)), replace=False)) for _ in range(n_calls)] for k in KEEPS}
    # TEAL: per call a fresh input and thresholds at its own quantiles (a realised share of exactly about k)
    teal = {dt: [TealMLP.from_packed(p) for p in packed[dt]] for dt in packed}
    tx = [rng.standard_normal(d).astype(np.float32) for _ in range(n_calls)]
    th = [np.abs(packed["float32"][c % n_layers].hidden(tx[c])) for c in range(n_calls)]
    tcall = {(dt, k): [teal[dt][c % n_layers].with_thresholds(*((np.quantile(np.abs(tx[c]), 1 - k), np.quantile(th[c], 1 - k)) if k < 1 else (-1, -1)))
                       for c in range(n_calls)] for dt in packed for k in KEEPS}
    # correctness: keep 1.0 equals dense, and a random half equals the masked dense MLP
    with torch.no_grad():
        ref = dense_mlp(kind, dense[0], xt[0])[0].numpy()
    for dt, tol in (("float32", 1e-4), ("bfloat16", 3e-2)):
        got = packed[dt][0](xs[0])
        assert np.allclose(got, ref, atol=tol * np.abs(ref).max()), (name, dt, np.abs(got - ref).max())
        got = teal[dt][0](xs[0])                                    # TEAL keeping everything is the dense MLP too
        assert np.allclose(got, ref, atol=tol * np.abs(ref).max()), (name, "teal", dt, np.abs(got - ref).max())

    def run_dense():
        with torch.no_grad():
            for c in range(n_calls): dense_mlp(kind, dense[c % n_layers], xt[c % n_layers])

    def run_sparse(dt, k):
        P = packed[dt]; ix = idx[k]
        def f():
            for c in range(n_calls): P[c % n_layers](xs[c % n_layers], ix[c])
        return f

    def run_teal(dt, k):
        T = tcall[(dt, k)]
        def f():
            for c in range(n_calls): T[c](tx[c])
        return f

    ways = {"dense_fp32": run_dense, **{f"{dt}_keep{k:g}": run_sparse(dt, k) for dt in ("float32", "bfloat16") for k in KEEPS},
            **{f"teal_{dt}_keep{k:g}": run_teal(dt, k) for dt in ("float32", "bfloat16") for k in KEEPS}}
    for f in ways.values(): f()                                    # warm up: compile, fault the pages in
    times = {w: [] for w in ways}
    for r in range(rounds):
        for w in (list(ways) if r % 2 == 0 else list(ways)[::-1]):
            t = time.perf_counter(); ways[w](); times[w].append((time.perf_counter() - t) / n_calls * 1e6)
    best = {w: min(v) for w, v in times.items()}
    def realised(T, x): T(x); return T.read_share
    shares = {(dt, k): float(np.mean([realised(T, tx[c]) for c, T in enumerate(tcall[(dt, k)])])) for dt in packed for k in KEEPS}
    rows = []
    for method, pre, dt in [(m, p, dt) for m, p in (("neuron", ""), ("teal", "teal_")) for dt in ("float32", "bfloat16")]:
        t1 = best[f"{pre}{dt}_keep1"]
        for k in KEEPS:
            t = best[f"{pre}{dt}_keep{k:g}"]
            share = k if method == "neuron" else shares[(dt, k)]       # TEAL: the share of the weights it read
            ideal = (1 if dt == "float32" else 2) / share
            rows.append({"shape": name, "mlp": kind, "method": method, "d": d, "d_mlp": d_mlp, "dtype": dt, "keep": k,
                         "weights_read": round(share, 3), "us_per_call": round(t, 1),
                         "dense_fp32_us": round(best["dense_fp32"], 1), "speedup": round(best["dense_fp32"] / t, 3),
                         "ideal_speedup": round(ideal, 3), "fraction_of_ideal": round(best["dense_fp32"] / t / ideal, 3),
                         "kernel_scaling": round(t1 / t * share, 3)})
    return {"shape": name, "mlp": kind, "d": d, "d_mlp": d_mlp, "layers_cycled": n_layers, "mb_per_path_fp32": round(n_layers * dense_mb),
            "calls_per_round": n_calls, "rounds": rounds, "us_per_call_all_rounds": {w: [round(v, 1) for v in ts] for w, ts in times.items()},
            "rows": rows}


PYTHIA_410M = dict(vocab_size=50304, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                   rotary_pct=0.25, max_position_embeddings=2048, use_parallel_residual=True, hidden_act="gelu",
                   tie_word_embeddings=False)   # Pythia-410m's architecture (its config.json), random init


def decode(model, ids, n_new):
    "Greedy decode `n_new` tokens after the prompt `ids` with a KV cache; returns (seconds for the new tokens, tokens)."
    with torch.no_grad():
        o = model(input_ids=torch.tensor([ids]), use_cache=True)
        past, nxt, out = o.cache, o.logits[0, -1].argmax(), []
        t = time.perf_counter()
        for _ in range(n_new):
            out.append(int(nxt))
            o = model(input_ids=nxt[None, None], cache=past, use_cache=True)
            past, nxt = o.cache, o.logits[0, -1].argmax()
        return time.perf_counter() - t, out


def bench_e2e(name, model, rounds, n_new, keeps=(0.5, 0.3), rank=64, seed=0):
    """Decode tokens/s of `model`: dense torch, the swapped kernels keeping every neuron, a rank-`rank` predictor
    choosing `keep` of the neurons per token (its cost included: the predictor's matmuls and the top-k), and TEAL with
    thresholds calibrated on the model's own MLP inputs for random prompts (its realised share of weights read reported)."""
    from sdlms.dynamic_k import fit_teal, mlp_inputs
    from sdlms.sparse_mlp import LowRankSelector, SparseMLPs, TealMLP
    from sdlms.sites import decoder_layers
    cfg = model.config; d, d_mlp, L = cfg.hidden_size, cfg.intermediate_size, len(decoder_layers(model))
    ids = np.random.default_rng(seed).integers(0, cfg.vocab_size, 16).tolist()
    packed = SparseMLPs(model).packed
    sels = {k: LowRankSelector.random(L, d, d_mlp, rank, k, seed) for k in keeps}
    ways = {"dense": lambda: decode(model, ids, n_new)}
    def swapped(select):
        def f():
            with SparseMLPs(model, select, packed=packed) as sw: r = decode(model, ids, n_new)
            assert sw.calls["sparse"] == n_new * L, sw.calls
            return r
        return f
    ways["kernel_keep1"] = swapped(None)
    for k, s in sels.items(): ways[f"predictor_keep{k:g}"] = swapped(s)
    X = mlp_inputs(model, np.random.default_rng(seed + 1).integers(0, cfg.vocab_size, (4, 64)), max_tokens=256)
    layouts = [TealMLP.from_packed(p) for p in packed]
    teal = {k: fit_teal(layouts, packed, X, k) for k in keeps}
    shares = {}
    def swapped_teal(k):
        def f():
            with SparseMLPs(model, None, packed=teal[k]) as sw: r = decode(model, ids, n_new)
            shares[f"teal_keep{k:g}"] = round(sw.keep_realised, 3)
            return r
        return f
    for k in keeps: ways[f"teal_keep{k:g}"] = swapped_teal(k)
    for f in ways.values(): f()                                    # warm up
    times = {w: [] for w in ways}
    for r in range(rounds):
        for w in (list(ways) if r % 2 == 0 else list(ways)[::-1]): times[w].append(ways[w]()[0])
    best = {w: min(v) for w, v in times.items()}
    tok_s = {w: round(n_new / t, 2) for w, t in best.items()}
    return {"model": name, "layers": L, "d": d, "d_mlp": d_mlp, "new_tokens": n_new, "predictor_rank": rank, "rounds": rounds,
            "tokens_per_s": tok_s, "speedup": {w: round(best["dense"] / t, 3) for w, t in best.items()}, "teal_weights_read": shares,
            "seconds_all_rounds": {w: [round(x, 3) for x in v] for w, v in times.items()},
            "note": "prefill dense; every decode step's MLPs through the kernel; attention, embeddings and the LM head dense"}


def real_quality(keeps=(0.5, 0.3), methods=("oracle", "threshold", "predictor", "teal")):
    """The perplexity cost on the real model at `keeps`: the dynamic-k stage's own measurement (`sdlms.dynamic_k.frontier`,
    TEAL's protocol) for SmolLM2-135M with the default params' probe blocks, one seed, untimed."""
    import dataclasses
    from sdlms.data import load_manifest, probe_blocks
    from sdlms.dynamic_k import frontier, frontier_summary
    from sdlms.models import load_model
    from sdlms.params import load_params
    p = load_params("default").for_model("smollm2-135m")
    dk = dataclasses.replace(p.dynamic_k, keeps=[1.0, *keeps], seeds=1, methods=list(methods), time_decode=False)
    lm, tok = load_model("smollm2-135m")
    lm = lm.float().eval()
    blocks = probe_blocks(tok, p.tasks, load_manifest(p.tasks_manifest), p.tokens_per_task, p.block_size, p.seed)
    s = frontier_summary(frontier(lm, blocks, p.tasks, dk, seed=p.seed, spec=p.specialization))
    return {"model": "smollm2-135m (packaged weights)", "tasks": p.tasks, "decoded_tokens": int(len(p.tasks) * dk.eval_blocks_per_task * p.block_size // 2),
            "ppl_dense": round(float(s.ppl_dense.iloc[0]), 3),
            "rows": [{"method": r.method, "keep": r.keep, "keep_realised": round(r.keep_realised, 3), "ppl_sparse": round(r.ppl_sparse, 3),
                      "ppl_ratio": round(r.ppl_sparse / r.ppl_dense, 3), "kl": round(r.kl, 4), "top1": round(r.top1, 3)}
                     for r in s.itertuples() if r.method != "all"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 rounds, 4 calls per layer, 256 MB per path")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-mb", type=float, default=640, help="weights cycled per path (MB, fp32), above the last-level cache")
    ap.add_argument("--calls-per-layer", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=24, help="decoded tokens per end-to-end measurement")
    ap.add_argument("--skip-e2e", action="store_true", help="MLP blocks only")
    ap.add_argument("--skip-quality", action="store_true", help="no perplexity cost on the real model")
    a = ap.parse_args()
    if a.quick: a.rounds, a.min_mb, a.calls_per_layer, a.new_tokens = 2, 256, 4, 8
    torch.set_num_threads(1)
    out = {"what": __doc__.split("\n")[0], "threads": torch.get_num_threads(), "versions": package_versions(), "shapes": {}}
    for name in SHAPES:
        t0 = time.perf_counter()
        out["shapes"][name] = bench_shape(name, a.rounds, a.min_mb, a.calls_per_layer)
        print(f"{name}: {time.perf_counter() - t0:.0f} s")
    rows = [r for s in out["shapes"].values() for r in s["rows"]]
    get = lambda shape, dt, k, key="speedup", m="neuron": next(r[key] for r in rows if r["shape"] == shape and r["dtype"] == dt
                                                              and r["keep"] == k and r["method"] == m)
    out.update({"mlp_speedup_50": get("pythia410m", "float32", 0.5), "mlp_speedup_30": get("pythia410m", "float32", 0.3),
                "mlp_speedup_50_smollm2_swiglu": get("smollm2", "float32", 0.5),
                "mlp_speedup_50_bf16": get("pythia410m", "bfloat16", 0.5), "mlp_speedup_50_smollm2_bf16": get("smollm2", "bfloat16", 0.5),
                "kernel_scaling_50": get("pythia410m", "float32", 0.5, "kernel_scaling"),
                "kernel_keep1_over_dense": get("pythia410m", "float32", 1.0),
                "mlp_speedup_50_teal": get("pythia410m", "float32", 0.5, m="teal"), "mlp_speedup_30_teal": get("pythia410m", "float32", 0.3, m="teal"),
                "mlp_speedup_50_smollm2_teal": get("smollm2", "float32", 0.5, m="teal"),
                "mlp_speedup_50_bf16_teal": get("pythia410m", "bfloat16", 0.5, m="teal")})
    if not a.skip_e2e:
        from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
        torch.manual_seed(0)
        t0 = time.perf_counter()
        m = GPTNeoXForCausalLM(GPTNeoXConfig(**PYTHIA_410M)).eval()
        out["e2e"] = {"pythia410m": bench_e2e("pythia-410m architecture (random init)", m, a.rounds, a.new_tokens)}
        del m
        print(f"e2e pythia410m: {time.perf_counter() - t0:.0f} s")
        try:
            from sdlms.models import load_model
            m = load_model("smollm2-135m")[0].float().eval()
            out["e2e"]["smollm2"] = bench_e2e("smollm2-135m (packaged weights)", m, a.rounds, a.new_tokens)
        except Exception as e:        # the packaged model is optional here
            out["e2e"]["smollm2"] = {"skipped": f"{type(e).__name__}: {e}"}
        out["e2e_speedup_50"] = out["e2e"]["pythia410m"]["speedup"]["predictor_keep0.5"]
        out["e2e_speedup_30"] = out["e2e"]["pythia410m"]["speedup"]["predictor_keep0.3"]
        out["e2e_speedup_50_teal"] = out["e2e"]["pythia410m"]["speedup"]["teal_keep0.5"]
    if not a.skip_quality:
        t0 = time.perf_counter()
        try:
            out["quality_smollm2"] = q = real_quality()
            for r in q["rows"]: out[f"ppl_ratio_{round(r['keep'] * 100)}_smollm2_{r['method']}"] = r["ppl_ratio"]
        except Exception as e:
            out["quality_smollm2"] = {"skipped": f"{type(e).__name__}: {e}"}
        print(f"quality smollm2: {time.perf_counter() - t0:.0f} s")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "dynamic_k.json").write_text(json.dumps(out, indent=1))
    lines = ["| shape | method | dtype | keep | weights read | us/call | dense fp32 us | speedup | ideal | fraction of ideal | kernel scaling |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['shape']} ({r['mlp']}) | {r['method']} | {r['dtype']} | {r['keep']:g} | {r['weights_read']:.3f} | {r['us_per_call']} | {r['dense_fp32_us']} | {r['speedup']:.2f}x | "
              f"{r['ideal_speedup']:.2f}x | {r['fraction_of_ideal']:.2f} | {r['kernel_scaling']:.2f} |" for r in rows]
    md = ("# Dynamic-k MLP block at batch 1: fused sparse kernel vs dense torch fp32 (one thread)\n\n"
          + "\n".join(lines) + "\n\n" + ", ".join(f"{k}: {v}" for k, v in out.items() if k.startswith(("mlp_", "kernel_", "e2e_"))) + "\n")
    for k, e in out.get("e2e", {}).items():
        if "tokens_per_s" in e:
            md += (f"\nEnd-to-end greedy decode, {e['model']} ({e['new_tokens']} new tokens, batch 1; predictor rank {e['predictor_rank']}, "
                   f"its cost included): " + ", ".join(f"{w} {v} tok/s ({e['speedup'][w]:.2f}x)" for w, v in e["tokens_per_s"].items()) + "\n")
        else: md += f"\nEnd-to-end {k}: {e['skipped']}\n"
    q = out.get("quality_smollm2", {})
    if "rows" in q:
        md += (f"\nPerplexity cost on {q['model']} (the dynamic-k stage's protocol, {q['decoded_tokens']} decoded tokens; dense {q['ppl_dense']}): "
               + ", ".join(f"{r['method']}@{r['keep']:g} {r['ppl_sparse']} (x{r['ppl_ratio']:.2f})" for r in q["rows"]) + "\n")
    elif q: md += f"\nPerplexity cost: {q['skipped']}\n"
    (HERE / "results" / "dynamic_k.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
