"""`logs --follow`'s reader (follow.py): offsets advance, gaps and new attempts are noted, and
it ends with the answer that says the job is done."""

from __future__ import annotations

from typing import Any

from tcpsched.errors import JobTimeout
from tcpsched.follow import follow


def _view(attempt: int, out_at: int, out: str, *, done: bool = False, err_at: int = 0,
          err: str = "") -> dict[str, Any]:
    return {"id": "job1", "attempt": attempt, "state": "succeeded" if done else "running",
            "done": done, "stdout_offset": out_at, "stdout": out, "stderr_offset": err_at,
            "stderr": err, "exit_code": None, "error": None}


class FakeClient:
    """Answers `tail` from a script, and records what it was asked."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, int | None, tuple[int, int]]] = []

    async def tail(self, job_id: str, attempt: int | None, offsets: tuple[int, int],
                   wait: float) -> dict[str, Any]:
        self.asked.append((job_id, attempt, offsets))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


async def test_follow_writes_each_piece_once_and_notes_gaps_and_attempts() -> None:
    """Overlapping text is written once, a later offset is noted as a gap, another attempt
    starts again at 0, a late answer is asked again, and `done` ends it."""
    client = FakeClient([
        _view(1, 0, "ab"),
        _view(1, 1, "bc", err="E"),  # overlaps what was shown
        JobTimeout("late"),
        _view(1, 10, "k"),  # 7 characters were not kept
        _view(2, 0, "new"),
        _view(2, 3, "!", done=True),
    ])
    written: list[tuple[str, str]] = []
    notes: list[str] = []
    view = await follow(client, "job", lambda s, t: written.append((s, t)),  # type: ignore[arg-type]
                        notes.append)
    assert view["done"]
    assert written == [("stdout", "ab"), ("stdout", "c"), ("stderr", "E"), ("stdout", "k"),
                       ("stdout", "new"), ("stdout", "!")]
    assert notes == ["job job1: 7 characters of stdout were not kept while it ran (see `logs` "
                     "once it has finished)", "job job1: attempt 2 started"]
    assert client.asked == [("job", None, (0, 0)), ("job1", 1, (2, 0)), ("job1", 1, (3, 1)),
                            ("job1", 1, (3, 1)), ("job1", 1, (11, 1)), ("job1", 2, (3, 0))]
