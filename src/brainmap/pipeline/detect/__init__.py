"""Signal detection: Allen's grayscale expression / projection masks from section images.

- :mod:`~brainmap.pipeline.detect.core` -- :func:`detect_section` (tissue, top-hat background, noise model,
  adaptive threshold, cell morphology, injection site) with :class:`DetectionParams` (units documented there)
  and :class:`DetectionResult`.
- :mod:`~brainmap.pipeline.detect.truth` -- the true signal of virtual-microscope images pixel by pixel
  (:func:`render_with_truth`, :class:`VirtualSpecimen`) and :func:`precision_recall`, to measure detection.
"""

from brainmap.pipeline.detect.core import (
    DetectionParams,
    DetectionResult,
    NoiseModel,
    detect_injection,
    detect_section,
    detect_tissue,
    fit_noise_model,
    grey_opening,
    running_max,
    running_min,
    tissue_threshold,
)

__all__ = [
    "DetectionParams",
    "DetectionResult",
    "NoiseModel",
    "VirtualSpecimen",
    "detect_injection",
    "detect_section",
    "detect_tissue",
    "fit_noise_model",
    "grey_opening",
    "precision_recall",
    "render_with_truth",
    "running_max",
    "running_min",
    "tissue_threshold",
]


def __getattr__(name: str):
    """The virtual-microscope helpers load on first use (they import the generator)."""
    if name in ("VirtualSpecimen", "precision_recall", "render_with_truth"):
        from brainmap.pipeline.detect import truth

        return getattr(truth, name)
    raise AttributeError(f"module 'brainmap.pipeline.detect' has no attribute {name!r}")
