#!/usr/bin/python3
"""Query plots of the Grafana dashboard, one PNG per dashboard row.

    plot.py DATA.json OUTDIR

DATA.json holds the Prometheus answers to every query of
dashboards/tollgate.json over one time range (the live dashboard test
writes it; `cargo xtask dashboards-png` runs this script on it):

    {"start": T0, "end": T1, "step": S,
     "queries": [{"row", "panel_id", "panel", "type", "unit", "ref_id",
                  "legend", "expr", "instant",
                  "range": <query_range data.result>,
                  "value": <query data.result at end, or null>}, ...]}

Writes OUTDIR/NN-<row>.png for each row in the order the rows first
appear, one subplot per panel: range queries as lines over seconds since
the start, instant queries (stat, table, bar gauge) as horizontal bars.
These are plots of the queries' results drawn by matplotlib, not what
Grafana renders. The same input gives the same bytes.

Runs under Debian's interpreter, /usr/bin/python3, which is the one
Debian's python3-matplotlib is installed for.
"""

import io
import json
import math
import os
import re
import sys
import textwrap
from datetime import datetime, timezone

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402  (Pillow: a dependency of matplotlib's)
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, PercentFormatter  # noqa: E402

DASHBOARD = "dashboards/tollgate.json"
# Figure geometry, in inches at a fixed dpi: each panel gets a cell of the
# same size, so a row's figure size follows from its panel count alone.
DPI = 100
CELL_W, CELL_H = 5.0, 3.9
TITLE_H, FOOTER_H = 0.45, 0.3
# Legend entries shown per panel; the rest are summarised as "+N more".
LEGEND_MAX = 10
# Bars per instant panel (the dashboard's largest asks topk(20)).
BARS_MAX = 20


class BadInput(Exception):
    """The data file cannot be plotted; the message says why, in one line."""


def slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "row"


def finite(v):
    """A Prometheus sample value ("3.5", "NaN", "+Inf") as a float, or None
    when it is not a finite number."""
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def label_text(metric):
    """A series' labels as k=v, the metric name left out (the legend says
    what was asked)."""
    return ", ".join(f"{k}={v}" for k, v in sorted(metric.items()) if k != "__name__")


def legend_for(legend, metric, expr):
    """What Grafana's legendFormat makes of a series: {{label}} replaced by
    the label's value (empty when the series has none). Without a format
    (or with Grafana's "__auto"), the labels; without labels, the name,
    else the query."""
    if legend and legend != "__auto":
        text = re.sub(r"\{\{\s*([^}]*?)\s*\}\}", lambda m: str(metric.get(m.group(1), "")), legend).strip()
        if text:
            return text
    return label_text(metric) or metric.get("__name__") or expr


def shorten(text, width, lines=1):
    """`text` in at most `lines` lines of `width` characters, cut with an
    ellipsis where it does not fit."""
    wrapped = textwrap.wrap(text, width) or [""]
    if len(wrapped) > lines:
        wrapped = wrapped[:lines]
        wrapped[-1] = wrapped[-1][: width - 1] + "\u2026"
    return "\n".join(wrapped)


def unit_label(unit):
    """Grafana's unit as an axis label ("suffix: calls/min" as "calls/min";
    Grafana's plain-number units, "short" and "none", as none)."""
    if not unit or unit in ("short", "none"):
        return ""
    for affix in ("suffix:", "prefix:"):
        if unit.startswith(affix):
            return unit[len(affix):].strip()
    return unit


def number(v):
    """A tick or value label: 1.5k, 12M; small numbers as they are."""
    a = abs(v)
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= scale:
            return f"{v / scale:.3g}{suffix}"
    if a == 0:
        return "0"
    return f"{v:.3g}"


def formatter(unit):
    if unit == "percentunit":
        return PercentFormatter(xmax=1.0, decimals=None)
    return FuncFormatter(lambda v, _pos: number(v))


def value_text(v, unit):
    return f"{v * 100:.3g}%" if unit == "percentunit" else number(v)


def load(path):
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file") from None
    except OSError as e:
        raise BadInput(f"{path}: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInput(f"{path} is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise BadInput(f"{path}: expected an object with start, end and queries")
    queries = data.get("queries")
    if not isinstance(queries, list) or not queries:
        raise BadInput(f"{path}: no queries")
    start, end = finite(data.get("start")), finite(data.get("end"))
    if start is None or end is None or end <= start:
        raise BadInput(f"{path}: start and end must be numbers, end after start")
    for i, q in enumerate(queries):
        if not isinstance(q, dict):
            raise BadInput(f"{path}: queries[{i}] is not an object")
        for key in ("row", "panel_id", "panel", "expr"):
            if key not in q:
                raise BadInput(f"{path}: queries[{i}] has no {key}")
        if not isinstance(q["panel_id"], (int, str)):
            raise BadInput(f"{path}: queries[{i}]: panel_id is not a number")
        for key, kind in (("range", list), ("value", (list, type(None)))):
            if not isinstance(q.get(key), kind):
                raise BadInput(f"{path}: queries[{i}] ({q['panel']}): {key} is not a Prometheus result")
        for s in q["range"] + (q.get("value") or []):
            if not isinstance(s, dict) or not isinstance(s.get("metric", {}), dict):
                raise BadInput(f"{path}: queries[{i}] ({q['panel']}): a series is not a Prometheus series")
    return data


def rows_of(queries):
    """[(row, [(panel title, [queries])])], rows and panels in the order
    they first appear."""
    rows = {}
    for q in queries:
        panels = rows.setdefault(str(q["row"]), {})
        panels.setdefault(q["panel_id"], (str(q["panel"]), []))[1].append(q)
    return [(row, list(panels.values())) for row, panels in rows.items()]


def no_data(ax):
    ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="0.5", fontsize=11)
    ax.set_xticks([])
    ax.set_yticks([])


def series_points(series, start, step):
    """A range series' finite points as (seconds since start, value) lists,
    with a break (NaN) where a point is missing or not finite."""
    xs, ys = [], []
    last = None
    for sample in series.get("values") or []:
        if not isinstance(sample, (list, tuple)) or len(sample) != 2:
            continue
        t, v = finite(sample[0]), finite(sample[1])
        if t is None:
            continue
        if v is None:
            last = None
            if ys and not math.isnan(ys[-1]):
                xs.append(t - start)
                ys.append(math.nan)
            continue
        if last is not None and step and t - last > 1.5 * step:
            xs.append(t - start)
            ys.append(math.nan)
        xs.append(t - start)
        ys.append(v)
        last = t
    return xs, ys


def plot_range(ax, queries, data, unit):
    start, end = float(data["start"]), float(data["end"])
    step = finite(data.get("step")) or 0
    lines = []
    for q in queries:
        for s in q["range"]:
            xs, ys = series_points(s, start, step)
            values = [y for y in ys if not math.isnan(y)]
            if values:
                label = legend_for(q.get("legend"), s.get("metric") or {}, q["expr"])
                lines.append((max(values), label, xs, ys))
    if not lines:
        no_data(ax)
        return False
    # The largest first: they get the first colours and the legend's places.
    lines.sort(key=lambda line: (-line[0], line[1]))
    colours = plt.get_cmap("tab10" if len(lines) <= 10 else "tab20").colors
    handles = []
    for i, (_, label, xs, ys) in enumerate(lines):
        finite_points = sum(1 for y in ys if not math.isnan(y))
        (h,) = ax.plot(
            xs,
            ys,
            color=colours[i % len(colours)],
            linewidth=1.2,
            marker="o" if finite_points == 1 else None,
            markersize=3,
            label=shorten(label, 48),
        )
        handles.append(h)
    ax.set_xlim(0, end - start)
    if all(y >= 0 for _, _, _, ys in lines for y in ys if not math.isnan(y)):
        ax.set_ylim(bottom=0)
    ax.set_xlabel("s since start", fontsize=8)
    ax.yaxis.set_major_formatter(formatter(unit))
    ax.grid(True, color="0.9", linewidth=0.6)
    shown = handles[:LEGEND_MAX]
    if len(handles) > LEGEND_MAX:
        shown.append(Line2D([], [], linestyle="none", label=f"+{len(handles) - LEGEND_MAX} more"))
    ax.legend(
        handles=shown,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.2),
        ncol=2 if len(shown) > 3 else len(shown),
        fontsize=7,
        frameon=False,
        handlelength=1.5,
        columnspacing=1.2,
    )
    return True


