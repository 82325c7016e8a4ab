"""E/M schedules: which parameter group each gradient step of training moves.

* ``joint``: AEVB, phi and theta together every step;
* ``e-step``: phi only, the approximate E-step (variational inference; the evidence cannot move);
* ``m-step``: theta only, the approximate M-step;
* ``alternate:E,M``: E steps on phi, then M steps on theta, repeated.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

PHASE_GROUPS = {"joint": ("inference", "generative"), "e": ("inference",), "m": ("generative",)}
PHASE_NAMES = {"joint": "theta and phi", "e": "phi (model.inference)", "m": "theta (model.generative)"}
SCHEDULE_HELP = "joint, e-step, m-step or alternate:E,M (E steps on phi, then M steps on theta)"


@dataclass(frozen=True)
class Schedule:
    """Which phase ('joint', 'e' or 'm') gradient step ``step`` (0-based) belongs to."""

    e_steps: int = 0
    m_steps: int = 0
    only: str | None = "joint"

    @classmethod
    def parse(cls, text: str) -> "Schedule":
        fixed = {"joint": "joint", "e-step": "e", "m-step": "m"}
        if text in fixed:
            return cls(only=fixed[text])
        match = re.fullmatch(r"alternate:(\d+),(\d+)", text)
        if not match or int(match[1]) == 0 or int(match[2]) == 0:
            raise ValueError(f"bad schedule {text!r}: use {SCHEDULE_HELP}, e.g. alternate:1000,1000")
        return cls(int(match[1]), int(match[2]), only=None)

    def __str__(self) -> str:
        names = {"joint": "joint", "e": "e-step", "m": "m-step"}
        return names[self.only] if self.only else f"alternate:{self.e_steps},{self.m_steps}"

    def phase(self, step: int) -> str:
        if self.only:
            return self.only
        return "e" if step % (self.e_steps + self.m_steps) < self.e_steps else "m"

    def phases(self) -> tuple[str, ...]:
        """The phases this schedule steps."""
        return (self.only,) if self.only else ("e", "m")

    def phase_of(self, first: int, stop: int) -> str:
        """The phase of steps first, ..., stop - 1 (an epoch's), or 'mixed' where they are of two."""
        phases = {self.phase(step) for step in range(first, stop)}
        return phases.pop() if len(phases) == 1 else "mixed"

    def phase_spans(self, total_steps: int) -> list[tuple[str, int, int]]:
        """[(phase, first_step, last_step + 1)], consecutive steps of one phase merged."""
        spans: list[tuple[str, int, int]] = []
        for step in range(total_steps):
            phase = self.phase(step)
            if spans and spans[-1][0] == phase:
                spans[-1] = (phase, spans[-1][1], step + 1)
            else:
                spans.append((phase, step, step + 1))
        return spans
