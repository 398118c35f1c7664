"""Max-abs error of our backbone against every golden array of the official DynamicVis code.

    python -m benchmarks.golden_report [--scans reference,chunked,auto] [--golden ../shared/golden] [--skip-512]

Prints one row per golden array and one column per scan backend (float32, CPU, 2 threads). The tests assert
the tolerances; this prints the figures. Recipe weights are rebuilt from the golden README's recipe.
"""
from __future__ import annotations

import argparse
import os
import pathlib

import numpy as np
import torch

from models.preprocess import preprocess_s2_rgb
from models.recipe import recipe_backbone

DEFAULT_GOLDEN = pathlib.Path(__file__).resolve().parents[2] / "shared" / "golden"
IMG64 = [("dynamicvis_b_img64", "b", False), ("dynamicvis_b_img64_hot", "b", True),
         ("dynamicvis_l_img64", "l", False), ("dynamicvis_l_img64_hot", "l", True)]


def _stages(model: torch.nn.Module, x: np.ndarray) -> list:
    with torch.inference_mode():
        return [t.numpy() for t in model(torch.from_numpy(x))]


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def report(golden: pathlib.Path, scans: list, with_512: bool) -> list:
    rows = []
    for name, arch, hot in IMG64:
        data = np.load(golden / f"{name}.npz")
        outputs = {}
        for scan in scans:
            model = recipe_backbone(arch, 64, hot=hot)
            model.set_scan(scan, "cpu")
            outputs[scan] = _stages(model, data["input"])
        for stage in range(4):
            rows.append((f"{name} stage{stage}",
                         [_max_abs(outputs[s][stage], data[f"stage{stage}"]) for s in scans]))
    if with_512:
        data = np.load(golden / "dynamicvis_b_img512.npz")
        pre = np.load(golden / "preprocess_golden.npz")
        model_input = preprocess_s2_rgb(pre["raw"], 512)[None]
        rows.append(("preprocess_golden model_input", [_max_abs(model_input, pre["model_input"])] * len(scans)))
        cells = {key: [] for key in ("stage3", "pooled_mean", "pooled_max", "pre_stage3", "pre_mean", "pre_max")}
        for scan in scans:
            model = recipe_backbone("b", 512)
            model.set_scan(scan, "cpu")
            stage3 = _stages(model, data["input"])[3]
            cells["stage3"].append(_max_abs(stage3, data["stage3"]))
            cells["pooled_mean"].append(_max_abs(stage3[0].mean(axis=(1, 2)), data["pooled_mean"][0]))
            cells["pooled_max"].append(_max_abs(stage3[0].max(axis=(1, 2)), data["pooled_max"][0]))
            pre_stage3 = _stages(model, model_input)[3]
            cells["pre_stage3"].append(_max_abs(pre_stage3, pre["stage3_b_recipe"]))
            cells["pre_mean"].append(_max_abs(pre_stage3[0].mean(axis=(1, 2)), pre["adapter_pooled_mean"]))
            cells["pre_max"].append(_max_abs(pre_stage3[0].max(axis=(1, 2)), pre["adapter_pooled_max"]))
        names = {"stage3": "dynamicvis_b_img512 stage3", "pooled_mean": "dynamicvis_b_img512 pooled_mean",
                 "pooled_max": "dynamicvis_b_img512 pooled_max", "pre_stage3": "preprocess_golden stage3_b_recipe",
                 "pre_mean": "preprocess_golden adapter_pooled_mean",
                 "pre_max": "preprocess_golden adapter_pooled_max"}
        rows += [(names[key], values) for key, values in cells.items()]
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--golden", type=pathlib.Path, default=DEFAULT_GOLDEN)
    parser.add_argument("--scans", default="reference,chunked,auto")
    parser.add_argument("--skip-512", action="store_true", help="img64 goldens only")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    scans = args.scans.split(",")
    rows = report(args.golden, scans, not args.skip_512)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               "unknown CPU") if os.path.exists("/proc/cpuinfo") else "unknown CPU"
    print(f"CPU: {cpu} ({torch.backends.cpu.get_cpu_capability()}), torch {torch.__version__}; the tests allow "
          f"2.5e-5 max-abs (tests/test_model_backbone.py explains why)")
    width = max(len(name) for name, _ in rows)
    print(f"{'golden array':<{width}}  " + "  ".join(f"{s:>10}" for s in scans))
    for name, values in rows:
        print(f"{name:<{width}}  " + "  ".join(f"{v:10.2e}" for v in values))


if __name__ == "__main__":
    main()
