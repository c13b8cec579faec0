"""The report's plots, drawn with matplotlib as inline SVG: per suite the metric against trainable
parameters (log axis, one mark per method coloured by family, the Pareto front, published numbers
beside ours) and the PPT of every method as bars; error bars when there are several seeds.

Every plot is one `<svg role="img">` with a `<title>` and a `<desc>` (the numbers it shows, for screen
readers), and each mark is a group with a stable id, ``<plot id>-mark-<method>``, so a browser or a
test can find and count them. Element ids are salted with the plot id so that several plots inline
in one page never share an id. Drawing is done on `matplotlib.figure.Figure` directly (no pyplot, no
GUI backend); text stays text (`svg.fonttype: none`), which keeps the files small.
"""

from __future__ import annotations

import html
import io
import math
import re
from dataclasses import dataclass

import matplotlib
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from vpeft.report.families import FAMILY_TITLES, family_colour, family_title
from vpeft.report.plot_data import Mark, SuitePlotData

__all__ = ["Plot", "pareto_front", "ppt_plot", "suite_plots", "tradeoff_plot"]

_RC = {"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
       "font.family": "sans-serif"}


@dataclass(frozen=True)
class Plot:
    id: str
    kind: str  # "tradeoff" or "ppt"
    title: str
    desc: str
    caption: str
    svg: str  # inline SVG markup, ready for the page
    n_marks: int


def pareto_front(marks: list[Mark]) -> list[Mark]:
    """The marks no other mark beats on both axes (higher metric with no more parameters), by parameters."""
    front: list[Mark] = []
    for mark in sorted(marks, key=lambda m: (m.params, -m.value)):
        if not front or mark.value > front[-1].value:
            front.append(mark)
    return front


def _params_text(n: float) -> str:
    if n >= 1e6:
        return f"{n / 1e6:g}M"
    if n >= 1e3:
        return f"{n / 1e3:g}K"
    return f"{n:g}"


def _linthresh(values: list[float]) -> float:
    """Where the log axis starts: one decade below the smallest non-zero count (0 sits left of it)."""
    positive = [v for v in values if v > 0]
    return 10.0 ** (math.floor(math.log10(min(positive))) - 1) if positive else 1.0


def _svg(fig: Figure, plot_id: str, title: str, desc: str) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})  # fixed margins: "tight" would draw twice
    text = buffer.getvalue()
    text = text[text.index("<svg"):]  # drop the XML declaration and DOCTYPE: the SVG goes inside HTML
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S)
    text = re.sub(r"<style[^>]*>.*?</style>\s*", "", text, count=1, flags=re.S)  # would style the whole page
    text = _own_ids(text, plot_id)
    width = re.search(r'width="([\d.]+)pt"', text)
    head = (f'<svg role="img" aria-labelledby="{plot_id}-title {plot_id}-desc" class="plot" '
            f'style="max-width: 100%; height: auto;"')
    text = text.replace("<svg", head, 1)
    if width:  # scale with the page but never above the drawn size
        text = re.sub(r' width="[\d.]+pt" height="[\d.]+pt"', f' width="{width.group(1)}pt"', text, count=1)
    at = text.index(">", text.index("<svg")) + 1
    return (text[:at] + f'\n<title id="{plot_id}-title">{html.escape(title)}</title>'
            f'\n<desc id="{plot_id}-desc">{html.escape(desc)}</desc>' + text[at:])


def _own_ids(text: str, plot_id: str) -> str:
    """Prefix every element id (matplotlib numbers its groups per figure: figure_1, axes_1, ...) and every
    reference to one with the plot id, so that ids stay unique on a page with several plots."""
    ids = {i for i in re.findall(r'\bid="([^"]+)"', text) if not i.startswith(plot_id)}
    if not ids:
        return text
    pattern = re.compile(r'(\bid="|#)(' + "|".join(re.escape(i) for i in sorted(ids, key=len, reverse=True))
                         + r')(?=[")])')
    return pattern.sub(lambda m: f"{m.group(1)}{plot_id}-{m.group(2)}", text)


