"""The prepared device check (run through benchmarks/gpu_check.sh): every CUDA path against the CPU fp32
reference on the same inputs, then throughput, peak memory and a kernel profile. torch, numpy (and triton,
when installed) only, plus this repository's modules: it runs on a bare CUDA image without the project pins.

    bash benchmarks/gpu_check.sh                 # on a CUDA machine (<= 6 minutes)
    python -m benchmarks.gpu_check --cpu         # smoke mode here: 64 px, tiny batches, CPU tensors

Sections:
1. accuracy: arch b, 512 px, recipe weights (base and hot), 4 tiles. For each CUDA scan backend x {fp32, bf16}
   x {eager, CUDA graph}: min pooled cosine and max relative error against the CPU fp32 reference, and routing
   agreement (share of the blocks' top-k selections identical, as sets and in order, to the CPU's). CUDA
   graph replay vs the eager CUDA forward: bit-equal or not. Input path: raw uint16 through pinned memory and
   the device preprocessing vs the numpy preprocessing, bit for bit.
2. throughput: the production path (auto scan, CUDA graph per batch size) at batch 1, 8, 32, 64, 128, 256 in
   fp32 and bf16: tiles/s, peak memory, peak per tile; eager at batch 8 and 64 for the graph's gain.
3. profile: top kernels of one eager bf16 forward at batch 32.
Stops starting new measurements when the time budget is spent (prints what was skipped).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models.embedder import raw_to_device  # noqa: E402
from models.preprocess import preprocess_s2_rgb  # noqa: E402
from models.recipe import recipe_backbone  # noqa: E402
from models.runtime import (TILE_BYTES_B512, CudaGraphForward, autocast_for, batch_size_for_memory,  # noqa: E402
                            configure_numerics)
from models.scan import auto_scan_name, available_scans  # noqa: E402

START = time.perf_counter()


def elapsed() -> float:
    return time.perf_counter() - START


def log(message: str) -> None:
    print(f"[{elapsed():6.1f}s] {message}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def recorded_routing(selections: list):
    """Record every torch.topk index tensor the backbone computes (eager forwards only)."""
    import models.backbone as backbone_module

    real_topk = torch.topk

    def recording_topk(*args, **kwargs):
        result = real_topk(*args, **kwargs)
        selections.append(result.indices.detach().cpu())
        return result

    backbone_module.torch.topk = recording_topk
    try:
        yield
    finally:
        backbone_module.torch.topk = real_topk


def routing_agreement(ours: list, ref: list) -> tuple[float, float]:
    """(share of (block, tile) selections equal as sets, share equal in order)."""
    same_set = same_order = total = 0
    for a, b in zip(ours, ref):
        for row_a, row_b in zip(a, b):
            total += 1
            same_order += bool(torch.equal(row_a, row_b))
            same_set += bool(torch.equal(row_a.sort().values, row_b.sort().values))
    return same_set / max(total, 1), same_order / max(total, 1)


def compare(pooled: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    rel = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(pooled, ref))
    cos = F.cosine_similarity(pooled.double(), ref.double(), dim=-1).min().item()
    return cos, rel


def make_tiles(n: int, img_size: int, seed: int = 2026) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.random.default_rng(seed + i).standard_normal((3, img_size, img_size))
                                      .astype(np.float32) for i in range(n)]))


def accuracy(args, device: torch.device) -> None:
    print("\n== 1. accuracy against the CPU fp32 reference (same inputs) ==")
    tiles = make_tiles(args.acc_tiles, args.img_size)
    scans = [s for s in available_scans(device) if s != "reference"]
    if device.type == "cpu":
        scans = [s for s in scans if s != "cpu_fused"]
        if args.with_triton and os.environ.get("TRITON_INTERPRET") == "1":
            scans.append("triton")       # interpreted: minutes even at 64 px
    print(f"scans on {device}: {scans}; auto picks {auto_scan_name(device)}")
    header = f"{'recipe':<5} {'scan':<8} {'prec':<5} {'mode':<6} {'min cos':>10} {'max rel err':>12} " \
             f"{'route set':>10} {'route order':>12} {'graph==eager':>13}"
    print(header)
    x = tiles.to(device)
    for hot in (False, True):
        if elapsed() > args.budget * 0.4:
            print(f"(skipped hot={hot}: time budget)")
            continue
        cpu_model = recipe_backbone("b", args.img_size, hot, out_indices=(3,))
        ref_routing: list = []
        with torch.inference_mode(), recorded_routing(ref_routing):
            ref = cpu_model(tiles)[-1].float().mean(dim=(2, 3))
        model = recipe_backbone("b", args.img_size, hot, out_indices=(3,)).to(device)
        for scan in scans:
            model.set_scan(scan, device)
            for precision in ("fp32", "bf16"):
                routing: list = []
                with torch.inference_mode(), autocast_for(precision, device), recorded_routing(routing):
                    eager = model(x)[-1].float()
                set_share, order_share = routing_agreement(routing, ref_routing)
                cos, rel = compare(eager.mean(dim=(2, 3)).cpu(), ref)
                print(f"{'hot' if hot else 'base':<5} {scan:<8} {precision:<5} {'eager':<6} {cos:10.6f} {rel:12.2e} "
                      f"{set_share:10.3f} {order_share:12.3f} {'':>13}", flush=True)
                if device.type == "cuda":
                    graphed = CudaGraphForward(model, lambda p=precision: autocast_for(p, device, False))
                    out = graphed(x)[-1].float()
                    out2 = graphed(x)[-1].float()           # a replay of the captured graph
                    cos, rel = compare(out2.mean(dim=(2, 3)).cpu(), ref)
                    print(f"{'hot' if hot else 'base':<5} {scan:<8} {precision:<5} {'graph':<6} {cos:10.6f} "
                          f"{rel:12.2e} {'':>10} {'':>12} "
                          f"{str(torch.equal(out2, eager) and torch.equal(out, out2)):>13}",
                          flush=True)
                    del graphed
        del model
    if device.type == "cuda":
        model = recipe_backbone("b", args.img_size, True, out_indices=(3,)).to(device)
        model.set_scan("auto", device)
        with torch.inference_mode():
            alone = model(x[:1])[-1]
            together = model(x)[-1][:1]
        print(f"batch invariance on {device}: tile 0 alone vs in a batch of {len(x)}: max abs diff "
              f"{(alone - together).abs().max().item():.2e}")
    raw = np.random.default_rng(5).integers(0, 12001, size=(4, 3, args.img_size, args.img_size)).astype(np.uint16)
    with torch.inference_mode():
        on_device = raw_to_device(raw, args.img_size, device, {}).cpu()
    expected = torch.from_numpy(np.stack([preprocess_s2_rgb(chw, args.img_size) for chw in raw]))
    print("input path (uint16 -> pinned -> device preprocessing) bit-equal to numpy:",
          torch.equal(on_device, expected))


def throughput(args, device: torch.device) -> None:
    print("\n== 2. throughput (auto scan; 'graph' = one CUDA graph per batch size) ==")
    model = recipe_backbone("b", args.img_size, False, out_indices=(3,)).to(device)
    model.set_scan("auto", device)
    print(f"scan {model.scan}; default batch size for this device's total memory: "
          f"{batch_size_for_memory(total_memory(device), args.img_size) if device.type == 'cuda' else '-'} "
          f"(estimate {TILE_BYTES_B512 / 2**20:.0f} MiB per tile)")
    print(f"{'prec':<5} {'mode':<6} {'batch':>5} {'tiles/s':>10} {'ms/batch':>10} {'peak MiB':>10} {'MiB/tile':>9}")
    runs = [(p, "graph" if device.type == "cuda" else "eager", b) for p in ("bf16", "fp32") for b in args.batches]
    runs += [(p, "eager", b) for p in ("bf16",) for b in args.eager_batches] if device.type == "cuda" else []
    for precision, mode, batch in runs:
        if elapsed() > args.budget * 0.85:
            print(f"{precision:<5} {mode:<6} {batch:>5} skipped (time budget)")
            continue
        x = make_tiles(1, args.img_size).to(device).expand(batch, -1, -1, -1).contiguous()
        try:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            if mode == "graph":
                forward = CudaGraphForward(model, lambda p=precision: autocast_for(p, device, False))
            else:
                def forward(t, p=precision):
                    with torch.inference_mode(), autocast_for(p, device):
                        return model(t)
            forward(x)
            sync(device)
            best = float("inf")
            for _ in range(args.reps):
                t0 = time.perf_counter()
                forward(x)
                sync(device)
                best = min(best, time.perf_counter() - t0)
            peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
            print(f"{precision:<5} {mode:<6} {batch:>5} {batch / best:10.1f} {best * 1e3:10.2f} {peak:10.0f} "
                  f"{peak / batch:9.1f}", flush=True)
            del forward
        except torch.cuda.OutOfMemoryError:
            print(f"{precision:<5} {mode:<6} {batch:>5} out of memory")
        except RuntimeError as error:   # a capture failure must not hide the other rows
            print(f"{precision:<5} {mode:<6} {batch:>5} failed: {type(error).__name__}: {str(error)[:200]}")


def profile(args, device: torch.device) -> None:
    print("\n== 3. profile (eager bf16) ==")
    if elapsed() > args.budget * 0.95:
        print("skipped (time budget)")
        return
    from torch.profiler import ProfilerActivity, profile as torch_profile

    model = recipe_backbone("b", args.img_size, False, out_indices=(3,)).to(device)
    model.set_scan("auto", device)
    x = make_tiles(args.profile_batch, args.img_size).to(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.inference_mode(), autocast_for("bf16", device):
        model(x)
        sync(device)
        with torch_profile(activities=activities) as prof:
            model(x)
            sync(device)
    averages = prof.key_averages()
    for key in (("self_device_time_total", "self_cuda_time_total") if device.type == "cuda"
                else ("self_cpu_time_total",)):
        with contextlib.suppress(Exception):
            print(averages.table(sort_by=key, row_limit=args.top_kernels, max_name_column_width=70))
            break


def total_memory(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).total_memory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="smoke mode on CPU: 64 px, tiny batches")
    parser.add_argument("--budget", type=float, default=300.0, help="seconds; later measurements are skipped")
    parser.add_argument("--sections", default="accuracy,throughput,profile")
    parser.add_argument("--with-triton", action="store_true",
                        help="smoke mode: also the triton scan through TRITON_INTERPRET=1 (slow)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda and not args.cpu:
        print("no CUDA device visible to torch; run with --cpu for the smoke mode")
        return 2
    args.img_size = 512 if cuda else 64
    args.batches = [1, 8, 32, 64, 128, 256] if cuda else [1, 2]
    args.eager_batches = [8, 64]
    args.acc_tiles = 4 if cuda else 2
    args.reps = 5 if cuda else 1
    args.profile_batch = 32 if cuda else 1
    args.top_kernels = 25 if cuda else 8
    configure_numerics(device)
    torch.set_num_threads(min(16, os.cpu_count() or 1))
    try:
        import triton
        triton_version = triton.__version__
    except Exception as error:  # noqa: BLE001 - report, do not fail
        triton_version = f"not importable ({type(error).__name__})"
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    memory = f", {total_memory(device) / 2**30:.0f} GiB" if cuda else ""
    log(f"torch {torch.__version__}, triton {triton_version}, python {sys.version.split()[0]}, device {name}{memory}, "
        f"bf16 {'yes' if cuda and torch.cuda.is_bf16_supported() else 'cpu autocast'}, "
        f"scans {available_scans(device)}, CPU threads {torch.get_num_threads()}")
    sections = {"accuracy": accuracy, "throughput": throughput, "profile": profile}
    status = 0
    for section in args.sections.split(","):
        try:
            sections[section](args, device)
        except Exception as error:  # noqa: BLE001 - one broken section must not hide the others
            status = 1
            log(f"section {section} failed: {type(error).__name__}: {error}")
            import traceback
            traceback.print_exc()
    log("done")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
