"""The paper's loop gives the results it gave before the reshape (issue 11: "without changing a single result").

``tests/data/paper_loop_fd7921e.json`` was recorded by this very procedure on commit fd7921e (the loop before
the slot pool, the optimiser table and the registries): calibration scores, every image's loss, steps, stop
reason, verdict and trajectory, for the plain loop and for successive halving, on the bundled dcgan_a. On the
machine it was recorded on the match is bit for bit; the tolerance only allows another CPU's float rounding.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from genorigin.export.bundled import load_bundled
from genorigin.runtime.attribution import Attributor, quantize_8bit
from genorigin.runtime.inversion import InversionSettings, Schedule

REFERENCE = json.loads((Path(__file__).parent / "data" / "paper_loop_fd7921e.json").read_text())
RUNS = {
    "plain": (InversionSettings(steps=120, restarts=2), Schedule(batch_size=5, check_every=10)),
    "halve": (
        InversionSettings(steps=100, restarts=4, halve_starts_at=(15, 40)),
        Schedule(batch_size=3, check_every=25),
    ),
}

pytestmark = pytest.mark.slow  # minutes: see README for the quick subset


@pytest.mark.parametrize("name", sorted(RUNS))
def test_paper_loop_reproduces_the_recorded_results(name: str) -> None:
    gen = load_bundled("dcgan_a")
    settings, schedule = RUNS[name]
    attributor = Attributor(gen, settings=settings, schedule=schedule)
    calibration = attributor.calibrate(8)
    images = np.concatenate(
        [quantize_8bit(gen.sample(6, seed=5)), quantize_8bit(load_bundled("dcgan_b").sample(6, seed=5))]
    )
    results = attributor.attribute(images)
    want = REFERENCE[name]
    np.testing.assert_allclose(calibration.scores, want["cal"], rtol=1e-5)
    assert [(r.steps, r.stop_reason, r.verdict) for r in results] == [tuple(w[1:]) for w in want["res"]]
    np.testing.assert_allclose([r.loss for r in results], [w[0] for w in want["res"]], rtol=1e-5)
    for got, expected in zip(results, want["traj"]):
        assert [s for s, _ in got.trajectory] == [s for s, _ in expected]
        np.testing.assert_allclose([v for _, v in got.trajectory], [v for _, v in expected], rtol=1e-5)
