"""The plan for the full Pythia-deduped sweep (`params/pythia.yaml`, 70m to 12b): jobs, activation-cache disk, and
GPU-hours per stage, extrapolated from per-token costs measured here.

Cost model. A stage's work is counted in forward passes over tokens (FLOPs per token from the model's config: every
linear layer, the LM head included; attention scores at the probe block length):
- capture: the probe tokens through the model and its random-init twin, plus the site-importance passes (zero and mean
  ablation of each selected site, for the model and the twin) on the importance tokens;
- specialization, per site: one forward over the probe tokens for the twin's rates, and the ablation passes, one per
  ablated set (each task's top-SI set and each community, each with its random controls, plus the clean pass) over the
  ablation blocks.
Measured: the seconds of the capture and specialization jobs of the packaged SmolLM2-135M in a finished default run, and
this machine's fp32 matmul rate on one core (the one torch thread a stage gets). The ratio `overhead` = measured seconds
/ (counted FLOPs / matmul rate) carries everything the count leaves out (covariance and SI work that grows with d_mlp^2,
cache I/O, kernel start); it is applied unchanged to the Pythia models. Assumed: a GPU sustains `--gpu-tflops` (default
200, bf16) on these forwards. Both assumptions are the weak point: read the hours as an order of magnitude, and time one
model's jobs on your GPU before booking the rest (`sdlms status` gives each job's seconds).

    python benchmarks/sweep_plan.py [--run artifacts/<default run>] [--gpu-tflops 200]   # writes benchmarks/results/sweep_plan.{json,md}
"""
import argparse, json, os, time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch

from sdlms.params import load_params, parse_params
from sdlms.rundir import artifacts_root, run_status
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# published Pythia(-deduped) shapes: d_model, layers (d_mlp = 4 d_model, vocab 50304, untied embeddings)
PYTHIA = {"70m": (512, 6), "160m": (768, 12), "410m": (1024, 24), "1b": (2048, 16), "1.4b": (2048, 24),
          "2.8b": (2560, 32), "6.9b": (4096, 32), "12b": (5120, 36)}


def flops_per_token(d, n_layers, d_mlp, vocab, kv_frac=1.0, gated=False, ctx=256):
    "Forward FLOPs per token: 2 x every linear weight (q, o; k, v at `kv_frac`; MLP; LM head) + attention scores at `ctx`."
    attn = (2 + 2 * kv_frac) * d * d
    mlp = (3 if gated else 2) * d * d_mlp
    return 2 * (n_layers * (attn + mlp) + vocab * d) + 2 * n_layers * ctx * d


def cpu_matmul_flops(n=1024, reps=8):
    "fp32 FLOP/s of one torch thread on an n x n matmul (the best of 5 timings: the rate of an unloaded core)."
    torch.set_num_threads(1)
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps): a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 * reps / best


