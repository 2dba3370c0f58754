"""PNG pictures (slice images, figures), written atomically."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from brainmap.io.atomic import atomic_write


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write a (rows, cols) grey or (rows, cols, 3|4) RGB(A) uint8 ``image`` as PNG; returns the path."""
    from PIL import Image

    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ValueError(f"a PNG image must be uint8 (rows, cols[, 3|4]), got {array.dtype} {array.shape}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    with atomic_write(path) as fh:
        fh.write(buffer.getvalue())
    return Path(path)
