"""Shared pieces of the benchmarks: evaluation sets, metrics, machine description."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from genorigin.export.bundled import BUNDLED_MODELS, load_bundled, real_images_dir
from genorigin.runtime.decide.calibration import quantize_8bit

from genorigin.images import load_rgb8

EVAL_SAMPLE_SEED = 777  # fresh samples: neither the calibration seed nor the demo seed


def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


def real_crops(n: int | None = None, offset: int = 0) -> np.ndarray:
    paths = sorted(real_images_dir().glob("*.png"))[offset : None if n is None else offset + n]
    if n is not None and len(paths) < n:
        raise ValueError(f"only {len(paths)} bundled real crops from offset {offset}, {n} asked")
    return np.stack([(load_rgb8(p).astype(np.float32) / 255.0).transpose(2, 0, 1) for p in paths])


def evaluation_sets(
    inspected: str, n: int, seed: int = EVAL_SAMPLE_SEED, real_offset: int = 0
) -> dict[str, np.ndarray]:
    """'own' = fresh samples of the inspected model; the rest are non-belonging classes.

    Another ``seed`` and ``real_offset`` give a second, disjoint evaluation set (for validating a choice
    made on the first one).
    """
    sets = {"own": quantize_8bit(load_bundled(inspected).sample(n, seed=seed))}
    for other in BUNDLED_MODELS:
        if other != inspected:
            sets[other] = quantize_8bit(load_bundled(other).sample(n, seed=seed))
    sets["real"] = real_crops(n, real_offset)
    return sets


def auc(neg_scores: np.ndarray, pos_scores: np.ndarray) -> float:
    """P(score of a non-belonging image > score of a belonging one), ties counted half (Mann–Whitney)."""
    pos = np.asarray(pos_scores)[:, None]
    neg = np.asarray(neg_scores)[None, :]
    return float((neg > pos).mean() + 0.5 * (neg == pos).mean())


def roc_curve(belonging: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) with 'non-belonging' as the positive class, over all thresholds."""
    thr = np.unique(np.concatenate([belonging, other]))[::-1]
    tpr = np.array([(other >= t).mean() for t in thr])
    fpr = np.array([(belonging >= t).mean() for t in thr])
    return np.concatenate([[0], fpr, [1]]), np.concatenate([[0], tpr, [1]])


def write(path: str | Path, text: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)
