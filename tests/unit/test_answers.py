"""Block Storage answers: decoded, or refused with the request named."""

from __future__ import annotations

import pytest
import requests
from openstack import exceptions as sdk_exceptions

from cinderbak import answers

URL = "http://cinder.example:8776/v3/backups/detail?limit=1000"


def response(status: int, content: bytes) -> requests.Response:
    """An answer as requests hands it over (no network involved)."""
    answer = requests.Response()
    answer.status_code = status
    answer._content = content
    answer.url = URL
    answer.request = requests.Request("GET", URL).prepare()
    return answer


def test_an_object_is_decoded_as_plain_data() -> None:
    body = b'{"backups": [{"id": "b1", "metadata": {"k": "v"}, "size": 1}]}'
    assert answers.decoded(response(200, body)) == {
        "backups": [{"id": "b1", "metadata": {"k": "v"}, "size": 1}]
    }


def test_an_answer_that_is_not_json_names_the_request() -> None:
    with pytest.raises(answers.NotJSON, match=r"GET .*backups/detail.*200"):
        answers.decoded(response(200, b"<html>proxy error</html>"))


def test_a_truncated_answer_is_refused() -> None:
    with pytest.raises(answers.NotJSON, match="not JSON"):
        answers.decoded(response(200, b'{"backups": [{"id": "b1"'))


def test_json_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(answers.NotJSON, match="not an object"):
        answers.decoded(response(200, b"[1, 2]"))


def test_not_json_is_an_sdk_error_that_callers_already_handle() -> None:
    assert issubclass(answers.NotJSON, sdk_exceptions.SDKException)


def test_an_error_status_is_raised_as_the_sdk_raises_it() -> None:
    body = b'{"itemNotFound": {"message": "Backup b1 could not be found."}}'
    with pytest.raises(sdk_exceptions.NotFoundException):
        answers.decoded(response(404, body))
