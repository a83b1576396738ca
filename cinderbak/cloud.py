"""Access to the cloud: connections, project scoping, microversions, retries.

The daemon talks to Cinder through openstacksdk only. The service user is
configured either by naming a cloud from ``clouds.yaml`` or with
keystoneauth options in the ``[service_auth]`` group. For backups owned by
a tenant's project the same user acts with a token scoped to that project
(it needs a role there); those connections are cached per project.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import openstack
import openstack.connection
import tenacity
from keystoneauth1 import exceptions as ks_exceptions
from keystoneauth1 import loading as ks_loading
from openstack import exceptions as sdk_exceptions
from oslo_config import cfg
from oslo_log import log as logging

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
    unique = [o for o in auth_opts if not (o.dest in seen or seen.add(o.dest))]
    return [
        ("cloud", OPTS),
        (AUTH_GROUP, unique + ks_loading.get_session_conf_options()),
    ]


class CloudTooOld(RuntimeError):
    """The Block Storage API cannot do what the daemon relies on."""


class NoRoleInProject(RuntimeError):
    """The service user cannot act in a volume's project."""


_RETRY_ALWAYS = {429, 503}
_RETRY_IDEMPOTENT = {500, 502, 504}

T = TypeVar("T")


def _status_of(exc: BaseException) -> int | None:
    return getattr(exc, "status_code", None) or getattr(
        getattr(exc, "response", None), "status_code", None
    )


def is_retryable(exc: BaseException, idempotent: bool) -> bool:
    """Return whether repeating the failed call can do no harm.

    A refused connection never reached the API, and 429/503 are explicit
    refusals. A 500/502/504 may hide a request that was carried out, so
    only reads and deletes are repeated after those.
    """
    if isinstance(exc, ks_exceptions.ConnectFailure):
        return True
    status = _status_of(exc)
    if status in _RETRY_ALWAYS:
        return True
    return idempotent and status in _RETRY_IDEMPOTENT


def _is_auth_refusal(exc: BaseException) -> bool:
    """Return whether Keystone refused the credentials or the scope.

    The SDK wraps keystoneauth's error in a plain SDKException, so the
    cause chain is searched too.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(
            seen, ks_exceptions.Unauthorized | ks_exceptions.Forbidden
        ) or _status_of(seen) in (401, 403):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _retry_after(exc: BaseException | None) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


class Cloud:
    """The service user's connection and project-scoped connections."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        self._conf = conf
        self._lock = threading.Lock()
        self._scoped: dict[str, openstack.connection.Connection] = {}
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
        }
        if conf.cloud.cloud:
            if project_id is None:
                return openstack.connect(cloud=conf.cloud.cloud, **options)
            return self.service.connect_as(project_id=project_id)
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
        session = ks_loading.load_session_from_conf_options(
            conf, AUTH_GROUP, auth=auth
        )
        return openstack.connection.Connection(session=session, **options)

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
        return offered

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

    def _wait(self, state: tenacity.RetryCallState) -> float:
        hinted = _retry_after(state.outcome.exception())
        if hinted is not None:
            return min(hinted, self._conf.cloud.api_retry_max_wait)
        return self._backoff(state)

    @staticmethod
    def _log_retry(state: tenacity.RetryCallState) -> None:
        LOG.warning(
            "API call %s failed (%s); retry %d in %.1f s",
            getattr(state.fn, "__name__", state.fn),
            state.outcome.exception(),
            state.attempt_number,
            state.upcoming_sleep,
        )

    def close(self) -> None:
        with self._lock:
            scoped, self._scoped = list(self._scoped.values()), {}
        for conn in [*scoped, self.service]:
            conn.close()
