"""Per-tenant limits and budgets (``tenants.<name>.limits``), in memory or shared in Redis."""

from router.limits.limiter import (
    Hold,
    Limiter,
    Reservation,
    TenantRules,
    max_output_tokens,
    most_cost_usd,
)

__all__ = ["Hold", "Limiter", "Reservation", "TenantRules", "max_output_tokens", "most_cost_usd"]
