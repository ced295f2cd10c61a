"""bench/chart.py (the SVG chart of bench/run.sh's table): on a fixed small
table it writes an SVG that parses and has one time bar and one RSS bar per
row, with the values of the table.  (The benchmark itself is not part of
make check.)"""
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SVG = "{http://www.w3.org/2000/svg}"

TABLE = """bench: some lines before the table
| workload | qimg s | qemu-img s | ratio | qimg/cp | RSS ratio | result |
|---|---:|---:|---:|---:|---:|---|
| convert raw->qcow2 | 0.3 | 0.4 | 0.74 | 1.95 | 0.42 | ok |
| compare <late> & diff | 0.9 | 0.3 | 4.67 | - | 0.58 | ok |
| measure | - | - | - | - | - | skipped (not implemented) |
| check 16T | 0.1 | 0.2 | 0.50 | - | 0.45 | FAILED |

geometric mean of the time ratios: 1.2
"""


def test_chart_has_one_bar_of_each_kind_per_row(tmp_path):
    table = tmp_path / "t.txt"
    table.write_text(TABLE)
    out = tmp_path / "t.svg"
    subprocess.run([sys.executable, str(ROOT / "bench" / "chart.py"),
                    str(table), str(out), "--title", "t & <title>",
                    "--note", "load 1.0"], check=True, timeout=30)
    root = ET.parse(out).getroot()
    assert root.tag == SVG + "svg"
    rows = ["convert raw->qcow2", "compare <late> & diff", "measure",
            "check 16T"]
    for kind, values in (("time", ["0.74", "4.67", "-", "0.50"]),
                         ("rss", ["0.42", "0.58", "-", "0.45"])):
        bars = [r for r in root.iter(SVG + "rect")
                if r.get("class") == "bar " + kind]
        assert [b.get("data-workload") for b in bars] == rows
        assert [b.get("data-ratio") for b in bars] == values
        widths = [float(b.get("width")) for b in bars]
        assert widths[2] == 0                  # "-": no length
        assert widths[1] > widths[0] > 0      # longer ratio, longer bar
    # The three reference lines, and the failed row's name in red.
    assert len([ln for ln in root.iter(SVG + "line")
                if ln.get("class") == "mark"]) == 3
    texts = {t.text: t.get("fill") for t in root.iter(SVG + "text")}
    assert texts["check 16T  (FAILED)"] == "#c0392b"
