"""Stopping a run: nothing outlives `sdlms run` (its pool workers and their notebook kernels), a stopped stage is only a
`.partial` folder, the run folder is locked while a process writes it, and `--resume` completes it to the same results."""
import os, signal, subprocess, sys, time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SDLMS = str(Path(sys.executable).parent / "sdlms")


def start_smoke(tmp_path):
    """`sdlms run` of the smoke params (without the dynamic-k stage, which the comparison below does not read) in a
    subprocess with its own artifacts folder; returns it once a stage kernel is running."""
    env = {**os.environ, "SDLMS_ARTIFACTS": str(tmp_path)}
    p = yaml.safe_load((ROOT / "params" / "smoke.yaml").read_text()); p["dynamic_k"] = {"enabled": False}
    (tmp_path / "smoke.yaml").write_text(yaml.safe_dump(p))
    proc = subprocess.Popen([SDLMS, "run", str(tmp_path / "smoke.yaml"), "--no-report", "--no-progress"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    parent, deadline = psutil.Process(proc.pid), time.time() + 300
    while time.time() < deadline:
        kids = parent.children(recursive=True)
        if any("ipykernel_launcher" in " ".join(k.cmdline()) for k in kids if k.is_running()): return proc, kids
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.3)
    proc.kill(); raise AssertionError("no stage kernel started within 300 s")


def descendants_gone(kids, timeout=30):
    gone, alive = psutil.wait_procs(kids, timeout=timeout)
    return [" ".join(p.cmdline()[:3]) for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_kill9_stops_workers_and_kernels_and_resume_completes(tmp_path, smoke_run):
    from sdlms.core import SdlmsError
    from sdlms.runner import run
    from sdlms.rundir import RunLock, run_status
    proc, kids = start_smoke(tmp_path)
    assert any("ipykernel_launcher" in " ".join(k.cmdline()) for k in kids)
    proc.kill(); proc.wait()                                     # kill -9 of the run's process alone
    assert descendants_gone(kids) == []                          # its workers and their kernels went with it
    (run_dir,) = [d for d in tmp_path.iterdir() if d.is_dir()]
    assert run_status(run_dir)["status"] == "running"
    for d in run_dir.glob("*/*"):                                # every published stage folder is complete
        if d.is_dir() and not d.name.endswith(".partial") and d.parent.name != "specialization":
            assert (d / "meta.json").exists(), d
    with RunLock(run_dir):                                       # the dead process's lock is gone; a holder blocks a resume
        with pytest.raises(SdlmsError, match=r"is being written by pid \d+ on .* since"):
            run(resume=run_dir, progress=False, report=False, log=lambda *a: None)
    os.environ["SDLMS_ARTIFACTS"], old = str(tmp_path), os.environ["SDLMS_ARTIFACTS"]
    try: out = run(resume=run_dir.name, progress=False, report=False, log=lambda *a: None)
    finally: os.environ["SDLMS_ARTIFACTS"] = old
    assert run_status(out)["status"] == "complete" and not list(out.rglob("*.partial"))
    for f in ("sparsity.csv", "si_modularity.csv", "ablation.csv"):       # the same results as an uninterrupted run
        a, b = pd.read_csv(out / f), pd.read_csv(smoke_run / f)
        keep = [c for c in a.columns if "seconds" not in c]
        pd.testing.assert_frame_equal(a[keep], b[keep])


def test_sigterm_stops_the_run_cleanly(tmp_path):
    proc, kids = start_smoke(tmp_path)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "interrupted: the workers and their notebook kernels are stopped" in out, out
    assert "--resume" in out and "Traceback" not in out, out
    assert descendants_gone(kids) == []
