"""Which failed API calls are repeated, and how quota is read."""

import pytest
from keystoneauth1 import exceptions as ks_exceptions
from openstack import exceptions as sdk_exceptions

from cinderbak import answers, backups, cloud


def _http(status):
    return sdk_exceptions.HttpException(message="x", http_status=status)


@pytest.mark.parametrize("status", [429, 503])
def test_explicit_refusals_are_retried_even_for_creates(status):
    assert cloud.is_retryable(_http(status), idempotent=False)


@pytest.mark.parametrize("status", [500, 502, 504])
def test_ambiguous_errors_are_retried_only_when_idempotent(status):
    assert cloud.is_retryable(_http(status), idempotent=True)
    assert not cloud.is_retryable(_http(status), idempotent=False)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413])
def test_client_errors_are_never_retried(status):
    assert not cloud.is_retryable(_http(status), idempotent=True)


def test_connection_refused_never_reached_the_api():
    refused = ks_exceptions.ConnectFailure(
        "Unable to establish connection: NewConnectionError: "
        "[Errno 111] Connection refused"
    )
    assert cloud.never_sent(refused)
    assert cloud.is_retryable(refused, idempotent=False)


def test_a_dropped_answer_may_hide_a_create_that_was_carried_out():
    reset = ks_exceptions.ConnectFailure(
        "Connection aborted: RemoteDisconnected('Remote end closed "
        "connection without response')"
    )
    assert cloud.is_uncertain(reset)
    assert not cloud.is_retryable(reset, idempotent=False)
    assert cloud.is_retryable(reset, idempotent=True)
    timeout = ks_exceptions.ConnectTimeout("read timed out")
    assert cloud.is_uncertain(timeout)
    assert not cloud.is_retryable(timeout, idempotent=False)


class _Response:
    def __init__(self, status, headers):
        self.status_code = status
        self.headers = headers


def test_413_with_retry_after_is_a_rate_limit_and_is_repeated():
    limited = sdk_exceptions.HttpException(
        message="over limit",
        http_status=413,
        response=_Response(413, {"Retry-After": "3"}),
    )
    assert cloud.is_refusal(limited)
    assert cloud.is_retryable(limited, idempotent=False)
    quota = sdk_exceptions.HttpException(
        message="quota", http_status=413, response=_Response(413, {})
    )
    assert not cloud.is_retryable(quota, idempotent=True)


def test_a_keystone_503_wrapped_by_the_sdk_is_repeated():
    try:
        try:
            raise ks_exceptions.ServiceUnavailable(http_status=503)
        except ks_exceptions.ServiceUnavailable as inner:
            raise sdk_exceptions.SDKException("token request") from inner
    except sdk_exceptions.SDKException as wrapped:
        assert cloud.status_of(wrapped) == 503
        assert cloud.is_retryable(wrapped, idempotent=False)


def _quota(usage=None, reservation=None, **limits):
    """A quota set as ``GET /os-quota-sets/{p}?usage=True`` answers it."""
    usage = usage or {}
    reservation = reservation or {}
    return backups.Quota.from_api(
        {
            "id": "p",
            **{
                name: {
                    "limit": limit,
                    "in_use": usage.get(name, 0),
                    "reserved": reservation.get(name, 0),
                }
                for name, limit in limits.items()
            },
        }
    )


def test_quota_read_from_cinders_usage_form():
    quota = backups.Quota.from_api(
        {
            "id": "p",
            "backups": {"limit": 10, "in_use": 3, "reserved": 1},
            "backup_gigabytes": {"limit": -1, "in_use": 40, "reserved": None},
        }
    )
    assert quota.limits == {"backups": 10, "backup_gigabytes": -1}
    assert quota.usage == {"backups": 3, "backup_gigabytes": 40}
    assert quota.reservation == {"backups": 1, "backup_gigabytes": 0}


def test_quota_with_one_backup_left():
    quota = _quota(backups=4, usage={"backups": 3}, reservation={})
    assert backups.quota_shortfall(quota, 1) is None
    assert backups.quota_shortfall(quota, 1, already=(1, 0)) == (
        "backup quota exceeded: backups quota 4 has 0 left, one backup needs 1"
    )


def test_quota_fits():
    quota = _quota(
        backups=10,
        backup_gigabytes=100,
        usage={"backups": 3, "backup_gigabytes": 30},
        reservation={},
    )
    assert backups.quota_shortfall(quota, 10) is None


def test_quota_counts_reservations_and_full_size_per_backup():
    quota = _quota(
        backups=10,
        backup_gigabytes=100,
        usage={"backups": 3, "backup_gigabytes": 90},
        reservation={"backup_gigabytes": 5},
    )
    message = backups.quota_shortfall(quota, 10)
    assert message == (
        "backup quota exceeded: backup_gigabytes quota 100 "
        "has 5 left, one backup needs 10"
    )


def test_unlimited_quota():
    quota = _quota(
        backups=-1,
        backup_gigabytes=-1,
        usage={"backups": 900, "backup_gigabytes": 9000},
    )
    assert backups.quota_shortfall(quota, 1000) is None


def test_an_answer_that_is_not_json_may_hide_a_create_carried_out():
    # Something between us and Cinder answered (or cut the answer): a read
    # is repeated, a create is looked for before it is repeated.
    garbled = answers.NotJSON("POST /v3/backups (200): the answer is not JSON")
    assert cloud.is_uncertain(garbled)
    assert cloud.is_retryable(garbled, idempotent=True)
    assert not cloud.is_retryable(garbled, idempotent=False)
