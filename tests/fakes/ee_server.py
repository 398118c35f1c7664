"""The fake Earth Engine server, which ships with the package (``earth_engine/fake_server.py``) because the
offline quickstart serves it; re-exported here so tests and benchmarks import it from ``tests.fakes``."""
from earth_engine.fake_server import *  # noqa: F401,F403
from earth_engine.fake_server import __all__  # noqa: F401
