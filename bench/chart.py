#!/usr/bin/env python3
"""SVG bar chart of a bench/run.sh table (standard library only).

  chart.py TABLE OUT.svg [--title TEXT] [--note TEXT]...

TABLE is a file holding the Markdown table that bench/run.sh prints (the
first table whose header starts with "| workload |"; other lines are
ignored).  Each row becomes two horizontal bars: the wall-time ratio
qimg/qemu-img ("ratio" column) and the peak-RSS ratio ("RSS ratio"
column), on one axis with lines at 1.0 (qemu-img), 0.8 (the issue's
worst-workload and RSS target) and 0.45 (its geometric-mean target).  A
row whose result is not "ok" has its name in red; a ratio of "-" gives a
bar of zero length, so there is always one bar of each kind per row.
Ratios beyond the axis (3.0 at most) are drawn to its end, with the value
written beside them.
"""
import argparse
import math
import sys
from xml.sax.saxutils import escape, quoteattr

# Layout in pixels.
WIDTH = 960
LABEL_W = 250            # workload names, right-aligned before the plot
PLOT_X0 = LABEL_W + 10
PLOT_X1 = WIDTH - 60     # room for the value of the longest bar
ROW_H = 26
BAR_H = 9
LINE_H = 16              # title and notes
MAX_CHARS = 150         # of a title or note line (12 px text fits the width)
AXIS_CAP = 3.0           # ratios above this are clipped (value still shown)

TIME_COLOUR = "#3b6fb6"
RSS_COLOUR = "#e08a2c"
# (ratio, colour, dash, label) of the reference lines.
MARKS = ((1.0, "#222222", "", "1.0 = qemu-img"),
         (0.8, "#c0392b", "6,3", "0.8 worst / RSS target"),
         (0.45, "#2e8b57", "6,3", "0.45 mean target"))


def parse_table(text):
    """Rows of the first workload table: [(name, time, rss, result)],
    time and rss floats or None for "-"."""
    rows = []
    cols = None
    for line in text.splitlines():
        line = line.strip()
        if cols is None:
            if line.startswith("| workload |"):
                cols = [c.strip() for c in line.strip("|").split("|")]
            continue
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        if set(cells[0]) <= set("-: "):
            continue            # the |---|---:| line
        row = dict(zip(cols, cells))
        rows.append((row.get("workload", "?"), number(row.get("ratio")),
                     number(row.get("RSS ratio")), row.get("result", "")))
    if cols is None:
        raise ValueError("no '| workload |' table found")
    return rows


def number(cell):
    try:
        value = float(cell)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value >= 0 else None


def axis_max(rows):
    top = max([1.2] + [v for r in rows for v in r[1:3] if v is not None])
    return min(AXIS_CAP, math.ceil(top * 4) / 4)