def _families_legend(ax, marks: list[Mark], extra: list) -> None:
    present = [f for f in FAMILY_TITLES if any(m.family == f for m in marks)]
    if any(m.family not in FAMILY_TITLES for m in marks):
        present.append(None)
    # the tables' family headings without their parenthesised examples, to keep the legend narrow
    handles = [Patch(color=family_colour(f), label=family_title(f).split(" (")[0]) for f in present] + extra
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False, fontsize=8)


def _value_text(mark: Mark) -> str:
    text = f"{mark.value:.1f}"
    if not math.isnan(mark.error):
        text += f" \u00b1 {mark.error:.1f}"
    return text


def tradeoff_plot(data: SuitePlotData) -> Plot | None:
    """Metric against trainable parameters; None when no method has a result yet."""
    if not data.marks:
        return None
    plot_id = f"plot-{data.suite}-tradeoff"
    with matplotlib.rc_context({**_RC, "svg.hashsalt": plot_id}):
        return _tradeoff(data, plot_id)


def _tradeoff(data: SuitePlotData, plot_id: str) -> Plot:
    fig = Figure(figsize=(6.8, 3.6))
    fig.subplots_adjust(left=0.09, right=0.70, bottom=0.14, top=0.96)
    ax = fig.add_subplot()
    xs = [m.params for m in data.marks] + [p.params for p in data.published]
    linthresh = _linthresh(xs)
    ax.set_xscale("symlog", linthresh=linthresh, linscale=0.4)
    right = max(xs + [linthresh]) * 3
    decades = range(round(math.log10(linthresh)), math.floor(math.log10(right)) + 1)
    ax.xaxis.set_major_locator(FixedLocator([0.0] + [10.0 ** k for k in decades]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _params_text(v)))
    ax.set_xlim(-0.5 * linthresh, right)
    front = pareto_front(data.marks)
    # the staircase runs on to the right edge: everything below it and to its right is beaten
    line = ax.plot([m.params for m in front] + [right], [m.value for m in front] + [front[-1].value],
                   drawstyle="steps-post", color="#888888", linestyle="--", linewidth=1, zorder=1)[0]
    line.set_gid(f"{plot_id}-pareto")
    # neighbours along the axis get their labels above and below in turn, so close marks stay readable
    label_dy = {m.method: (3 if i % 2 == 0 else -9)
                for i, m in enumerate(sorted(data.marks, key=lambda m: (m.params, m.value)))}
    for mark in data.marks:
        colour = family_colour(mark.family)
        if not math.isnan(mark.error):
            bars = ax.errorbar([mark.params], [mark.value], yerr=[mark.error], fmt="none", ecolor=colour,
                               elinewidth=1, capsize=3, zorder=2)
            for artist in bars.lines[2]:
                artist.set_gid(f"{plot_id}-error-{mark.method}")
        dot = ax.scatter([mark.params], [mark.value], s=36, color=colour, edgecolors="white", linewidths=0.6,
                         zorder=3)
        dot.set_gid(f"{plot_id}-mark-{mark.method}")
        ax.annotate(mark.method, (mark.params, mark.value), xytext=(4, label_dy[mark.method]),
                    textcoords="offset points",
                    fontsize=7, color="#333333")
    for pub in data.published:
        dot = ax.scatter([pub.params], [pub.value], s=34, marker="D", facecolors="none",
                         edgecolors=family_colour(pub.family), linewidths=1.1, zorder=3)
        dot.set_gid(f"{plot_id}-published-{pub.method}")
    ax.set_xlabel(f"{data.params_label}, log scale")
    ax.set_ylabel(data.metric)
    ax.grid(True, color="#e5e5e5", linewidth=0.6)
    ax.set_axisbelow(True)
    extra = [Line2D([], [], color="#888888", linestyle="--", linewidth=1, label="Pareto front")]
    if data.published:
        extra.append(Line2D([], [], marker="D", linestyle="none", markerfacecolor="none",
                            markeredgecolor="#555555", label="published"))
    _families_legend(ax, data.marks, extra)

    title = f"{data.title}: {data.metric} against {data.params_label}"
    desc = "; ".join(f"{m.method} ({family_title(m.family)}): {_value_text(m)} at {m.params:,.0f} parameters"
                     for m in data.marks)
    if data.published:
        desc += ". Published: " + "; ".join(f"{p.label}: {p.value:.1f} at {p.params:,.0f}"
                                            for p in data.published)
    caption = (f"{data.metric[0].upper()}{data.metric[1:]} against {data.params_label} (log axis; 0 at the "
               "left edge). One mark per method, coloured by family; up and to the left is better. "
               "The dashed staircase is the Pareto front: "
               "methods that no other method beats with fewer or as many parameters. "
               f"On the front here: {', '.join(m.method for m in front)}.")
    if any(not math.isnan(m.error) for m in data.marks):
        caption += " Error bars: sample standard deviation over seeds."
    if data.published:
        caption += (f" Hollow diamonds: published numbers of the same methods ({data.published_source}); "
                    "they are reference points, not runs of this code.")
    if data.without_result:
        caption += f" No mark (no result on every task): {', '.join(data.without_result)}."
    svg = _svg(fig, plot_id, title, desc + ".")
    return Plot(plot_id, "tradeoff", title, desc, caption, svg, len(data.marks))


