"""The aligner does not know the virtual microscope: importing and using it loads no ``specimen.synthetic``."""

from __future__ import annotations

import subprocess
import sys


def test_aligner_does_not_import_the_virtual_microscope():
    code = ("import sys; import brainmap.pipeline.align as a; from brainmap.pipeline.align.align import "
            "reference_template; reference_template(100, use_cache=False); "
            "print(sorted(m for m in sys.modules if m.startswith('brainmap.specimen.synthetic')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
