"""The repository stays lean: no tracked file over 1 MB, docs/ at most 5 MB.

Raw bench runs (``runs.csv``) and vector figures are reproduced by the command on each page
and ignored by git; the pages keep their summaries and PNG figures, written with a 256-colour
palette (``iapo.bench.plots.compact_png``).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MB = 1_000_000


def tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    return [ROOT / p for p in out.stdout.decode().split("\0") if p and (ROOT / p).is_file()]


def test_no_tracked_file_is_over_1_mb() -> None:
    files = tracked()
    assert len(files) > 100  # the listing worked
    big = {str(p.relative_to(ROOT)): p.stat().st_size for p in files if p.stat().st_size > MB}
    assert not big, f"tracked files over 1 MB: {big}; keep raw results out of git"


def test_docs_are_at_most_5_mb_and_raw_runs_are_ignored() -> None:
    docs = [p for p in tracked() if p.is_relative_to(ROOT / "docs")]
    assert sum(p.stat().st_size for p in docs) <= 5 * MB
    assert not [p for p in docs if p.name == "runs.csv" or p.suffix == ".svg"]
    ignored = subprocess.run(["git", "check-ignore", "docs/bench/runs.csv", "docs/x/y.svg"],
                             cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert ignored == ["docs/bench/runs.csv", "docs/x/y.svg"]


def test_figures_are_written_with_a_palette(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from iapo.bench.plots import save_figure

    fig, ax = plt.subplots()
    ax.plot([0, 1, 2], [0, 1, 4], label="a line")
    ax.legend()
    png, svg = save_figure(fig, tmp_path / "fig")
    with Image.open(png) as im:
        assert im.mode == "P" and im.size[0] > 300
        colours = im.getcolors(256)
        assert colours is not None and len(colours) > 2  # a real picture, not a blank
    assert svg.read_text().lstrip().startswith("<?xml")