def stage_forwards(p, n_sites):
    "Token-forwards of one model's capture job and of one site's specialization job under params `p` (see the docstring)."
    T = len(p.tasks) * p.tokens_per_task
    twin = 2 if p.capture.init_twin else 1
    imp = len(p.tasks) * p.capture.importance_blocks_per_task * p.block_size if p.capture.importance_blocks_per_task else T
    capture = T * twin + imp * 2 * n_sites * twin
    s = p.specialization
    sets = (len(p.tasks) + s.max_communities) * (1 + s.n_controls) + 1
    spec = (T if s.init_twin else 0) + sets * len(p.tasks) * s.ablation_blocks_per_task * p.block_size
    return {"capture": capture, "specialization": spec, "probe_tokens": T}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", help="a finished default run (default: the newest complete one under artifacts/)")
    ap.add_argument("--gpu-tflops", type=float, default=200.0, help="sustained bf16 TFLOP/s assumed for one GPU")
    a = ap.parse_args()
    runs = [Path(a.run)] if a.run else sorted(artifacts_root().glob("*-default"), reverse=True)
    run = next((r for r in runs if (r / "run.json").exists() and run_status(r).get("status") == "complete"), None)
    if run is None: raise SystemExit("no complete default run: run `sdlms run params/default.yaml` first, or give --run")
    meta = [json.loads(l) for l in (run / "meta.jsonl").read_text().splitlines()]
    secs = {m["stage"]: m["seconds"] for m in meta if m.get("event") == "stage"}
    p_run = parse_params(yaml.safe_load((run / "params.yaml").read_text()))
    from sdlms.models import load_config, n_layers_of, select_layers
    m = "smollm2-135m"; pm = p_run.for_model(m); cfg = load_config(m)
    sites = select_layers(pm.layers, n_layers_of(cfg))
    f_tok = flops_per_token(cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size, cfg.vocab_size,
                            cfg.num_key_value_heads / cfg.num_attention_heads, gated=True, ctx=pm.block_size)
    fw = stage_forwards(pm, len(sites))
    rate = cpu_matmul_flops()
    cap_s = secs[f"capture/{m}"]
    spec_s = [secs[f"specialization/{m}/L{l}"] for l in sites]
    overhead = {"capture": cap_s / (fw["capture"] * f_tok / rate),
                "specialization": (sum(spec_s) / len(spec_s)) / (fw["specialization"] * f_tok / rate)}
    pp = load_params(ROOT / "params" / "pythia.yaml")
    gpu = a.gpu_tflops * 1e12
    rows = []
    for name, (d, L) in PYTHIA.items():
        n_sites = len(select_layers(pp.layers, L))
        f = flops_per_token(d, L, 4 * d, 50304, ctx=pp.block_size)
        fwp = stage_forwards(pp, n_sites)
        cap_h = overhead["capture"] * fwp["capture"] * f / gpu / 3600
        spec_h = overhead["specialization"] * fwp["specialization"] * f / gpu / 3600 * n_sites
        cache_gb = fwp["probe_tokens"] * 4 * d * n_sites * 2 / 1e9          # bf16 activations at the selected sites
        rows.append({"model": f"pythia-{name}-deduped", "d_model": d, "layers": L, "sites": n_sites, "jobs": 1 + n_sites,
                     "gflops_per_token": round(f / 1e9, 3), "weights_gb_bf16": round(2 * (12 * L * d * d + 2 * 50304 * d) / 1e9, 1),
                     "capture_gpu_h": round(cap_h, 3), "specialization_gpu_h": round(spec_h, 3), "total_gpu_h": round(cap_h + spec_h, 3),
                     "cache_gb": round(cache_gb, 1)})
    tot = {k: round(sum(r[k] for r in rows), 2) for k in ("capture_gpu_h", "specialization_gpu_h", "total_gpu_h", "cache_gb", "jobs")}
    out = {"run": run.name, "measured_on": m, "measured_seconds": {"capture": cap_s, "specialization_per_site": spec_s},
           "measured_token_forwards": fw, "smollm2_gflops_per_token": round(f_tok / 1e9, 3), "cpu_matmul_gflops": round(rate / 1e9, 2),
           "overhead": {k: round(v, 2) for k, v in overhead.items()}, "gpu_tflops_assumed": a.gpu_tflops,
           "pythia_token_forwards": stage_forwards(pp, 3), "models": rows, "total": tot}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "sweep_plan.json").write_text(json.dumps(out, indent=1) + "\n")
    md = ["# Pythia sweep plan (params/pythia.yaml: capture + specialization, 3 sites per model)", "",
          f"Measured on {m} in run {run.name}: capture {cap_s:.0f} s, specialization {', '.join(f'{x:.0f}' for x in spec_s)} s per site, "
          f"one CPU core at {rate / 1e9:.1f} GFLOP/s (fp32 matmul); overhead over the counted forward FLOPs: capture "
          f"{overhead['capture']:.1f}x, specialization {overhead['specialization']:.1f}x. GPU assumed at {a.gpu_tflops:g} TFLOP/s (bf16).", "",
          "| model | GFLOP/token | weights (GB, bf16) | jobs | capture GPU-h | specialization GPU-h | total GPU-h | cache (GB) |",
          "|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['model']} | {r['gflops_per_token']} | {r['weights_gb_bf16']} | {r['jobs']} | {r['capture_gpu_h']} | "
           f"{r['specialization_gpu_h']} | {r['total_gpu_h']} | {r['cache_gb']} |" for r in rows]
    md += [f"| **all** | | | {tot['jobs']} | {tot['capture_gpu_h']} | {tot['specialization_gpu_h']} | **{tot['total_gpu_h']}** | {tot['cache_gb']} |", "",
           "Not in the GPU figures: the co-activation pair counts run on the CPU under a fixed budget per pass "
           "(`sdlms.cooccurrence.PAIR_BUDGET`, about 10 s on 2 cores whatever the MLP width), a few minutes per site; and each job's "
           "start (kernel, imports, loading the weights: tens of seconds, more for the large models' checkpoints). Training "
           "checkpoints (`revisions`) multiply a model's figures by their number (set `capture.init_twin: false`: step0 is the init).", ""]
    (HERE / "results" / "sweep_plan.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
