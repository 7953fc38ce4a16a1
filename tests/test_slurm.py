"""The Slurm executor end to end against a stand-in for Slurm's commands (`fake_slurm`): `sdlms run` submits every job
at once, as job arrays where jobs wait for the same inputs, with its dependencies and returns; the queue runs them as
Slurm would (each after the jobs it reads, newest ready first); the last job completes the run; a preempted SAE array
task requeues itself and resumes from its checkpoint, and each specialization task waits for its own site's SAE task."""
import json, os, signal, time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml

from sdlms.core import SdlmsError, read_jsonl
from sdlms.rundir import job_table, run_status
from sdlms.runner import run

import fake_slurm

ROOT = Path(__file__).resolve().parent.parent
SLURM = {"kind": "slurm", "partition": "debug", "resources": {"default": {"cpus": 1, "mem_gb": 4, "time_min": 30}}}
quiet = dict(progress=False, log=lambda *a: None)


@pytest.fixture
def slurm(tmp_path, monkeypatch):
    fake_slurm.install(tmp_path / "bin", tmp_path / "spool")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "spool"


def test_submit_and_return_then_the_queue_completes_the_run(smoke_run, slurm):
    p = yaml.safe_load((ROOT / "params" / "smoke.yaml").read_text())
    p.update(executor=SLURM, dynamic_k={"enabled": False})
    t0 = time.perf_counter()
    d = run(p, **quiet)                                               # submits and returns
    assert time.perf_counter() - t0 < 60 and run_status(d)["status"] == "submitted"
    sub = {m["stage"]: m["job_id"] for m in read_jsonl(d / "meta.jsonl") if m.get("event") == "submitted"}
    assert set(sub) == {"suite", "capture/micro-tiny", "specialization/micro-tiny/L0", "specialization/micro-tiny/L1", "scaling", "_finalize"}
    arr = sub["specialization/micro-tiny/L0"].split("_")[0]            # the two specialization jobs: one job array
    assert (sub["specialization/micro-tiny/L0"], sub["specialization/micro-tiny/L1"]) == (f"{arr}_0", f"{arr}_1")
    assert all("_" not in i for r, i in sub.items() if not r.startswith("specialization/"))
    deps = {rel: fake_slurm_deps(slurm, i) for rel, i in sub.items()}
    assert deps["capture/micro-tiny"] == [sub["suite"]] and deps["specialization/micro-tiny/L1"] == [sub["capture/micro-tiny"]]
    assert set(deps["scaling"]) == {sub["capture/micro-tiny"], arr}     # all of an array: its own id
    assert set(deps["_finalize"]) == {sub["suite"], sub["capture/micro-tiny"], arr, sub["scaling"]}
    t = job_table(d)
    assert (t.state == "queued").all() and t.job_id.notna().all()
    with pytest.raises(SdlmsError, match="still has Slurm jobs queued or running"):
        run(resume=d.name, **quiet)                                  # it would submit them twice
    jobs = fake_slurm.run_queue(slurm)
    assert all(r["state"] == "COMPLETED" and r["runs"] == 1 for r in jobs.values())
    st = run_status(d)
    assert st["status"] == "complete" and st["seconds"] > 0 and (d / "index.qmd").exists()
    for f in ["sparsity.csv", "si_modularity.csv", "ablation.csv", "specialization/micro-tiny/L1/communities.csv"]:
        assert (d / f).read_bytes() == (smoke_run / f).read_bytes(), f
    t = job_table(d)
    assert (t.state == "done").all() and set(t.job_id) == {sub[r] for r in t.job}
    ev = [m["stage"] for m in read_jsonl(d / "meta.jsonl") if m.get("event") == "stage"]   # each job recorded itself
    assert sorted(ev) == sorted(r for r in sub if r != "_finalize")


def fake_slurm_deps(spool, jid):
    return json.loads((Path(spool) / "jobs.json").read_text())[jid]["deps"]


def test_a_failed_job_cancels_what_waits_for_it_and_wait_reports_it(smoke_run, slurm):
    "`--wait` follows the jobs; a failed job cancels the jobs waiting for it, and the waiting run names it."
    import threading
    p = yaml.safe_load((ROOT / "params" / "smoke.yaml").read_text())
    p.update(name="smoke-wait", executor={**SLURM, "arrays": False}, dynamic_k={"enabled": False})   # one sbatch job per job
    out = {}
    def cluster():                                                   # the queue starts once everything is submitted
        while '"sdlms:_finalize"' not in ((slurm / "jobs.json").read_text() if (slurm / "jobs.json").exists() else ""): time.sleep(0.1)
        d = max(Path(os.environ["SDLMS_ARTIFACTS"]).glob("*-smoke-wait"))
        sub = {m["stage"]: m["job_id"] for m in read_jsonl(d / "meta.jsonl") if m.get("event") == "submitted"}
        def break_capture(jid, proc, rec):                           # the suite's models.json vanishes: capture fails
            if jid == sub["capture/micro-tiny"]: (d / "suite" / "models.json").unlink()
        out.update(d=d, sub=sub, jobs=fake_slurm.run_queue(slurm, on_start=break_capture))
    th = threading.Thread(target=cluster, daemon=True); th.start()
    with pytest.raises(SdlmsError, match=r"Slurm jobs did not complete: .*capture/micro-tiny \(FAILED\).*sdlms run --resume"):
        run(p, wait=True, poll_s=0.5, **quiet)
    th.join(60)
    d, sub, jobs = out["d"], out["sub"], out["jobs"]
    assert jobs[sub["capture/micro-tiny"]]["state"] == "FAILED"
    assert all(jobs[sub[r]]["state"] == "CANCELLED" for r in ("specialization/micro-tiny/L0", "scaling", "_finalize"))
    t = job_table(d).set_index("job")
    assert t.state["capture/micro-tiny"] == "failed" and t.state["scaling"] == "cancelled" and t.state["suite"] == "done"
    assert run_status(d)["status"] == "submitted"


