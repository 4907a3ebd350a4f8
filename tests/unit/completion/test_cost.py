import pytest

from router.completion.cost import cost_usd, estimate_prompt_tokens, estimate_tokens
from router.config import PriceConfig
from router.domain import ChatMessage


def test_cost_prices_input_and_output_per_million_tokens() -> None:
    price = PriceConfig(input_per_mtok=2.5, output_per_mtok=10.0)
    assert cost_usd(price, 1_000_000, 0) == pytest.approx(2.5)
    assert cost_usd(price, 1000, 500) == pytest.approx(0.0025 + 0.005)
    assert cost_usd(price, 0, 0) == 0.0


def test_the_prompt_estimate_rounds_up_and_counts_framing_per_turn() -> None:
    assert estimate_prompt_tokens([]) == 1
    assert estimate_prompt_tokens([ChatMessage("user", "")]) == 4
    assert estimate_prompt_tokens([ChatMessage("user", "abcdefghi")]) == 3 + 4  # 9 chars / 4
    chat = [ChatMessage("system", "abcd"), ChatMessage("user", "abcde")]
    assert estimate_prompt_tokens(chat) == 3 + 2 * 4  # 9 chars over both turns
    assert estimate_tokens(9, 2) == estimate_prompt_tokens(chat)
    assert estimate_tokens(9) == estimate_prompt_tokens([ChatMessage("user", "abcdefghi")])
