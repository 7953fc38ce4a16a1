"Probe tasks: generated splits, balanced blocks, dataset-backed tasks from local files, offline failures."
import json, time
from itertools import islice

import numpy as np
import pytest

from sdlms.core import SdlmsError
from sdlms.corpus import GENERATORS, generate_items
from sdlms.data import TaskSpec, load_dataset_items, load_manifest, probe_blocks
from sdlms.suite import training_blocks


def test_manifest_declares_generated_and_dataset_tasks():
    m = load_manifest()
    assert [t for t, s in m.items() if s.kind == "generated"] == list(GENERATORS)
    assert {"humaneval", "gsm8k", "squad", "wikitext", "dailydialog", "arc"} <= {t for t, s in m.items() if s.kind == "dataset"}


def test_probe_items_never_appear_in_training_data(tokenizer_dir):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    for t in GENERATORS:
        probe = set(islice(generate_items(t, "probe", 0), 200))
        train = set(islice(generate_items(t, "train", 0), 5000))
        assert not probe & train, t
    tb = training_blocks(tok, 4096, 64, seed=0)
    assert tb.shape == (70, 64)      # ceil(4096 / 7 / 64) = 10 blocks per task


def test_balanced_blocks_and_index(tokenizer_dir):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    pb = probe_blocks(tok, list(GENERATORS), load_manifest(), tokens_per_task=300, block_size=64, seed=5)
    assert pb.ids_BT.shape == (7 * 4, 64)                      # 300 // 64 = 4 blocks per task, 7 tasks
    ix = pb.token_index()
    assert (ix.groupby("task").size() == 256).all()
    assert (ix.token_id.values == pb.ids_BT.reshape(-1)).all()
    pb2 = probe_blocks(tok, list(GENERATORS), load_manifest(), tokens_per_task=300, block_size=64, seed=5)
    assert np.array_equal(pb.ids_BT, pb2.ids_BT)


def test_dataset_task_from_local_file(tmp_path, tokenizer_dir):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    f = tmp_path / "gsm8k_local.jsonl"
    f.write_text("".join(json.dumps({"question": f"Tom has {i} apples and buys {i + 2}. How many?", "answer": f"{2 * i + 2}"}) + "\n"
                         for i in range(40)))
    man = tmp_path / "manifest.jsonl"
    man.write_text(json.dumps({"name": "gsm8k", "kind": "dataset", "path": str(f), "template": "{question}\n{answer}"}) + "\n" +
                   json.dumps({"name": "arith", "kind": "generated"}) + "\n")
    m = load_manifest(man)
    items = load_dataset_items(m["gsm8k"], seed=0)
    assert len(items) == 40 and sorted(items) == sorted(f"Tom has {i} apples and buys {i + 2}. How many?\n{2 * i + 2}" for i in range(40))
    pb = probe_blocks(tok, ["gsm8k", "arith"], m, tokens_per_task=128, block_size=64)
    assert pb.task_B.tolist() == [0, 0, 1, 1]
    with pytest.raises(SdlmsError, match=r"task 'gsm8k' has only \d+ tokens"):
        probe_blocks(tok, ["gsm8k"], m, tokens_per_task=64 * 200, block_size=64)


def test_hub_dataset_offline_fails_fast_with_a_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.perf_counter()
    with pytest.raises(SdlmsError, match="could not be loaded.*unreachable.*set the task's path to that file"):
        load_dataset_items(TaskSpec("gsm8k", kind="dataset", path="sdlms-test/no-such-dataset", split="test"))
    assert time.perf_counter() - t < 60


def test_bad_manifest_lines(tmp_path):
    f = tmp_path / "m.jsonl"
    f.write_text('{"name": "x", "kind": "generated"}\n')
    with pytest.raises(SdlmsError, match="no generator named 'x'"): load_manifest(f)
    f.write_text('{"name": "y", "kind": "dataset"}\n')
    with pytest.raises(SdlmsError, match="needs a `path`"): load_manifest(f)
    f.write_text('{"name": "arith", "colour": 1}\n')
    with pytest.raises(SdlmsError, match=r"unknown keys \['colour'\]"): load_manifest(f)
