"""The simulator's measured error stays as recorded.

``bench/reference/sim_error.json`` holds, per offered load, a trace slice replayed on the
real local cluster (``bench.router --part e2e``): the requests, the cost model the run
fitted and the side work it measured while profiling, the host's cores and the share
other processes used, and the measured TTFT
p50/p90, ITL p50/p90 and hit rate per policy, beside what the simulator gave then (on
the host as described, and on what the other processes left of it). Replaying the slice
through the simulator must give the recorded figures (within 2% / 0.005), so a change
to the simulator or to the policies it shares with production that moves its figures
fails here; re-run ``bench.sim --part error`` with the measured files to re-record it,
and the README's error table with it.
"""

import json

import pytest

from bench.sim_error import REFERENCE, errors, simulate


def test_the_simulator_reproduces_its_recorded_figures_and_error() -> None:
    entries = json.loads(REFERENCE.read_text())["entries"]
    assert len(entries) >= 2  # two offered loads
    for entry in entries:
        for busy_host, suffix in ((False, ""), (True, "_busy_host")):
            simulated = simulate(entry, busy_host=busy_host)
            for key, recorded in entry[f"simulated{suffix}"].items():
                if key.startswith("hit_rate"):
                    assert simulated[key] == pytest.approx(recorded, abs=0.005), key
                else:
                    assert simulated[key] == pytest.approx(recorded, rel=0.02), key
            for key, error in errors(entry["measured"], simulated).items():
                assert abs(error) <= abs(entry[f"errors{suffix}"][key]) + 0.05, key
