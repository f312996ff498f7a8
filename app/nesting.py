"""How deep the JSON a caller sends may nest, and what is shown of a stored value past that.

Each field of a request (``metadata``, and every other field, in every item of a batch) may
nest objects and arrays at most ``NESTING_LIMIT`` levels deep, the field's own object counting
as the first: ``{"a": {"b": 1}}`` is two levels. That is far below what the serializers can
write back (pydantic and orjson stop at about 255 levels), so whatever is accepted can be read
back. A body too deep for the JSON parser itself (Python's recursion limit, roughly 900 levels
here) is refused whole, without naming a field.

A value stored before the limit existed may be deeper. Reads never fail on it: it is shown (and
delivered) as ``OMITTED`` instead, a marker object that says what happened.
"""

from __future__ import annotations

from typing import Any

NESTING_LIMIT = 32

TOO_DEEP = f"nested deeper than {NESTING_LIMIT} levels of objects and arrays"
"""Why a field is refused at submit."""

OMITTED: dict[str, Any] = {"herald:omitted": f"nested deeper than {NESTING_LIMIT} levels"}


def nested_deeper(value: Any) -> bool:
    """Whether ``value`` nests dicts and lists (JSON objects and arrays) over the limit.

    Iterative, so no depth of input can exhaust the stack.
    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth == NESTING_LIMIT:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def shown(value: Any) -> Any:
    """``value``, or ``OMITTED`` when it nests deeper than ``NESTING_LIMIT``."""
    return dict(OMITTED) if nested_deeper(value) else value
