"""Capture throughput and memory benchmark.

Tokens/s of capture with statistics only and with the on-disk activation cache, against plain forward
passes without hooks, interleaved in one process (ratios, since machines are noisy), on the micro-suite's
largest model and on a random-init Pythia-70m-architecture model (config built locally). Peak RSS is
measured in fresh subprocesses at N and 10N tokens for the flat-memory check.

    python benchmarks/capture.py            # full run, writes benchmarks/results/capture.{json,md}
    python benchmarks/capture.py --quick    # fewer tokens and rounds
"""
import argparse, json, os, resource, statistics, subprocess, sys, tempfile, time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np
import torch

from sdlms.capture import capture
from sdlms.config import CaptureConfig
from sdlms.core import package_versions, set_threads
from sdlms.data import ProbeBlocks

HERE = Path(__file__).resolve().parent


def pythia70m_arch(seed=0):
    "Random-init model with the Pythia-70m architecture (speed needs no trained weights)."
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    cfg = GPTNeoXConfig(vocab_size=50304, hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
                        intermediate_size=2048, hidden_act="gelu", rotary_pct=0.25, use_parallel_residual=True,
                        max_position_embeddings=2048, tie_word_embeddings=False)
    torch.manual_seed(seed)
    return GPTNeoXForCausalLM(cfg).eval().requires_grad_(False)


def micro_largest():
    "The largest model of the default micro-suite (built into the cache if missing)."
    from sdlms.params import load_params
    from sdlms.models import load_model
    from sdlms.suite import build_suite
    p = load_params("default")
    models = build_suite(p.suite, p.micro_sizes(), p.seed, workers=p.workers, progress=True)
    name = max(models, key=lambda k: models[k]["params"])
    return name, load_model(models[name]["path"])[0]


def blocks_for(model, n_tokens, block=128, n_tasks=6, seed=0):
    rng = np.random.default_rng(seed)
    B = n_tokens // block
    return ProbeBlocks(rng.integers(0, model.config.vocab_size, (B, block)), np.arange(B) % n_tasks,
                       [f"t{k}" for k in range(n_tasks)], block)


def plain_forward(model, blocks, batch_size):
    ids = torch.from_numpy(blocks.ids_BT)
    with torch.inference_mode():
        for i in range(0, len(ids), batch_size): model(input_ids=ids[i:i + batch_size])


def modes(model, blocks, cfg, batch_size, tmp):
    """The timed variants. 'stats' is the forward pass of a default capture: light statistics on every token,
    PR and top-k mass deferred (pr_source=cache). 'stats+pr_stream_5%' does PR and top-k mass inside the pass on a 5%
    subsample. 'stats+cache' also writes the fp16 cache. 'capture_stage' is the whole default capture work: cache
    write plus PR and top-k mass read back from the cache on all tokens."""
    layers = list(range(model.config.num_hidden_layers))
    kw = dict(topk_fracs=cfg.topk_fracs, batch_size=batch_size, progress=False, shard_tokens=cfg.shard_tokens)
    n = [0]
    def root():
        n[0] += 1; return Path(tmp) / f"c{n[0]}"
    return {"plain": lambda: plain_forward(model, blocks, batch_size),
            "stats": lambda: capture(model, blocks, layers, pr_max_tokens=0, **kw),
            "stats+pr_stream_5%": lambda: capture(model, blocks, layers, pr_token_rate=0.05, pr_source="stream", **kw),
            "stats+cache": lambda: capture(model, blocks, layers, pr_max_tokens=0, cache_root=root(), **kw),
            "capture_stage": lambda: capture(model, blocks, layers, pr_token_rate=cfg.pr_token_rate, pr_max_tokens=cfg.pr_max_tokens,
                                             pr_source="cache", cache_root=root(), **kw)}


def bench_model(name, model, n_tokens, rounds, batch_size, cfg):
    blocks = blocks_for(model, n_tokens)
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        ms = modes(model, blocks, cfg, batch_size, tmp)
        ms["plain"](); ms["stats"]()                              # warm-up
        for r in range(rounds):                                  # interleaved rounds
            for k, f in ms.items():
                t = time.perf_counter(); f(); times.setdefault(k, []).append(time.perf_counter() - t)
    tok_s = {k: blocks.n_tokens / statistics.median(v) for k, v in times.items()}
    return {"model": name, "params": sum(p.numel() for p in model.parameters()), "tokens": blocks.n_tokens,
            "rounds": rounds, "tokens_per_s": {k: round(v, 1) for k, v in tok_s.items()},
            "ratio_vs_plain": {k: round(v / tok_s["plain"], 3) for k, v in tok_s.items()}}


