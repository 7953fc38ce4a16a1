"""Were AWQ scales folded into Qwen2.5-Coder-0.5B's MLP? Measured, not assumed.

AWQ scales each input channel i of a linear layer by s_i and divides the op before it by s_i. For the down projection
the input channels are the MLP neurons, and the op before is the up projection (h_i = act(gate_i . x) * (up_i . x)), so
a folded scale shrinks ||up_i|| by s_i and grows ||down_i|| (column i) by s_i: h_i is rescaled per neuron, the MLP's
output is not. The signature: across the neurons of a layer, log ||up_i|| and log ||down_i|| anti-correlate, and their
spread grows, while log(||up_i|| ||down_i||) does not move; and up rows decorrelate from gate rows (the gate is not
rescaled). The GGUF header names the 0.5B "Qwen2.5 Coder 0.5B Instruct
AWQ"; the 1.5B of the same family is the reference. Gate rows are reported too (AWQ leaves them alone).

Reads the dequantised up, gate and down tensors of every layer straight from each GGUF (joined from its part packages
into a temporary folder). Writes benchmarks/results/awq_scales.{json,md}.

    .venv/bin/python benchmarks/awq_scales.py [model ...]     # default: qwen2.5-coder-0.5b qwen2.5-coder-1.5b
"""
import json, sys, tempfile, time
from pathlib import Path

import numpy as np

OUT = Path(__file__).parent / "results"


def layer_stats(up, gate, down) -> dict:
    "Per-neuron norm statistics of one SwiGLU layer: up/gate `(d_mlp, d)`, down `(d, d_mlp)`."
    lu, lg, ld = (np.log(np.linalg.norm(w, axis=a)) for w, a in ((up, 1), (gate, 1), (down, 0)))
    return {"corr_up_down": float(np.corrcoef(lu, ld)[0, 1]), "corr_gate_down": float(np.corrcoef(lg, ld)[0, 1]),
            "corr_up_gate": float(np.corrcoef(lu, lg)[0, 1]),
            "sd_log_up": float(lu.std()), "sd_log_gate": float(lg.std()), "sd_log_down": float(ld.std()),
            "sd_log_up_x_down": float((lu + ld).std())}


def measure(name: str) -> dict:
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from sdlms.models import PACKAGED_MODELS, _gguf_file
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        f = _gguf_file(name, tmp, log=print)
        r = GGUFReader(str(f))
        header = bytes(r.fields["general.name"].parts[-1]).decode() if "general.name" in r.fields else ""
        t = {x.name: x for x in r.tensors}
        n = 1 + max(int(k.split(".")[1]) for k in t if k.startswith("blk."))
        get = lambda k: dequantize(t[k].data, t[k].tensor_type).reshape(tuple(reversed([int(s) for s in t[k].shape])))
        layers = []
        for i in range(n):
            up, gate, down = (get(f"blk.{i}.ffn_{w}.weight") for w in ("up", "gate", "down"))
            assert up.shape == gate.shape and down.shape == up.shape[::-1], (up.shape, down.shape)
            layers.append({"layer": i, **layer_stats(up, gate, down)})
    keys = [k for k in layers[0] if k != "layer"]
    return {"model": name, "gguf_name": header, "quant": PACKAGED_MODELS[name]["quant"], "n_layers": n,
            "d_mlp": int(up.shape[0]), "median": {k: float(np.median([l[k] for l in layers])) for k in keys},
            "layers": layers, "seconds": round(time.perf_counter() - t0, 1)}


def main(names):
    res = [measure(n) for n in names]
    OUT.mkdir(exist_ok=True)
    (OUT / "awq_scales.json").write_text(json.dumps(res, indent=1) + "\n")
    cols = ["corr_up_down", "corr_gate_down", "corr_up_gate", "sd_log_up", "sd_log_gate", "sd_log_down", "sd_log_up_x_down"]
    lines = ["# AWQ scales in the MLP: per-neuron norms (median over layers)", "",
             "Per layer, across its neurons: the correlation of log ||up_i|| (and log ||gate_i||) with log ||down_i||, "
             "and the spread (sd) of each log norm and of log(||up_i|| ||down_i||). Folded AWQ scales show as a strongly "
             "negative up-down correlation with a wide spread of up and down norms but not of their product, and up "
             "norms that decorrelate from gate norms.", "",
             "| model | GGUF name | layers | d_mlp | " + " | ".join(cols) + " |", "|" + "---|" * (4 + len(cols))]
    for r in res:
        lines.append(f"| {r['model']} | {r['gguf_name']} | {r['n_layers']} | {r['d_mlp']} | "
                     + " | ".join(f"{r['median'][c]:.3f}" for c in cols) + " |")
    if len(res) == 2:
        a, b = (r["median"] for r in res)
        d = {c: a[c] - b[c] for c in cols}
        lines += ["", f"{res[0]['model']} minus {res[1]['model']}: " + ", ".join(f"{c} {v:+.3f}" for c, v in d.items()) + ".",
                  "A folded scale would show as a markedly more negative corr_up_down, a lower corr_up_gate and wider "
                  "sd_log_up and sd_log_down with sd_log_up_x_down unchanged, in the first model than in the second."]
    (OUT / "awq_scales.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:] or ["qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"])
