"The default micro-suite is worth measuring: every analysed MLP site is one the model uses."
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def default_suite():
    "The default job's suite, trained from scratch in this session's cache (a few minutes on 2 cores)."
    from sdlms.params import load_params
    from sdlms.suite import build_suite
    p = load_params(ROOT / "params" / "default.yaml")
    return p, build_suite(p.suite, p.micro_sizes(), seed=p.seed, workers=2, progress=False)


def test_every_default_site_matters(default_suite):
    from sdlms.ablation import mlp_importance
    from sdlms.data import load_manifest, probe_blocks
    from sdlms.models import load_model, n_layers_of, select_layers
    p, models = default_suite
    micro = [m for m in p.models if m.startswith("micro-")]
    assert micro and sorted(models) == sorted(micro)
    costs = {}
    for name in micro:
        q = p.for_model(name)
        lm, tok = load_model(models[name]["path"])
        init, _ = load_model(models[name]["init_path"])
        layers = select_layers(q.layers, n_layers_of(lm.config))
        blocks = probe_blocks(tok, q.tasks, load_manifest(q.tasks_manifest), q.tokens_per_task, q.block_size, q.seed)
        trained, at_init = mlp_importance(lm, blocks, layers), mlp_importance(init, blocks, layers)
        for l in layers:
            z, z0 = trained[l]["mlp_zero_cost"], at_init[l]["mlp_zero_cost"]
            costs[name, l] = (round(z, 3), round(z0, 3))
            assert z >= 0.05 and z >= z0 + 0.04, (name, l, costs)      # zeroing the MLP costs >= 0.05 nats, clearly above init
            assert trained[l]["mlp_mean_cost"] >= 0.04, (name, l, trained[l])
    print(costs)