def _rss_child(which, n_tokens, cache):
    set_threads(1)
    model = pythia70m_arch() if which == "pythia70m" else micro_largest()[1]
    blocks = blocks_for(model, n_tokens)
    cfg = CaptureConfig()
    with tempfile.TemporaryDirectory() as tmp:   # the default capture work: PR from the cache, or on a 5% stream without one
        capture(model, blocks, list(range(model.config.num_hidden_layers)), topk_fracs=cfg.topk_fracs,
                pr_token_rate=cfg.pr_token_rate if cache else 0.05, pr_max_tokens=cfg.pr_max_tokens, batch_size=8,
                progress=False, pr_source="cache" if cache else "stream", cache_root=Path(tmp) if cache else None,
                shard_tokens=cfg.shard_tokens)
    print(json.dumps({"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def peak_rss(which, n_tokens, cache):
    out = subprocess.run([sys.executable, __file__, "--rss-child", which, str(n_tokens), str(int(cache))],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["maxrss_mb"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tokens", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--out", default=str(HERE / "results" / "capture"))
    ap.add_argument("--rss-child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.rss_child:
        return _rss_child(a.rss_child[0], int(a.rss_child[1]), bool(int(a.rss_child[2])))
    set_threads(1)
    n = a.tokens or (4096 if a.quick else 12288)
    rounds = a.rounds or (2 if a.quick else 5)
    cfg = CaptureConfig()
    res = {"config": {"pr_source": cfg.pr_source, "pr_token_rate": cfg.pr_token_rate, "pr_max_tokens": cfg.pr_max_tokens, "topk_fracs": cfg.topk_fracs,
                      "cache_dtype": cfg.cache_dtype, "batch_size": 8, "threads": torch.get_num_threads()},
           "device": "cpu", "versions": package_versions(), "models": []}
    name, m = micro_largest()
    for nm, model in ((name, m), ("pythia-70m-arch (random init)", pythia70m_arch())):
        r = bench_model(nm, model, n, rounds, 8, cfg); res["models"].append(r); print(json.dumps(r))
    n_rss = 2048 if a.quick else 4096
    res["peak_rss_mb"] = {}
    for which in ("pythia70m",):
        for cache in (False, True):
            small, big = peak_rss(which, n_rss, cache), peak_rss(which, 10 * n_rss, cache)
            res["peak_rss_mb"][f"{which}{'+cache' if cache else ''}"] = {
                f"{n_rss}_tokens": round(small, 1), f"{10 * n_rss}_tokens": round(big, 1), "ratio": round(big / small, 3)}
    print(json.dumps(res["peak_rss_mb"]))
    out = Path(a.out); out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    keys = list(res["models"][0]["tokens_per_s"])
    lines = ["# Capture benchmark (CPU, 1 torch thread)", "",
             f"Median of {rounds} interleaved rounds on {n} tokens, batch 8 x 128. 'stats' is the forward pass of a default "
             f"capture (light statistics on every token; PR and top-k mass {cfg.topk_fracs} deferred to the cache). "
             "'stats+pr_stream_5%' computes PR and top-k mass inside the pass on a 5% subsample; 'stats+cache' also writes "
             "the fp16 cache; 'capture_stage' is the whole default capture work (cache + PR/top-k mass from the cache on all "
             "tokens). Goal: stats-only >= 0.90x plain forward.", "",
             "| model | params | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for r in res["models"]:
        t, q = r["tokens_per_s"], r["ratio_vs_plain"]
        lines.append(f"| {r['model']} | {r['params']:,} | " + " | ".join(f"{t[k]:,.0f} tok/s ({q[k]:.2f}x)" for k in keys) + " |")
    lines += ["", "Peak RSS (MB) when the token count grows 10x (fresh process each):", ""]
    for k, v in res["peak_rss_mb"].items(): lines.append(f"- {k}: {v}")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
