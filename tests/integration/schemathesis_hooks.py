"""Schemathesis hooks for tests/integration/test_schemathesis.py (loaded through ``SCHEMATHESIS_HOOKS``).

Two deviations are accepted, and only those. First, the document's integers are JSON integer *literals* (each such field
says "A JSON integer literal (no fraction or exponent)", and the event decoder refuses ``7.0`` with a 400 naming the
field), while JSON Schema 2020-12, which OpenAPI 3.1 uses, counts ``7.0`` as the integer 7 and cannot express the
difference. Schemathesis sends such whole floats on purpose and reports their refusal as "schema-valid request
rejected" (ST202). That finding is dropped when the server's 400 refuses nothing but float spellings (of events, or
the experiments document's integers: candidate budgets, version, start/stop); every other finding, of every check,
still fails the run.

Second, an experiments document (PUT /v1/experiments) can have the schema's shape and still break a rule across its
fields that JSON Schema cannot state: two experiments with one name, a layer whose experiments' traffic adds up to
more than 1, a stop not after its start, an interleaving without exactly two variants. The server answers those 422
naming the field (documented); the finding is dropped for exactly that status on exactly that operation.
"""

from __future__ import annotations

import json
from typing import Any

import schemathesis
from schemathesis.openapi.checks import RejectedPositiveData

FLOAT_REFUSAL = "got `float`"  # the decoder's reason for a float where an integer literal is due


def _has_whole_float(value: Any) -> bool:
    if isinstance(value, float):
        return value.is_integer()
    if isinstance(value, dict):
        return any(_has_whole_float(item) for item in value.values())
    if isinstance(value, list):
        return any(_has_whole_float(item) for item in value)
    return False


def _refuses_only_floats(content: bytes) -> bool:
    try:
        body = json.loads(content)
    except ValueError:
        return False
    refused = body.get("refused") if isinstance(body, dict) else None
    if refused:  # POST /v1/events: every refused event refused for a float
        return all(FLOAT_REFUSAL in str(item.get("reason", "")) for item in refused)
    # PUT /v1/experiments: the document's one error (msgspec stops at the first), a float where an integer is due
    error = body.get("error") if isinstance(body, dict) else None
    return isinstance(error, dict) and FLOAT_REFUSAL in str(error.get("message", ""))


@schemathesis.hook
def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
    """False (drop) only for a whole float in an integer field refused as a float; True keeps the failure."""
    whole_float_refused = (
        isinstance(failure, RejectedPositiveData)
        and response.status_code == 400
        and _has_whole_float(case.body)
        and _refuses_only_floats(response.content)
    )
    rule_refused = (
        isinstance(failure, RejectedPositiveData)
        and response.status_code == 422
        and case.method.upper() == "PUT"
        and case.path == "/v1/experiments"
    )
    return not (whole_float_refused or rule_refused)
