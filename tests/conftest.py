"""Root conftest: registers the local-cluster fixtures (cluster, kube_api, namespace, standins)."""

import sys
from pathlib import Path

_HACK = str(Path(__file__).resolve().parents[1] / "hack")
if _HACK not in sys.path:  # `make` sets PYTHONPATH; a bare `pytest` works too
    sys.path.insert(0, _HACK)

pytest_plugins = ["kimi_testbed.fixtures"]
