"""Where a coarse graph's INT8 error comes from (issue 22): quantize one fp32 bundle's variant graphs with groups of
weight matmuls left in fp32, and measure each result's velocity error against the fp32 graph.

    python scripts/int8_sensitivity.py --bundle engines/flux-mini-64 --sizes 2,4 --samples 8 \
        --json docs/results/int8-sensitivity-flux-mini-64.json

The calibration is the build's own (``export.quantize.collect`` on the first ``--samples`` calibration captions,
sizes rotated per prompt); the quantizer is the build's (``quantize_graph``, with extra nodes excluded). The error is
the relative RMS of the velocity over the last ``--eval`` recorded calls of that size (as the build reports it).
Groups are found from the graph's structure (``export.quantize.matmul_groups``), not from exporter node names; each
group is tried in fp32 and, apart from the trunk, as weight-only int8 (``export.quantize.weight_only``).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", type=Path, required=True, help="an fp32 bundle (its graphs are quantized)")
    p.add_argument("--sizes", default="2,4")
    p.add_argument("--samples", type=int, default=8, help="calibration captions (the build's default: 8)")
    p.add_argument("--eval", type=int, default=8, help="recorded calls the error is measured on")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)

    import onnx
    import torch

    from ddit_export.bundle import read_manifest
    from ddit_export.export import quantize as q
    from ddit_export.models.registry import load_model
    from ddit_export.quality.policies import default_prompts_path, read_prompts

    torch.set_num_threads(a.threads)
    man = read_manifest(a.bundle)
    sizes = tuple(int(s) for s in a.sizes.split(","))
    model = load_model(man.model["name"], sizes=tuple(sorted(set(sizes) | {1})))
    scenes = read_prompts(default_prompts_path())[:a.samples]
    t0 = time.time()
    feeds = q.collect(model, scenes, tuple(sorted(set(sizes) | {1})), progress=True)
    print(f"collected in {time.time() - t0:.0f} s: " + ", ".join(f"k{k} {len(v)}" for k, v in feeds.items()))
    out = {"bundle": str(a.bundle), "samples": a.samples, "eval_calls": a.eval, "sizes": {}}
    for k in sizes:
        fp32 = a.bundle / f"transformer_k{k}.onnx"
        graph = onnx.load(str(fp32), load_external_data=False).graph
        groups = q.matmul_groups(graph)
        rows = {}
        non_trunk = [n for g, names in groups.items() if g != "trunk" for n in names]
        trials = [("none", [], False)] + [(g, names, False) for g, names in groups.items() if names]
        trials += [("all but the trunk", non_trunk, False), ("all but the trunk", non_trunk, True)]
        trials += [(g, names, True) for g, names in groups.items() if names and g != "trunk"]
        for label, names, wo in trials:
            with tempfile.TemporaryDirectory() as tmp:
                t = time.time()
                q8 = Path(tmp) / "model.onnx"
                _quantize(q, fp32, q8, feeds[k], Path(tmp) / "ranges.json", names)
                if wo:
                    q.weight_only(q8, names)
                err = q.velocity_error(fp32, q8, feeds[k], n=a.eval)
            how = "weight-only int8" if wo else "fp32"
            rows[f"{label}: {how}"] = {"matmuls": len(names), "velocity_rel_rms": round(err, 5)}
            print(f"k{k} {label:<18} {how:<16} ({len(names):2d} matmuls): velocity rel. RMS {err:.4f} "
                  f"({time.time() - t:.0f} s)", flush=True)
        out["sizes"][str(k)] = {"groups": {g: len(v) for g, v in groups.items()}, "trials": rows}
    if a.json:
        a.json.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {a.json}")


def _quantize(q, fp32, out, feeds, cache, extra):
    import onnx

    graph = onnx.load(str(fp32), load_external_data=False).graph
    names = [i.name for i in graph.input]
    excluded = q.activation_matmuls(graph) + list(extra)
    with q._quiet_root_log():
        q._quantize_static(fp32, out, q.FeedReader(feeds, names), cache, excluded, "u8")


if __name__ == "__main__":
    main()
