"""DynamicVis backbone throughput: the official CPU path's cost (baseline) against every fast path.

One process, one model (recipe weights), the same input tiles for every path. The baseline is the
``reference`` scan (one recurrence step per token, like transformers' MambaMixer slow forward) in
float32 at batch 1, which is what the official backbone costs (golden README: 3.15 s per 512 px tile
on 2 cores). Each fast path is compared on the same tiles with the float32 baseline's pooled vectors
(mean of the last stage over its grid, the adapter's formula).

    python -m benchmarks.bench_backbone                  # arch b, 512 px, CPU, 2 threads (~4 min)
    python -m benchmarks.bench_backbone --arch l
    python -m benchmarks.bench_backbone --device cuda    # + tiles/s at batch 1, 8, 32, 64, bf16 and fp32

Rows: ``default`` is ``DynamicVisBackbone(...)`` built plainly (scan='auto', resolved at its first forward)
under a plain autocast for bf16; the others force one scan backend. A last line times the plain model
against the embedder's own path (``set_scan('auto', device)``) with their passes interleaved. bf16
rows are labelled with the CPU's bf16 support (``models.runtime.cpu_bf16_support``); ``bf16~none``
simulates a CPU without native bf16 (``DYNAMICVIS_CPU_BF16=none``: the backbone keeps its projections
float32 there, where emulated bf16 GEMMs are ~20x slower than float32).

Columns: tiles/s (best of the timed repetitions), speed-up over the baseline's tiles/s, max relative
error of the pooled vectors (max |p - p_ref| / max |p_ref| over tiles), their smallest cosine similarity,
and peak memory (CPU: process peak RSS during that path, reset per path via /proc/self/clear_refs;
CUDA: torch.cuda.max_memory_allocated).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models.backbone import DynamicVisBackbone  # noqa: E402
from models.recipe import recipe_backbone  # noqa: E402
from models.runtime import CPU_BF16_ENV, autocast_for, configure_numerics, cpu_bf16_support  # noqa: E402
from models.scan import auto_scan_name, available_scans  # noqa: E402


@dataclass
class FastPath:
    scan: str                           # a backend name, 'default' (plain model) or 'embedder' (auto for device)
    precision: str                      # 'fp32', 'bf16' (autocast) or 'bf16~none' (no native bf16, simulated)
    batch: int
    compile: bool = False
    device_type: str = "cpu"

    @property
    def label(self) -> str:
        precision = self.precision
        if precision == "bf16" and self.device_type == "cpu":
            precision = f"bf16 [{cpu_bf16_support()}]"
        return f"{self.scan:<9} {precision:<18} b={self.batch:<3}{' compiled' if self.compile else ''}"


@dataclass
class Result:
    label: str
    tiles_per_s: float
    rel_err: float | None
    min_cos: float | None
    peak_mib: float


def build_model(arch: str, img_size: int, device: torch.device, hot: bool = False) -> DynamicVisBackbone:
    """The default (released) configuration with recipe weights, last stage only."""
    return recipe_backbone(arch, img_size, hot, out_indices=(3,)).to(device)


def make_tiles(n: int, img_size: int) -> torch.Tensor:
    """Deterministic standard-normal tiles (tile 0 is the b/img512 golden's input)."""
    tiles = [np.random.default_rng(2026 + i).standard_normal((1, 3, img_size, img_size)).astype(np.float32)
             for i in range(n)]
    return torch.from_numpy(np.concatenate(tiles))


@contextlib.contextmanager
def official_mixer_structure():
    """Run the Mamba blocks the way the official code does, for the baseline's cost only.

    Upstream runs the RMSNorm, in_proj, grouped nn.Conv1d and out_proj on the 2B batch (sequence and its
    reversal) with (B, E, L) transposes; our backbone shares the projections between directions and stays
    channels-last. Same numbers (within float rounding), ~2x the projection FLOPs.
    """
    from models import backbone as bb

    def mixer_forward(self, x):
        length = x.shape[1]
        u, z = self.in_proj(x).transpose(1, 2).chunk(2, dim=1)
        u = F.silu(self.conv1d(u)[..., :length])
        dt, Bm, C = torch.split(self.x_proj(u.transpose(1, 2)), [self.dt_rank, self.state_size, self.state_size],
                                dim=-1)
        delta = F.softplus(self.dt_proj(dt)).transpose(1, 2)
        y = self.scan_fn(u, delta, -torch.exp(self.A_log.float()), Bm, C, self.D, z)
        return self.out_proj(y.transpose(1, 2))

    def block_forward(self, x):
        batch = x.shape[0]
        both = self.mamba_layer(self.pre_norm(torch.cat([x, torch.flip(x, [1])], dim=0)))
        forward_out, reverse_out = torch.split(both, batch, dim=0)
        return x + (forward_out + torch.flip(reverse_out, [1])) / 2

    saved = bb.MambaMixer.forward, bb.MambaBlock.forward
    bb.MambaMixer.forward, bb.MambaBlock.forward = mixer_forward, block_forward
    try:
        yield
    finally:
        bb.MambaMixer.forward, bb.MambaBlock.forward = saved


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    with contextlib.suppress(OSError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    return float("nan")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pooled(model: torch.nn.Module, x: torch.Tensor, precision: str, device: torch.device) -> torch.Tensor:
    simulate_no_bf16 = precision == "bf16~none"
    saved = os.environ.get(CPU_BF16_ENV)
    if simulate_no_bf16:
        os.environ[CPU_BF16_ENV] = "none"
    try:
        with torch.inference_mode(), autocast_for("bf16" if simulate_no_bf16 else precision, device):
            last = model(x)[-1]
    finally:
        if simulate_no_bf16:
            os.environ.pop(CPU_BF16_ENV) if saved is None else os.environ.__setitem__(CPU_BF16_ENV, saved)
    return last.float().mean(dim=(2, 3))


def time_path(forward, tiles: torch.Tensor, batch: int, reps: int, device: torch.device,
              warmup: int = 1) -> tuple[float, torch.Tensor]:
    """Best tiles/s over ``reps`` passes over all tiles in batches of ``batch``; pooled vectors of the last pass."""
    batches = [tiles[i:i + batch].to(device) for i in range(0, len(tiles), batch)]
    for _ in range(warmup):
        forward(batches[0])
    best = float("inf")
    outs: list[torch.Tensor] = []
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        outs = [forward(b) for b in batches]
        sync(device)
        best = min(best, time.perf_counter() - start)
    return len(tiles) / best, torch.cat(outs).cpu()


def compare(p: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    rel = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(p, ref))
    cos = F.cosine_similarity(p.double(), ref.double(), dim=-1).min().item()
    return rel, cos


def default_paths(device: torch.device, args) -> list[FastPath]:
    scans = [s for s in available_scans(device) if s != "reference"]
    if args.scans:
        scans = [s for s in args.scans.split(",") if s in scans]
    if device.type == "cuda":
        paths = [FastPath(s, p, b) for s in scans for p in ("fp32", "bf16") for b in (1, 8, 32, 64)]
        if args.compile:
            paths += [FastPath(auto_scan_name(device), p, b, compile=True) for p in ("fp32", "bf16") for b in (1, 64)]
        return paths
    # CPU: the plain default model at every batch size; the other scans at batch 1 in fp32.
    best = auto_scan_name(device)
    # (the embedder's own path is timed against the plain model interleaved, at the end of main)
    paths = [FastPath("default", p, b) for p in ("fp32", "bf16") for b in args.batches]
    paths += [FastPath("default", "bf16~none", b) for b in args.batches[:1]]
    paths += [FastPath(s, "fp32", b) for s in scans for b in args.batches[:1] if s != best]
    if args.compile:   # torch.compile around the whole backbone (graph breaks at the ctypes scan call)
        paths += [FastPath(best, p, args.batches[0], compile=True) for p in ("fp32", "bf16")]
    return paths


def print_table(rows: list[Result], baseline_tps: float, header: str) -> None:
    print(f"\n{header}")
    print(f"{'path':<40} {'tiles/s':>8} {'speed-up':>9} {'max rel err':>12} {'min cos':>10} {'peak MiB':>9}")
    for r in rows:
        rel = f"{r.rel_err:.2e}" if r.rel_err is not None else "-"
        cos = f"{r.min_cos:.6f}" if r.min_cos is not None else "-"
        print(f"{r.label:<40} {r.tiles_per_s:8.3f} {r.tiles_per_s / baseline_tps:8.1f}x {rel:>12} {cos:>10} "
              f"{r.peak_mib:9.0f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="b", choices=["b", "l"])
    parser.add_argument("--img-size", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiles", type=int, default=2, help="tiles compared (baseline runs each at batch 1)")
    parser.add_argument("--baseline-reps", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3, help="timed passes per fast path (best is reported)")
    parser.add_argument("--batches", type=lambda s: [int(v) for v in s.split(",")], default=[1, 4],
                        help="CPU batch sizes for the fast paths")
    parser.add_argument("--scans", default="", help="comma-separated fast scans (default: all available)")
    parser.add_argument("--hot", action="store_true",
                        help="hot recipe weights (the scan matters; the base recipe barely exercises it)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd fast paths")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    configure_numerics(device)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, device {device} ({device_name(device)}), threads {torch.get_num_threads()}, "
          f"arch {args.arch}, img {args.img_size}, CPU bf16 support: {cpu_bf16_support()}, "
          f"load average at start {load:.2f}", flush=True)

    model = build_model(args.arch, args.img_size, device, hot=args.hot)
    n_tiles = max(args.tiles, max(args.batches) if device.type == "cpu" else 1)
    tiles = make_tiles(n_tiles, args.img_size)

    # Baseline: reference scan, float32, batch 1 (the official path's cost).
    model.set_scan("reference")
    reset_peak_memory(device)
    with official_mixer_structure():
        base_tps, base_pooled = time_path(lambda x: pooled(model, x, "fp32", device), tiles, 1,
                                          args.baseline_reps, device)
    rows = [Result("reference fp32 b=1 (baseline)", base_tps, None, None, peak_memory_mib(device))]
    if args.arch == "b" and args.img_size == 512 and device.type == "cpu":
        print("(official backbone, golden README: 3.15 s per tile on 2 idle cores = 0.317 tiles/s)")
    print_table(rows, base_tps, "baseline")

    if device.type == "cuda":
        tiles_for = {b: make_tiles(b, args.img_size) for b in (1, 8, 32, 64)}
    plain = build_model(args.arch, args.img_size, device, hot=args.hot)     # scan left at its default
    for path in default_paths(device, args):
        path.device_type = device.type
        if path.scan == "default":
            module = plain
        else:
            model.set_scan("auto" if path.scan == "embedder" else path.scan, device)
            module = model
        module = torch.compile(module) if path.compile else module
        reset_peak_memory(device)
        if device.type == "cuda" and path.batch > len(tiles):
            bench_tiles = tiles_for[path.batch]
            tps, _ = time_path(lambda x, module=module, path=path: pooled(module, x, path.precision, device),
                               bench_tiles, path.batch, args.reps, device)
            rows.append(Result(path.label, tps, None, None, peak_memory_mib(device)))
        else:
            tps, out = time_path(lambda x, module=module, path=path: pooled(module, x, path.precision, device),
                                 tiles, path.batch, args.reps, device)
            rel, cos = compare(out, base_pooled)
            rows.append(Result(path.label, tps, rel, cos, peak_memory_mib(device)))
        print_table(rows[-1:], base_tps, "")
    print_table(rows, base_tps, f"summary (arch {args.arch}, {args.img_size} px, {device} = {device_name(device)}, "
                                f"{torch.get_num_threads()} threads, load at start {load:.2f}, "
                                f"at end {os.getloadavg()[0]:.2f})")
    if device.type == "cpu":
        # The load of a shared machine drifts between rows: compare the plain model with the embedder's path
        # with their timed passes interleaved (A B A B ...), best of each.
        model.set_scan("auto", device)
        for batch in args.batches:
            x = tiles[:batch].to(device)
            best = {"default": float("inf"), "embedder": float("inf")}
            pooled(plain, x, "fp32", device), pooled(model, x, "fp32", device)       # warm both
            pair = [("default", plain), ("embedder", model)]
            for rep in range(max(args.reps, 4)):
                for name, module in pair if rep % 2 else pair[::-1]:             # alternate the order
                    start = time.perf_counter()
                    pooled(module, x, "fp32", device)
                    best[name] = min(best[name], time.perf_counter() - start)
            print(f"plain default model / embedder path, fp32 b={batch}, interleaved: "
                  f"{best['embedder'] / best['default']:.2f}x the embedder's speed")
    return 0


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return "cpu"


if __name__ == "__main__":
    raise SystemExit(main())