def plot_instant(ax, queries, unit):
    bars = []
    for q in queries:
        for s in q.get("value") or []:
            sample = s.get("value")
            v = finite(sample[1]) if isinstance(sample, (list, tuple)) and len(sample) == 2 else None
            if v is not None:
                bars.append((v, legend_for(q.get("legend"), s.get("metric") or {}, q["expr"])))
    if not bars:
        no_data(ax)
        return False
    bars.sort(key=lambda b: (-b[0], b[1]))
    more = len(bars) - BARS_MAX
    bars = bars[:BARS_MAX]
    # Long labels (a table's every label) wrap when there are few bars.
    lines = 3 if len(bars) <= 4 else 1
    labels = [shorten(label, 44, lines) for _, label in bars]
    values = [v for v, _ in bars]
    ypos = range(len(bars))
    ax.barh(ypos, values, color="tab:blue", height=0.6)
    ax.set_yticks(list(ypos), labels, fontsize=7 if len(bars) > 8 else 8)
    # Top down, and room for at least four bars, so that one bar is as
    # thick as one of four.
    ax.set_ylim(max(len(bars), 4) - 0.5, -0.5)
    ax.xaxis.set_major_formatter(formatter(unit))
    ax.grid(True, axis="x", color="0.9", linewidth=0.6)
    ax.set_axisbelow(True)
    low, high = min(0.0, min(values)), max(0.0, max(values))
    span = (high - low) or 1.0
    ax.set_xlim(low - (0.05 * span if low < 0 else 0), high + 0.18 * span)
    for y, v in zip(ypos, values):
        ax.text(v, y, " " + value_text(v, unit), va="center", ha="left" if v >= 0 else "right", fontsize=7)
    if more > 0:
        ax.text(1.0, -0.08, f"+{more} more", transform=ax.transAxes, ha="right", va="top", fontsize=7)
    return True


