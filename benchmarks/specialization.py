"""SI + co-activation modularity at real widths: planted synthetic activity, 200,000 tokens.

Goals: <= 60 s wall and <= 4 GiB peak RSS on 2 cores for the whole pipeline (one streaming pass, SI with a
20-shuffle null and a 200-resample bootstrap, the PPMI graph, Louvain, and both activity nulls for Q with
`n_null_q` repeats each) at 16,384 units (Pythia-6.9B's d_mlp; dense activity like MLP neurons with a top-q
activity definition) and at 65,536 units (sparse SAE-like activity, ~64 active features per token, which takes
the sparse path on all tokens). 4,096 units show how time grows. Each configuration runs in its own process
(its own peak RSS).
The baseline, in the same process, is exact dense pair counts on every token (`A^T A` over all 200,000 tokens),
timed on a slice of tokens and scaled: what the sampled/sparse pair counts avoid; it also gauges how loaded the
machine was (1,753 s at 16,384 units on an idle 2-core machine). `cpu_seconds` (user + system) is the work done;
on a shared machine the wall time can be far above cpu_seconds / 2.

    python benchmarks/specialization.py [--units 4096 16384 65536] [--tokens 200000]
"""
import argparse, json, resource, subprocess, sys, time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
CONFIGS = {  # planted-module settings per unit count
    4096: dict(gen=dict(n_modules=32, bg_frac=1 / 16, p_fire=0.6, p_bg=0.02), fmt="bool"),
    16384: dict(gen=dict(n_modules=32, bg_frac=1 / 16, p_fire=0.6, p_bg=0.02), fmt="bool"),
    65536: dict(gen=dict(n_modules=1024, bg_frac=1 / 8, pref_per_task=128, p_fire=0.5, p_bg=8 / 65536), fmt="csr"),
}


class Timed:
    "Iterator wrapper that adds up the time spent producing items (data generation)."
    def __init__(self, it): self.it, self.seconds = iter(it), 0.0
    def __iter__(self): return self
    def __next__(self):
        t = time.perf_counter()
        try: return next(self.it)
        finally: self.seconds += time.perf_counter() - t


