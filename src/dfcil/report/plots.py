"""Report plots (PNG, matplotlib's Agg canvas, written atomically).

Figures are built with ``matplotlib.figure.Figure`` on an explicit ``FigureCanvasAgg``, so
neither pyplot's global figure registry nor the process-wide backend is touched; each
figure is cleared (closed) right after it is saved.
"""

from __future__ import annotations

import math
import textwrap
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps, font_manager
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from PIL import Image, UnidentifiedImageError

from dfcil.atomic import atomic_write
from dfcil.errors import DataError
from dfcil.report.aggregate import methods
from dfcil.report.model import Group
from dfcil.report.runs import RunRecord

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")


def new_figure(width: float, height: float) -> Figure:
    """A pyplot-free figure with an Agg canvas (no global matplotlib state)."""
    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


#: fonts tried, in order, for characters the default font lacks (class names in CJK scripts)
FALLBACK_FONTS = ("Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK TC", "Noto Sans CJK KR",
                  "WenQuanYi Zen Hei", "Droid Sans Fallback", "Arial Unicode MS", "Noto Sans")


def _font_families() -> list[str]:
    """DejaVu Sans, then the installed fallback fonts (matplotlib takes each glyph from the first
    family that has it)."""
    installed = {entry.name for entry in font_manager.fontManager.ttflist}
    return ["DejaVu Sans", *(name for name in FALLBACK_FONTS if name in installed)]


def wrap_title(text: str, figure_width: float, fontsize: float = 10.0) -> str:
    """``text`` broken into lines that fit a figure ``figure_width`` inches wide (each of its
    lines wrapped on its own), so a long run name is not clipped at the figure's edges."""
    chars = max(20, int(figure_width * 100 / (0.6 * fontsize)))  # DejaVu Sans: ~0.6 em per character
    return "\n".join(textwrap.fill(line, chars) if line else line for line in text.split("\n"))


@contextmanager
def _fallback_fonts(figure: Figure) -> Iterator[None]:
    """Within the block, ``figure``'s text uses the installed fallback fonts for glyphs DejaVu
    Sans lacks, and a glyph no font has is drawn as a box without a warning per character."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from", category=UserWarning)
        families = _font_families()
        for text in figure.findobj(Text):
            text.set_fontfamily(families)
        yield


def tight_layout(figure: Figure) -> None:
    """``figure.tight_layout()`` with the fonts of :func:`save_figure` (the layout measures the
    text, so it must see the fonts the text is drawn in)."""
    with _fallback_fonts(figure):
        figure.tight_layout()


def save_figure(figure: Figure, path: Path) -> Path:
    """Save ``figure`` as a PNG at ``path`` atomically, then close (clear) it; class names in
    scripts DejaVu Sans lacks (CJK) are drawn in an installed font that has them."""
    try:
        with _fallback_fonts(figure):
            atomic_write(path, lambda handle: figure.savefig(handle, format="png"))
    finally:
        figure.clear()
    return path


def _number(value: Any) -> float:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def classes_learned(record: RunRecord) -> list[int] | None:
    """Cumulative number of classes after each task, from ``metrics.json``'s ``tasks``."""
    tasks = record.metrics.get("tasks")
    if not isinstance(tasks, list) or not all(isinstance(t, list) for t in tasks):
        return None
    return list(np.cumsum([len(t) for t in tasks]).tolist())


def accuracy_curve(protocol: str, groups: Sequence[Group], path: Path) -> Path:
    """Accuracy on all seen classes vs classes learned: one line per method, ± std band."""
    figure = new_figure(9.0, 4.8)
    axes = figure.add_subplot()
    # tab20 is a ListedColormap, whose colours are a tuple of RGB tuples (the stubs type it as a plain Colormap)
    palette = colormaps["tab20"].colors  # type: ignore[attr-defined]
    colours = palette[0::2] + palette[1::2]  # ten distinct hues first, then their light shades
    ticks: set[int] = set()
    for index, method in enumerate(methods(groups)):
        runs = [r for g in groups if g.protocol == protocol and g.method == method for r in g.runs]
        found = [
            (classes_learned(r), [_number(v) for v in r.metrics.get("accuracy_per_step") or []]) for r in runs
        ]
        curves = [(x, y) for x, y in found if x and len(x) == len(y)]
        if not curves:
            continue
        x = curves[0][0]
        ys = np.array([y for cx, y in curves if cx == x], dtype=float)
        mean = ys.mean(axis=0)
        colour = colours[index % len(colours)]
        axes.plot(x, mean, color=colour, marker=MARKERS[index % len(MARKERS)], label=f"{method} (n={len(ys)})")
        if len(ys) > 1:
            std = ys.std(axis=0, ddof=1)
            axes.fill_between(x, mean - std, mean + std, color=colour, alpha=0.2, linewidth=0)
        ticks.update(x)
    axes.set_xticks(sorted(ticks))
    axes.set_title(protocol)
    axes.set_xlabel("classes learned")
    axes.set_ylabel("accuracy on all seen classes (%)")
    axes.set_ylim(0, 100)
    axes.grid(alpha=0.3)
    if axes.lines:
        axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    tight_layout(figure)
    return save_figure(figure, path)


