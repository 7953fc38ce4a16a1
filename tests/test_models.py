"Model loading and MLP-site discovery on locally saved tiny GPT-NeoX, GPT-2 and Llama models."
import json

import pytest
import torch

from sdlms.core import SdlmsError
from sdlms.models import load_model, mlp_sites, random_init_twin, select_layers


@pytest.mark.parametrize("arch,n_layers,d_mlp,site", [("gpt_neox", 4, 128, "gpt_neox.layers.3.mlp.dense_4h_to_h"),
                                                    ("gpt2", 3, 128, "transformer.h.2.mlp.c_proj"),
                                                    ("llama", 2, 96, "model.layers.1.mlp.down_proj")])
def test_site_is_the_down_projection_input(tiny_models, arch, n_layers, d_mlp, site):
    model, tok = load_model(str(tiny_models[arch]))
    sites = mlp_sites(model)
    assert len(sites) == n_layers and sites[-1].name == site and sites[-1].d_mlp == d_mlp
    got = []
    h = sites[-1].module.register_forward_pre_hook(lambda m, inp: got.append(inp[0]))
    x = torch.tensor([tok("When Mary and John went to the store")["input_ids"]])
    with torch.no_grad(): model(input_ids=x)
    h.remove()
    assert got[0].shape == (1, x.shape[1], d_mlp)
    # the hooked tensor is the MLP post-activation: recompute it from the MLP's own input
    blk = model.get_submodule(site.rsplit(".", 1)[0])
    inp, post = [], []
    h1 = blk.register_forward_pre_hook(lambda m, i: inp.append(i[0]))
    h2 = sites[-1].module.register_forward_pre_hook(lambda m, i: post.append(i[0]))
    with torch.no_grad():
        model(input_ids=x)
        h1.remove(); h2.remove()
        xin = inp[0]
        ref = {"gpt_neox": lambda: blk.act(blk.dense_h_to_4h(xin)),
               "gpt2": lambda: blk.act(blk.c_fc(xin)),
               "llama": lambda: blk.act_fn(blk.gate_proj(xin)) * blk.up_proj(xin)}[arch]()
    assert torch.allclose(post[0], ref, atol=1e-6)


def test_relative_depth_makes_models_comparable():
    assert select_layers([0.0, 0.5, 1.0], 4) == [0, 2, 3]      # 1.5 rounds half up
    assert select_layers([0.0, 0.5, 1.0], 32) == [0, 16, 31]
    with pytest.raises(SdlmsError, match="out of range for a model with 4 layers"):
        select_layers([4], 4)


def test_unknown_architecture_names_the_supported_ones(tmp_path, tiny_models):
    cfg = json.loads((tiny_models["gpt2"] / "config.json").read_text())
    d = tmp_path / "weird"; d.mkdir()
    cfg["model_type"] = "gptj"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SdlmsError, match=r"unsupported architecture 'gptj'.*gpt2.*gpt_neox.*llama"):
        load_model(str(d))


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(SdlmsError, match="neither a local folder with config.json nor a hub id"):
        load_model(str(tmp_path / "nope"))


def test_random_init_twin_is_seeded_and_differs_from_the_model(tiny_models):
    from sdlms.core import hash_state_dict
    a, b = random_init_twin(str(tiny_models["gpt2"]), seed=1), random_init_twin(str(tiny_models["gpt2"]), seed=1)
    assert hash_state_dict(a) == hash_state_dict(b)
    assert hash_state_dict(a) != hash_state_dict(random_init_twin(str(tiny_models["gpt2"]), seed=2))
