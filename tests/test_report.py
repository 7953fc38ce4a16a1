"The report site as a reader gets it: its pages, what an incomplete run shows, and every page opened in a real browser."
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from sdlms.report import build_report, check_quarto_project

CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=8000"]


def browse(page: Path, profile: Path) -> tuple:
    "(DOM after the page's scripts ran, console messages) of a local page in headless Chromium."
    r = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    return r.stdout, re.findall(r":CONSOLE[^\]]*\] (.*)", r.stderr)


def test_site_pages(smoke_run):
    assert check_quarto_project(smoke_run) == []
    cfg = yaml.safe_load((smoke_run / "_quarto.yml").read_text())
    nav = [i["href"] for e in cfg["website"]["navbar"]["left"] for i in e.get("menu", [e])]
    assert nav == ["index.qmd", "models/micro-tiny.qmd", "methods.qmd", "notebooks.qmd"]
    for rel in cfg["project"]["render"]:                   # the fallback built every page Quarto would
        assert (smoke_run / "_site" / (rel.rsplit(".", 1)[0] + ".html")).exists(), rel
    q = (smoke_run / "index.qmd").read_text()
    heads = re.findall(r"^## (.*)", q, re.M)
    assert heads[:5] == ["Does the model use each MLP?", "Sparsity and participation ratio, with size and depth",
                         "Are MLP units task-specialized?", "Are co-activation communities modular beyond the nulls?",
                         "Do specialized units matter causally?"] and "What does dynamic-k execution buy?" in heads
    assert heads.index("What does dynamic-k execution buy?") < heads.index("Tables")     # findings and figures before tables
    tables = [l for l in q.splitlines() if l.startswith("|")]
    assert tables and not [l for l in tables if re.search(r"\d\.0*[1-9]\d{4,}", l)]     # rounded: no 16-digit numbers
    assert "random-init twins" in q and "95% bootstrap intervals over text blocks within" in q and "label-shuffle null" in q
    m = (smoke_run / "models" / "micro-tiny.qmd").read_text()
    assert "## Sites" in m and "## Specialization and modularity" in m and "### Layer 1" in m and "## Dynamic-k" in m
    assert "](../capture/micro-tiny/10_capture.ipynb)" in m
    assert "SI = 1 - H(p) / log K" in (smoke_run / "methods.qmd").read_text()
    nbs = (smoke_run / "notebooks.qmd").read_text()
    assert "[scaling/90_scaling.ipynb](scaling/90_scaling.ipynb)" in nbs and " s" in nbs


def test_incomplete_run_says_what_is_missing(smoke_run, tmp_path):
    d = tmp_path / smoke_run.name
    shutil.copytree(smoke_run, d, ignore=shutil.ignore_patterns("cache", "init_cache", "_site"))
    shutil.rmtree(d / "dynamic_k"); shutil.rmtree(d / "specialization" / "micro-tiny" / "L1")
    st = json.loads((d / "run.json").read_text()); st["status"] = "failed"; (d / "run.json").write_text(json.dumps(st))
    page = build_report(d, log=lambda *a: None).read_text()
    assert "This run is failed" in page and "<code>dynamic_k/micro-tiny</code>" in page and "<code>specialization/micro-tiny/L1</code>" in page
    assert "What does dynamic-k execution buy?" not in page and "Are MLP units task-specialized?" in page
    assert "at 1 of 1 used sites" in page                  # the findings use what exists
    assert check_quarto_project(d) == []


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH: install Debian's chromium to run the browser test")
def test_every_page_loads_and_draws_in_a_browser(smoke_run, tmp_path):
    site = smoke_run / "_site"
    pages = sorted(site.rglob("*.html"))
    assert len(pages) >= 10
    for page in pages:
        dom, console = browse(page, tmp_path / "profile")
        assert dom.strip().endswith("</html>"), page
        assert console == [], f"{page.relative_to(site)}: console messages {console}"
        ours, nb = dom.count('class="sdlms-plot'), dom.count('class="plotly-graph-div')
        drawn = dom.count('class="sdlms-plot js-plotly-plot"') + dom.count('class="plotly-graph-div js-plotly-plot"')
        assert drawn == ours + nb, f"{page.relative_to(site)}: {drawn} of {ours + nb} figures drew"
        if page.name == "index.html" and page.parent == site: assert ours >= 5
        if page.suffix == ".html" and "10_capture" in page.name: assert nb >= 1


