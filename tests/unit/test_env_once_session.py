"""The session that reads proxy settings once answers as requests does."""

import requests

from cinderbak.cloud import EnvOnceSession


def test_proxy_settings_match_requests_per_host_and_are_read_once(
    monkeypatch,
):
    monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
    monkeypatch.setenv("no_proxy", "keystone.example")
    mine, theirs = EnvOnceSession(), requests.Session()
    for url in (
        "https://cinder.example/v3/p1/backups",
        "https://keystone.example/v3/auth/tokens",
        "https://cinder.example/v3/p2/backups?limit=2",
    ):
        args = (url, {}, None, True, None)
        assert mine.merge_environment_settings(
            *args
        ) == theirs.merge_environment_settings(*args)
    assert len(mine._settings) == 2  # one per host, not per request
    # The environment is read once: a later change is not seen (a daemon's
    # environment does not change while it runs).
    monkeypatch.setenv("https_proxy", "http://other.example:3128")
    again = mine.merge_environment_settings(
        "https://cinder.example/v3/p3/backups", {}, None, True, None
    )
    assert again["proxies"]["https"] == "http://proxy.example:3128"
    again["proxies"]["https"] = "changed by a caller"
    assert (
        mine.merge_environment_settings(
            "https://cinder.example/x", {}, None, True, None
        )["proxies"]["https"]
        == "http://proxy.example:3128"
    )
