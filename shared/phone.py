"""Phone numbers as RelayX stores them: compact E.164, whatever separators a person typed."""

from __future__ import annotations

import re

from starlette.convertors import Convertor, register_url_convertor

SEPARATORS = r"[ ().-]"
E164 = re.compile(r"\+[1-9][0-9]{6,14}")
# The same rule as a pattern the OpenAPI can publish: E.164 once spaces, dots, dashes and
# parentheses are removed (ASCII digits only: `\d` would let other scripts' digits through).
PHONE_NUMBER = rf"^{SEPARATORS}*\+{SEPARATORS}*[1-9](?:{SEPARATORS}*[0-9]){{6,14}}{SEPARATORS}*$"


def e164(value: str, name: str) -> str:
    """`value` as compact E.164, or a ValueError that names the field and the rule."""
    compact = re.sub(SEPARATORS, "", value)
    if not E164.fullmatch(compact):  # the same rule as PHONE_NUMBER
        raise ValueError(f"{name} must be an E.164 number such as +14155550100")
    return compact


class PhoneConvertor(Convertor[str]):
    """`{number:phone}` in a route path: only what a phone number is written with, so that a sibling
    route (`/do-not-call/upload`) is never taken for a number (its other methods answer 405, not 422)."""

    regex = r"[0-9 ().+-]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("phone", PhoneConvertor())