def test_explore_notebook_on_a_finished_run(smoke_run, tmp_path):
    "nbs/explore.ipynb, as a JupyterLab user runs it, on the smoke run: every cell executes and reads the run's own numbers."
    import papermill as pm
    import pandas as pd
    import sdlms
    from sdlms.jobs import ensure_kernel, kernel_env
    from sdlms.core import repo_root
    kernel_env()
    out = tmp_path / "explore.ipynb"
    pm.execute_notebook(str(repo_root() / "nbs" / "explore.ipynb"), str(out), parameters={"run": str(smoke_run)},
                        kernel_name=ensure_kernel(), cwd=str(repo_root() / "nbs"), progress_bar=False)
    nb = json.loads(out.read_text())
    text = "".join("".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
                   for c in nb["cells"] for o in c.get("outputs", []))
    assert f"Run('{smoke_run.name}': complete" in text and "missing jobs: none" in text
    r = sdlms.load_run(smoke_run)
    si = r.si[(r.si.unit_kind == "neuron")].iloc[0]
    assert f"{si.si_excess:.3g}" in text                       # the table shows the run's own SI excess
    assert len(r.sparsity) == 2 and r.sparsity.equals(r.table("sparsity"))
    assert r.figure("scaling/si_vs_size").layout.title.text.startswith("Mean SI")
    assert isinstance(r.communities, pd.DataFrame) and {"model", "layer"} <= set(r.communities.columns)


def test_docs_site_builds_offline_from_the_notebooks(tmp_path):
    "`sdlms docs`: the home page lists every library notebook and links to its page; the guide and notebooks render offline."
    from sdlms.report import build_docs, library_pages
    index = build_docs(tmp_path / "docs", log=lambda *a: None)
    site, home = index.parent, index.read_text()
    lib = library_pages()
    assert len(lib) >= 30
    for nb, mod in zip(lib.notebook, lib.module):
        page = site / nb.replace(".ipynb", ".html")
        assert page.exists() and f'href="{page.name}"' in home and mod in home, nb
    assert "The sdlms guide" in (site / "guide.html").read_text() and (site / "explore.html").exists()
    for page in site.glob("*.html"):
        text = page.read_text()
        assert not re.search(r'<script[^>]+src="https?:', text), page.name    # every script local: draws from file://
    assert not (tmp_path / "docs.partial").exists()


def test_results_page_is_generated_from_the_run(smoke_run, tmp_path):
    "`sdlms results <run>`: the findings and tables in Markdown, every number read from the run's own files."
    import pandas as pd
    from sdlms.cli import main
    from sdlms.findings import round_table
    out = tmp_path / "results.md"
    assert main(["results", str(smoke_run), "-o", str(out)]) == 0
    page = out.read_text()
    assert page.startswith(f"# Results of run {smoke_run.name}") and "status **complete**" in page
    assert "## Are MLP units task-specialized?" in page and "## Sites: importance and sparsity" in page
    si = round_table(pd.read_csv(smoke_run / "si_modularity.csv"))
    n = si[si.unit_kind == "neuron"]
    assert len(n) and all(f" {v} " in page for v in n.si_excess), n.si_excess   # the run's own SI excess, as rounded
    assert "micro-tiny" in page and "sdlms report" in page


def test_explore_errors_name_the_near_model_and_the_analysed_layers(smoke_run):
    import sdlms
    from sdlms.core import SdlmsError
    r = sdlms.load_run(smoke_run)
    with pytest.raises(SdlmsError, match=r"has no model 'micro'; did you mean 'micro-tiny'\? Its models: micro-tiny"):
        r.units("micro", 1)
    with pytest.raises(SdlmsError, match=r"no specialization results for micro-tiny layer 3; its analysed layers of micro-tiny: 0, 1"):
        r.units("micro-tiny", 3)
    assert len(r.units("micro-tiny", 1))
