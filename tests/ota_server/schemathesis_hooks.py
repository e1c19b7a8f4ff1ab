"""Schemathesis hooks (``SCHEMATHESIS_HOOKS=tests.ota_server.schemathesis_hooks``): the ``vin`` format.

The schema states a VIN's alphabet and length as a pattern; its check digit (position 9, for
VINs whose first character is 1-5 or L) no pattern can state, so the schema names it with
``format: vin`` and this strategy makes VINs that carry it, as a client following the
documented rule would.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import schemathesis
from hypothesis import strategies as st

from firmware_bundles.vin import check_digit, check_digit_applies

if TYPE_CHECKING:
    from schemathesis.specs.openapi.schemas import OpenApiCase

VIN_ALPHABET = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"


def _with_check_digit(body: str) -> str:
    return body[:8] + check_digit(body) + body[9:] if check_digit_applies(body) else body


vins = st.text(VIN_ALPHABET, min_size=17, max_size=17).map(_with_check_digit)
schemathesis.openapi.format("vin", vins)


# The fuzzer's own token must outlive the run: revoking it (DELETE /api/v1/tokens/1 is the
# coverage phase's first guess) would turn every later case into a 401. Such a call is sent
# to a token id that does not exist instead (a documented 404).
KEEP_TOKENS_ENV = "OTA_FUZZ_KEEP_TOKEN_IDS"
NO_SUCH_TOKEN = 2**31 - 1


def _token_id(value: object) -> int | None:
    try:
        return int(str(value).strip())
    except ValueError:
        return None


@schemathesis.hook
def before_call(context: schemathesis.HookContext, case: OpenApiCase, kwargs: dict[str, object]) -> None:
    if case.method.upper() != "DELETE" or case.path != "/api/v1/tokens/{token_id}" or not case.path_parameters:
        return
    keep = {int(i) for i in os.environ.get(KEEP_TOKENS_ENV, "").split(",") if i}
    if _token_id(case.path_parameters.get("token_id")) in keep:
        case.path_parameters["token_id"] = NO_SUCH_TOKEN
