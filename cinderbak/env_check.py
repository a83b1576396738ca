"""The I/O half of the configuration check: reach what the config names.

Each probe opens what start-up would open (the state path, the journal,
Keystone and Cinder, the volume cluster), closes it again and turns a
failure into one :class:`~cinderbak.config_check.Problem` line instead
of a traceback. Probes are independent, so every failure is reported at
once. A problem that may cure itself (a service not up yet) is marked
``transient``: the daemon then exits 1 and systemd tries again.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

from oslo_config import cfg

from cinderbak.config_check import DEFAULT, Problem


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300].rstrip(".")


def check_state_path(conf: cfg.ConfigOpts) -> list[Problem]:
    """The state directory exists (or can be made) and is writable."""
    path = conf.state_path
    try:
        os.makedirs(path, mode=0o750, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        return [
            Problem(
                DEFAULT,
                "state_path",
                f"cannot write {path!r} ({exc.strerror or exc}); expected "
                "a directory the daemon's user can create and write",
            )
        ]
    return []


def check_journal(conf: cfg.ConfigOpts) -> list[Problem]:
    """The journal's URL parses, its driver exists, and the database
    opens and takes the schema."""
    import sqlalchemy
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    text = conf.journal.connection
    try:
        url = make_url(text)
    except sqlalchemy.exc.ArgumentError:
        return [
            Problem(
                "journal",
                "connection",
                "not an SQLAlchemy URL; expected e.g. "
                "sqlite:////var/lib/cinderbak/cinderbak.sqlite or "
                "postgresql+psycopg://user:SECRET@host/db",
            )
        ]
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() == "sqlite" and url.database:
        if not os.path.exists(url.database):
            # Made at start-up, not by a check: its directory will do.
            directory = os.path.dirname(url.database) or "."
            if os.access(directory, os.W_OK) or not os.path.exists(directory):
                return []
            return [
                Problem(
                    "journal",
                    "connection",
                    f"cannot create {url.database!r} (directory not "
                    "writable); expected a path the daemon's user may write",
                )
            ]
    try:
        engine = sqlalchemy.create_engine(url)
    except (sqlalchemy.exc.ArgumentError, ImportError) as exc:
        return [
            Problem(
                "journal",
                "connection",
                f"cannot use {shown} ({_first_line(exc)}); expected a URL "
                "whose database driver is installed",
            )
        ]
    # Read the table list only: no migration runs from a check.
    try:
        with engine.connect() as connection:
            sqlalchemy.inspect(connection).get_table_names()
    except sqlalchemy.exc.OperationalError as exc:
        sqlite = url.get_backend_name() == "sqlite"
        return [
            Problem(
                "journal",
                "connection",
                f"cannot open {shown} ({_first_line(exc.orig or exc)}); "
                "expected a reachable database the daemon may write",
                transient=not sqlite,
            )
        ]
    except sqlalchemy.exc.SQLAlchemyError as exc:
        return [
            Problem(
                "journal",
                "connection",
                f"{shown} is not a usable journal "
                f"({_first_line(getattr(exc, 'orig', None) or exc)}); "
                "expected a cinderbak journal database (restore it from a "
                "copy or move the damaged file away)",
            )
        ]
    finally:
        engine.dispose()
    return []


def check_cloud(conf: cfg.ConfigOpts) -> list[Problem]:
    """The service user authenticates and Cinder offers what we need.

    Retries are turned off for the probe: an unreachable Keystone is
    reported at once, and systemd retries the whole start.
    """
    from cinderbak import cloud

    missing = credentials_problem(conf)
    if missing:
        return missing
    conf.set_override("api_retries", 0, group="cloud")
    connection = None
    try:
        connection = cloud.Cloud(conf)
        connection.check_microversion()
    except Exception as exc:  # keystoneauth and the SDK wrap each other
        return cloud_failure(conf, exc)
    finally:
        conf.clear_override("api_retries", group="cloud")
        if connection is not None:
            connection.close()
    return []


def credentials_problem(conf: cfg.ConfigOpts) -> list[Problem]:
    """No cloud named and no keystoneauth options: nothing to connect as."""
    from cinderbak import cloud

    if conf.cloud.cloud or conf[cloud.AUTH_GROUP].auth_type:
        return []
    return [
        Problem(
            "cloud",
            "cloud",
            "no credentials; expected the name of a cloud in "
            f"clouds.yaml, or keystoneauth options in [{cloud.AUTH_GROUP}]"
            " (auth_type = password, auth_url, username, ...)",
        )
    ]


def cloud_failure(conf: cfg.ConfigOpts, exc: BaseException) -> list[Problem]:
    """Say, as one problem, why connecting to the cloud failed. The probe
    above and the CLI's own connection (the probe there, so that a command
    never connects twice) share it."""
    from keystoneauth1 import exceptions as ks_exceptions
    from openstack import exceptions as sdk_exceptions

    from cinderbak import cloud

    name = conf.cloud.cloud
    where = ("cloud", "cloud") if name else (cloud.AUTH_GROUP, "auth_url")
    if isinstance(exc, sdk_exceptions.ConfigException):
        return [Problem(*where, f"{_first_line(exc)}; {_known_clouds()}")]
    if isinstance(exc, cloud.CloudTooOld):
        return [Problem(*where, _first_line(exc), transient=True)]
    cause = _root(exc)
    if cloud._is_auth_refusal(exc):
        return [
            Problem(
                where[0],
                "cloud" if name else "password",
                f"Keystone refused the credentials "
                f"({_first_line(cause)}); expected the service user's "
                "valid name, password, domain and project",
            )
        ]
    unreachable = (
        ks_exceptions.ConnectFailure,
        ks_exceptions.DiscoveryFailure,
        sdk_exceptions.HttpException,
        ConnectionError,
        TimeoutError,
    )
    if any(isinstance(e, unreachable) for e in _chain(exc)):
        return [
            Problem(
                *where,
                f"cannot reach the cloud ({_first_line(cause)}); "
                "expected a reachable Keystone and Cinder",
                transient=True,
            )
        ]
    return [Problem(*where, f"cannot connect ({_first_line(cause)})")]


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes, outermost first."""
    found = [exc]
    while len(found) < 20:
        nxt = found[-1].__cause__ or found[-1].__context__
        if nxt is None:
            break
        found.append(nxt)
    return found


