"""The product holds no test tooling: nothing in the pipeline, the store, the server or the search imports the
virtual microscope (``brainmap.specimen.synthetic``), which generates synthetic data and its truth."""

from __future__ import annotations

import subprocess
import sys


def test_the_pipeline_server_store_and_search_load_no_generator():
    code = ("import sys\n"
            "import brainmap.pipeline.align, brainmap.pipeline.detect, brainmap.pipeline.grid, "
            "brainmap.pipeline.unionize, brainmap.pipeline.run, brainmap.store.load, brainmap.search, "
            "brainmap.server.app, brainmap.sdk\n"
            "print(sorted(m for m in sys.modules if m.startswith('brainmap.specimen.synthetic')))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
