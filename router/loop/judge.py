"""The judge's prompt and the strict reading of its grade.

``modelrouter label`` asks the judge tier to grade one answer at a time with
``JUDGE_PROMPT``. The reply must be exactly one word, ``PASS`` or ``FAIL`` (any case,
surrounding blanks and one final full stop allowed); anything else is not a grade, and
the answer it was about gets no outcome rather than a guessed one.
"""

from __future__ import annotations

JUDGE_PROMPT = """\
You are grading an assistant's answer to a user's request.

The request:
<<<
{request}
>>>

The answer:
<<<
{answer}
>>>

Is the answer correct, complete and helpful for the request? Reply with exactly one \
word: PASS if it is, FAIL if it is not."""

GRADES = {"PASS": 1.0, "FAIL": 0.0}


def judge_prompt(request: str, answer: str) -> str:
    """Return the prompt that asks the judge to grade ``answer`` to ``request``."""
    return JUDGE_PROMPT.format(request=request, answer=answer)


def parse_grade(reply: str) -> float | None:
    """Return 1.0 for PASS, 0.0 for FAIL, None when the reply is not exactly a grade."""
    word = reply.strip()
    if word.endswith("."):
        word = word[:-1]
    return GRADES.get(word.upper())


__all__ = ["GRADES", "JUDGE_PROMPT", "judge_prompt", "parse_grade"]
