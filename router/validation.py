"""Request validation: the API's limits, and checks that raise InvalidRequest naming the field.

Every check here is pure: it reads a domain request (and the tier names in force) and
either returns what it found on the way or raises. The limits are part of the API contract
(documented in router.proto).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence

from router.domain import ChatMessage, Feedback, GenerationOptions, InvalidRequest, TierHints

MAX_REQUEST_ID_CHARS = 128
MAX_TENANT_CHARS = 128
MAX_SESSION_ID_CHARS = 128
MAX_MESSAGES = 1000
MAX_BATCH_REQUESTS = 1000
MAX_METADATA_ENTRIES = 32
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 256
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 64
MAX_COMMENT_CHARS = 2048
MAX_LABEL_CHARS = 64
MAX_TEMPERATURE = 2.0
ROLES = frozenset({"system", "user", "assistant"})

# UTF-8 needs at most this many bytes per character: shorter strings skip the encode.
MAX_UTF8_BYTES_PER_CHAR = 4


def clip(text: str, limit: int = 64) -> str:
    """Return text short enough to quote in an error message."""
    return text if len(text) <= limit else text[:limit] + "..."


def check_id(field_name: str, given: str, limit: int = MAX_REQUEST_ID_CHARS) -> None:
    """Check an id the caller chose: at most ``limit`` printable ASCII characters, no spaces."""
    if len(given) > limit:
        raise InvalidRequest(field_name, f"{len(given)} characters, over the limit of {limit}")
    if not (given.isascii() and given.isprintable()) or " " in given:
        raise InvalidRequest(field_name, "must be printable ASCII without spaces")


def check_size(field_name: str, text: str, limit: int) -> None:
    """Check that text is at most ``limit`` bytes of UTF-8 (server.max_prompt_bytes)."""
    if len(text) * MAX_UTF8_BYTES_PER_CHAR <= limit:
        return
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise InvalidRequest(
            field_name, f"{size} bytes, over the limit of {limit} bytes (server.max_prompt_bytes)"
        )


def check_tenant(tenant: str) -> None:
    """Check the tenant: its length, and no control character (a store, a log line and a
    metric label keep it)."""
    if len(tenant) > MAX_TENANT_CHARS:
        raise InvalidRequest(
            "tenant", f"{len(tenant)} characters, over the limit of {MAX_TENANT_CHARS}"
        )
    if not tenant.isprintable() and any(unicodedata.category(c) == "Cc" for c in tenant):
        raise InvalidRequest("tenant", "must not contain control characters")


def check_session_id(session_id: str) -> None:
    """Check a session id (empty means no session): like a request id."""
    check_id("session_id", session_id, MAX_SESSION_ID_CHARS)


def check_metadata(metadata: Mapping[str, str]) -> None:
    """Check the number of metadata entries and the length of each key and value."""
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise InvalidRequest(
            "metadata", f"{len(metadata)} entries, over the limit of {MAX_METADATA_ENTRIES}"
        )
    for key, value in metadata.items():
        if not key:
            raise InvalidRequest("metadata", "empty key")
        if len(key) > MAX_METADATA_KEY_CHARS:
            raise InvalidRequest(
                "metadata",
                f"key {clip(key)!r} has {len(key)} characters, over the limit of "
                f"{MAX_METADATA_KEY_CHARS}",
            )
        if len(value) > MAX_METADATA_VALUE_CHARS:
            raise InvalidRequest(
                f"metadata[{key!r}]",
                f"{len(value)} characters, over the limit of {MAX_METADATA_VALUE_CHARS}",
            )


def _tier_hint(field_name: str, name: str, tier_index: Mapping[str, int]) -> int | None:
    """Return the index of a hinted tier, None when unset; reject unknown names."""
    if not name:
        return None
    index = tier_index.get(name)
    if index is None:
        raise InvalidRequest(
            field_name, f"unknown tier {clip(name)!r} (configured: {', '.join(tier_index)})"
        )
    return index


def check_hints(
    hints: TierHints, tier_index: Mapping[str, int]
) -> tuple[int | None, int | None, int | None]:
    """Return the forced, minimum and maximum tier indexes of the hints."""
    if not (hints.tier or hints.min_tier or hints.max_tier):
        return None, None, None
    forced = _tier_hint("hints.tier", hints.tier, tier_index)
    low = _tier_hint("hints.min_tier", hints.min_tier, tier_index)
    high = _tier_hint("hints.max_tier", hints.max_tier, tier_index)
    if low is not None and high is not None and low > high:
        raise InvalidRequest(
            "hints.min_tier", f"{hints.min_tier!r} is above hints.max_tier {hints.max_tier!r}"
        )
    if forced is not None:
        if high is not None and forced > high:
            raise InvalidRequest(
                "hints.tier", f"{hints.tier!r} is above hints.max_tier {hints.max_tier!r}"
            )
        if low is not None and forced < low:
            raise InvalidRequest(
                "hints.tier", f"{hints.tier!r} is below hints.min_tier {hints.min_tier!r}"
            )
    return forced, low, high


def check_prompt(prompt: str, limit: int) -> None:
    """Check a single-query prompt: not blank, at most ``limit`` bytes."""
    if not prompt or prompt.isspace():
        raise InvalidRequest("prompt", "empty: set a non-blank prompt or a list of messages")
    check_size("prompt", prompt, limit)


def check_messages(messages: Sequence[ChatMessage], limit: int) -> tuple[int, int]:
    """Check count, roles, the last user turn and size; return that turn's index and the chars."""
    if len(messages) > MAX_MESSAGES:
        raise InvalidRequest("messages", f"{len(messages)} turns, over the limit of {MAX_MESSAGES}")
    last_user = -1
    chars = 0
    for i, message in enumerate(messages):
        role = message.role
        if role not in ROLES:
            raise InvalidRequest(
                f"messages[{i}].role", f"{clip(role)!r} is not one of system, user, assistant"
            )
        if role == "user":
            last_user = i
        chars += len(message.content)
    if last_user < 0:
        raise InvalidRequest("messages", "no turn has role 'user'")
    content = messages[last_user].content
    if not content or content.isspace():
        raise InvalidRequest(f"messages[{last_user}].content", "the last user turn is empty")
    if chars * MAX_UTF8_BYTES_PER_CHAR > limit:
        check_size("messages", "".join(m.content for m in messages), limit)
    return last_user, chars