def run_one(units, tokens, seed=0):
    from sdlms.config import SpecParams
    from sdlms.activity import collect_activity
    from sdlms.cooccurrence import pair_tokens_for
    from sdlms.modularity import coactivation_modularity, nmi
    from sdlms.specialization import si_analysis
    from sdlms.synthetic import PlantedModules
    torch.set_num_threads(2)
    sp = SpecParams()
    cfg = CONFIGS.get(units, CONFIGS[16384])
    pm = PlantedModules(units, seed=seed, **cfg["gen"])
    t0 = time.perf_counter()
    gen = Timed(pm.stream(tokens, fmt=cfg["fmt"], seed=seed + 1, reuse_buffer=True))
    P = pair_tokens_for(units, sp.pair_tokens)
    stats = collect_activity(gen, pair_tokens=P, sparse_density=sp.sparse_density, seed=seed)
    t_collect = time.perf_counter() - t0
    t = time.perf_counter()
    si = si_analysis(stats.counts_BU, stats.ntok_B, stats.task_B, [str(k) for k in range(pm.n_tasks)], sp.n_null, sp.n_boot, seed)
    t_si = time.perf_counter() - t
    t = time.perf_counter()
    mod = coactivation_modularity(stats, k_edges=sp.k_edges, min_count=sp.min_cocount, n_null=sp.n_null_q, method=sp.pair_method,
                                  resolution=sp.resolution, z_cut=sp.z_cut, seed=seed)
    t_mod = time.perf_counter() - t
    total = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    rss, cpu = ru.ru_maxrss / 2 ** 20, ru.ru_utime + ru.ru_stime
    # baseline: exact dense pair counts on every token, timed on a slice and scaled
    n_b = 512
    a = np.unpackbits(stats.sample_bits_PW[:n_b], axis=1, count=units).astype(np.float32) if cfg["fmt"] == "bool" else None
    if a is not None:
        t = time.perf_counter(); _ = a.T @ a; naive = (time.perf_counter() - t) * tokens / n_b
    else: naive = float("nan")
    m = pm.module_U >= 0
    spec = np.isin(pm.module_U, np.flatnonzero(pm.pref_KM.any(0)))
    tm = mod["timings"]
    return {"units": units, "tokens": tokens, "density": round(stats.density, 5), "pair_method": mod["method"],
            "pair_tokens": mod["n_pair_tokens"], "k_edges": sp.k_edges, "n_null_q": sp.n_null_q, "n_null_si": sp.n_null, "n_boot": sp.n_boot,
            "seconds": {"total": round(total, 2), "generation": round(gen.seconds, 2), "streaming_pass": round(t_collect - gen.seconds, 2),
                        "si_null_bootstrap": round(t_si, 2), "modularity_total": round(t_mod, 2),
                        **{k: round(v, 2) for k, v in tm.items()}},
            "seconds_without_generation": round(total - gen.seconds, 2),
            "baseline_exact_dense_pairs_all_tokens_s": round(naive, 1),
            "peak_rss_gib": round(rss, 3), "cpu_seconds": round(cpu, 1),   # with 2 cores to itself, wall >= cpu / 2
            "si_mean": round(si["stats"]["si_mean"], 4), "si_null_mean": round(si["stats"]["si_null_mean"], 4),
            "si_planted_units": round(float(np.nanmean(si["si_U"][spec])), 4), "si_other_units": round(float(np.nanmean(si["si_U"][~spec])), 4),
            "Q": round(mod["Q"], 4), "Q_null_a_mean": round(mod["Q_null_a_mean"], 4), "Q_null_a_sd": round(mod["Q_null_a_sd"], 4),
            "z_a": round(mod["z_a"], 2), "Q_null_b_mean": round(mod["Q_null_b_mean"], 4), "Q_null_b_sd": round(mod["Q_null_b_sd"], 4),
            "z_b": round(mod["z_b"], 2), "q_verdict": mod["verdict"],
            "n_communities": mod["n_communities"], "nmi_planted": round(nmi(mod["labels_U"][m], pm.module_U[m]), 4),
            "edge_replication": round(mod.get("edge_replication", float("nan")), 4)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--units", type=int, nargs="*", default=[4096, 16384, 65536])
    ap.add_argument("--tokens", type=int, default=200_000)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(HERE / "results" / "specialization"))
    a = ap.parse_args()
    if a.one:
        print(json.dumps(run_one(a.units[0], a.tokens))); return
    res = []
    for u in a.units:
        out = subprocess.run([sys.executable, __file__, "--one", "--units", str(u), "--tokens", str(a.tokens)],
                             capture_output=True, text=True)
        if out.returncode: sys.exit(f"{u} units failed:\n{out.stderr[-3000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1]); res.append(r)
        print(f"{u:>6} units: {r['seconds']['total']:6.1f} s ({r['seconds_without_generation']:.1f} s without data generation), "
              f"peak RSS {r['peak_rss_gib']:.2f} GiB, {r['pair_method']} pairs on {r['pair_tokens']:,} tokens, "
              f"Q {r['Q']:.3f} vs nulls a {r['Q_null_a_mean']:.3f} (z {r['z_a']:.1f}), b {r['Q_null_b_mean']:.3f} (z {r['z_b']:.1f}), "
              f"NMI {r['nmi_planted']:.3f}", flush=True)
    from sdlms.core import package_versions
    ok = lambda r: bool(r["seconds"]["total"] <= 60 and r["peak_rss_gib"] <= 4)  # noqa: E731
    out = {"goal": "16,384 and 65,536 units x 200,000 tokens: <= 60 s and <= 4 GiB each on 2 cores",
           "goal_met": {str(r["units"]): ok(r) for r in res if r["units"] in (16384, 65536)},
           "results": res, "versions": package_versions()}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")
    lines = ["| units | activity | pair counts | total s | without generation | of which nulls | peak RSS GiB | exact dense pairs, all tokens (est.) "
             "| Q | Q_null_a (z_a) | Q_null_b (z_b) | NMI | edge replication |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res:
        lines.append(f"| {r['units']:,} | {r['density']:.2%} active | {r['pair_method']} on {r['pair_tokens']:,} tokens | {r['seconds']['total']} | "
                     f"{r['seconds_without_generation']} | {round(r['seconds']['null_a'] + r['seconds']['null_b'], 1)} | {r['peak_rss_gib']} | "
                     f"{r['baseline_exact_dense_pairs_all_tokens_s']} s | {r['Q']} | {r['Q_null_a_mean']} ({r['z_a']}) | "
                     f"{r['Q_null_b_mean']} ({r['z_b']}) | {r['nmi_planted']} | {r['edge_replication']} |")
    Path(a.out).with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
