"""The request clock (`now`): replays and backtests ask as of the log's time, not the wall clock."""

from __future__ import annotations

import pytest

from serving.http_validation import NOW_MAX, ParamError, parse_recommend_request
from serving.openapi import openapi_document


def test_now_is_parsed_as_epoch_ms_and_absent_means_the_wall_clock() -> None:
    assert parse_recommend_request("u1", "r1", {"now": "1767225600000"}).now_ms == 1_767_225_600_000
    assert parse_recommend_request("u1", "r1", {}).now_ms is None
    with pytest.raises(ParamError) as caught:  # `now=` is not an integer (the OpenAPI document says so): a 400
        parse_recommend_request("u1", "r1", {"now": ""})
    assert caught.value.field == "now"


@pytest.mark.parametrize("raw", ["-1", "soon", str(NOW_MAX + 1), "1.5"])
def test_a_bad_clock_is_a_400_naming_the_field(raw: str) -> None:
    with pytest.raises(ParamError) as caught:
        parse_recommend_request("u1", "r1", {"now": raw})
    assert caught.value.field == "now"


def test_the_openapi_document_declares_now() -> None:
    params = openapi_document()["paths"]["/v1/recommendations/{user_id}"]["get"]["parameters"]
    assert any(p.get("name") == "now" and p["schema"]["type"] == "integer" for p in params)
