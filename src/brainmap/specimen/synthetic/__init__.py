"""The virtual microscope: realistic synthetic section data sets that know their ground truth.

- :mod:`~brainmap.specimen.synthetic.template` -- :func:`make_template`, re-exported from
  :mod:`brainmap.atlas.template` (the aligner's target image; the default "nissl" appearance draws from it).
- :mod:`~brainmap.specimen.synthetic.appearance` -- appearances that share nothing with the template
  (fluorescence, brightfield, RGB stains; bias fields, structured noise) and the smooth non-linear warp.
- :mod:`~brainmap.specimen.synthetic.geometry` -- the true specimen pose (:func:`random_specimen_transform`),
  section sampling, per-section 2-D jitter and damage (:func:`plan_specimen`).
- :mod:`~brainmap.specimen.synthetic.signal` -- the truth signal density per reference voxel: ISH expression
  patterns per gene (:func:`expression_profile`) and connectivity projections from real normalized projection
  volumes (:func:`projection_profile`); :func:`truth_density`.
- :mod:`~brainmap.specimen.synthetic.render` -- section images (:func:`render_section`) and, with them, the true
  signal masks (:func:`~.render.render_section_truth`).
- :mod:`~brainmap.specimen.synthetic.make` -- :func:`make_specimen` writes a data set folder with ``truth/``;
  :func:`read_truth` reads it back.
- :mod:`~brainmap.specimen.synthetic.closed_loop` -- the closed loop against real data: recovered normalized
  projection volumes beside a real connectivity table's (:func:`~.closed_loop.compare_with_real_npv`).

See ``docs/virtual-microscope.md``.
"""

from brainmap.specimen.synthetic.template import make_template

__all__ = [
    "DamageRates",
    "Truth",
    "expression_profile",
    "make_specimen",
    "make_template",
    "plan_specimen",
    "projection_profile",
    "random_specimen_transform",
    "read_truth",
    "render_section",
    "truth_density",
]


def __getattr__(name: str):
    """The heavier modules load on first use, so ``from brainmap.specimen.synthetic import make_template`` stays
    light."""
    if name in ("DamageRates", "plan_specimen", "random_specimen_transform"):
        from brainmap.specimen.synthetic import geometry

        return getattr(geometry, name)
    if name in ("expression_profile", "projection_profile", "truth_density"):
        from brainmap.specimen.synthetic import signal

        return getattr(signal, name)
    if name == "render_section":
        from brainmap.specimen.synthetic.render import render_section

        return render_section
    if name in ("Truth", "make_specimen", "read_truth"):
        from brainmap.specimen.synthetic import make

        return getattr(make, name)
    raise AttributeError(f"module 'brainmap.specimen.synthetic' has no attribute {name!r}")