def _root(exc: BaseException) -> BaseException:
    return _chain(exc)[-1]


def _known_clouds() -> str:
    import openstack.config

    try:
        names = openstack.config.OpenStackConfig().get_cloud_names()
    except Exception:  # clouds.yaml itself unreadable: said above
        return "expected a readable clouds.yaml"
    return "expected one of clouds.yaml's clouds: " + (
        ", ".join(sorted(names)) or "(none)"
    )


def check_volume_cluster(conf: cfg.ConfigOpts) -> list[Problem]:
    """ceph.conf and keyring are readable and the client connects."""
    from cinderbak import volume_cluster

    group = conf[volume_cluster.GROUP]
    if not group.conf:
        return []
    problems = []
    for option in ("conf", "keyring"):
        path = group[option]
        if path and not os.access(path, os.R_OK):
            problems.append(
                Problem(
                    volume_cluster.GROUP,
                    option,
                    f"cannot read {path!r}; expected a file readable by "
                    "the daemon's user",
                )
            )
    if problems:
        return problems
    try:
        cluster = volume_cluster.VolumeCluster.from_conf(conf)
    except ImportError as exc:
        return [
            Problem(
                volume_cluster.GROUP,
                "conf",
                f"Ceph's Python bindings are missing ({exc}); expected "
                "python3-rados and python3-rbd",
            )
        ]
    except Exception as exc:  # rados.Error and its kin
        timed_out = type(exc).__name__ in ("TimedOut", "TimeoutError")
        return [
            Problem(
                volume_cluster.GROUP,
                "user",
                f"cannot connect to the volume cluster as client."
                f"{group.user} ({type(exc).__name__}: {_first_line(exc)}); "
                "expected a reachable cluster and that client's keyring",
                transient=timed_out,
            )
        ]
    if cluster is not None:
        cluster.close()
    return []


PROBES: tuple[Callable[[cfg.ConfigOpts], list[Problem]], ...] = (
    check_state_path,
    check_journal,
    check_cloud,
    check_volume_cluster,
)


def run(conf: cfg.ConfigOpts, *, cloud: bool = True) -> list[Problem]:
    """Run every probe (the cloud's only with ``cloud``); one whose
    options cannot even be read was reported by the pure pass and is
    skipped here."""
    problems: list[Problem] = []
    for probe in PROBES:
        if probe is check_cloud and not cloud:
            problems += credentials_problem(conf)
            continue
        try:
            problems += probe(conf)
        except (cfg.Error, ValueError):
            continue
    return problems
