"""Pictures people would rather look at: reconstruction grids, loss curves and score distributions."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from genorigin.files import atomic_write_bytes
from genorigin.runtime.attribution import AttributionResult
from genorigin.runtime.calibration import Calibration

VERDICT_COLOURS = {"belonging": "tab:green", "non-belonging": "tab:red"}


def attribution_figure(
    results: Sequence[AttributionResult],
    images: np.ndarray,
    calibration: Calibration,
    path: str | Path,
    labels: Sequence[str] | None = None,
    max_tiles: int = 16,
    threshold: float | None = None,
) -> Path:
    """``figure_png`` written atomically to ``path``."""
    return atomic_write_bytes(path, figure_png(results, images, calibration, labels, max_tiles, threshold))


def figure_png(
    results: Sequence[AttributionResult],
    images: np.ndarray,
    calibration: Calibration,
    labels: Sequence[str] | None = None,
    max_tiles: int = 16,
    threshold: float | None = None,
) -> bytes:
    """One PNG: input/reconstruction pairs, loss curves against the belonging band, and score histogram."""
    fig = plt.figure(figsize=(15, 8.5))
    grid = fig.add_gridspec(2, 2, width_ratios=[1.15, 1], hspace=0.3, wspace=0.22)
    _tiles(fig, grid[:, 0], results, images, max_tiles)
    _curves(fig.add_subplot(grid[0, 1]), results, calibration, labels)
    _histogram(fig.add_subplot(grid[1, 1]), results, calibration, labels)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _tiles(fig, cell, results, images, max_tiles) -> None:
    idx = _spread(len(results), max_tiles)
    cols = 4
    rows = int(np.ceil(len(idx) / cols))
    sub = cell.subgridspec(rows, cols * 2, wspace=0.05, hspace=0.45)
    for k, i in enumerate(idx):
        r, c = divmod(k, cols)
        res = results[i]
        for j, (img, tag) in enumerate(((images[i], "input"), (res.reconstruction, "recon"))):
            ax = fig.add_subplot(sub[r, 2 * c + j])
            ax.axis("off")
            if img is not None:
                ax.imshow(np.clip(np.asarray(img).transpose(1, 2, 0), 0, 1), interpolation="nearest")
            if j == 0:
                ax.set_title(
                    f"{Path(res.source).name[:14]}\n{res.verdict}",
                    fontsize=7,
                    color=VERDICT_COLOURS[res.verdict],
                )
            else:
                ax.set_title(f"{tag}\nloss {res.loss:.1e}", fontsize=7)


def _spread(n: int, k: int) -> list[int]:
    return list(range(n)) if n <= k else [round(x) for x in np.linspace(0, n - 1, k)]


def _curves(ax, results, calibration: Calibration, labels) -> None:
    steps = np.asarray(calibration.checkpoint_steps)
    if len(steps):
        band = np.asarray(calibration.checkpoint_scores)
        ax.fill_between(
            steps, band.min(1), band.max(1), color="tab:green", alpha=0.2, label="own samples (calibration)"
        )
    for res in results:
        if res.trajectory:
            s, v = zip(*res.trajectory)
            colour = VERDICT_COLOURS[res.verdict]
            ax.plot(s, np.asarray(v) / res.complexity, color=colour, alpha=0.5, lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("Adam step")
    ax.set_ylabel("calibrated loss (best so far)")
    ax.set_title("inversion loss curves (green = belonging verdict, red = non-belonging)", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")


def _histogram(ax, results, calibration: Calibration, labels) -> None:
    scores = np.asarray([r.calibrated_loss for r in results])
    cal = np.asarray(calibration.scores)
    lo = np.log10(max(min(scores.min(), cal.min()), 1e-12))
    hi = np.log10(max(scores.max(), cal.max()))
    bins = np.logspace(lo - 0.1, hi + 0.1, 40)
    ax.hist(cal, bins=bins, color="tab:green", alpha=0.5, label="calibration (own samples)")
    groups = sorted(set(labels)) if labels is not None else ["inputs"]
    for g in groups:
        sel = [s for s, lab in zip(scores, labels or ["inputs"] * len(scores)) if lab == g]
        ax.hist(sel, bins=bins, histtype="step", lw=1.5, label=g)
    ax.axvline(calibration.grubbs_threshold, color="k", ls="--", lw=1, label=f"Grubbs α={calibration.alpha}")
    ax.set_xscale("log")
    ax.set_xlabel("calibrated loss")
    ax.set_ylabel("images")
    ax.legend(fontsize=7)
    ax.set_title("scores vs the belonging distribution", fontsize=9)
