"""The figure: input/reconstruction thumbnails, score trajectories against the calibration band, score histogram.

Laid out in inches (``Layout``): thumbnails in rows of up to eight pairs across the top, the two plots side by
side below, the figure as tall as its content, so there are no empty bands whatever the number of images.
Everything is in the calibrated score the decision uses (loss ÷ complexity), thumbnails included. Colours:
verdicts green/red, the calibration grey, input groups (the demo's classes) from a palette without those.
The threshold is a bin edge of the histogram, so no bar mixes scores on both sides of it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from genorigin.files import atomic_write_bytes
from genorigin.runtime.decide.calibration import Calibration
from genorigin.runtime.decide.result import AttributionResult

VERDICT_COLOURS = {"belonging": "#1a9641", "non-belonging": "#d7191c", "uncertain": "#e6a100", "error": "#000000"}
CALIBRATION_COLOUR = "#8c8c8c"
GROUP_COLOURS = ("#2c7bb6", "#fdae61", "#7b3294", "#a6611a", "#018571", "#f1b6da")  # no green, red or grey


@dataclass(frozen=True)
class Layout:
    """Sizes in inches."""

    width: float = 15.0
    margin: float = 0.15
    max_cell: float = 0.8  # one thumbnail, at most (a full row of pairs must fit the width)
    pair_gap: float = 0.06  # between an input and its reconstruction
    gap: float = 0.3  # between pairs
    title: float = 0.42  # two lines of 7-point text above each thumbnail
    pairs_per_row: int = 8
    plot_height: float = 3.6
    plot_gap: float = 1.0  # between the two plots (room for the right plot's y label)
    label_room: float = 0.75  # below and left of the plots: tick labels and axis labels

    @property
    def cell(self) -> float:
        k = self.pairs_per_row
        room = self.width - 2 * self.margin - (k - 1) * self.gap - k * self.pair_gap
        return min(self.max_cell, room / (2 * k))

    def tile_rows(self, n: int) -> int:
        return -(-n // self.pairs_per_row) if n else 0

    def height(self, n: int) -> float:
        tiles = self.tile_rows(n) * (self.title + self.cell + 0.12)
        return self.margin + tiles + 0.35 + self.plot_height + self.label_room  # 0.35: the plots' titles


def attribution_figure(
    results: Sequence[AttributionResult], images: np.ndarray, calibration: Calibration, path: str | Path, **options: Any
) -> Path:
    """``figure_png`` (``options``: its labels, max_tiles, threshold) written atomically to ``path``."""
    return atomic_write_bytes(path, figure_png(results, images, calibration, **options))


def figure_png(
    results: Sequence[AttributionResult], images: np.ndarray | None, calibration: Calibration, **options: Any
) -> bytes:
    """``attribution_fig`` (``options``: its labels, max_tiles, threshold, layout) as PNG bytes."""
    fig = attribution_fig(results, images, calibration, **options)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def attribution_fig(
    results: Sequence[AttributionResult],
    images: np.ndarray | None,
    calibration: Calibration,
    labels: Sequence[str] | None = None,
    max_tiles: int = 16,
    threshold: float | None = None,
    layout: Layout = Layout(),
) -> Figure:
    """The figure (``threshold``: the largest belonging score; default the calibration's Grubbs threshold)."""
    thr = calibration.grubbs_threshold if threshold is None else threshold
    idx = _spread(len(results), max_tiles) if images is not None else []
    W, H = layout.width, layout.height(len(idx))
    fig = plt.figure(figsize=(W, H))
    top = H - layout.margin
    for k, i in enumerate(idx):
        row, col = divmod(k, layout.pairs_per_row)
        per_row = min(len(idx) - row * layout.pairs_per_row, layout.pairs_per_row)
        row_width = per_row * (2 * layout.cell + layout.pair_gap) + (per_row - 1) * layout.gap
        x0 = (W - row_width) / 2 + col * (2 * layout.cell + layout.pair_gap + layout.gap)
        y0 = top - (row + 1) * (layout.title + layout.cell + 0.12) + 0.12
        assert images is not None
        caption = labels[i] if labels is not None else Path(results[i].source).name
        xs = [x / W for x in (x0, x0 + layout.cell + layout.pair_gap)]
        _pair(fig, xs, y0 / H, layout.cell / W, layout.cell / H, results[i], images[i], caption)
    plot_w = (W - 2 * layout.margin - layout.label_room - layout.plot_gap) / 2
    y = layout.label_room / H
    rect = [(layout.margin + layout.label_room) / W, y, plot_w / W, layout.plot_height / H]
    _curves(fig.add_axes(rect), results, calibration, thr)
    rect[0] += (plot_w + layout.plot_gap) / W
    _histogram(fig.add_axes(rect), results, calibration, labels, thr)
    return fig


def _pair(
    fig: Figure, xs: list[float], y: float, w: float, h: float, res: AttributionResult, image: np.ndarray, caption: str
) -> None:
    """The input, captioned with its name (its group where groups are given) and verdict, and its
    reconstruction, captioned with the score the plots use."""
    name = caption if len(caption) <= 13 else "…" + caption[-12:]
    for x, img, title, colour in (
        (xs[0], image, f"{name}\n{res.verdict}", VERDICT_COLOURS[res.verdict]),
        (xs[1], res.reconstruction, f"reconstruction\nscore {res.calibrated_loss:.1e}", "black"),
    ):
        ax = fig.add_axes([x, y, w, h])
        ax.axis("off")
        if img is not None:
            ax.imshow(np.clip(np.asarray(img).transpose(1, 2, 0), 0, 1), interpolation="nearest")
        ax.set_title(title, fontsize=7, color=colour, pad=2)


def score_name(calibration: Calibration) -> str:
    return "score (loss ÷ complexity)" if calibration.score == "loss/complexity" else "score (AEDR)"


def _spread(n: int, k: int) -> list[int]:
    return list(range(n)) if n <= k else [round(x) for x in np.linspace(0, n - 1, k)]


def _curves(ax, results: Sequence[AttributionResult], calibration: Calibration, threshold: float) -> None:
    steps = np.asarray(calibration.checkpoint_steps)
    if len(steps):
        band = np.asarray(calibration.checkpoint_scores)
        ax.fill_between(steps, band.min(1), band.max(1), color=CALIBRATION_COLOUR, alpha=0.35, lw=0)
    for res in results:
        if res.trajectory:
            s, v = zip(*res.trajectory)
            ax.plot(s, np.asarray(v) / res.complexity, color=VERDICT_COLOURS[res.verdict], alpha=0.6, lw=0.9)
    ax.axhline(threshold, color="black", ls="--", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel(f"{score_name(calibration)}, best so far")
    ax.set_title("score trajectories", fontsize=9)
    handles = [
        Patch(color=CALIBRATION_COLOUR, alpha=0.35, label="model's own samples (calibration)"),
        Line2D([], [], color=VERDICT_COLOURS["belonging"], label="input called belonging"),
        Line2D([], [], color=VERDICT_COLOURS["non-belonging"], label="input called non-belonging"),
        Line2D([], [], color="black", ls="--", label="threshold"),
    ]
    ax.legend(handles=handles, fontsize=7, loc="best")


def threshold_bins(values: np.ndarray, threshold: float, count: int = 40) -> np.ndarray:
    """Log-spaced bin edges over ``values`` with ``threshold`` exactly one of the edges."""
    logs = np.log10(np.clip(np.asarray(values, dtype=np.float64), 1e-300, None))
    t = np.log10(threshold)
    lo, hi = min(logs.min(), t), max(logs.max(), t)
    width = max(hi - lo, 1e-6) / count
    below, above = int(np.ceil((t - lo) / width)) + 1, int(np.ceil((hi - t) / width)) + 1
    return 10.0 ** (t + width * np.arange(-below, above + 1))


def _histogram(
    ax, results: Sequence[AttributionResult], calibration: Calibration, labels: Sequence[str] | None, threshold: float
) -> None:
    scores = np.asarray([r.calibrated_loss for r in results], dtype=np.float64)
    cal = np.asarray(calibration.scores, dtype=np.float64)
    bins = threshold_bins(np.concatenate([scores, cal]), threshold)
    ax.hist(cal, bins=bins, color=CALIBRATION_COLOUR, alpha=0.6, label="model's own samples (calibration)")
    groups = labels if labels is not None else ["inputs"] * len(scores)
    for colour, g in zip(GROUP_COLOURS * 4, sorted(set(groups))):
        sel = [s for s, lab in zip(scores, groups) if lab == g]
        ax.hist(sel, bins=bins, histtype="step", lw=1.6, color=colour, label=g)
    ax.axvline(threshold, color="black", ls="--", lw=1, label=f"threshold (α = {calibration.alpha:g})")
    ax.set_xscale("log")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"{score_name(calibration)}; left of the threshold: belonging")
    ax.set_ylabel("images")
    ax.set_title("scores against the model's own", fontsize=9)
    ax.legend(fontsize=7, loc="best")