def render(rows, title="", notes=()):
    amax = axis_max(rows)
    scale = (PLOT_X1 - PLOT_X0) / amax

    def x(v):
        return PLOT_X0 + min(v, amax) * scale

    head = [title] if title else []
    head += list(notes)
    y_legend = 10 + LINE_H * len(head) + 8
    y0 = y_legend + 30                       # first row
    height = y0 + ROW_H * len(rows) + 40     # axis labels below
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
           f'height="{height}" viewBox="0 0 {WIDTH} {height}" '
           'font-family="DejaVu Sans, Verdana, sans-serif" font-size="12">',
           f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="white"/>']
    for i, line in enumerate(head):
        if len(line) > MAX_CHARS:
            line = line[:MAX_CHARS - 3] + "..."
        weight = ' font-weight="bold" font-size="14"' if i == 0 and title else ""
        out.append(f'<text x="10" y="{22 + LINE_H * i}"{weight}>'
                   f'{escape(line)}</text>')
    # Legend: the two bar colours, then the three reference lines.
    lx = 10
    for colour, label in ((TIME_COLOUR, "wall time qimg/qemu-img"),
                          (RSS_COLOUR, "peak RSS qimg/qemu-img")):
        out.append(f'<rect x="{lx}" y="{y_legend}" width="14" height="{BAR_H}" '
                   f'fill="{colour}"/>')
        out.append(f'<text x="{lx + 20}" y="{y_legend + 9}">{escape(label)}</text>')
        lx += 190
    for ratio, colour, dash, label in MARKS:
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(f'<line x1="{lx}" y1="{y_legend + 5}" x2="{lx + 22}" '
                   f'y2="{y_legend + 5}" stroke="{colour}" stroke-width="1.5"'
                   f'{dash_attr}/>')
        out.append(f'<text x="{lx + 27}" y="{y_legend + 9}">{escape(label)}</text>')
        lx += 40 + 7 * len(label)
    # Grid and axis labels every 0.25 (0.5 on a wide axis).
    step = 0.25 if amax <= 1.5 else 0.5
    y_end = y0 + ROW_H * len(rows)
    tick = 0.0
    while tick <= amax + 1e-9:
        gx = x(tick)
        out.append(f'<line x1="{gx:.1f}" y1="{y0 - 4}" x2="{gx:.1f}" '
                   f'y2="{y_end}" stroke="#e4e4e4"/>')
        out.append(f'<text x="{gx:.1f}" y="{y_end + 16}" '
                   f'text-anchor="middle">{tick:g}</text>')
        tick += step
    # Rows: zebra background, name, two bars with their values.
    for i, (name, t, r, result) in enumerate(rows):
        ry = y0 + ROW_H * i
        if i % 2:
            out.append(f'<rect x="0" y="{ry}" width="{WIDTH}" height="{ROW_H}" '
                       'fill="#f6f6f6"/>')
        bad = result not in ("ok", "")
        colour = ' fill="#c0392b"' if bad else ""
        label = name + ("  (" + result + ")" if bad else "")
        out.append(f'<text x="{LABEL_W}" y="{ry + 17}" text-anchor="end"'
                   f'{colour}>{escape(label)}</text>')
        for kind, value, colour_, dy in (("time", t, TIME_COLOUR, 3),
                                         ("rss", r, RSS_COLOUR, 3 + BAR_H + 2)):
            v = value if value is not None else 0.0
            w = x(v) - PLOT_X0
            shown = "-" if value is None else f"{value:.2f}"
            out.append(f'<rect class="bar {kind}" data-workload={quoteattr(name)} '
                       f'data-ratio="{shown}" x="{PLOT_X0}" y="{ry + dy}" '
                       f'width="{w:.1f}" height="{BAR_H}" fill="{colour_}">'
                       f'<title>{escape(name)}: {kind} {shown}</title></rect>')
            clip = "+" if value is not None and value > amax else ""
            out.append(f'<text x="{x(v) + 4:.1f}" y="{ry + dy + 8}" '
                       f'font-size="9" fill="#555">{shown}{clip}</text>')
    # Reference lines on top of the bars, their value above the rows.
    for ratio, colour, dash, _ in MARKS:
        if ratio > amax:
            continue
        mx = x(ratio)
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(f'<line class="mark" x1="{mx:.1f}" y1="{y0 - 8}" '
                   f'x2="{mx:.1f}" y2="{y_end}" stroke="{colour}" '
                   f'stroke-width="1.5"{dash_attr}/>')
        out.append(f'<text x="{mx:.1f}" y="{y0 - 10}" font-size="10" '
                   f'fill="{colour}" text-anchor="middle">{ratio:g}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("table")
    ap.add_argument("svg")
    ap.add_argument("--title", default="")
    ap.add_argument("--note", action="append", default=[])
    args = ap.parse_args(argv[1:])
    with open(args.table, encoding="utf-8") as f:
        rows = parse_table(f.read())
    if not rows:
        sys.stderr.write("chart.py: the table has no rows\n")
        return 1
    with open(args.svg, "w", encoding="utf-8") as f:
        f.write(render(rows, args.title, args.note))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
