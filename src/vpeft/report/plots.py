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

__all__ = ["Plot", "cost_plot", "pareto_front", "ppt_plot", "suite_plots", "tradeoff_plot"]

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


@dataclass(frozen=True)
class _Axis:
    """The x quantity of a trade-off plot: a Mark attribute, its label and tick format."""

    name: str  # id suffix and kind of the plot
    attr: str
    label: str
    ticks: object  # value -> tick text
    unit: str  # appended to values in the description

    def of(self, mark) -> float:
        return getattr(mark, self.attr)


def pareto_front(marks: list[Mark], attr: str = "params") -> list[Mark]:
    """The marks no other mark beats on both axes (higher metric with no more of `attr`: parameters,
    training memory, latency), in order of `attr`."""
    front: list[Mark] = []
    for mark in sorted(marks, key=lambda m: (getattr(m, attr), -m.value)):
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


def _mib_text(v: float) -> str:
    return f"{v / 1024:g} GiB" if v >= 1024 else f"{v:g} MiB"


def tradeoff_plot(data: SuitePlotData) -> Plot | None:
    """Metric against trainable parameters; None when no method has a result yet."""
    if not data.marks:
        return None
    plot_id = f"plot-{data.suite}-tradeoff"
    with matplotlib.rc_context({**_RC, "svg.hashsalt": plot_id}):
        return _tradeoff(data, plot_id, _Axis("tradeoff", "params", data.params_label, _params_text, " parameters"),
                         data.marks)


def cost_plot(data: SuitePlotData, which: str) -> Plot | None:
    """Metric against the method's training memory (`which` "memory") or inference latency at the
    evaluation batch ("latency"), with its Pareto front; None when no method has both figures."""
    batch = f"batch {data.eval_batch:.0f}" if _finite_number(data.eval_batch) else "the evaluation batch"
    axis = {"memory": _Axis("memory", "train_memory_mb", "training memory of the method (MiB)", _mib_text, " MiB"),
            "latency": _Axis("latency", "latency_ms", f"inference latency, {batch}, merged (ms)",
                             lambda v: f"{v:g}", " ms")}[which]
    marks = [m for m in data.marks if _finite_number(axis.of(m)) and axis.of(m) > 0]
    if not marks:
        return None
    plot_id = f"plot-{data.suite}-{which}"
    with matplotlib.rc_context({**_RC, "svg.hashsalt": plot_id}):
        return _tradeoff(data, plot_id, axis, marks)


