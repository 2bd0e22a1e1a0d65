"""Kubernetes resource quantities ("500m", "16Gi", "1e3", 2): parse and compare (pure).

The grammar of apimachinery's `resource.ParseQuantity`: a decimal number, then one suffix:
binary SI (Ki, Mi, Gi, Ti, Pi, Ei), decimal SI (n, u, m, k, M, G, T, P, E) or a decimal exponent
(e3, E-2). The CRD checks the same with CEL's `isQuantity`; the spec model with `parse`.
"""

from __future__ import annotations

import decimal
import re

_NUMBER = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_QUANTITY = re.compile(rf"^({_NUMBER})(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?$")
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


def parse(value: int | str) -> decimal.Decimal:
    """The quantity's value in base units; ValueError if it is not a quantity."""
    if isinstance(value, int) and not isinstance(value, bool):
        return decimal.Decimal(value)
    match = _QUANTITY.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 500m, 2, 16Gi)")
    number, suffix = decimal.Decimal(match[1]), match[2] or ""
    try:
        if suffix in _BINARY:
            return number * decimal.Decimal(1024) ** _BINARY[suffix]
        if suffix in _DECIMAL:
            return number.scaleb(_DECIMAL[suffix])
        return number.scaleb(int(suffix[1:])) if suffix else number
    except (decimal.DecimalException, ValueError) as e:
        raise ValueError(f"{value!r} is out of range for a quantity") from e


def check(value: int | str) -> int | str:
    """`value` if it is a quantity that is not negative (pydantic validator)."""
    if parse(value) < 0:
        raise ValueError(f"{value!r} is negative")
    return value
