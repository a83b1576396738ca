"""Access to the cloud: connections, project scoping, microversions, retries.

The daemon talks to Cinder through openstacksdk only. The service user is
configured either by naming a cloud from ``clouds.yaml`` or with
keystoneauth options in the ``[service_auth]`` group. For backups owned by
a tenant's project the same user acts with a token scoped to that project
(it needs a role there); those connections are cached per project.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import openstack
import openstack.connection
import requests
import tenacity
from keystoneauth1 import adapter as ks_adapter
from keystoneauth1 import exceptions as ks_exceptions
from keystoneauth1 import loading as ks_loading
from openstack import exceptions as sdk_exceptions
from oslo_config import cfg
from oslo_log import log as logging

from cinderbak import answers, metrics

LOG = logging.getLogger(__name__)

AUTH_GROUP = "service_auth"
# Backup metadata (our ownership mark) appeared in 3.43.
REQUIRED_MICROVERSION = (3, 43)

OPTS = [
    cfg.StrOpt(
        "cloud",
        help="Name of a cloud in clouds.yaml to connect as. When unset, "
        f"the keystoneauth options of [{AUTH_GROUP}] are used.",
    ),
    cfg.StrOpt(
        "region_name",
        help="Region to use; defaults to the cloud's only region.",
    ),
    cfg.StrOpt(
        "interface",
        default="public",
        choices=["public", "internal", "admin"],
        help="Endpoint interface to reach Cinder on.",
    ),
    cfg.IntOpt(
        "api_retries",
        default=4,
        min=0,
        help="Retries for an API call that failed in a way that is safe "
        "to repeat (connection refused, 429, 503; other 5xx only for "
        "reads and deletes).",
    ),
    cfg.FloatOpt(
        "api_timeout",
        default=60.0,
        min=1.0,
        help="Seconds to wait for Keystone or Cinder to connect and to "
        "answer one request. A request held longer fails like a dropped "
        "connection: reads are retried, creates are looked up first.",
    ),
    cfg.FloatOpt(
        "api_retry_max_wait",
        default=60.0,
        min=0.0,
        help="Longest wait between two retries, in seconds; a longer "
        "Retry-After from the server is capped to it.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(OPTS, group="cloud")
    ks_loading.register_auth_conf_options(conf, AUTH_GROUP)
    ks_loading.register_session_conf_options(conf, AUTH_GROUP)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    auth_opts = ks_loading.get_auth_common_conf_options() + [
        opt
        for opt in ks_loading.get_auth_plugin_conf_options("password")
        if opt.dest not in ("auth_type", "auth_section")
    ]
    seen: set[str] = set()
    unique: list[cfg.Opt] = []
    for opt in auth_opts:
        if opt.dest not in seen:
            seen.add(opt.dest)
            unique.append(opt)
    return [
        ("cloud", OPTS),
        (AUTH_GROUP, unique + ks_loading.get_session_conf_options()),
    ]


class EnvOnceSession(requests.Session):
    """A requests session that reads the environment's proxy and CA
    settings once per endpoint instead of on every request.

    requests looks them up for each request (``merge_environment_settings``
    walks all of ``os.environ`` for ``*_proxy`` variables): about 0.4 ms of
    CPU per request, a fifth of a run's create request. A daemon's
    environment does not change while it runs, and the answer depends only
    on the URL's scheme and host (``no_proxy`` is per host) and on the
    request's own settings, so that is the cache key. Only for sessions
    cinderbak builds itself (``[service_auth]``); clouds.yaml connections
    are openstacksdk's.
    """

    def __init__(self) -> None:
        super().__init__()
        self._settings: dict[tuple[Any, ...], dict[str, Any]] = {}

    def merge_environment_settings(
        self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> dict[str, Any]:
        parts = urllib.parse.urlsplit(url)
        key = (
            parts.scheme,
            parts.netloc,
            tuple(sorted((proxies or {}).items())),
            stream,
            verify,
            cert,
        )
        found = self._settings.get(key)
        if found is None:
            found = super().merge_environment_settings(
                url, dict(proxies or {}), stream, verify, cert
            )
            self._settings[key] = found
        return {**found, "proxies": dict(found["proxies"])}


class CloudTooOld(RuntimeError):
    """The Block Storage API cannot do what the daemon relies on."""


class NoRoleInProject(RuntimeError):
    """The service user cannot act in a volume's project."""