def test_preempted_sae_job_requeues_and_resumes_from_its_checkpoint(slurm):
    """Both sites' SAE jobs form one job array, and their specialization jobs another whose task i waits for SAE task i
    (`aftercorr`); SAE task 1 is preempted, requeues and resumes, and ends where an uninterrupted run's SAE ends."""
    import threading
    from sae_lens import SAE
    p = yaml.safe_load((ROOT / "params" / "smoke_sae.yaml").read_text())
    p.update(layers=[1], specialization={"enabled": False}, dynamic_k={"enabled": False})
    p["sae"].update(k=[4], train_tokens=256 * 400, checkpoint_every=100)
    ref = run(p, report=False, **quiet)                              # site L1's SAE, uninterrupted, in the local pool
    p.update(executor=SLURM, layers=[0, 1], specialization={"enabled": True, "n_null": 2, "n_boot": 10, "n_null_q": 1, "init_twin": False,
                                                            "ablate": False})    # cheap: here it only has to wait for its SAE task
    d = run(p, report=False, **quiet)
    sub = {m["stage"]: m["job_id"] for m in read_jsonl(d / "meta.jsonl") if m.get("event") == "submitted"}
    sa, sp = (sub[f"{s}/micro-tiny/L0"].split("_")[0] for s in ("sae", "specialization"))
    assert [sub[f"{s}/micro-tiny/L{l}"] for s in ("sae", "specialization") for l in (0, 1)] == [f"{sa}_0", f"{sa}_1", f"{sp}_0", f"{sp}_1"]
    assert fake_slurm_deps(slurm, f"{sa}_1") == [sub["capture/micro-tiny"]]
    assert fake_slurm_deps(slurm, f"{sp}_1") == [sub["capture/micro-tiny"], f"{sa}_1"]   # its own site's SAE task, not the whole array
    sent = []
    def preempt(jid, proc, rec):                                     # Slurm's warning before preemption: USR2 to the job step
        if jid != sub["sae/micro-tiny/L1"] or sent: return
        def watch():
            while proc.poll() is None:
                if list((d / "sae/micro-tiny/L1.partial").glob("*/checkpoints/step_*[0-9]")):   # a complete checkpoint
                    for c in psutil.Process(proc.pid).children(recursive=True):     # the job step: srun, which passes it on
                        try:
                            if Path(c.cmdline()[1]).name == "srun": c.send_signal(signal.SIGUSR2); sent.append(c.pid)
                        except (psutil.Error, IndexError): pass                    # a short-lived child gone meanwhile
                    if sent: return
                time.sleep(0.02)
        threading.Thread(target=watch, daemon=True).start()
    jobs = fake_slurm.run_queue(slurm, on_start=preempt)
    assert sent, "the SAE job finished before it could be preempted"
    assert jobs[sub["sae/micro-tiny/L1"]]["runs"] == 2 and all(r["state"] == "COMPLETED" for r in jobs.values())
    assert run_status(d)["status"] == "complete"
    rec = [m for m in read_jsonl(d / "meta.jsonl") if m.get("event") == "stage" and m["stage"] == "sae/micro-tiny/L1"]
    assert len(rec) == 1 and rec[0]["resumed"] is True                # the second attempt kept the first one's checkpoints
    step = [v for k, v in rec[0]["timings"].items() if k.endswith("_resumed_from_step")]
    assert len(step) == 1 and step[0] >= 100 and step[0] % 100 == 0   # and trained on from the newest of them
    name = next(x.name for x in (ref / "sae/micro-tiny/L1").iterdir() if (x / "sae").is_dir())
    a, b = (SAE.load_from_disk(str(r / "sae/micro-tiny/L1" / name / "sae")) for r in (ref, d))
    assert (a.W_enc - b.W_enc).abs().max() < 1e-5 and (a.b_dec - b.b_dec).abs().max() < 1e-5
    ca, cb = (pd.read_csv(r / "sae/micro-tiny/L1" / name / "curves.csv") for r in (ref, d))
    assert len(ca) == len(cb) and (ca.loss - cb.loss).abs().max() < 1e-4
