"The library's shape: every module imports only modules that come before it in the pipeline (no import cycles)."
import ast
from pathlib import Path

import sdlms

PKG = Path(sdlms.__file__).parent


def _module_imports():
    deps = {}
    for f in sorted(PKG.glob("*.py")):
        if f.stem.startswith("_"): continue
        tree = ast.parse(f.read_text())
        deps[f.stem] = {n.module.split(".")[1] for n in ast.walk(tree)
                        if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("sdlms.")} - {f.stem}
        # (a module may import itself by name: `suite` does, so that worker processes pickle its functions)
    return deps


def test_no_import_cycles():
    deps = _module_imports()
    state = {}

    def visit(m, path):
        if state.get(m) == "done": return
        assert state.get(m) != "open", f"import cycle: {' -> '.join(path + [m])}"
        state[m] = "open"
        for d in sorted(deps.get(m, ())): visit(d, path + [m])
        state[m] = "done"

    for m in deps: visit(m, [])


def test_modules_import_only_earlier_steps():
    "Each module imports only modules whose notebook comes earlier in the pipeline (lazy imports inside functions too)."
    nbs = sorted((PKG.parent / "nbs").glob("[0-9][0-9]_*.ipynb"))
    order = {p.stem.split("_", 1)[1]: int(p.stem[:2]) for p in nbs}
    deps = _module_imports()
    assert set(deps) == set(order), f"modules without a notebook or notebooks without a module: {set(deps) ^ set(order)}"
    late = {m: sorted(d for d in ds if order[d] > order[m]) for m, ds in deps.items()}
    assert not any(late.values()), f"imports of later pipeline steps: { {m: d for m, d in late.items() if d} }"


def test_notebook_cells_have_ids():
    "nbdev writes each cell's id into the exported module: a cell without one gets a random id on every export."
    import json
    nbs = sorted((PKG.parent / "nbs").rglob("*.ipynb"))
    assert nbs
    for p in nbs:
        cells = json.loads(p.read_text())["cells"]
        missing = [i for i, c in enumerate(cells) if not c.get("id")]
        assert not missing, f"{p.name}: cells {missing} have no id; add ids (nbformat.validator.normalize) so exports are stable"
        ids = [c["id"] for c in cells]
        assert len(set(ids)) == len(ids), f"{p.name}: duplicate cell ids"


def test_no_tests_run_at_import():
    "Tests live in the notebooks' non-exported cells: an exported module holds no top-level assert (it would run at import)."
    for f in sorted(PKG.glob("*.py")):
        tree = ast.parse(f.read_text())
        bad = [n.lineno for n in tree.body if isinstance(n, ast.Assert)]
        assert not bad, f"sdlms/{f.name}: top-level assert at lines {bad}; move it to a test cell of its notebook"


def test_lazy_exploration_api_is_discoverable():
    "`sdlms.<TAB>` (dir) and `from sdlms import *` offer the exploration API that is imported on first use."
    assert {"load_run", "runs", "Run"} <= set(dir(sdlms)) and {"load_run", "runs", "Run"} <= set(sdlms.__all__)
    ns = {}
    exec("from sdlms import *", ns)
    assert callable(ns["load_run"]) and ns["Run"].__name__ == "Run"
