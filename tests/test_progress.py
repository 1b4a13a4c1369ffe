"""The stage clock of demo / pipeline: stage counter, elapsed time and the time left."""

import pytest

from vlm_rlaif import progress
from vlm_rlaif.progress import StageClock, clock_time


@pytest.fixture
def now(monkeypatch):
    """A settable clock in place of time.perf_counter."""
    clock = {"t": 100.0}
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock["t"])
    return clock


def test_time_left_is_rescaled_by_how_fast_the_stages_so_far_ran(now):
    clock = StageClock(["toyworld", "feedback", "eval"], expected={"toyworld": 50, "feedback": 100, "eval": 300})
    assert clock.starting("toyworld") == "stage 1/3 toyworld: starting (elapsed 0:00, about 7:30 left)"
    now["t"] += 100  # twice as slow as expected
    assert clock.finished("toyworld", "ran", 100.0) == "stage 1/3 done; elapsed 1:40, about 13:20 left"
    clock.starting("feedback")
    now["t"] += 150  # under way: its time so far no longer counts as to go
    assert clock.left() == pytest.approx(2 * 100 - 150 + 2 * 300)
    now["t"] += 100  # past its own estimate: the rest is still to go
    assert clock.left() == pytest.approx(2 * 300)


def test_a_reused_stage_does_not_count_as_this_machines_speed(now):
    clock = StageClock(["sft", "rm", "eval"], expected={"sft": 0, "rm": 60, "eval": 300})
    clock.starting("sft")
    now["t"] += 0.2
    clock.finished("sft", "reused", 0.2)
    assert clock.left() == pytest.approx(360)
    assert StageClock(["rm"]).left() is None and "left" not in StageClock(["rm"]).starting("rm")


def test_clock_time():
    assert [clock_time(s) for s in (7, 250, 3723)] == ["0:07", "4:10", "1:02:03"]
