"""Offline quickstart helper (source checkout only; `run_local.sh` drives it): serve the fake Earth Engine
server and write a recipe-weight checkpoint in the official format, then print the `python -m pipeline`
command to run against them.

    python scripts/demo_server.py --port 8765 --checkpoint demo/dynamicvis_b_recipe.pth
    # in another shell: the printed command

Recipe weights are deterministic stand-ins for the real DynamicVis weights (the loader treats them exactly
like the Hugging Face checkpoint); the fake server returns synthetic pixels. Nothing leaves the machine.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

# Run as a script from the checkout: make the project's packages importable.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="scripts/demo_server.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8765, help="port of the fake Earth Engine server")
    parser.add_argument("--checkpoint", default="demo/dynamicvis_b_recipe.pth", help="where to write the checkpoint")
    parser.add_argument("--arch", default="b", choices=["b", "l"])
    args = parser.parse_args(argv)

    from models.recipe import write_official_checkpoint
    from earth_engine.fake_server import PROJECT, FakeEarthEngine

    checkpoint = pathlib.Path(args.checkpoint)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    if not checkpoint.exists():
        write_official_checkpoint(checkpoint, arch=args.arch, img_size=64)
    with FakeEarthEngine(port=args.port) as server:
        print(f"fake Earth Engine at {server.url}; recipe checkpoint at {checkpoint}\nnow run:\n")
        print(f"  python -m pipeline --bbox 8.0,47.0,8.02,47.02 --start 2024-06-01 --end 2024-07-01 "
              f"--tile-px 32 --img-size 64 --output out/ --ee-endpoint {server.url} --ee-credentials anonymous "
              f"--ee-project {PROJECT} --checkpoint {checkpoint}\n", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
