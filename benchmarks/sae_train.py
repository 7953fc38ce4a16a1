"""SAE training throughput: the sdlms SAE stage against SAELens's own SAETrainer with default settings.

Same data (a cache of synthetic sparse activations), same shapes (d_in 512, d_sae 4096, k 32, batch 4096), same
process, interleaved rounds (ratios, since machines are noisy); also a minimal plain-torch TopK step as the
practical limit. Validation explained variance after the same token budget is reported next to the speed.
Goal: sdlms >= 1.5x SAELens's default trainer at equal or better validation EV, output in SAELens format.

`sdlms` is the stage's default (`step: auto`, the exact sparse TopK step); `sdlms_dense` is the same stage with
SAELens's own step (`step: dense`), which isolates what the sparse step buys.

    python benchmarks/sae_train.py [--steps 40] [--rounds 2]
"""
import argparse, json, os, statistics, tempfile, time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np
import torch

from sdlms.capture import ActivationCache, write_array_cache
from sdlms.core import package_versions, set_threads
from sdlms.sae import CacheBatches, evaluate, parse_sae_params, split_blocks, train_sae

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
    cache = ActivationCache(cache_dir)
    tr, va = split_blocks(cache.index, 0.2, seed)
    torch.manual_seed(seed)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, device="cpu"))
    cfg = SAETrainerConfig(total_training_samples=steps * BATCH, train_batch_size_samples=BATCH, lr=1e-3, lr_end=1e-4,
                           device="cpu", n_batches_for_norm_estimate=2, logger=LoggingConfig(log_to_wandb=False),
                           save_final_checkpoint=False)
    t = time.perf_counter()
    sae = SAETrainer(cfg=cfg, sae=sae, data_provider=CacheBatches(cache, tr, BATCH, seed)).fit()
    secs = time.perf_counter() - t
    return secs, evaluate(sae, cache, va)["explained_variance"]


def sdlms_stage(cache_dir, steps, out, seed=0, step="auto"):
    # SAELens's defaults for everything the comparison is not about: constant lr (no warm-up or decay), its dead-latent
    # window, no input normalisation; what differs is the training step
    p = parse_sae_params({"step": step, "lr_warmup_frac": 0.0, "lr_decay_frac": 0.0, "dead_feature_window": 1000,
                          "normalize": False, "k": K, "d_sae": D_SAE, "batch_size": BATCH, "train_tokens": steps * BATCH, "lr": 1e-3,
                          "eval_every": 10 ** 6, "patience": 0, "checkpoint_every": 0, "norm_batches": 2, "seed": seed}, D_IN)
    t = time.perf_counter()
    r = train_sae(cache_dir, out, p, progress=False)
    secs = time.perf_counter() - t
    from sae_lens import SAE
    cache = ActivationCache(cache_dir)
    return secs, evaluate(SAE.load_from_disk(r["path"]), cache, np.load(Path(out) / "split.npz")["val"])["explained_variance"]


def plain_topk(cache_dir, steps, seed=0):
    "Minimal plain-torch TopK SAE step (dense decode, Adam): the practical limit on this machine."
    cache = ActivationCache(cache_dir)
    tr, _ = split_blocks(cache.index, 0.2, seed)
    torch.manual_seed(seed)
    W_enc = torch.nn.Parameter(torch.randn(D_IN, D_SAE) * 0.01); b_enc = torch.nn.Parameter(torch.zeros(D_SAE))
    W_dec = torch.nn.Parameter(W_enc.detach().T.clone()); b_dec = torch.nn.Parameter(torch.zeros(D_IN))
    opt = torch.optim.Adam([W_enc, b_enc, W_dec, b_dec], lr=1e-3)
    data = CacheBatches(cache, tr, BATCH, seed)
    t = time.perf_counter()
    for _ in range(steps):
        x = next(data)
        pre = (x - b_dec) @ W_enc + b_enc
        v, i = pre.topk(K, dim=-1)
        f = torch.zeros_like(pre).scatter_(-1, i, v.relu())
        loss = ((f @ W_dec + b_dec - x) ** 2).sum(-1).mean()
        opt.zero_grad(); loss.backward(); opt.step()
    return time.perf_counter() - t, float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40); ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results" / "sae_train"))
    a = ap.parse_args()
    set_threads(1)
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
