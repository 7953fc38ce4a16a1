"""A stand-in for Slurm's commands over a spool folder, so the Slurm executor runs end to end on one machine.

`install(bin_dir, spool)` writes `sbatch`, `sacct`, `scancel`, `scontrol` and `srun` into `bin_dir`; `sbatch` queues a
script (a job array of `--array=0-N` tasks `<id>_<task>`, each with its own record) with its
`--dependency=afterok:<ids>[,aftercorr:<array id>]` (an id may be a job, an array task or a whole array);
`run_queue(spool)` then runs the queue as Slurm would: a job starts once every job it depends on has COMPLETED (the
newest ready job first, so a missing dependency shows up as a job that runs before its inputs exist), a job whose
dependency failed is CANCELLED (`--kill-on-invalid-dep`), and a job that asked for `scontrol requeue` while running
goes back to PENDING and runs again under the same id."""
import fcntl, json, os, re, shlex, signal, subprocess, sys, time
from contextlib import contextmanager
from pathlib import Path

DONE_BAD = ("FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL")


@contextmanager
def _db(spool):
    spool = Path(spool); spool.mkdir(parents=True, exist_ok=True)
    with open(spool / "lock", "w") as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)
        f = spool / "jobs.json"
        jobs = json.loads(f.read_text()) if f.exists() else {}
        yield jobs
        f.write_text(json.dumps(jobs))


def install(bin_dir, spool):
    "Write the fake commands into `bin_dir` (put it first on PATH); their queue lives in `spool`."
    bin_dir = Path(bin_dir); bin_dir.mkdir(parents=True, exist_ok=True)
    for cmd in ("sbatch", "sacct", "scancel", "scontrol", "srun"):
        p = bin_dir / cmd
        p.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
                     f"from fake_slurm import main\nsys.exit(main({cmd!r}, {str(spool)!r}, sys.argv[1:]))\n")
        p.chmod(0o755)


def main(cmd, spool, args):
    if cmd == "sbatch":
        text = Path(args[-1]).read_text()
        opts = dict(re.findall(r"^#SBATCH --([\w-]+)=?(.*)$", text, re.M))
        after, corr = [], None
        for part in filter(None, opts.get("dependency", "").split(",")):
            kind, _, ids = part.partition(":")
            if kind == "afterok": after += ids.split(":")
            elif kind == "aftercorr": corr = ids
            else: raise SystemExit(f"fake slurm: unknown dependency {part}")
        arr = re.fullmatch(r"0-(\d+)(%\d+)?", opts.get("array", ""))
        with _db(spool) as jobs:
            seq = 1 + max([r["seq"] for r in jobs.values()], default=-1)
            jid = str(1000 + seq)
            tasks = [(f"{jid}_{t}", t) for t in range(int(arr.group(1)) + 1)] if arr else [(jid, None)]
            for tid, t in tasks:
                jobs[tid] = {"script": args[-1], "deps": after + ([f"{corr}_{t}"] if corr else []), "state": "PENDING", "seq": seq,
                             "array": jid if arr else None, "task": t, "name": opts.get("job-name", ""), "output": opts.get("output", ""),
                             "kill_on_invalid_dep": opts.get("kill-on-invalid-dep") == "yes", "runs": 0}
        print(f"Submitted batch job {jid}"); return 0
    if cmd == "sacct":
        fields, ids, header, i = ["JobID", "State"], [], True, 0
        while i < len(args):
            a = args[i]
            if a in ("-o", "--format"): fields = args[i + 1].split(","); i += 1
            elif a in ("-j", "--jobs"): ids += args[i + 1].split(","); i += 1
            elif a in ("-n", "--noheader"): header = False
            i += 1
        with _db(spool) as jobs: rows = [(k, r) for j in ids for k, r in jobs.items() if k == j or r["array"] == j]
        if header: print("|".join(fields))
        for j, r in rows:
            print("|".join({"JobID": j, "State": r["state"], "NodeList": "fakenode"}.get(f, "") for f in fields))
        return 0
    if cmd == "scancel":
        with _db(spool) as jobs:
            for j in [k for a in args for k, r in jobs.items() if k == a or r["array"] == a]:
                if jobs[j]["state"] in ("PENDING", "RUNNING"):
                    if jobs[j].get("pid"):
                        try: os.killpg(jobs[j]["pid"], signal.SIGTERM)
                        except ProcessLookupError: pass
                    jobs[j]["state"] = "CANCELLED"
        return 0
    if cmd == "scontrol":
        if args[:1] == ["requeue"]:
            with _db(spool) as jobs:
                for j in args[1].split(","): jobs[j]["state"] = "REQUEUED"
        return 0
    if cmd == "srun":     # `srun [--opt value | --flag]... command...`: run the command with its output where srun sends it
        i, out, err = 0, None, None
        while i < len(args) and args[i].startswith("-"):
            if args[i] in ("--output", "--error"):
                v = _expand(args[i + 1], os.environ.get("SLURM_JOB_ID", "0"), os.environ.get("SLURM_ARRAY_JOB_ID"),
                            os.environ.get("SLURM_ARRAY_TASK_ID"))
                out, err = (v, err) if args[i] == "--output" else (out, v); i += 2
            else: i += 1
        with open(out or os.devnull, "a") as o, open(err or os.devnull, "a") as e:
            p = subprocess.Popen(args[i:], stdout=o, stderr=e)
            for sig in (signal.SIGUSR2, signal.SIGTERM):               # as srun: signals for the step go to its task
                signal.signal(sig, lambda s, f: p.send_signal(s))
            return p.wait()
    raise SystemExit(f"fake slurm: unknown command {cmd}")