_REFUSALS = {429, 503}
"""Statuses that say the request was not carried out: safe to repeat."""
_MAYBE_DONE = {500, 502, 504}
"""Statuses after which the request may have been carried out."""

T = TypeVar("T")

API_ERRORS = (sdk_exceptions.SDKException, ks_exceptions.ClientException)
"""What a call to the cloud raises when the cloud fails it: openstacksdk
wraps most keystoneauth errors, but not all (a token request, raw
requests), so callers that must not die catch both."""


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    """The exception and its causes: the SDK wraps keystoneauth's errors
    (a Keystone 503 for a project token arrives as a plain SDKException)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def status_of(exc: BaseException) -> int | None:
    """The HTTP status behind ``exc`` or its causes, if any."""
    for item in _chain(exc):
        for status in (
            getattr(item, "status_code", None),
            getattr(item, "http_status", None),
            getattr(getattr(item, "response", None), "status_code", None),
        ):
            if isinstance(status, int):
                return status
    return None


def _is_connection_error(exc: BaseException) -> bool:
    return any(
        isinstance(item, ks_exceptions.ConnectionError) for item in _chain(exc)
    )


def never_sent(exc: BaseException) -> bool:
    """Whether the request certainly never reached the server (the
    connection was refused), as opposed to a reset or a time-out after
    it may have been carried out."""
    return _is_connection_error(exc) and any(
        "NewConnectionError" in repr(item) or "Connection refused" in str(item)
        for item in _chain(exc)
    )


def is_refusal(exc: BaseException) -> bool:
    """Whether the API said it did not carry the request out and asks to
    be tried again: 429, 503, or 413 with a Retry-After (Cinder's rate
    limit; a 413 without one is an exceeded quota, not worth repeating)."""
    if never_sent(exc):
        return True
    status = status_of(exc)
    if status in _REFUSALS:
        return True
    return status == 413 and _retry_after(exc) is not None


def is_uncertain(exc: BaseException) -> bool:
    """Whether a failed request may nevertheless have been carried out:
    a dropped connection, a time-out, a 500/502/504, or an answer that
    was not the API's JSON (something between us and Cinder answered, or
    cut the answer: what Cinder did is unknown)."""
    if is_refusal(exc):
        return False
    return (
        _is_connection_error(exc)
        or status_of(exc) in _MAYBE_DONE
        or any(isinstance(item, answers.NotJSON) for item in _chain(exc))
    )


def is_retryable(exc: BaseException, idempotent: bool) -> bool:
    """Return whether repeating the failed call can do no harm.

    A refusal (see :func:`is_refusal`) is always repeated. A request
    that may have been carried out (see :func:`is_uncertain`) is
    repeated only when doing it twice is harmless: reads and deletes.
    Creates go through :meth:`Cloud.create`, which looks first.
    """
    return is_refusal(exc) or (idempotent and is_uncertain(exc))


def _is_auth_refusal(exc: BaseException) -> bool:
    """Return whether Keystone refused the credentials or the scope."""
    return any(
        isinstance(item, ks_exceptions.Unauthorized | ks_exceptions.Forbidden)
        for item in _chain(exc)
    ) or status_of(exc) in (401, 403)


def _retry_after(exc: BaseException | None) -> float | None:
    for item in _chain(exc):
        response = getattr(item, "response", None)
        headers = getattr(response, "headers", None) or {}
        value = headers.get("Retry-After")
        if value is None:
            continue
        try:
            return max(0.0, float(value))
        except ValueError:
            return None  # an HTTP date: fall back to our own backoff
    return None


class Cloud:
    """The service user's connection and project-scoped connections."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        self._conf = conf
        self._lock = threading.Lock()
        self._scoped: dict[str, openstack.connection.Connection] = {}
        self._readers: dict[
            int, tuple[openstack.connection.Connection, ks_adapter.Adapter]
        ] = {}
        self._endpoint_options: dict[str, Any] | None = None
        self.service = self._connect()
        self._backoff = tenacity.wait_exponential_jitter(
            initial=1, max=conf.cloud.api_retry_max_wait
        )

    def _connect(
        self, project_id: str | None = None
    ) -> openstack.connection.Connection:
        conf = self._conf
        options = {
            "block_storage_api_version": "3",
            "region_name": conf.cloud.region_name,
            "interface": conf.cloud.interface,
            "api_timeout": conf.cloud.api_timeout,
        }
        if conf.cloud.cloud:
            if project_id is None:
                conn = openstack.connect(cloud=conf.cloud.cloud, **options)
            else:
                conn = self.service.connect_as(project_id=project_id)
            metrics.instrument(conn)
            return conn
        overrides = {}
        if project_id is not None:
            overrides = {
                "project_id": project_id,
                "project_name": None,
                "project_domain_id": None,
                "project_domain_name": None,
                "domain_id": None,
                "domain_name": None,
                "system_scope": None,
            }
        auth = ks_loading.load_auth_from_conf_options(
            conf, AUTH_GROUP, **overrides
        )
        shared: dict[str, object] = {"session": EnvOnceSession()}
        if project_id is not None:
            # A region has hundreds of projects: their sessions share the
            # service session's discovery cache and HTTP connection pool,
            # instead of each discovering Keystone again over a new one.
            shared = {
                "discovery_cache": self.service.session._discovery_cache,
                "session": self.service.session.session,
            }
        session = ks_loading.load_session_from_conf_options(
            conf,
            AUTH_GROUP,
            auth=auth,
            timeout=getattr(conf, AUTH_GROUP).timeout
            or conf.cloud.api_timeout,
            **shared,
        )
        conn = openstack.connection.Connection(session=session, **options)
        metrics.instrument(conn)
        return conn

    def for_project(self, project_id: str) -> openstack.connection.Connection:
        """Return a connection scoped to ``project_id`` (cached).

        Raise NoRoleInProject, saying what to grant, when Keystone refuses.
        """
        with self._lock:
            conn = self._scoped.get(project_id)
        if conn is not None:
            return conn
        conn = self._connect(project_id)
        try:
            self.call(conn.authorize)
        except sdk_exceptions.SDKException as exc:
            if not _is_auth_refusal(exc):
                raise
            raise NoRoleInProject(
                f"the service user cannot act in project {project_id} "
                f"({exc}); grant it a role there, e.g. 'openstack role add "
                f"--user <service user> --project {project_id} member', or "
                "use ownership = service for this policy"
            ) from None
        with self._lock:
            return self._scoped.setdefault(project_id, conn)

    def reader(
        self, conn: openstack.connection.Connection
    ) -> ks_adapter.Adapter:
        """A plain keystoneauth adapter for Block Storage on ``conn``'s
        session (its token, its project): what bulk listings read through.

        openstacksdk builds its Block Storage proxy on first use, about
        15 ms of CPU per connection (it deep-copies the service-type
        tables for every option it looks up); with a connection per
        project that was most of the cost of planning a region. Reads
        need none of it. Cached per connection.

        The endpoint is looked up in the token's catalog once, here, and
        then given to the adapter as its override: otherwise keystoneauth
        walks the catalog again on every request (about 0.3 ms of CPU each,
        a sixth of a run's create request). A project's Block Storage
        endpoint does not change while its connection lives.
        """
        key = id(conn)
        with self._lock:
            found = self._readers.get(key)
        if found is not None and found[0] is conn:
            return found[1]
        options = self._endpoint()
        adapter = ks_adapter.Adapter(
            session=conn.session, service_type="block-storage", **options
        )
        if options["endpoint_override"] is None:
            url = adapter.get_endpoint()
            if url:
                adapter = ks_adapter.Adapter(
                    session=conn.session,
                    service_type="block-storage",
                    **{**options, "endpoint_override": url},
                )
        with self._lock:
            self._readers[key] = (conn, adapter)
        return adapter

    def _endpoint(self) -> dict[str, Any]:
        """Where Block Storage is, as the service connection's options
        say: every project's connection is made with the same options, and
        looking it up costs about 4 ms of CPU per connection (the SDK
        deep-copies its service-type tables on each lookup)."""
        if self._endpoint_options is None:
            region = self.service.config
            self._endpoint_options = {
                "interface": region.get_interface("block-storage"),
                "region_name": region.get_region_name("block-storage"),
                "endpoint_override": region.get_endpoint("block-storage"),
            }
        return self._endpoint_options

    def check_microversion(self) -> tuple[int, int]:
        """Return the Block Storage microversion the cloud offers.

        Raise CloudTooOld naming the required and the offered version.
        """
        data = self.call(self.service.block_storage.get_endpoint_data)
        if data is None or data.max_microversion is None:
            raise CloudTooOld(
                "the Block Storage endpoint announced no microversions "
                "(is cinder-api reachable at the catalog's URL?); "
                "cinderbak needs at least {}.{}".format(*REQUIRED_MICROVERSION)
            )
        offered = tuple(data.max_microversion)[:2]
        if offered < REQUIRED_MICROVERSION:
            need = "{}.{}".format(*REQUIRED_MICROVERSION)
            have = "{}.{}".format(*offered)
            raise CloudTooOld(
                f"the Block Storage API offers microversion {have}, "
                f"cinderbak needs at least {need} (backup metadata)"
            )
        return (int(offered[0]), int(offered[1]))

    def call(
        self,
        func: Callable[..., T],
        *args: object,
        idempotent: bool = True,
        **kwargs: object,
    ) -> T:
        """Call ``func``, retrying only where repeating it is safe.

        Pass ``idempotent=False`` for creates: a create is repeated only
        when the API certainly did not carry it out.
        """
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(
                lambda exc: is_retryable(exc, idempotent)
            ),
            wait=self._wait,
            stop=tenacity.stop_after_attempt(self._conf.cloud.api_retries + 1),
            before_sleep=self._log_retry,
            reraise=True,
        )
        return retrying(func, *args, **kwargs)

    def create(
        self,
        create: Callable[..., T],
        find: Callable[[], T | None],
        **attrs: object,
    ) -> T:
        """Create a resource exactly once, whatever the network does.

        ``find`` looks the resource up by what makes it unique to the
        journal step that asks for it (its run's name on its volume).
        After an uncertain failure (the request may have been carried
        out) it is called before the create is repeated, and what it
        finds is adopted; a refusal is repeated after the API's
        Retry-After or our backoff. Anything else is raised.
        """
        attempts = self._conf.cloud.api_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return create(**attrs)
            except API_ERRORS as exc:
                if attempt == attempts:
                    raise
                if is_uncertain(exc):
                    found = self.call(find)
                    if found is not None:
                        LOG.warning(
                            "create %s: the answer was lost (%s) but the "
                            "request was carried out; adopting it",
                            getattr(create, "__name__", create),
                            exc,
                        )
                        return found
                elif not is_refusal(exc):
                    raise
                delay = self._delay(exc, attempt)
                LOG.warning(
                    "create %s failed (%s); retry %d in %.1f s",
                    getattr(create, "__name__", create),
                    exc,
                    attempt,
                    delay,
                )
                time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _delay(self, exc: BaseException, attempt: int) -> float:
        cap = float(self._conf.cloud.api_retry_max_wait)
        hinted = _retry_after(exc)
        if hinted is not None:
            return min(hinted, cap)
        return min(2.0 ** (attempt - 1), cap)

    def _wait(self, state: tenacity.RetryCallState) -> float:
        failed = state.outcome.exception() if state.outcome else None
        hinted = _retry_after(failed)
        if hinted is not None:
            return min(hinted, float(self._conf.cloud.api_retry_max_wait))
        return float(self._backoff(state))

    @staticmethod
    def _log_retry(state: tenacity.RetryCallState) -> None:
        LOG.warning(
            "API call %s failed (%s); retry %d in %.1f s",
            getattr(state.fn, "__name__", state.fn),
            state.outcome.exception() if state.outcome else None,
            state.attempt_number,
            state.upcoming_sleep,
        )

    def close(self) -> None:
        with self._lock:
            scoped, self._scoped = list(self._scoped.values()), {}
        for conn in [*scoped, self.service]:
            conn.close()
