"""A pool worker's warm kernel (`sdlms.jobs.WarmKernel`): a stage runs in it with the same result as in a fresh kernel,
and a kernel that dies mid-stage is an error, not a worker waiting forever."""
import json, threading, time
from pathlib import Path

import nbformat
import pytest

from sdlms.core import SdlmsError
from sdlms.jobs import WarmKernel, execute_stage, stages_dir
from sdlms.rundir import new_run_dir

ROOT = Path(__file__).resolve().parent.parent


def notebook(body):
    return nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell('run_dir = ""\nout_dir = ""', metadata={"tags": ["parameters"]}), nbformat.v4.new_code_cell(body)],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}, "language_info": {"name": "python"}})


def test_warm_kernel_runs_a_stage_and_a_dying_kernel_fails_the_stage():
    ok, die = stages_dir() / "_test_warm_ok.ipynb", stages_dir() / "_test_warm_die.ipynb"
    nbformat.write(notebook('import os, json, sys\nopen(os.path.join(out_dir, "where.json"), "w").write(json.dumps({"cwd": os.getcwd(), "torch": "torch" in sys.modules}))'), ok)
    nbformat.write(notebook('import os, signal\nos.kill(os.getpid(), signal.SIGKILL)'), die)
    try:
        run_dir = new_run_dir("warm-test")
        WarmKernel.prepare()
        execute_stage(ok.name, str(run_dir), "a", warm=True)        # the first is cold or warm, whichever is ready
        time.sleep(1)
        execute_stage(ok.name, str(run_dir), "b", warm=True)
        w = json.loads((run_dir / "b" / "where.json").read_text())
        assert w["cwd"] == str(run_dir / "b.partial") and w["torch"] is True    # its own folder; torch imported ahead
        WarmKernel._next.result(timeout=120)                          # the next warm kernel is ready
        out = {}
        def go():
            try: execute_stage(die.name, str(run_dir), "c", warm=True)
            except BaseException as e: out["e"] = e
        th = threading.Thread(target=go, daemon=True); th.start(); th.join(180)
        assert not th.is_alive(), "a stage whose kernel died hung"
        assert "e" in out and "dead" in (type(out["e"]).__name__ + str(out["e"])).lower(), out
        assert not (run_dir / "c").exists() and (run_dir / "c.partial").exists()
    finally:
        WarmKernel.close(); ok.unlink(); die.unlink()
