"""Shared fixtures: a private cache and artifacts folder per session, and tiny locally saved models
(GPT-NeoX, GPT-2, Llama) with a BPE tokenizer trained on the generated corpus."""
import os, tempfile
from pathlib import Path

import pytest

_TMP = Path(tempfile.mkdtemp(prefix="sdlms-tests-"))
os.environ["SDLMS_CACHE"] = str(_TMP / "cache")
os.environ["SDLMS_ARTIFACTS"] = str(_TMP / "artifacts")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent


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
