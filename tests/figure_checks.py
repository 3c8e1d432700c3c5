"""What every figure that funcnet and its examples write must satisfy, checked on the
matplotlib `Figure` as it is saved.

- A title: the figure's suptitle, or one on every panel.
- A label on every axis that shows tick labels (a panel's own, or the figure's
  ``supxlabel`` / ``supylabel`` for a grid of panels sharing a quantity), with no literal
  ``_`` or ``^`` outside ``$...$`` (matplotlib draws ``W_l`` as it is written); and values
  on every labelled axis.
- Legends that cover no data: a panel's legend placed by ``loc="best"`` or outside the
  panel, and no point of the panel's lines under it; a figure legend outside every panel.
- Legend entries that can be told apart: no two with the same colour, line style and
  marker, and no labelled line hidden under a solid one drawn on top of it.

Use ``with checked_figures() as saved:`` around the code that writes figures; every
`Figure.savefig` inside (pyplot's `savefig` calls it too) raises an AssertionError listing the
faults, and `saved` collects the paths written.
"""

from __future__ import annotations

import contextlib
import pathlib
import re
from unittest import mock

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

_MATH = re.compile(r"(?<!\\)\$.*?(?<!\\)\$")


@contextlib.contextmanager
def checked_figures():
    """Checks each figure saved inside the block; yields the list of paths saved."""
    saved: list[pathlib.Path] = []
    original = Figure.savefig

    def savefig(fig, fname, *args, **kwargs):
        result = original(fig, fname, *args, **kwargs)  # draws it: tick labels are laid out
        faults = figure_problems(fig)
        assert not faults, f"{fname}:\n  " + "\n  ".join(faults)
        saved.append(pathlib.Path(fname))
        return result

    with mock.patch.object(Figure, "savefig", savefig):
        yield saved


def figure_problems(fig: Figure) -> list[str]:
    """What `fig` (already drawn) breaks of the rules in the module docstring."""
    faults = []
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.axison]
    main = [ax for ax in panels if not hasattr(ax, "_colorbar")]
    places = {}  # a panel and its twins (twinx, twiny) share a place
    for ax in main:
        places.setdefault(tuple(np.round(ax.get_position().bounds, 4)), []).append(ax)
    untitled = [
        group
        for group in places.values()
        if not any(ax.get_title(loc=s) for ax in group for s in ("left", "center", "right"))
    ]
    if not fig.get_suptitle() and untitled:
        faults.append(f"no title: no suptitle, and {len(untitled)} untitled panels")
    for ax in panels:
        name = _name(ax)
        for axis, shared in ((ax.xaxis, fig.get_supxlabel()), (ax.yaxis, fig.get_supylabel())):
            shown = [t for t in axis.get_ticklabels(which="both") if t.get_visible()]
            label = axis.get_label_text()
            values = axis.get_visible() and any(t.get_text().strip() for t in shown)
            if values and not label and not shared:
                faults.append(f"{name}: its {axis.axis_name} axis has no label")
            if label and not values and axis.get_visible():
                faults.append(f"{name}: its {axis.axis_name} axis {label!r} shows no values")
            for text in (label, shared):
                if re.search(r"[_^]", _MATH.sub("", text or "")):
                    faults.append(f"{name}: label {text!r} shows a literal _ or ^ (not $...$)")
    for group in places.values():
        for ax in group:
            legend = ax.get_legend()
            if legend is not None and legend.get_visible():
                faults += _legend_faults(ax, legend, group)
            faults += _coinciding_lines(ax)
    for legend in fig.legends:
        box = legend.get_window_extent()
        if any(box.overlaps(ax.get_window_extent()) for ax in main):
            faults.append("a figure legend overlaps a panel")
        faults += _alike_entries(legend, "the figure legend")
    return faults


def _name(ax) -> str:
    title = ax.get_title() or ax.get_ylabel() or "untitled"
    return f"panel {title!r}"


def _legend_faults(ax, legend, group) -> list[str]:
    """A panel's legend: placed by "best" or outside, over no point of the lines of the panel
    and its twins (`group`)."""
    faults = []
    box, panel = legend.get_window_extent(), ax.get_window_extent()
    inside = box.overlaps(panel)
    if inside and legend._loc != 0:  # 0 is "best"
        faults.append(f"{_name(ax)}: a legend at a fixed place inside the panel (use 'best')")
    if inside:
        covered = 0
        for line in (line for member in group for line in member.get_lines()):
            if not line.get_visible() or len(line.get_xdata()) == 0:
                continue
            points = line.get_transform().transform(line.get_xydata())
            points = points[np.all(np.isfinite(points), axis=1)]
            x, y = points.T
            covered += int(np.sum((box.x0 < x) & (x < box.x1) & (box.y0 < y) & (y < box.y1)))
        if covered:
            faults.append(f"{_name(ax)}: the legend covers {covered} data points")
    return faults + _alike_entries(legend, f"{_name(ax)}'s legend")


def _alike_entries(legend, where: str) -> list[str]:
    styles = {}
    for handle, text in zip(legend.legend_handles, legend.get_texts(), strict=True):
        if isinstance(handle, Line2D):
            key = (
                tuple(np.round(np.asarray(_rgba(handle.get_color())), 3)),
                handle.get_linestyle(),
                handle.get_marker(),
            )
            styles.setdefault(key, []).append(text.get_text())
    return [f"{where}: {names} look the same" for names in styles.values() if len(names) > 1]


def _rgba(color):
    from matplotlib.colors import to_rgba

    return to_rgba(color)


def _coinciding_lines(ax) -> list[str]:
    """Labelled lines of a panel drawn within 1.5 pixels of each other everywhere, the later
    one solid (a dashed or dotted line on top leaves the one below visible)."""
    lines = [
        line
        for line in ax.get_lines()
        if line.get_visible() and not line.get_label().startswith("_") and len(line.get_xdata())
    ]
    faults = []
    for i, a in enumerate(lines):
        for b in lines[i + 1 :]:
            pa = a.get_transform().transform(a.get_xydata())
            pb = b.get_transform().transform(b.get_xydata())
            if pa.shape == pb.shape and len(pa) > 1 and b.get_linestyle() == "-":
                gap = np.abs(pa - pb)
                if np.all(np.isfinite(gap)) and gap.max() < 1.5:
                    faults.append(
                        f"{_name(ax)}: {a.get_label()!r} and {b.get_label()!r} lie on each other"
                    )
    return faults
