"""What each provider accepts on a list request, in one table, each fact with the Bifrost source it was read from.

Bifrost passes `limit` to the provider unchanged, and what the provider does with it differs: OpenAI and Azure
refuse a page size above 100 with a 400 that fails the whole list; GigaChat refuses any `limit` at all (an HTTP
500 operation error), so sending the default one made every poll of it fail. The sources are the rows of
docs/providers.md ("S" numbers), read at the commits named there.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Final


@dataclass(frozen=True, slots=True)
class ListRules:
    """How a list request to one provider must look."""

    max_page_size: (
        int | None
    )  # the provider's documented maximum `limit`; None: no maximum known (passed as is)
    sends_limit: bool  # False: no `limit` may be sent at all (the whole key comes as one page)
    source: str  # where this was read (docs/providers.md)


_DEFAULT: Final = ListRules(None, True, "S1: `limit` is passed when it parses as an int > 0")

LIST_RULES: Final = MappingProxyType(
    {
        "openai": ListRules(100, True, "S5 (OpenAI's list API: limit 1..100)"),
        "azure": ListRules(100, True, "S7 (Azure OpenAI's list API: limit 1..100)"),
        "anthropic": ListRules(1000, True, "S8 (Anthropic's list API: limit 1..1000)"),
        "bedrock": ListRules(1000, True, "S12 (`limit` → maxResults, 1..1000)"),
        "gemini": ListRules(None, True, "S10 (`limit` → pageSize; Google coerces an oversized page size)"),
        "openrouter": ListRules(None, True, "S20 (OpenAI helper on /beta/batches; no documented maximum)"),
        "gigachat": ListRules(
            None,
            False,
            "S18 `validateGigaChatBatchListRequest`: any limit > 0 is an HTTP 500 operation error",
        ),
    }
)


def list_rules(provider: str) -> ListRules:
    """The rules for `provider`; a provider we know nothing of (a custom one) gets Bifrost's own handling."""
    return LIST_RULES.get(provider, _DEFAULT)


def page_size_for(provider: str, requested: int) -> int | None:
    """The `limit` to send: `requested` lowered to the provider's maximum, or None when none may be sent."""
    rules = list_rules(provider)
    if not rules.sends_limit:
        return None
    return requested if rules.max_page_size is None else min(requested, rules.max_page_size)
