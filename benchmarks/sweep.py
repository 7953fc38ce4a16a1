"""Sweep throughput: wall time of a whole run with 1 and 2 local workers and through submitit's local executor, and the
fixed cost of dispatching one job.

- per-job overhead: a stage notebook that only opens its context (`sdlms.rundir.stage_context`, the imports every stage
  makes) executed with papermill in the project's kernel, as `jobs.execute_stage` does (kernel start, imports,
  output notebook written, folder published), cold and in a pool worker's warm kernel (`jobs.WarmKernel`: started and
  imported while the previous stage ran); and a submitit local job that returns at once (submission, process start,
  result pickled back);
- sweeps: the smoke params (`--params`, default `smoke`) run end to end without the report, with 1 worker, with 2, and
  through submitit's local executor with 2 jobs at a time; the suite is built once first, so every sweep finds it cached.

    python benchmarks/sweep.py                    # writes benchmarks/results/sweep.{json,md}
    python benchmarks/sweep.py --params default --pool-only   # the default job with 1 and 2 workers (about an hour)
"""
import argparse, json, os, statistics, tempfile, time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import yaml

from sdlms.core import package_versions

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def job_overhead(n=5):
    "Seconds per dispatched no-op stage (papermill + kernel + imports + publish) and per no-op submitit local job."
    import nbformat, submitit
    from sdlms.runner import execute_stage, stages_dir
    from sdlms.rundir import new_run_dir
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell('run_dir = ""\nout_dir = ""\nparams_file = "../../params/smoke.yaml"', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell('from sdlms.rundir import stage_context\nctx = stage_context(run_dir, out_dir, params_file, name="noop")\n'
                                  'ctx.write_meta(stage="noop")')],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}, "language_info": {"name": "python"}})
    src = stages_dir() / "_bench_noop.ipynb"
    nbformat.write(nb, src)
    try:
        run_dir = new_run_dir("bench-noop")
        (run_dir / "params.yaml").write_text((ROOT / "params" / "smoke.yaml").read_text())
        (run_dir / "run.json").write_text(json.dumps({"name": "bench-noop", "status": "running", "stages": []}))
        execute_stage(src.name, str(run_dir), "warmup")                       # kernel spec, caches
        t, w = [], []
        for i in range(n):
            t0 = time.perf_counter(); execute_stage(src.name, str(run_dir), f"noop{i}"); t.append(time.perf_counter() - t0)
        # a pool worker: the next stage's kernel starts (and imports) while the previous stage runs, here a 6 s pause
        from sdlms.jobs import WarmKernel
        WarmKernel.prepare()
        for i in range(n):
            time.sleep(6)
            t0 = time.perf_counter(); execute_stage(src.name, str(run_dir), f"warm{i}", warm=True); w.append(time.perf_counter() - t0)
        WarmKernel.close()
    finally:
        src.unlink()
        import shutil; shutil.rmtree(run_dir, ignore_errors=True)          # a scratch run: not one to list among the runs
    with tempfile.TemporaryDirectory() as d:
        ex = submitit.LocalExecutor(folder=d); ex.update_parameters(timeout_min=5)
        ex.submit(int, 1).result()
        s = []
        for _ in range(n):
            t0 = time.perf_counter(); ex.submit(int, 1).result(); s.append(time.perf_counter() - t0)
    return {"stage_noop_s": [round(x, 2) for x in t], "stage_noop_median_s": round(statistics.median(t), 2),
            "stage_noop_warm_s": [round(x, 2) for x in w], "stage_noop_warm_median_s": round(statistics.median(w), 2),
            "submitit_local_noop_s": [round(x, 2) for x in s], "submitit_local_noop_median_s": round(statistics.median(s), 2)}


def sweep(params_name, workers, executor="local"):
    "Wall seconds of one run of `params_name` (no report) with `workers` and `executor`."
    from sdlms.runner import run
    p = yaml.safe_load((ROOT / "params" / f"{params_name}.yaml").read_text())
    p["workers"], p["executor"] = workers, {"kind": executor}
    t0 = time.perf_counter()
    d = run(p, report=False, progress=False, log=lambda *a: None)
    return round(time.perf_counter() - t0, 1), d.name


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default="smoke", help="params file name under params/")
    ap.add_argument("--rounds", type=int, default=1, help="sweeps per setting (alternating order)")
    ap.add_argument("--pool-only", action="store_true", help="only the pool with 1 and 2 workers (skip submitit and the per-job overhead)")
    a = ap.parse_args()
    from sdlms.params import load_params
    from sdlms.suite import build_suite
    p = load_params(a.params)
    if p.micro_sizes(): build_suite(p.suite, p.micro_sizes(), p.seed, p.workers)      # cached for every sweep
    out = {"what": __doc__.split("\n")[0], "params": a.params, "versions": package_versions(), "cpus": os.cpu_count()}
    out["overhead"] = None if a.pool_only else job_overhead()
    settings = [("1 worker", 1, "local"), ("2 workers", 2, "local"), ("submitit local, 2 at a time", 2, "submitit_local")]
    if a.pool_only: settings = settings[:2]
    times = {s[0]: [] for s in settings}
    for r in range(a.rounds):
        for name, w, kind in (settings if r % 2 == 0 else settings[::-1]):
            secs, run_name = sweep(a.params, w, kind); times[name].append(secs)
            print(f"{a.params}, {name}: {secs} s ({run_name})")
    best = {k: min(v) for k, v in times.items()}
    out["sweep_s"] = times
    out["speedup_2_workers"] = round(best["1 worker"] / best["2 workers"], 2)
    if not a.pool_only: out["submitit_local_over_pool"] = round(best["submitit local, 2 at a time"] / best["2 workers"], 2)
    stem = "sweep" if a.params == "smoke" else f"sweep_{a.params}"          # the smoke figures stay beside a longer job's
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"{stem}.json").write_text(json.dumps(out, indent=1))
    o = out["overhead"]
    md = (f"# Sweep throughput ({a.params} params, {out['cpus']} CPUs)\n\n| setting | wall s (best of {a.rounds}) |\n|---|---|\n"
          + "\n".join(f"| {k} | {v} |" for k, v in best.items())
          + f"\n\n2 workers over 1: {out['speedup_2_workers']}x"
          + (f"; submitit local over the pool: {out['submitit_local_over_pool']}x the time.\n" if not a.pool_only else ".\n")
          + (f"Per dispatched job: a no-op stage notebook {o['stage_noop_median_s']} s (median of {len(o['stage_noop_s'])}; papermill, kernel start, "
             f"imports, publish); in a pool worker's warm kernel (started and imported while the previous stage ran) "
             f"{o['stage_noop_warm_median_s']} s; a no-op submitit local job {o['submitit_local_noop_median_s']} s.\n" if o else ""))
    (HERE / "results" / f"{stem}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
