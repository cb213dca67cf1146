"""Results as people and spreadsheets read them: a table with a legend, a summary line, CSV."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from genorigin.runtime.decide.calibration import Calibration
    from genorigin.runtime.decide.result import AttributionResult

NAME_WIDTH = 36
RULE_NAMES = {"grubbs": "one-sided Grubbs test", "quantile": "empirical quantile", "aedr-kde": "KDE quantile"}
CSV_FIELDS = (
    "source",
    "verdict",
    "calibrated_loss",
    "p_value",
    "loss",
    "complexity",
    "statistic",
    "critical_value",
    "rule",
    "steps",
    "stop_reason",
    "evaluations",
    "fresh_starts",
    "seconds",
)


def tail(text: str, width: int) -> str:
    """The end of ``text`` in ``width`` characters: the file name, not the folders above it, stays visible."""
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def p_text(value: float | None) -> str:
    if value is None:
        return "-"
    return "<1e-4" if value < 1e-4 else f"{value:.2g}"


def format_table(
    results: Sequence[AttributionResult],
    threshold: float,
    calibration: Calibration,
    labels: Sequence[str] | None = None,
) -> str:
    """One row per image, then a legend saying what each column means and where the threshold comes from."""
    head = f"{'image':<{NAME_WIDTH}} {'verdict':<13} {'score':>9} {'p-value':>7} {'steps':>5}  stop"
    lines = [head, "-" * len(head)]
    for i, r in enumerate(results):
        name = r.source if labels is None else f"{labels[i]}/{r.source.rsplit('/', 1)[-1]}"
        lines.append(
            f"{tail(name, NAME_WIDTH):<{NAME_WIDTH}} {r.verdict:<13} {r.calibrated_loss:9.2e} "
            f"{p_text(r.p_value):>7} {r.steps:5d}  {r.stop_reason}"
        )
    return "\n".join([*lines, "", *legend(threshold, calibration, results[0].rule if results else "grubbs")])


def legend(threshold: float, calibration: Calibration, rule: str) -> list[str]:
    what = "inversion loss ÷ image complexity" if calibration.score == "loss/complexity" else calibration.score
    test = RULE_NAMES.get(rule, rule)
    return [
        f"score: {what}; lower = closer to the model's own images. belonging if score ≤ {threshold:.3g}",
        f"  ({test} at α = {calibration.alpha:g} against {calibration.n} of the model's own samples).",
        "p-value: how often the model's own images score this high (small: unlike them). steps: optimiser",
        "  steps spent; stop: why it stopped (belonging/non-belonging: early decision, budget: all steps).",
        *(
            [
                "uncertain: the score is within the calibration's reproducibility band "
                f"(×{math.exp(calibration.band):.2f}) of the threshold: another CPU may read it either way "
                "(--json: readings)."
            ]
            if calibration.band
            else []
        ),
    ]


def summary_line(results: Sequence[AttributionResult], unreadable: int, skipped: int = 0) -> str:
    """``12 images: 4 belonging, 7 non-belonging, 1 uncertain; 1 unreadable; 2 skipped``."""
    belonging = sum(r.belonging for r in results)
    uncertain = sum(r.verdict == "uncertain" for r in results)
    text = f"{len(results)} images: {belonging} belonging, {len(results) - belonging - uncertain} non-belonging"
    text += f", {uncertain} uncertain" if uncertain else ""
    text += f"; {unreadable} unreadable" if unreadable else ""
    text += f"; {skipped} skipped" if skipped else ""
    return text


def to_csv(results: Sequence[AttributionResult]) -> str:
    """One row per result (the table's columns and the rest of the numbers), plus how the input was converted and
    the warning when it lies outside what the calibration covers."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*CSV_FIELDS, "conversion", "warning"])
    for r in results:
        row = r.to_dict()
        writer.writerow([*(row[k] for k in CSV_FIELDS), (r.input or {}).get("conversion") or "", r.warning or ""])
    return buf.getvalue()
