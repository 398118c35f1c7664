"""Shared pytest configuration. Fixtures live in tests/fixtures/, one module per concern."""
import os

import torch

# Without a GPU the `triton` scan backend is tested through Triton's interpreter on CPU tensors; Triton
# reads TRITON_INTERPRET when it is imported, so it is set before any test can import it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest_plugins = [
    "tests.fixtures.recipe",    # recipe-weight checkpoints in the official format
    "tests.fixtures.fake_ee",   # fake Earth Engine REST server + initialised real `ee` client
    "tests.fixtures.storage",   # GCS emulator (and BigQuery emulator where available)
]

# Two cores: keep torch from oversubscribing when tests run beside each other.
torch.set_num_threads(int(os.environ.get("TEST_TORCH_THREADS", "2")))