def check_batch(size: int) -> None:
    """Check the number of requests in a RouteBatch."""
    if size > MAX_BATCH_REQUESTS:
        raise InvalidRequest("requests", f"{size} requests, over the limit of {MAX_BATCH_REQUESTS}")


def check_generation(generation: GenerationOptions) -> None:
    """Check the generation options: token limit, temperature, stop sequences."""
    if generation.max_tokens < 0:
        raise InvalidRequest("generation.max_tokens", "must not be negative")
    temperature = generation.temperature
    if temperature is not None and not 0.0 <= temperature <= MAX_TEMPERATURE:
        raise InvalidRequest(
            "generation.temperature", f"{temperature} is outside [0, {MAX_TEMPERATURE:g}]"
        )
    stop = generation.stop
    if len(stop) > MAX_STOP_SEQUENCES:
        raise InvalidRequest(
            "generation.stop", f"{len(stop)} sequences, over the limit of {MAX_STOP_SEQUENCES}"
        )
    for i, sequence in enumerate(stop):
        if not sequence:
            raise InvalidRequest(f"generation.stop[{i}]", "must not be empty")
        if len(sequence) > MAX_STOP_CHARS:
            raise InvalidRequest(
                f"generation.stop[{i}]",
                f"{len(sequence)} characters, over the limit of {MAX_STOP_CHARS}",
            )


def check_feedback(feedback: Feedback) -> None:
    """Check a rating: the request id it rates, the rating's range, the comment's length."""
    if not feedback.request_id:
        raise InvalidRequest("request_id", "required: the id of the answer being rated")
    check_id("request_id", feedback.request_id)
    if not 0.0 <= feedback.rating <= 1.0:  # also rejects NaN
        raise InvalidRequest("rating", f"{feedback.rating} is outside [0, 1]")
    if len(feedback.comment) > MAX_COMMENT_CHARS:
        raise InvalidRequest(
            "comment",
            f"{len(feedback.comment)} characters, over the limit of {MAX_COMMENT_CHARS}",
        )
    if len(feedback.label) > MAX_LABEL_CHARS:
        raise InvalidRequest(
            "label", f"{len(feedback.label)} characters, over the limit of {MAX_LABEL_CHARS}"
        )
    check_tenant(feedback.tenant)
