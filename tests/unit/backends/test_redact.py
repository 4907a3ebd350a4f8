from router.backends.redact import EXCERPT_CHARS, Redactor
from router.config import parse_config

KEY = "my-provider-key-0123456789"
PRICE = {"input_per_mtok": 1, "output_per_mtok": 1}


def test_configured_secrets_are_masked_even_when_cut() -> None:
    redactor = Redactor([KEY, "hdr-value-42", "on"])
    text = f'{{"error": "bad key {KEY}", "echo": {{"x-token": "hdr-value-42", "flag": "on"}}}}'
    masked = redactor.excerpt(text)
    assert KEY not in masked and "hdr-value-42" not in masked
    assert '"flag": "on"' in masked  # too short to be a secret
    # An error body read up to its limit may end inside the key.
    cut = redactor.excerpt(f"Incorrect API key provided: {KEY[:15]}")
    assert cut == "Incorrect API key provided: ***"


def test_credential_patterns_are_masked() -> None:
    masked = Redactor([]).excerpt(
        "Authorization: Bearer abc.def-ghi\n"
        '{"api_key": "k-123456", "x-api-key": "zzz999"} key sk-ant-api03-abcdefghij '
        "password=hunter22"
    )
    assert masked == (
        'Authorization: Bearer *** {"api_key": "***", "x-api-key": "***"} key *** password=***'
    )


def test_an_excerpt_is_one_line_of_bounded_length() -> None:
    masked = Redactor([]).excerpt("word\n\t " * 100)
    assert "\n" not in masked and "\t" not in masked
    assert len(masked) == EXCERPT_CHARS + 3 and masked.endswith("...")


def test_the_secrets_of_a_configuration() -> None:
    config = parse_config(
        {
            "version": 1,
            "tiers": [
                {"name": n, "model": "m", "backend": b, "price": PRICE}
                for n, b in (("cheap", "o"), ("strong", "a"))
            ],
            "backends": {
                "o": {"kind": "openai", "base_url": "http://x/v1", "api_key": KEY,
                      "headers": {"x-proxy": "proxy-secret"}},
                "a": {"kind": "anthropic", "api_key": "anthropic-secret"},
            },
        },
        environ={},
    )  # fmt: skip
    masked = Redactor.for_config(config).excerpt(f"{KEY} proxy-secret anthropic-secret")
    assert masked == "*** *** ***"
