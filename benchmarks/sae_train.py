"""SAE training throughput.

1. The sdlms SAE trainer against SAELens's own SAETrainer with default settings. Same data (a cache of synthetic
   sparse activations), same shapes (d_in 512, d_sae 4096, k 32, batch 4096), same process, interleaved rounds
   (ratios, since machines are noisy); also a minimal plain-torch TopK step as the practical limit. Held-out explained
   variance after the same token budget is reported next to the speed. Goal: sdlms >= 1.5x SAELens's default trainer
   at equal or better EV, output in SAELens format. `sdlms` is the stage's trainer (`step: auto`, the exact sparse
   TopK step) with SAELens's settings for everything else; `sdlms_dense` uses SAELens's own step (`step: dense`),
   which isolates what the sparse step buys.

2. `--sizes`: the SAE stage's training throughput per site size (d_mlp 256, 512, 1024 as in micro-xs/s/m; the
   default run's settings: d_sae 4 d_mlp, k 8 and 32, batch 1024, lr 3e-3), on MLP-like activations
   (`sdlms.streams.mlp_like_stream`), in one process, with each size's stage time extrapolated to the default
   `sae.train_tokens`.

    python benchmarks/sae_train.py [--steps 40] [--rounds 2]
    python benchmarks/sae_train.py --sizes [--steps 60]
"""
import argparse, json, os, statistics, tempfile, time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np
import torch

from sdlms.capture import ActivationCache, write_array_cache
from sdlms.core import package_versions, set_threads
from sdlms.config import parse_sae_params
from sdlms.streams import ActivationStream, mlp_like_stream
from sdlms.sae import evaluate, train_sae

HERE = Path(__file__).resolve().parent
D_IN, D_SAE, K, BATCH = 512, 4096, 32, 4096


def make_cache(root, n_tokens, seed=0):
    from sae_lens.synthetic import ActivationGenerator, FeatureDictionary
    fd = FeatureDictionary(8192, D_IN, initializer=None, seed=seed)
    gen = ActivationGenerator(8192, firing_probabilities=0.004, std_firing_magnitudes=0.2, mean_firing_magnitudes=1.0)
    torch.manual_seed(seed)
    X = torch.cat([fd(gen.sample(8192)).detach() for _ in range(0, n_tokens, 8192)])
    return write_array_cache(Path(root) / "L0", X, block_size=128, n_tasks=4, shard_tokens=16384)


def saelens_default(cache_dir, steps, seed=0):
    "SAELens's SAETrainer.fit() with its default TopK settings, fed by the same cache batches."
    from sae_lens import LoggingConfig, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer
    stream = ActivationStream.from_cache(cache_dir, 0.2, seed)
    torch.manual_seed(seed)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, device="cpu"))
    cfg = SAETrainerConfig(total_training_samples=steps * BATCH, train_batch_size_samples=BATCH, lr=1e-3, lr_end=1e-4,
                           device="cpu", n_batches_for_norm_estimate=2, logger=LoggingConfig(log_to_wandb=False),
                           save_final_checkpoint=False)
    t = time.perf_counter()
    sae = SAETrainer(cfg=cfg, sae=sae, data_provider=stream.batches(BATCH, seed)).fit()
    secs = time.perf_counter() - t
    return secs, evaluate(sae, stream.holdout)["explained_variance"]


def sdlms_stage(cache_dir, steps, out, seed=0, step="auto"):
    # SAELens's defaults for everything the comparison is not about: constant lr (no warm-up or decay), its dead-latent
    # window and decoder init norm, no input normalisation; what differs is the training step
    p = parse_sae_params({"step": step, "lr_warmup_frac": 0.0, "lr_decay_frac": 0.0, "dead_feature_window": 1000, "decoder_init_norm": 0.1,
                          "normalize": False, "k": K, "d_sae": D_SAE, "batch_size": BATCH, "train_tokens": steps * BATCH, "lr": 1e-3,
                          "eval_every": 10 ** 6, "patience": 0, "checkpoint_every": 0, "norm_batches": 2, "seed": seed}, D_IN)
    stream = ActivationStream.from_cache(cache_dir, 0.2, seed)
    t = time.perf_counter()
    r = train_sae(stream, out, p, progress=False)
    secs = time.perf_counter() - t
    from sae_lens import SAE
    return secs, evaluate(SAE.load_from_disk(r["path"]), stream.holdout)["explained_variance"]


