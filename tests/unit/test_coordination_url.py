"""The lease reaches tooz's etcd3gw driver through the backend URL."""

from cinderbak.coordination import backend_url


def test_the_lease_becomes_etcd3gws_timeout() -> None:
    assert (
        backend_url("etcd3+http://h:2379", 30)
        == "etcd3+http://h:2379?timeout=30"
    )
    assert (
        backend_url("etcd3+http://h:2379?api_version=v3", 12)
        == "etcd3+http://h:2379?api_version=v3&timeout=12"
    )


def test_a_timeout_the_operator_set_is_kept() -> None:
    url = "etcd3+http://h:2379?timeout=90"
    assert backend_url(url, 30) == url


def test_other_drivers_get_the_url_unchanged() -> None:
    url = "redis://:secret@h:6379"
    assert backend_url(url, 30) == url
