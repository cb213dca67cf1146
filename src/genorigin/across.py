"""Several models on the same images (``genorigin attribute --model A --model B``): each model's results joined
per image and decided across them by ``runtime.decide.multimodel.decide_across``, the rule of the service's
``model=all``, so the command line and the service give the same answer for the same image.

An image is answered when every model attributed it; one that some model could not read is reported in the
errors (each model's reading names it). The report's entries have the service's cross-model shape:
``{"source", "decision", "verdict", "accepting", "ambiguous", "rule", "models": {name: the model's result}}``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from genorigin.runtime.decide.multimodel import CrossModelDecision, decide_across
from genorigin.tables import NAME_WIDTH, p_text, tail

if TYPE_CHECKING:
    from genorigin.runtime.decide.result import AttributionResult
    from genorigin.runtime.methods.files import FileAttribution

CSV_PER_MODEL = ("verdict", "p_value", "calibrated_loss", "steps", "stop_reason")


@dataclass(frozen=True)
class Row:
    """One image: every model's result and the decision across them."""

    source: str
    results: dict[str, AttributionResult]
    decision: CrossModelDecision

    def to_dict(self) -> dict[str, Any]:
        models = {name: {"model": name, **r.to_dict()} for name, r in self.results.items()}
        return {"source": self.source, **self.decision.to_dict(), "models": models}


def join(found: Mapping[str, FileAttribution]) -> tuple[list[Row], list[str], list[str]]:
    """Rows (in the first model's order) for the images every model attributed; the errors and skip notes of
    every model's reading, each once."""
    by_source = {name: {r.source: r for r in f.results} for name, f in found.items()}
    first = next(iter(found.values()))
    rows = []
    for r in first.results:
        if all(r.source in results for results in by_source.values()):
            per_model = {name: results[r.source] for name, results in by_source.items()}
            rows.append(Row(r.source, per_model, decide_across(per_model)))
    errors = list(dict.fromkeys(e for f in found.values() for e in f.errors))
    skipped = list(dict.fromkeys(s for f in found.values() for s in f.skipped))
    return rows, errors, skipped


def summary(rows: list[Row], models: list[str], unreadable: int, skipped: int) -> dict[str, Any]:
    made = {m: sum(row.decision.model == m for row in rows) for m in models}
    return {"images": len(rows), "decided": made, "none": sum(row.decision.model is None for row in rows),
            "ambiguous": sum(row.decision.ambiguous for row in rows), "unreadable": unreadable,
            "skipped": skipped}  # fmt: skip


def summary_line(s: dict[str, Any]) -> str:
    """``8 images: 3 made by dcgan_a, 4 by dcgan_b, 1 by none of them (1 ambiguous); 1 unreadable``."""
    made = ", ".join(f"{n} {'made ' if i == 0 else ''}by {m}" for i, (m, n) in enumerate(s["decided"].items()))
    text = f"{s['images']} images: {made}, {s['none']} by none of them"
    text += f" ({s['ambiguous']} ambiguous)" if s["ambiguous"] else ""
    text += f"; {s['unreadable']} unreadable" if s["unreadable"] else ""
    text += f"; {s['skipped']} skipped" if s["skipped"] else ""
    return text


def format_table(rows: list[Row], models: list[str]) -> str:
    """One row per image: the decision, then each model's verdict and p-value; a legend for the rule."""
    width = max(8, *(len(m) + 1 for m in models))
    head = f"{'image':<{NAME_WIDTH}} {'decision':<{width}}" + "".join(f" {m[:21]:<21}" for m in models)
    lines = [head, f"{'':<{NAME_WIDTH}} {'':<{width}}" + " verdict         p-value" * len(models), "-" * len(head)]
    for row in rows:
        decided = (row.decision.model or "none") + ("*" if row.decision.ambiguous else "")
        cells = "".join(f" {row.results[m].verdict:<13} {p_text(row.results[m].p_value):>7}" for m in models)
        lines.append(f"{tail(row.source, NAME_WIDTH):<{NAME_WIDTH}} {decided:<{width}}{cells}")
    legend = [
        "decision: the model that made the image, or none. Each model tests the image against its own calibration;",
        "  several accepting (*: ambiguous): the largest p-value, then the smallest statistic/critical value, then",
        "  the name (runtime/decide/multimodel.py; the service's model=all). p-value: how often that model's own",
        "  images score this high (small: unlike them).",
    ]
    return "\n".join([*lines, "", *legend])


def to_csv(rows: list[Row], models: list[str]) -> str:
    """One row per image: the decision, then each model's verdict, p-value, score, steps and stop reason."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["source", "decision", "ambiguous", "accepting",
                     *(f"{m}.{k}" for m in models for k in CSV_PER_MODEL)])  # fmt: skip
    for row in rows:
        per_model = [row.results[m].to_dict()[k] for m in models for k in CSV_PER_MODEL]
        writer.writerow([row.source, row.decision.model or "", row.decision.ambiguous,
                         ";".join(row.decision.accepting), *per_model])  # fmt: skip
    return buf.getvalue()