def accuracy_matrix(record: RunRecord, title: str, path: Path) -> Path | None:
    """Heat map of the accuracy matrix (row: after task i, column: task j; blank above the diagonal)."""
    rows = record.metrics.get("accuracy_matrix")
    if not isinstance(rows, list) or not rows or not all(isinstance(r, list) for r in rows):
        return None
    size = max(len(rows), max(len(r) for r in rows))
    matrix = np.full((len(rows), size), np.nan)
    for i, row in enumerate(rows):
        matrix[i, : len(row)] = [_number(v) for v in row]
    side = 1.0 + 0.7 * size
    figure = new_figure(max(4.0, side + 1.5), max(3.5, 0.7 * len(rows) + 1.5))
    axes = figure.add_subplot()
    image = axes.imshow(np.ma.masked_invalid(matrix), cmap="viridis", vmin=0, vmax=100)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            if not math.isnan(matrix[i, j]):
                colour = "black" if matrix[i, j] > 60 else "white"
                axes.text(j, i, f"{matrix[i, j]:.1f}", ha="center", va="center", fontsize=8, color=colour)
    axes.set_xticks(range(size), [str(j + 1) for j in range(size)])
    axes.set_yticks(range(len(rows)), [str(i + 1) for i in range(len(rows))])
    axes.set_xlabel("test data of task j")
    axes.set_ylabel("after learning task i")
    axes.set_title(wrap_title(f"accuracy matrix\n{title}", figure.get_figwidth()), fontsize=10)
    figure.colorbar(image, ax=axes, label="accuracy (%)")
    tight_layout(figure)
    return save_figure(figure, path)


def old_new(record: RunRecord, title: str, path: Path) -> Path | None:
    """Accuracy on the old and on the new classes after each step (two lines)."""
    entries = record.metrics.get("old_new_accuracy")
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        return None
    steps = [int(e.get("step", i + 1)) for i, e in enumerate(entries)]
    figure = new_figure(6.0, 4.0)
    axes = figure.add_subplot()
    axes.plot(steps, [_number(e.get("old")) for e in entries], marker="o", label="old classes")
    axes.plot(steps, [_number(e.get("new")) for e in entries], marker="s", label="new classes")
    axes.set_xticks(steps)
    axes.set_xlabel("step (task learned)")
    axes.set_ylabel("accuracy (%)")
    axes.set_ylim(0, 100)
    axes.set_title(wrap_title(f"old vs new classes\n{title}", figure.get_figwidth()), fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    tight_layout(figure)
    return save_figure(figure, path)


def _load_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError) as error:
        raise DataError(f"{path}: damaged image ({' '.join(str(error).split())})") from None


def synthesis_page(record: RunRecord, title: str, path: Path) -> Path | None:
    """One page collecting the run's ``synthesis/task_N.png`` grids, titled by task."""
    grids = record.synthesis_grids
    if not grids:
        return None
    columns = min(3, len(grids))
    lines = math.ceil(len(grids) / columns)
    figure = new_figure(4.0 * columns, 4.0 * lines + 0.6)
    for index, (task, file) in enumerate(grids):
        axes = figure.add_subplot(lines, columns, index + 1)
        axes.imshow(_load_image(file), interpolation="nearest")
        axes.set_title(f"task {task}: synthetic samples", fontsize=10)
        axes.set_axis_off()
    figure.suptitle(wrap_title(f"synthetic samples\n{title}", figure.get_figwidth(), 12.0))
    tight_layout(figure)
    return save_figure(figure, path)

