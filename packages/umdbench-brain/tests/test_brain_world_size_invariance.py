"""Every brain strategy's training step is the same at any split of its global batch: two gloo
ranks (B/2 each) end ``STEPS`` steps (2) with the parameters, buffers (templates, step counter, BatchNorm
statistics) and optimiser state of one process on B, and so do two accumulated micro-batches
unless the strategy declares batch-coupled terms (those must then show on the micro-batch leg,
or the declaration is not needed). One torchrun job for all the cases, the core's included."""

import pytest

from umdbench_brain.testing import CASES, STEPS, factory

pytestmark = pytest.mark.serial  # torchrun with two processes (run.equivalence)

TOLERANCE = 1e-5  # relative, in float64 (uniformer3d's BatchNorm statistics reach ~4e-6)


# trained with the core's cases in one torchrun job (the root conftest.py: equivalence_reports)
EQUIVALENCE_CASES = {factory(name): STEPS for name in CASES}


@pytest.fixture(scope="module")
def reports(equivalence_reports):
    return equivalence_reports


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_and_micro_batches_compute_what_one_process_computes(reports, name):
    report = reports[factory(name)]
    for leg in ("ranks", "rank1"):
        assert report.worst(leg)[1] <= TOLERANCE, (leg, report.worst(leg))
    if report.coupled_terms:
        assert report.worst("micro")[1] > TOLERANCE, f"{name} declares {report.coupled_terms} but accumulates exactly"
    else:
        assert report.worst("micro")[1] <= TOLERANCE, report.worst("micro")