def _finite_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _tradeoff(data: SuitePlotData, plot_id: str, axis: _Axis, marks: list[Mark]) -> Plot:
    fig = Figure(figsize=(6.8, 3.6))
    fig.subplots_adjust(left=0.09, right=0.70, bottom=0.14, top=0.96)
    ax = fig.add_subplot()
    params = axis.attr == "params"
    published = data.published if params else []  # the published tables give no memory or latency
    xs = [axis.of(m) for m in marks] + [p.params for p in published]
    linthresh = _linthresh(xs)
    ax.set_xscale("symlog", linthresh=linthresh, linscale=0.4)
    right = max(xs + [linthresh]) * 3
    decades = range(round(math.log10(linthresh)), math.floor(math.log10(right)) + 1)
    ax.xaxis.set_major_locator(FixedLocator(([0.0] if params else []) + [10.0 ** k for k in decades]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: axis.ticks(v)))
    ax.set_xlim(-0.5 * linthresh if params else min(xs) / 2, right)
    front = pareto_front(marks, axis.attr)
    # the staircase runs on to the right edge: everything below it and to its right is beaten
    line = ax.plot([axis.of(m) for m in front] + [right], [m.value for m in front] + [front[-1].value],
                   drawstyle="steps-post", color="#888888", linestyle="--", linewidth=1, zorder=1)[0]
    line.set_gid(f"{plot_id}-pareto")
    # neighbours along the axis get their labels above and below in turn, so close marks stay readable
    label_dy = {m.method: (3 if i % 2 == 0 else -9)
                for i, m in enumerate(sorted(marks, key=lambda m: (axis.of(m), m.value)))}
    for mark in marks:
        colour = family_colour(mark.family)
        x = axis.of(mark)
        if not math.isnan(mark.error):
            bars = ax.errorbar([x], [mark.value], yerr=[mark.error], fmt="none", ecolor=colour,
                               elinewidth=1, capsize=3, zorder=2)
            for artist in bars.lines[2]:
                artist.set_gid(f"{plot_id}-error-{mark.method}")
        dot = ax.scatter([x], [mark.value], s=36, color=colour, edgecolors="white", linewidths=0.6,
                         zorder=3)
        dot.set_gid(f"{plot_id}-mark-{mark.method}")
        ax.annotate(mark.method, (x, mark.value), xytext=(4, label_dy[mark.method]),
                    textcoords="offset points",
                    fontsize=7, color="#333333")
    for pub in published:
        dot = ax.scatter([pub.params], [pub.value], s=34, marker="D", facecolors="none",
                         edgecolors=family_colour(pub.family), linewidths=1.1, zorder=3)
        dot.set_gid(f"{plot_id}-published-{pub.method}")
    ax.set_xlabel(f"{axis.label}, log scale")
    ax.set_ylabel(data.metric)
    ax.grid(True, color="#e5e5e5", linewidth=0.6)
    ax.set_axisbelow(True)
    extra = [Line2D([], [], color="#888888", linestyle="--", linewidth=1, label="Pareto front")]
    if published:
        extra.append(Line2D([], [], marker="D", linestyle="none", markerfacecolor="none",
                            markeredgecolor="#555555", label="published"))
    _families_legend(ax, marks, extra)

    title = f"{data.title}: {data.metric} against {axis.label}"
    amount = (lambda m: f"{axis.of(m):,.0f}") if params else (lambda m: f"{axis.of(m):,.3g}")
    desc = "; ".join(f"{m.method} ({family_title(m.family)}): {_value_text(m)} at {amount(m)}{axis.unit}"
                     for m in marks)
    if published:
        desc += ". Published: " + "; ".join(f"{p.label}: {p.value:.1f} at {p.params:,.0f}" for p in published)
    fewer = "fewer or as many parameters" if params else f"no more {axis.label.split(' (')[0]}"
    caption = (f"{data.metric[0].upper()}{data.metric[1:]} against {axis.label} (log axis"
               + ("; 0 at the left edge). " if params else "). ")
               + "One mark per method, coloured by family; up and to the left is better. "
               "The dashed staircase is the Pareto front: "
               f"methods that no other method beats with {fewer}. "
               f"On the front here: {', '.join(m.method for m in front)}.")
    if not params:
        caption += (f" Measured on {data.devices or 'an unrecorded device'} (median over each method's runs; "
                    "figures from other devices are not comparable).")
    if any(not math.isnan(m.error) for m in marks):
        caption += " Error bars: sample standard deviation over seeds."
    if published:
        caption += (f" Hollow diamonds: published numbers of the same methods ({data.published_source}); "
                    "they are reference points, not runs of this code.")
    without = data.without_result + [m.method for m in data.marks if m not in marks]
    if without:
        caption += f" No mark (no result on every task{'' if params else ', or no figure recorded'}): " \
                   f"{', '.join(without)}."
    svg = _svg(fig, plot_id, title, desc + ".")
    return Plot(plot_id, "tradeoff" if params else axis.name, title, desc, caption, svg, len(marks))


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
    """The parameter trade-off, its cost counterparts (training memory, latency) beside it, then PPT."""
    plots = (tradeoff_plot(data), cost_plot(data, "memory"), cost_plot(data, "latency"), ppt_plot(data))
    return [p for p in plots if p is not None]
