"""Which failed API calls are repeated, and how quota is read."""

import pytest
from keystoneauth1 import exceptions as ks_exceptions
from openstack import exceptions as sdk_exceptions
from openstack.block_storage.v3.quota_set import QuotaSet

from cinderbak import backups, cloud


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
    assert cloud.is_retryable(ks_exceptions.ConnectFailure(), False)


def _quota(**values):
    return QuotaSet(**values)


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