def ppt_plot(data: SuitePlotData) -> Plot | None:
    """PPT of every method with a result, as horizontal bars in table order; None when there is none."""
    if not data.marks:
        return None
    plot_id = f"plot-{data.suite}-ppt"
    with matplotlib.rc_context({**_RC, "svg.hashsalt": plot_id}):
        return _ppt(data, plot_id)


def _ppt(data: SuitePlotData, plot_id: str) -> Plot:
    marks = data.marks
    height = 0.9 + 0.26 * max(len(marks), 4)
    fig = Figure(figsize=(6.8, height))
    fig.subplots_adjust(left=0.17, right=0.70, bottom=0.55 / height, top=1 - 0.15 / height)
    ax = fig.add_subplot()
    rows = range(len(marks))
    errors = [0.0 if math.isnan(m.ppt_error) else m.ppt_error for m in marks]
    bars = ax.barh(list(rows), [m.ppt for m in marks], color=[family_colour(m.family) for m in marks],
                   height=0.65, xerr=errors if any(errors) else None,
                   error_kw={"elinewidth": 1, "capsize": 2, "ecolor": "#333333"})
    for bar, mark, error in zip(bars.patches, marks, errors):
        bar.set_gid(f"{plot_id}-mark-{mark.method}")
        ax.annotate(f"{mark.ppt:.2f}", (bar.get_width() + error, bar.get_y() + bar.get_height() / 2),
                    xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    ax.set_yticks(list(rows), [m.method for m in marks])
    ax.invert_yaxis()
    ax.set_xlim(0, max(m.ppt + e for m, e in zip(marks, errors)) * 1.15 or 1.0)
    ax.set_xlabel("PPT (higher is better)")
    ax.grid(True, axis="x", color="#e5e5e5", linewidth=0.6)
    ax.set_axisbelow(True)
    _families_legend(ax, marks, [])
    best = max(marks, key=lambda m: m.ppt)
    title = f"{data.title}: PPT per method"
    desc = "; ".join(f"{m.method}: PPT {m.ppt:.2f}" + (f" \u00b1 {e:.2f}" if e else "")
                     for m, e in zip(marks, errors))
    caption = ("PPT = metric \u00d7 exp(\u2212log10(params / 10^7 + 1)): one number that rewards the metric "
               "and penalises parameters (higher is better); bars in table order, coloured by family. "
               f"Highest here: {best.method} ({best.ppt:.2f}).")
    if any(errors):
        caption += " Error bars: sample standard deviation over seeds."
    svg = _svg(fig, plot_id, title, desc + ".")
    return Plot(plot_id, "ppt", title, desc, caption, svg, len(marks))


def suite_plots(data: SuitePlotData) -> list[Plot]:
    return [p for p in (tradeoff_plot(data), ppt_plot(data)) if p is not None]
