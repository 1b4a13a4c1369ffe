"""Where a run of several stages is: "stage 3/7", the time elapsed and an estimate of the time left.

    clock = StageClock(["toyworld", "feedback", "eval"], expected={"toyworld": 86, "feedback": 60, "eval": 300})
    print(clock.starting("toyworld"))   # stage 1/3 toyworld: starting (elapsed 0:00, about 7:26 left)
    print(clock.finished("toyworld", "ran", 80.2))   # stage 1/3 done; elapsed 1:20, about 5:47 left

The estimate is the expected seconds of the stages not yet done (a stage that will be reused expects
0), scaled by how much faster or slower than expected the stages that ran so far went (this
machine's speed); with no expectations it says nothing about the time left.
"""

from __future__ import annotations

import time

NO_WORK = ("reused", "shipped")  # statuses of a stage that took no time worth timing this machine by


def clock_time(seconds: float) -> str:
    """0:07, 4:10, 1:02:03."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class StageClock:
    def __init__(self, stages: list[str], expected: dict[str, float] | None = None):
        self.stages = list(stages)
        self.expected = dict(expected or {})
        self.started = time.perf_counter()
        self.stage_started = self.started
        self.current: str | None = None
        self.took: dict[str, float] = {}  # stages done: seconds (0 for a reused one)
        self.ran: dict[str, float] = {}  # of those, the ones that did work, for the speed estimate

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float | None:
        """Seconds still to go (of the stages not done; the running one's time so far deducted)."""
        if not self.expected:
            return None
        pending = [s for s in self.stages if s not in self.took]
        expected_ran = sum(self.expected.get(s, 0.0) for s in self.ran)
        # Clamped: one stage that had little to do (resumed near its end) must not stretch the rest.
        speed = min(max(sum(self.ran.values()) / expected_ran, 0.25), 4.0) if expected_ran > 0 else 1.0
        left = 0.0
        for stage in pending:
            expected = self.expected.get(stage, 0.0) * speed
            if stage == self.current:  # under way: what it has done so far is no longer to go
                expected = max(expected - (time.perf_counter() - self.stage_started), 0.0)
            left += expected
        return left

    def _where(self) -> str:
        left = self.left()
        return f"elapsed {clock_time(self.elapsed())}" + (f", about {clock_time(left)} left" if left is not None else "")

    def _number(self, name: str) -> str:
        return f"stage {self.stages.index(name) + 1}/{len(self.stages)}"

    def starting(self, name: str) -> str:
        """The line for a stage that starts now."""
        self.stage_started = time.perf_counter()
        self.current = name
        return f"{self._number(name)} {name}: starting ({self._where()})"

    def finished(self, name: str, status: str, seconds: float) -> str:
        """Records a stage as done in `seconds` ("reused", "shipped": it did no training) and
        returns the line's clock part."""
        self.took[name] = seconds
        self.current = None
        if status not in NO_WORK:
            self.ran[name] = seconds
        return f"{self._number(name)} done; {self._where()}"


__all__ = ["StageClock", "clock_time"]
