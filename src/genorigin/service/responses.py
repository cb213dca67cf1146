"""Answers as JSON: one model's result, the cross-model decision, several files; errors in the one error shape.

A model's answer is ``AttributionResult.to_dict()`` (what ``genorigin attribute --json`` reports per image:
the image's facts as ``input``, and ``warning`` when it lies outside the calibration) plus the model name,
where the time went and the loop steps at which the job joined and left the batch. Non-finite floats become
null: the body is always strict JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from genorigin.facts import ImageFacts
from genorigin.runtime.decide.calibration import Calibration
from genorigin.runtime.decide.multimodel import decide_across
from genorigin.runtime.decide.result import AttributionResult
from genorigin.runtime.loop.live import Job
from genorigin.runtime.robust.coverage import record_input
from genorigin.service.errors import error_payload


@dataclass
class ModelAnswer:
    """One model's answer for one upload: the HTTP status it stands for and its JSON."""

    status: int
    body: dict[str, Any]
    result: AttributionResult | None = None


def _progress(job: Job, result: AttributionResult | None) -> dict[str, Any]:
    return {
        "queue_ms": 1000.0 * ((job.started or job.answered) - job.enqueued) if job.enqueued else 0.0,
        "inversion_ms": 1000.0 * (job.answered - job.started) if job.started and job.answered else 0.0,
        "admitted_step": job.admitted_step,
        "finished_step": job.finished_step,
        "steps": result.steps if result is not None else 0,
    }


def model_answer(model: str, job: Job, result: AttributionResult | None, facts: ImageFacts,
                 calibration: Calibration | None, answered: bool = True) -> ModelAnswer:  # fmt: skip
    """200 with the verdict (and the coverage warning when the upload lies outside ``calibration``); 504 with
    the best score so far when the deadline cancelled it; 500 if it failed."""
    if job.error is not None:
        return ModelAnswer(500, error_payload(500, "internal", f"inversion failed: {job.error}", {"model": model}))
    if result is None or result.stop_reason == "cancelled":
        known = {"best_loss": None, "best_calibrated_loss": None}
        if result is not None:
            known = {"best_loss": result.loss, "best_calibrated_loss": result.calibrated_loss}
        stage = "queued" if job.started == 0.0 else "running"
        message = f"deadline passed before model {model!r} decided (while {stage})"
        if not answered:
            message += "; its slots are freed at the loop's next checkpoint"
        details = {"model": model, "source": job.name, "stage": stage, **known, **_progress(job, result)}
        return ModelAnswer(504, error_payload(504, "deadline_exceeded", message, details))
    record_input(result, facts, calibration)  # the same places the command line's results keep them
    body = {"model": model, **result.to_dict(), "timing": _progress(job, result)}
    return ModelAnswer(200, body, result)


def cross_answer(source: str, answers: dict[str, ModelAnswer]) -> ModelAnswer:
    """Every model's answer plus the decision across them (``decide_across``); the worst status if any failed."""
    failed = {m: a for m, a in answers.items() if a.status != 200}
    if failed:
        status = max(a.status for a in failed.values())
        first = next(a for a in failed.values() if a.status == status).body["error"]
        details = {**first["details"], "source": source, "models": {m: a.body for m, a in answers.items()}}
        return ModelAnswer(status, error_payload(status, first["code"], first["message"], details))
    decision = decide_across({m: a.result for m, a in answers.items() if a.result is not None})
    body = {"source": source, **decision.to_dict(), "models": {m: a.body for m, a in answers.items()}}
    return ModelAnswer(200, body)


def several_files(answers: list[tuple[str, ModelAnswer]]) -> ModelAnswer:
    """A multipart request: one entry per file; 200 if any file was answered, else the first file's status."""
    results = [{"filename": name, "status": a.status, **a.body} for name, a in answers]
    ok = any(a.status == 200 for _, a in answers)
    return ModelAnswer(200 if ok else answers[0][1].status, {"results": results})