def plain_topk(cache_dir, steps, seed=0):
    "Minimal plain-torch TopK SAE step (dense decode, Adam): the practical limit on this machine."
    stream = ActivationStream.from_cache(cache_dir, 0.2, seed)
    torch.manual_seed(seed)
    W_enc = torch.nn.Parameter(torch.randn(D_IN, D_SAE) * 0.01); b_enc = torch.nn.Parameter(torch.zeros(D_SAE))
    W_dec = torch.nn.Parameter(W_enc.detach().T.clone()); b_dec = torch.nn.Parameter(torch.zeros(D_IN))
    opt = torch.optim.Adam([W_enc, b_enc, W_dec, b_dec], lr=1e-3)
    data = stream.batches(BATCH, seed)
    t = time.perf_counter()
    for _ in range(steps):
        x = next(data)
        pre = (x - b_dec) @ W_enc + b_enc
        v, i = pre.topk(K, dim=-1)
        f = torch.zeros_like(pre).scatter_(-1, i, v.relu())
        loss = ((f @ W_dec + b_dec - x) ** 2).sum(-1).mean()
        opt.zero_grad(); loss.backward(); opt.step()
    return time.perf_counter() - t, float("nan")


def sizes(steps: int, out: Path, train_tokens: int = 200_000):
    "Training tokens/s of the default stage settings per site size, and the stage's training time at `train_tokens`."
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for d in (256, 512, 1024):
            stream = mlp_like_stream(n_train=steps * 1024, n_holdout=4096, d_model=d // 4, d_mlp=d, seed=0)
            for k in (8, 32):
                p = parse_sae_params({"k": k, "expansion": 4, "lr": 3e-3, "batch_size": 1024, "train_tokens": steps * 1024,
                                      "eval_every": 25, "patience": 0, "checkpoint_every": 0}, d)
                r = train_sae(stream, Path(tmp) / f"d{d}_k{k}", p, progress=False)
                rows.append({"d_mlp": d, "d_sae": 4 * d, "k": k, "steps": r["steps"], "tokens_per_s": r["tokens_per_s"],
                             "train_s_at_default_budget": round(train_tokens / r["tokens_per_s"], 1),
                             "dead_frac_train": round(r["dead_frac_train"], 4)})
                print(rows[-1], flush=True)
    res = {"settings": "sae.expansion 4, batch 1024, lr 3e-3, sparse TopK step, AuxK; MLP-like activations (mlp_like_stream)",
           "steps": steps, "default_train_tokens": train_tokens, "rows": rows,
           "note": "training loop only (held-out evaluations every 25 steps included); one process, one thread, shared machine",
           "device": "cpu", "versions": package_versions()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40); ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--sizes", action="store_true", help="throughput of the default stage settings per site size")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    set_threads(1)
    if a.sizes: return sizes(a.steps, Path(a.out or HERE / "results" / "sae_train_sizes"))
    a.out = a.out or str(HERE / "results" / "sae_train")
    res = {k: [] for k in ("saelens_default", "sdlms", "sdlms_dense", "plain_topk")}
    ev = {k: [] for k in res}
    with tempfile.TemporaryDirectory() as tmp:
        cdir = make_cache(tmp, int(a.steps * BATCH * 1.3))      # train split (80%) covers the budget: no token seen twice
        for r in range(a.rounds):
            order = list(res) if r % 2 == 0 else list(res)[::-1]
            for k in order:
                if k == "saelens_default": s, e = saelens_default(cdir, a.steps)
                elif k == "sdlms": s, e = sdlms_stage(cdir, a.steps, Path(tmp) / f"sd{r}")
                elif k == "sdlms_dense": s, e = sdlms_stage(cdir, a.steps, Path(tmp) / f"sdd{r}", step="dense")
                else: s, e = plain_topk(cdir, a.steps)
                res[k].append(a.steps * BATCH / s); ev[k].append(e)
                print(k, f"{a.steps * BATCH / s:.0f} tok/s", f"EV {e:.3f}", flush=True)
    tok = {k: statistics.median(v) for k, v in res.items()}
    out = {"shapes": {"d_in": D_IN, "d_sae": D_SAE, "k": K, "batch": BATCH}, "steps": a.steps, "rounds": a.rounds,
           "tokens_per_s": {k: round(v, 1) for k, v in tok.items()},
           "ratio_vs_saelens": {k: round(v / tok["saelens_default"], 3) for k, v in tok.items()},
           "val_explained_variance": {k: (round(float(np.nanmedian(v)), 4) if not np.isnan(v).all() else None) for k, v in ev.items()},
           "note": "end-to-end wall time of each trainer call over the same budget (norm estimate included, 2 batches each)",
           "device": "cpu", "versions": package_versions()}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["tokens_per_s"]), json.dumps(out["ratio_vs_saelens"]), json.dumps(out["val_explained_variance"]))


if __name__ == "__main__":
    main()
