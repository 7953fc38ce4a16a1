"""Each real model whose part packages are installed (the README lists the pip commands): its converted float32 folder
gives the logits of transformers' own GGUF loader on a prompt, and it predicts code. Skipped, with the reason, where the
packages are absent (as in CI); in the slow set (tests/conftest.py), as each conversion takes minutes."""
import os

import pytest

import sdlms.models as M
from sdlms.core import SdlmsError


REAL = [n for n in M.PACKAGED_MODELS if n != "smollm2-135m"]


@pytest.mark.parametrize("name", REAL)
def test_installed_real_model_matches_transformers_gguf_loader(name, tmp_path):
    "Each real model whose part packages are installed: its converted folder gives transformers' GGUF logits on a prompt."
    import torch
    from transformers import AutoModelForCausalLM
    try: M._part_files(name)
    except SdlmsError as e: pytest.skip(f"{name}: its packages are not installed ({M.pip_command(name)})")
    if M.PACKAGED_MODELS[name]["float32_gb"] > 4 and not os.environ.get("SDLMS_TEST_LARGE"):
        pytest.skip(f"{name}: about {M.PACKAGED_MODELS[name]['float32_gb']} GB in float32, too large for the test run "
                    "(SDLMS_TEST_LARGE=1 includes it)")
    torch.set_num_threads(2)
    m, tok = M.load_model(name)
    g = M._gguf_file(name, tmp_path, log=lambda *a: None)
    ref = AutoModelForCausalLM.from_pretrained(str(g.parent), gguf_file=g.name, dtype=torch.float32).eval()
    ids = tok("def add(a, b):\n    return a + b\n", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(m(ids).logits, ref(ids).logits)
        assert float(m(ids, labels=ids).loss) < 4                             # a real model: it predicts code
