"""`chaperone bench --export-html` opened in a real browser (headless Chromium):
the report renders, and each command's plots are drawn in its colour."""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from pngread import read_png

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (ci/test installs it with apt-get)"
)


def screenshot(html: Path, png: Path, width=1000, height=2400):
    subprocess.run(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--window-size={width},{height}", f"--screenshot={png}", html.as_uri(),
        ],
        check=True, capture_output=True, timeout=120,
        env={**os.environ, "HOME": str(png.parent)},
    )
    return read_png(png)


def hue_counts(rows, y0=0, y1=None):
    """Pixels that are clearly blue (the first command) and clearly red (the second)."""
    blue = red = 0
    for row in rows[y0:y1]:
        for r, g, b in row:
            if b > r + 60 and b > g + 20:
                blue += 1
            elif r > b + 60 and r > g + 60:
                red += 1
    return blue, red


def test_html_report_plots_render_in_chromium(chaperone):
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        html = d / "report.html"
        subprocess.run(
            [chaperone, "bench", "--style", "none", "-r", "30", "--export-html", str(html),
             "/bin/true", "/bin/echo hi"],
            check=True, timeout=120,
        )
        width, height, rows = screenshot(html, d / "report.png")
        assert (width, height) == (1000, 2400)
        # Not blank: many distinct colours, and both commands' colours drawn.
        colours = {p for row in rows[::8] for p in row[::8]}
        assert len(colours) > 20, f"only {len(colours)} colours: blank page?"
        blue, red = hue_counts(rows)
        assert blue > 500 and red > 500, (blue, red)
        # The plots, below the table and notes, carry both colours too, in
        # the distribution (boxes) and in the runs-over-time plot (points).
        top = height // 4
        blue, red = hue_counts(rows, top)
        assert blue > 300 and red > 300, (blue, red)


def test_an_empty_metric_section_is_left_out_not_drawn_blank(chaperone):
    # No PMU here: the hardware counters have no section; with one, they do.
    with tempfile.TemporaryDirectory() as d:
        html = Path(d) / "r.html"
        subprocess.run(
            [chaperone, "bench", "--style", "none", "-r", "5", "--export-html", str(html), "/bin/true"],
            check=True, timeout=60,
        )
        text = html.read_text()
        assert '<section id="wall">' in text
        has_pmu = "were not counted" not in text
        assert ('<section id="instructions">' in text) == has_pmu
