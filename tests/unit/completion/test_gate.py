import pytest

from router.backends import Chunk
from router.completion.gate import GateWindow
from router.config import GateConfig

GATE = GateConfig(
    window_tokens=4,
    window_ms=200,
    min_mean_logprob=-2.0,
    low_logprob=-4.0,
    max_low_logprob_share=0.3,
    min_chars=2,
)


def _window(*chunks: Chunk) -> GateWindow:
    window = GateWindow(GATE)
    for chunk in chunks:
        window.add(chunk)
    return window


def _tok(text: str, lp: float | None = -0.1) -> Chunk:
    return Chunk(text=text, tokens=1, logprobs=None if lp is None else (lp,))


def test_a_confident_start_passes_and_reports_what_was_held() -> None:
    window = _window(_tok("The"), _tok(" answer"), _tok(" is"), _tok(" 4"))
    assert window.full
    report = window.verdict(12.5, max_tokens=100)
    assert report.passed and report.reason == "passed"
    assert report.held_tokens == 4 and report.held_ms == 12.5
    assert report.mean_logprob == pytest.approx(-0.1)
    assert report.low_logprob_share == 0.0
    assert (report.window_tokens, report.window_ms) == (4, 200)
    assert (report.min_mean_logprob, report.max_low_logprob_share) == (-2.0, 0.3)


def test_a_low_mean_logprob_fails() -> None:
    report = _window(_tok("Um", -3.0), _tok(" well", -2.5)).verdict(200, max_tokens=100)
    assert not report.passed and report.reason.startswith("mean logprob -2.750 < -2")


def test_too_many_low_probability_tokens_fail_even_with_a_good_mean() -> None:
    window = _window(_tok("A", -0.01), _tok("B", -0.01), _tok("C", -4.5), _tok("D", -0.01))
    report = window.verdict(5, max_tokens=100)
    assert report.mean_logprob is not None and report.mean_logprob > -2.0
    assert report.passed and report.low_logprob_share == 0.25
    window = _window(_tok("A", 0.0), _tok("B", -4.1), _tok("C", -4.1), _tok("D", 0.0))
    report = window.verdict(5, max_tokens=100)
    assert report.mean_logprob == pytest.approx(-2.05)
    window = _window(
        _tok("A", 0.0), _tok("B", -4.1), _tok("C", -4.1), _tok("D", 0.0), _tok("E", 0.0)
    )
    report = window.verdict(5, max_tokens=100)
    assert report.mean_logprob is not None and report.mean_logprob > -2.0
    assert not report.passed and report.reason == "low-logprob share 0.40 > 0.3"


def test_an_empty_start_fails() -> None:
    report = _window(Chunk(text=" ", tokens=1, finish_reason="stop")).verdict(1, max_tokens=9)
    assert not report.passed and report.reason == "empty start (under 2 chars)"


def test_a_start_cut_by_the_length_limit_fails_unless_the_caller_asked_for_it() -> None:
    cut = _window(_tok("Hello"), Chunk(finish_reason="length"))
    assert cut.verdict(1, max_tokens=100).reason == "truncated start (cut after 1 tokens)"
    assert cut.verdict(1, max_tokens=1).passed


def test_without_logprobs_only_the_shape_of_the_start_is_judged() -> None:
    report = _window(_tok("Hello", None), _tok(" there", None)).verdict(200, max_tokens=100)
    assert report.passed and report.reason == "passed (no logprobs reported)"
    assert report.mean_logprob is None and report.low_logprob_share is None
