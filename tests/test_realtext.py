"Real offline text: the built-in `pycode` (Python standard library) and `chitchat` sources as probe and training tasks."
import json, sys

import numpy as np
import pytest

from sdlms.core import SdlmsError
from sdlms.data import load_manifest, local_source_file, probe_blocks, task_items, train_blocks


@pytest.mark.parametrize("task", ["pycode", "chitchat"])
def test_builtin_source_splits_are_disjoint_and_deterministic(task):
    spec = load_manifest()[task]
    probe, train = list(task_items(spec, 0, "probe")), list(task_items(spec, 0, "train"))
    assert probe and train and not set(probe) & set(train)
    assert len(probe) < len(train) / 5
    assert probe == list(task_items(spec, 0, "probe"))
    if task == "pycode": assert any("def " in s for s in probe) and any("class " in s for s in train)
    else: assert all(s.startswith("A: ") and "\nB: " in s for s in probe + train)


def test_materialised_once_with_version_in_name(monkeypatch):
    f = local_source_file("chitchat")           # the session's private cache (conftest): made here
    meta = json.loads(f.with_suffix(".json").read_text())
    assert f.name == f"chitchat-{meta['version']}-f1.jsonl" and meta["rows"] == len(f.read_text().splitlines())
    mtime = f.stat().st_mtime_ns
    assert local_source_file("chitchat") == f and f.stat().st_mtime_ns == mtime       # reused, not rewritten
    assert not [p for p in f.parent.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setitem(sys.modules, "chitchat_dataset", None)                         # the package is missing
    with pytest.raises(SdlmsError, match=r"pip install chitchat-dataset==0\.9\.0"):
        local_source_file("chitchat")


def test_probe_and_train_blocks_of_real_text(tokenizer_dir):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    m = load_manifest()
    pb = probe_blocks(tok, ["pycode", "chitchat", "ioi"], m, tokens_per_task=256, block_size=64)
    assert pb.ids_BT.shape == (12, 64) and (np.bincount(pb.task_B) == 4).all()
    tb = train_blocks(tok, ["pycode", "chitchat", "ioi"], m, n_tokens=3000, block_size=64, seed=1)
    assert tb.shape == (3 * 16, 64) and tb.dtype == np.int64                # ceil(3000 / 3 / 64) = 16 blocks per task
    with pytest.raises(SdlmsError, match="no held-out training text"):
        train_blocks(tok, ["gsm8k"], m, n_tokens=1000, block_size=64)
