"""The figure's layout, measured on the rendered figure: captions inside their axes and the figure, no
overlapping titles, no empty bands, distinct colours, the threshold a histogram bin edge, thumbnails labelled
with the score the plots use."""

from __future__ import annotations

import io

import matplotlib
import numpy as np
import pytest
from genorigin.runtime.decide.calibration import quantize_8bit
from genorigin.runtime.loop.settings import InversionSettings, Schedule
from genorigin.runtime.methods.attribution import Attributor
from helpers import tiny_generator
from matplotlib.patches import Rectangle
from PIL import Image

from genorigin.report import (
    CALIBRATION_COLOUR,
    GROUP_COLOURS,
    VERDICT_COLOURS,
    attribution_fig,
    figure_png,
    threshold_bins,
)

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def run():
    gen = tiny_generator()
    att = Attributor(gen, settings=InversionSettings(steps=40, lr=0.05), schedule=Schedule(check_every=10))
    cal = att.calibrate(6)
    own = quantize_8bit(gen.sample(5, seed=11))
    noise = np.random.default_rng(2).random((5, 3, 8, 8)).astype(np.float32)
    images = np.concatenate([own, noise])
    names = [f"a/very/long/folder/name/own_sample_with_a_long_name_{i}.png" for i in range(5)]
    names += [f"photos/IMG_2024_{i:04d}.jpg" for i in range(5)]
    results = att.attribute(images, names, keep_reconstructions=True)
    labels = ["own-tiny"] * 5 + ["real"] * 5
    return results, images, cal, labels, att.accept_threshold()


def _figure(run, n=None):
    results, images, cal, labels, thr = run
    n = n or len(results)
    fig = attribution_fig(results[:n], images[:n], cal, labels[:n], threshold=thr)
    fig.canvas.draw()
    return fig, fig.canvas.get_renderer()


@pytest.mark.parametrize("n", [2, 10])
def test_captions_fit_and_nothing_overlaps(run, n):
    fig, renderer = _figure(run, n)
    page = fig.bbox
    titles = []
    for ax in fig.axes:
        title = ax.title.get_window_extent(renderer)
        assert page.x0 <= title.x0 and title.x1 <= page.x1 and title.y1 <= page.y1, ax.get_title()
        if ax.axison:  # the two plots: title, legend and labels within the plot's width
            box = ax.get_window_extent(renderer)
            assert title.width <= box.width, ax.get_title()
            legend = ax.get_legend().get_window_extent(renderer)
            assert box.x0 <= legend.x0 and legend.x1 <= box.x1 and box.y0 <= legend.y0 and legend.y1 <= box.y1
            for label in (ax.xaxis.label, ax.yaxis.label):
                ext = label.get_window_extent(renderer)
                assert page.x0 <= ext.x0 and ext.x1 <= page.x1 and page.y0 <= ext.y0, label.get_text()
        titles.append(title)
    for i, a in enumerate(titles):
        for b in titles[i + 1 :]:
            assert not a.overlaps(b), "two captions overlap"


@pytest.mark.parametrize("n", [2, 10])
def test_no_empty_band_across_the_figure(run, n):
    """Every horizontal band of the figure taller than half an inch holds part of some axes or caption."""
    fig, renderer = _figure(run, n)
    spans = sorted((b.y0, b.y1) for b in (ax.get_tightbbox(renderer) for ax in fig.axes))
    covered, gaps = fig.bbox.y0, []
    for y0, y1 in spans:
        gaps.append(y0 - covered)
        covered = max(covered, y1)
    gaps.append(fig.bbox.y1 - covered)
    assert max(gaps) / fig.dpi < 0.5, [g / fig.dpi for g in gaps]


def test_colours_differ_and_thumbnails_show_the_score(run):
    results, _, _, labels, _ = run
    assert VERDICT_COLOURS["belonging"] != VERDICT_COLOURS["non-belonging"]
    others = {CALIBRATION_COLOUR, *VERDICT_COLOURS.values()}
    assert not others & set(GROUP_COLOURS)  # the demo's own samples never look like the calibration or a verdict
    fig, _ = _figure(run)
    hist = fig.axes[-1]
    bars = [p for p in hist.patches if isinstance(p, Rectangle) and p.get_height() > 0 and p.get_fill()]
    assert {matplotlib.colors.to_hex(p.get_facecolor()) for p in bars} == {CALIBRATION_COLOUR}
    steps = {matplotlib.colors.to_hex(p.get_edgecolor()) for p in hist.patches if not p.get_fill()}
    assert steps == set(GROUP_COLOURS[:2])  # two groups, two colours, neither the calibration's
    captions = [ax.get_title() for ax in fig.axes if not ax.axison]
    for r, label in zip(results, labels):
        assert f"reconstruction\nscore {r.calibrated_loss:.1e}" in captions
        assert f"{label}\n{r.verdict}" in captions  # the input's group (the demo's class) and its verdict


def test_without_groups_the_caption_is_the_end_of_the_file_name(run):
    results, images, cal, _, thr = run
    fig = attribution_fig(results[:2], images[:2], cal, threshold=thr)
    captions = [ax.get_title() for ax in fig.axes if not ax.axison]
    assert f"…g_name_0.png\n{results[0].verdict}" in captions  # the last 12 characters


def test_the_threshold_is_a_bin_edge(run):
    results, _, cal, _, thr = run
    edges = threshold_bins(np.array([r.calibrated_loss for r in results] + cal.scores), thr)
    assert np.isclose(edges, thr, rtol=1e-12).sum() == 1
    fig, _ = _figure(run)
    for p in fig.axes[-1].patches:
        if isinstance(p, Rectangle) and p.get_fill() and p.get_height() > 0:
            assert not p.get_x() < thr * (1 - 1e-9) < thr * (1 + 1e-9) < p.get_x() + p.get_width()


def test_png_bytes(run):
    results, images, cal, labels, thr = run
    png = figure_png(results, images, cal, labels=labels, threshold=thr)
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG" and im.width > 1000
