"""The experiment page's structure bar graph: one bar per summary structure, in ontology order and colour.

Drawn here as SVG (no script): bars are ``<rect>`` elements whose ``fill`` is the structure's ontology colour and
whose ``<title>`` names the structure and its value; the largest bars are labelled. Connectivity data sets show
``projection_volume`` (mm3) of their projection (not injection) records; ISH data sets show
``expression_energy``. Projection rows are per hemisphere (1 left, 2 right, 3 both); Allen's ISH
StructureUnionize rows have no hemisphere, so an ISH graph is of the whole data set whatever the choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Any

from sqlalchemy import Connection, and_, select

from brainmap.store import models as m

__all__ = ["Bar", "bars_of", "bar_svg"]

HEMISPHERES = {1: "left", 2: "right", 3: "both"}


@dataclass(frozen=True)
class Bar:
    structure_id: int
    acronym: str
    name: str
    color: str
    value: float


def bars_of(connection: Connection, tree: Any, data_set_id: int, connectivity: bool, hemisphere: int
            ) -> tuple[list[Bar], str]:
    """The summary structures' values of one data set and hemisphere, in graph order, and the metric's label."""
    if connectivity:
        u = m.ProjectionStructureUnionize
        rows = connection.execute(select(u.structure_id, u.projection_volume).where(and_(
            u.section_data_set_id == data_set_id, u.hemisphere_id == hemisphere, u.is_injection.is_(False))))
        label = "projection volume (mm³)"
    else:
        u = m.StructureUnionize
        rows = connection.execute(select(u.structure_id, u.expression_energy).where(
            u.section_data_set_id == data_set_id))
        label = "expression energy (intensity × fraction; ISH rows have no hemisphere)"
    values = {int(s): float(v) for s, v in rows if v is not None}
    summary = tree.get_structures_by_id(tree.summary_structure_ids())
    summary = sorted(summary, key=lambda n: n.get("graph_order", 0))
    colors = tree.get_hex_colormap("#")
    bars = [Bar(int(n["id"]), str(n["acronym"]), str(n["name"]), colors.get(int(n["id"]), "#888888"),
                values[int(n["id"])]) for n in summary if int(n["id"]) in values]
    return bars, label


def bar_svg(bars: list[Bar], label: str, width: int = 1100, height: int = 260, labelled: int = 8) -> str:
    """An SVG bar graph of ``bars`` (see the module docstring); empty string when there are none."""
    if not bars:
        return ""
    top = max(b.value for b in bars) or 1.0
    left, bottom, head = 56, 24, 18
    plot_w, plot_h = width - left - 8, height - bottom - head
    step = plot_w / len(bars)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" id="bargraph" viewBox="0 0 {width} {height}" '
             f'width="100%" role="img" aria-label="{escape(label)} per summary structure">',
             f'<text x="{left}" y="12" class="axis">{escape(label)}, per summary structure (ontology order)</text>',
             f'<line x1="{left}" y1="{head + plot_h}" x2="{width - 8}" y2="{head + plot_h}" stroke="#555"/>',
             f'<line x1="{left}" y1="{head}" x2="{left}" y2="{head + plot_h}" stroke="#555"/>']
    for frac in (0.0, 0.5, 1.0):
        y = head + plot_h * (1 - frac)
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" class="tick" text-anchor="end">{top * frac:.3g}</text>')
    biggest = {b.structure_id for b in sorted(bars, key=lambda b: -b.value)[:labelled] if b.value > 0}
    for k, b in enumerate(bars):
        h = plot_h * max(b.value, 0.0) / top
        x = left + k * step
        parts.append(f'<rect class="bar" data-structure="{b.acronym}" data-value="{b.value:.6g}" x="{x:.2f}" '
                     f'y="{head + plot_h - h:.2f}" width="{max(step - 0.5, 0.5):.2f}" height="{h:.2f}" '
                     f'fill="{b.color}"><title>{escape(b.acronym)} ({escape(b.name)}): {b.value:.4g}</title></rect>')
        if b.structure_id in biggest:
            parts.append(f'<text x="{x + step / 2:.1f}" y="{head + plot_h - h - 3:.1f}" class="barlabel" '
                         f'text-anchor="middle">{escape(b.acronym)}</text>')
    parts.append(f'<text x="{left}" y="{height - 6}" class="tick">{escape(bars[0].acronym)}</text>')
    parts.append(f'<text x="{width - 8}" y="{height - 6}" class="tick" text-anchor="end">'
                 f'{escape(bars[-1].acronym)}</text>')
    parts.append("</svg>")
    return "".join(parts)
