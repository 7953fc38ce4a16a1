"""Shared fixtures and the slow set.

- A fresh cache per test run, shared by the pytest-xdist workers of that run (built models are keyed by a content hash
  of their settings and built under a lock, so each micro model trains once per run), and an artifacts folder per worker.
- Tiny locally saved models (GPT-NeoX, GPT-2, Llama) with a BPE tokenizer trained on the generated corpus.
- The slow set (`SLOW` below: the default suite's retraining, the packaged real model end to end) runs when a file it
  depends on changed since it last passed (`tests/slow_stamps.json`, updated when it passes), or with `--slow`;
  otherwise it is skipped with that reason. Commit the updated stamps with the change they checked.
"""
import hashlib, json, os, tempfile
from pathlib import Path

import pytest

_UID = os.environ.get("PYTEST_XDIST_TESTRUNUID")            # the same in every worker of one `pytest -n` run
_TMP = Path(tempfile.mkdtemp(prefix="sdlms-tests-"))
_SHARED = Path(tempfile.gettempdir()) / f"sdlms-tests-{_UID}" if _UID else _TMP
os.environ["SDLMS_CACHE"] = str(_SHARED / "cache")
os.environ["SDLMS_ARTIFACTS"] = str(_TMP / "artifacts")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent
STAMPS = ROOT / "tests" / "slow_stamps.json"


# The slow set: test module -> the files (globs from the repo root) whose change makes it run again. Each is a whole
# pipeline on settings no other test uses; what it depends on is what it alone checks.
SLOW = {
    # the default micro-suite (1.6M tokens) retrained from scratch: every default site matters
    "tests/test_suite.py": ["params/default.yaml", "sdlms/suite.py", "sdlms/corpus.py", "sdlms/data.py", "sdlms/models.py",
                            "sdlms/ablation.py", "sdlms/interventions.py", "sdlms/config.py", "sdlms/params.py"],
    # each installed real model (converted from its part packages) against transformers' own GGUF loader
    "tests/test_real_models.py": ["sdlms/models.py"],
    # the packaged real model (SmolLM2-135M, GGUF, gated SiLU) through every stage
    "tests/test_smollm.py": ["sdlms/models.py", "sdlms/sites.py", "sdlms/capture.py", "sdlms/metrics.py", "sdlms/data.py",
                             "sdlms/sae.py", "sdlms/streams.py", "sdlms/specialization.py", "sdlms/activity.py",
                             "sdlms/summaries.py", "sdlms/report.py", "sdlms/config.py", "sdlms/params.py", "nbs/stages/*.ipynb"],
}


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="run the slow set even where nothing it depends on changed")


def deps_hash(module: str) -> str:
    "sha256 over the test module and every file its `SLOW` globs match (paths and bytes, in sorted order)."
    files = sorted({module, *(str(f.relative_to(ROOT)) for g in SLOW[module] for f in ROOT.glob(g) if f.is_file())})
    h = hashlib.sha256()
    for f in files: h.update(f.encode() + b"\0" + (ROOT / f).read_bytes() + b"\0")
    return h.hexdigest()


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: the slow set (conftest.SLOW): run when a file it depends on changed, or --slow")
    config._slow = {m: deps_hash(m) for m in SLOW}
    config._slow_results = {}
    _CONFIG["config"] = config


def pytest_collection_modifyitems(config, items):
    stamps = json.loads(STAMPS.read_text()) if STAMPS.exists() else {}
    for item in items:
        mod = item.nodeid.split("::")[0]
        if mod not in SLOW: continue
        item.add_marker(pytest.mark.slow)
        if not config.getoption("--slow") and stamps.get(mod, {}).get("deps") == config._slow[mod]:
            item.add_marker(pytest.mark.skip(reason=f"slow set: nothing it depends on changed since it passed on "
                                                    f"{stamps[mod]['passed']} (--slow runs it anyway)"))


def pytest_runtest_logreport(report):
    "Collect the outcome of every slow test (under xdist the controller receives the workers' reports)."
    mod, cfg = report.nodeid.split("::")[0], _CONFIG.get("config")
    if cfg is None or mod not in SLOW: return
    if report.failed or report.when == "call" and report.passed:        # (skips count neither way)
        cfg._slow_results.setdefault(mod, []).append(report.passed)


def pytest_sessionfinish(session, exitstatus):
    "Stamp each slow module with a passed test and none failed (once, on the controller, not in the xdist workers)."
    config = session.config
    if hasattr(config, "workerinput"): return
    done = [m for m, r in config._slow_results.items() if r and all(r)]
    if not done: return
    import datetime
    stamps = json.loads(STAMPS.read_text()) if STAMPS.exists() else {}
    for mod in sorted(done): stamps[mod] = {"deps": config._slow[mod], "passed": datetime.date.today().isoformat()}
    STAMPS.write_text(json.dumps(stamps, indent=1, sort_keys=True) + "\n")


_CONFIG = {}


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    from sdlms.corpus import corpus_texts, train_tokenizer
    d = tmp_path_factory.mktemp("tok")
    train_tokenizer(list(corpus_texts(0, 20_000).values()), vocab_size=512, out_dir=d)
    return d


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, tokenizer_dir):
    "name -> folder of a randomly initialised tiny model saved with save_pretrained (plus the tokenizer)."
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPTNeoXConfig, LlamaConfig
    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    cfgs = {
        "gpt_neox": GPTNeoXConfig(vocab_size=512, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                  intermediate_size=128, max_position_embeddings=256, tie_word_embeddings=False),
        "gpt2": GPT2Config(vocab_size=512, n_embd=32, n_layer=3, n_head=2, n_positions=256),
        "llama": LlamaConfig(vocab_size=512, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             num_key_value_heads=2, intermediate_size=96, max_position_embeddings=256),
    }
    out = {}
    root = tmp_path_factory.mktemp("models")
    for name, cfg in cfgs.items():
        torch.manual_seed(0)
        m = AutoModelForCausalLM.from_config(cfg)
        m.save_pretrained(root / name); tok.save_pretrained(root / name)
        out[name] = root / name
    return out


@pytest.fixture(scope="session")
def smoke_run():
    "One complete `sdlms run smoke` (with report), shared by the end-to-end tests."
    from sdlms.runner import run
    return run(str(ROOT / "params" / "smoke.yaml"), progress=False, log=lambda *a: None)