def when(t):
    return datetime.fromtimestamp(t, timezone.utc)


def footer(data):
    start, end = when(float(data["start"])), when(float(data["end"]))
    to = end.strftime("%H:%M:%S" if end.date() == start.date() else "%Y-%m-%d %H:%M:%S")
    return (
        f"query plot of {DASHBOARD} against Prometheus, "
        f"{start:%Y-%m-%d %H:%M:%S} to {to} UTC \u2014 not a Grafana screenshot"
    )


def plot_row(row, panels, data, path):
    n = len(panels)
    cols = 1 if n == 1 else 2 if n in (2, 4) else 3
    grid_rows = math.ceil(n / cols)
    width, height = cols * CELL_W, grid_rows * CELL_H + TITLE_H + FOOTER_H
    fig = plt.figure(figsize=(width, height), dpi=DPI)
    fig.set_layout_engine("constrained", rect=(0, FOOTER_H / height, 1, 1 - FOOTER_H / height))
    axes = fig.subplots(grid_rows, cols, squeeze=False).flatten()
    for ax, (title, queries) in zip(axes, panels):
        ax.set_title(title, fontsize=10, loc="left")
        ax.tick_params(labelsize=7)
        unit = next((q["unit"] for q in queries if q.get("unit")), None)
        if any(q.get("instant") for q in queries):
            if plot_instant(ax, queries, unit) and unit:
                ax.set_xlabel(unit_label(unit), fontsize=8)
        elif plot_range(ax, queries, data, unit) and unit:
            ax.set_ylabel(unit_label(unit), fontsize=8)
    for ax in axes[n:]:
        ax.remove()
    fig.suptitle(row, fontsize=13, fontweight="bold")
    fig.text(0.5, 0.3 * FOOTER_H / height, footer(data), ha="center", va="bottom", fontsize=7, color="0.4")
    save(fig, path)
    plt.close(fig)


def save(fig, path):
    """Writes `fig` as a PNG of at most 256 colours: a third of the size
    of matplotlib's true-colour PNG, and no different to read (lines and
    text in a few colours, their antialiased edges approximated). Pillow
    writes no version or date into the file."""
    buf = io.BytesIO()
    fig.savefig(buf, format="raw", dpi=DPI)
    width, height = fig.canvas.get_width_height()
    image = Image.frombuffer("RGBA", (width, height), buf.getbuffer(), "raw", "RGBA", 0, 1).convert("RGB")
    image = image.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    image.save(path, format="PNG", optimize=True)


def main(argv):
    if len(argv) != 3:
        print(f"usage: {os.path.basename(argv[0])} DATA.json OUTDIR", file=sys.stderr)
        return 2
    # Only SVG output would draw on random ids; fixed in case it ever is.
    matplotlib.rcParams["svg.hashsalt"] = "tollgate"
    try:
        data = load(argv[1])
        os.makedirs(argv[2], exist_ok=True)
    except BadInput as e:
        print(f"plot.py: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"plot.py: error: {argv[2]}: {e.strerror}", file=sys.stderr)
        return 1
    for i, (row, panels) in enumerate(rows_of(data["queries"]), start=1):
        path = os.path.join(argv[2], f"{i:02d}-{slug(row)}.png")
        try:
            plot_row(row, panels, data, path)
        except OSError as e:
            print(f"plot.py: error: {path}: {e.strerror}", file=sys.stderr)
            return 1
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
