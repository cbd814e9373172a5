"""Where a run's wall time goes: named phases (imports, loading, generation, training, saving), as the CLI's summary,
the notebook and bench/course_run.py print them, so a student sees what trains and what does not. No torch import."""

import time
from contextlib import contextmanager


class Phases:
    """Wall seconds of each named phase, in the order they first ran; a phase that runs twice adds up."""

    def __init__(self, seconds: dict[str, float] | None = None) -> None:
        self.seconds: dict[str, float] = dict(seconds or {})
        self._cell_start = time.perf_counter()

    def watch_cells(self) -> "Phases":
        """In a notebook: note when each cell starts, so `cell_done` times its cell, not your reading between cells."""
        from IPython import get_ipython

        shell = get_ipython()
        if shell is not None:
            shell.events.register("pre_run_cell", self._cell_started)
        return self

    def _cell_started(self, info=None) -> None:
        self._cell_start = time.perf_counter()

    def cell_done(self, name: str) -> None:
        """Add the running cell's time so far as phase `name`."""
        self.add(name, time.perf_counter() - self._cell_start)

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def rounded(self) -> dict[str, float]:
        return {name: round(s, 2) for name, s in self.seconds.items()}

    def table(self, wall: float | None = None) -> str:
        """One line per phase with its share of `wall` (default: the phases' sum), then what no phase covers."""
        total = sum(self.seconds.values())
        wall = total if wall is None else wall
        rows = [(name, s) for name, s in self.seconds.items()]
        if wall - total > 0.05:
            rows.append(("other (start-up, checks)", wall - total))
        width = max(len(name) for name, _ in rows) if rows else 0
        lines = [f"{name:>{width}}  {s:7.1f} s  {s / wall:6.1%}" for name, s in rows]
        return "\n".join([*lines, f"{'total':>{width}}  {wall:7.1f} s"])