def _expand(path, jid, array=None, task=None):
    "An output path's Slurm patterns: %j the job id, %A and %a the array's id and task, %t the task rank (0)."
    return path.replace("%A", array or jid).replace("%a", task or "0").replace("%j", jid).replace("%t", "0")


def _state(jobs, d):
    "The state of a dependency: a job or array task, or a whole array (COMPLETED once all its tasks are, bad if one is)."
    if d in jobs: return jobs[d]["state"]
    tasks = [r["state"] for r in jobs.values() if r["array"] == d]
    if not tasks: return "FAILED"                              # an id Slurm does not know: an invalid dependency
    bad = [s for s in tasks if s in DONE_BAD]
    return bad[0] if bad else "COMPLETED" if all(s == "COMPLETED" for s in tasks) else "PENDING"


def run_queue(spool, on_start=None, timeout: float = 1200):
    """Run every runnable job of the queue, one at a time, until none is left; `on_start(job_id, popen, record)` is called
    as each starts (a test may preempt it). Returns `{job id: record}`."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        with _db(spool) as jobs:
            for j, r in jobs.items():
                if r["state"] == "PENDING" and r["kill_on_invalid_dep"] and any(_state(jobs, d) in DONE_BAD for d in r["deps"]):
                    r["state"] = "CANCELLED"                # without the flag Slurm leaves it pending for ever (DependencyNeverSatisfied)
            ready = [j for j, r in jobs.items() if r["state"] == "PENDING" and all(_state(jobs, d) == "COMPLETED" for d in r["deps"])]
            if not ready: return jobs
            j = max(ready, key=lambda k: (jobs[k]["seq"], jobs[k]["task"] or 0)); r = jobs[j]
            r["state"] = "RUNNING"; r["runs"] += 1
        arr = {"SLURM_ARRAY_JOB_ID": r["array"], "SLURM_ARRAY_TASK_ID": str(r["task"])} if r["array"] else {}
        jid = str(100000 + 100 * r["seq"] + (r["task"] or 0)) if r["array"] else j       # each array task has a job id of its own
        env = {**os.environ, **arr, "SLURM_JOB_ID": jid, "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "fakenode", "SLURM_NODEID": "0",
               "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "1", "SLURM_JOB_NAME": r["name"]}
        out = _expand(r["output"], jid, r["array"], None if r["task"] is None else str(r["task"])) or os.devnull
        with open(out, "a") as o:
            p = subprocess.Popen(["bash", r["script"]], stdout=o, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            with _db(spool) as jobs: jobs[j]["pid"] = p.pid
            if on_start: on_start(j, p, r)
            rc = p.wait()
        with _db(spool) as jobs:
            s = jobs[j]["state"]
            jobs[j]["state"] = "PENDING" if s == "REQUEUED" else s if s == "CANCELLED" else "COMPLETED" if rc == 0 else "FAILED"
            jobs[j]["rc"] = rc; jobs[j].pop("pid", None)
    raise TimeoutError("fake slurm: the queue did not drain")
