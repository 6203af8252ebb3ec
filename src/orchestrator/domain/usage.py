"""Token usage, by model: what each node attempt used, summed once into its execution.

A usage is `{model: {"inputTokens", "outputTokens", "totalTokens"}}` (a model the agent did not
name is "unknown"). An attempt's usage is filled in by the agent's progress reports while it
runs; the agent's reply (its `tokens`) is the final word for the attempt. The execution keeps
the running sum of its attempts' usages (and its sub-workflows'), changed by the difference
each time an attempt's usage changes, so that every token is counted once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

FIELDS = ("inputTokens", "outputTokens", "totalTokens")
UNKNOWN_MODEL = "unknown"

Counts = dict[str, int]
Usage = dict[str, Counts]


def counts(values: Mapping[str, Any]) -> Counts:
    """The three counts of a mapping (missing: 0; the total is at least input plus output)."""
    found = {name: _count(values.get(name)) for name in FIELDS}
    found["totalTokens"] = max(found["totalTokens"], found["inputTokens"] + found["outputTokens"])
    return found


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def of_counts(values: Mapping[str, Any] | None, model: str | None) -> Usage | None:
    """A usage of one model from flat counts (None when there are none)."""
    if not values:
        return None
    return {model or UNKNOWN_MODEL: counts(values)}


def normalize(value: Any) -> Usage | None:
    """A stored usage: by model, or (as stored before models were kept) flat counts."""
    if not isinstance(value, Mapping) or not value:
        return None
    if all(isinstance(v, Mapping) for v in value.values()):
        return {str(model): counts(c) for model, c in value.items()}
    return of_counts(value, None)


def add(a: Usage | None, b: Usage | None) -> Usage | None:
    """Two usages added up, model by model."""
    if not a or not b:
        return dict(a or b or {}) or None
    total = {model: dict(c) for model, c in a.items()}
    for model, c in b.items():
        into = total.setdefault(model, dict.fromkeys(FIELDS, 0))
        for name in FIELDS:
            into[name] = into.get(name, 0) + c.get(name, 0)
    return total


def subtract(a: Usage | None, b: Usage | None) -> Usage | None:
    """`a` less `b`, model by model (counts may go negative: a difference to apply)."""
    negated = {model: {n: -c.get(n, 0) for n in FIELDS} for model, c in (b or {}).items()}
    return add(a, negated)


def totals(usage: Usage | None) -> Counts:
    """The counts over every model."""
    summed = dict.fromkeys(FIELDS, 0)
    for c in (usage or {}).values():
        for name in FIELDS:
            summed[name] += c.get(name, 0)
    return summed


def summary(usage: Usage | None) -> dict[str, Any] | None:
    """The shown form: the totals and `byModel` (None when nothing was used)."""
    kept = {model: c for model, c in (usage or {}).items() if any(c.get(n) for n in FIELDS)}
    if not kept:
        return None
    return {**totals(kept), "byModel": kept}


def from_summary(value: Any) -> Usage | None:
    """The usage of a shown form (an execution's stored usage)."""
    if isinstance(value, Mapping) and isinstance(value.get("byModel"), Mapping):
        return normalize(value["byModel"])
    return None


def parse(value: Any) -> Usage | None:
    """A usage from a shown form, a by-model form or flat counts (older rows)."""
    return from_summary(value) or normalize(value)


def cost_usd(usage: Usage | None, prices: Mapping[str, Mapping[str, float]]) -> float:
    """What the usage costs by a price table ({model: {input, output} USD per million
    tokens}); a model without a price costs nothing."""
    cost = 0.0
    for model, c in (usage or {}).items():
        price = prices.get(model)
        if price is not None:
            cost += c.get("inputTokens", 0) * price.get("input", 0.0) / 1_000_000
            cost += c.get("outputTokens", 0) * price.get("output", 0.0) / 1_000_000
    return cost
