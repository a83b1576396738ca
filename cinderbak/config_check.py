"""One validation pass over the whole configuration, before anything runs.

oslo.config checks a value only when it is first read, merges repeated
sections silently and ignores options and sections it does not know: a
typo or an out-of-range value surfaces at 03:00 as a traceback in a run
that already created backups. This pass reads everything at once and
returns every problem as one line naming the section, the option and the
expected form.

Two halves, kept apart:

* :func:`check` is pure: it takes the sections as read from the files
  (:class:`Section`, repeated headers kept) and the :class:`Schema` of
  known options and installed drivers, and returns :class:`Problem` s.
* :func:`check_environment` is thin I/O: the state path, the journal,
  Keystone and Cinder, the volume cluster. Its problems may be
  ``transient`` (a service down), which a restart can cure.

:func:`validate` runs both for the daemon's start-up, ``--check-config``,
the CLI and (without I/O) the daemon's reload.
"""

from __future__ import annotations

import dataclasses
import difflib
import glob
import importlib.metadata
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from oslo_config import cfg, iniparser, types

from cinderbak import chains, coordination, policy, retention
from cinderbak.quiesce.base import Capability

DEFAULT = "DEFAULT"
SECTION = "(section)"
# Namespaces of the sample config (etc/cinderbak/*-generator.conf): the
# options a file may set are exactly those the sample documents.
NAMESPACES = ("cinderbak", "oslo.log")
# Options oslo.config itself reads from [DEFAULT].
_OSLO_CONFIG_OWN = ("config_source",)
AUTH_GROUP = "service_auth"


@dataclasses.dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong, said in one line."""

    section: str
    option: str
    expected: str
    # True when it may cure itself (a service not up yet): worth a
    # restart by systemd, unlike a wrong value.
    transient: bool = False

    def __str__(self) -> str:
        return f"[{self.section}] {self.option}: {self.expected}"


class ConfigProblems(ValueError):
    """The configuration has problems; ``problems`` lists them all."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


@dataclasses.dataclass(frozen=True)
class Entry:
    """One ``key = value`` line as written, and where."""

    value: str
    where: str


@dataclasses.dataclass(frozen=True)
class Section:
    """One section header and the lines under it, as written.

    A header repeated in the files is a second Section: oslo.config would
    merge them, this pass can still see them.
    """

    name: str
    where: str
    options: Mapping[str, tuple[Entry, ...]]


@dataclasses.dataclass(frozen=True)
class Schema:
    """What the files may contain: fixed groups and their options, the
    options of a policy section, and the installed quiescers with their
    capabilities."""

    groups: Mapping[str, Mapping[str, cfg.Opt]]
    policy_opts: Mapping[str, cfg.Opt]
    quiescers: Mapping[str, frozenset[Capability]]
    # URL schemes of the installed tooz drivers that have group membership.
    coordination_drivers: frozenset[str] = frozenset()


# -- reading the files (I/O) ----------------------------------------------


class _SectionReader(iniparser.BaseParser):
    """oslo.config's own ini parser, keeping every header it meets."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sections: list[Section] = []
        self._current: dict[str, list[Entry]] | None = None
        self._name = DEFAULT
        self._where = f"{path}:1"

    def _flush(self) -> None:
        if self._current is not None:
            self.sections.append(
                Section(
                    self._name,
                    self._where,
                    {k: tuple(v) for k, v in self._current.items()},
                )
            )

    def new_section(self, section: str) -> None:
        self._flush()
        self._name = section
        self._where = f"{self.path}:{self.lineno}"
        self._current = {}

    def assignment(self, key: str, value: list[str]) -> None:
        if self._current is None:  # lines before any header: [DEFAULT]
            self._current = {}
        entry = Entry("\n".join(value), f"{self.path}:{self.lineno}")
        self._current.setdefault(key, []).append(entry)

    def read(self, lines: Iterable[str]) -> list[Section]:
        self.parse(lines)
        self._flush()
        return self.sections


def parse_text(text: str, path: str = "<text>") -> list[Section]:
    """Given one file's text, return its sections in order. Raise
    iniparser.ParseError."""
    return _SectionReader(path).read(text.splitlines())


def read_files(paths: Iterable[str]) -> list[Section]:
    """Return the sections of the files in order. Raise OSError or
    iniparser.ParseError (oslo.config has already refused those)."""
    sections: list[Section] = []
    for path in paths:
        with open(path, encoding="utf-8") as lines:
            sections.extend(_SectionReader(path).read(lines))
    return sections


def config_files(conf: cfg.ConfigOpts) -> list[str]:
    """The files oslo.config read, in its order (files, then dirs)."""
    paths = list(conf.config_file or ())
    for directory in conf.config_dir or () if "config_dir" in conf else ():
        paths += sorted(glob.glob(os.path.join(directory, "*.conf")))
    return paths


def load_schema(raw: Sequence[Section] = ()) -> Schema:
    """Collect the known options (as the sample generator does) and the
    installed quiescers. The auth plugin named in ``[service_auth]``
    brings its own options."""
    from keystoneauth1 import loading as ks_loading
    from stevedore import extension, named

    from cinderbak.quiesce.base import NAMESPACE

    groups: dict[str, dict[str, cfg.Opt]] = {DEFAULT: {}}
    names = list(NAMESPACES)
    if any(s.name.startswith("oslo_messaging") for s in raw):
        # Notifications are configured: oslo.messaging's own groups
        # (loaded only then: its option listing imports every driver).
        names.append("oslo.messaging")
    manager: named.NamedExtensionManager[Any] = named.NamedExtensionManager(
        "oslo.config.opts", names=names, invoke_on_load=False
    )
    for ext in manager:
        for group, group_opts in ext.plugin():
            name = getattr(group, "name", group) or DEFAULT
            known = groups.setdefault(name, {})
            for opt in group_opts:
                known.update(_names(opt))
    policy_opts = groups.pop(policy.SECTION_PREFIX + "NAME", {})
    auth = groups.setdefault(AUTH_GROUP, {})
    for opt in ks_loading.get_auth_common_conf_options():
        auth.update(_names(opt))
    plugin = merged(raw).get(AUTH_GROUP, {}).get("auth_type")
    if plugin:
        try:
            for opt in ks_loading.get_auth_plugin_conf_options(plugin):
                auth.update(_names(opt))
        except Exception:  # unknown plugin: reported by check()
            auth["auth_type"] = cfg.StrOpt(
                "auth_type",
                choices=sorted(ks_loading.get_available_plugin_names()),
            )
    for name in _OSLO_CONFIG_OWN:
        groups[DEFAULT][name] = cfg.StrOpt(name)
    quiescers = {}
    for ext in extension.ExtensionManager(NAMESPACE, invoke_on_load=False):
        quiescers[ext.name] = frozenset(
            getattr(ext.plugin, "CAPABILITIES", ())
        )
    # Names only: loading a driver imports its client library, which an
    # installation need not have for drivers it does not use.
    tooz_drivers = {
        entry.name
        for entry in importlib.metadata.entry_points(group="tooz.backends")
    }
    return Schema(
        groups,
        policy_opts,
        quiescers,
        frozenset(tooz_drivers & coordination.GROUP_DRIVERS),
    )


def _names(opt: cfg.Opt) -> dict[str, cfg.Opt]:
    """Every name a file may set ``opt`` under."""
    names = {opt.dest: opt, opt.name: opt}
    for old in opt.deprecated_opts:
        if old.name:
            names[old.name] = opt
            names[old.name.replace("-", "_")] = opt
    return names


# -- pure checks ------------------------------------------------------------


def merged(raw: Sequence[Section]) -> dict[str, dict[str, str]]:
    """Given the sections read, return section -> option -> value as
    oslo.config sees them: repeated sections merged, the last value of
    a repeated option winning."""
    values: dict[str, dict[str, str]] = {}
    for section in raw:
        known = values.setdefault(section.name, {})
        for key, entries in section.options.items():
            known[key] = entries[-1].value
    return values


def describe(opt: cfg.Opt) -> str:
    """The form an option's value must take, for a message."""
    kind = opt.type
    if isinstance(kind, types.Boolean):
        return "true or false"
    if isinstance(kind, types.String) and kind.choices:
        return "one of " + ", ".join(str(c) for c in kind.choices)
    if isinstance(kind, types.Integer | types.Float):
        noun = "an integer" if isinstance(kind, types.Integer) else "a number"
        low, high = kind.min, kind.max
        if low is not None and high is not None:
            return f"{noun} from {low} to {high}"
        if low is not None:
            return f"{noun} of at least {low}"
        if high is not None:
            return f"{noun} of at most {high}"
        return noun
    if isinstance(kind, types.List):
        return "a comma-separated list"
    if isinstance(kind, types.HostAddress):
        return "an IP address or host name"
    return "a string"


def _suggest(word: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, sorted(set(candidates)), n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def _check_sections(raw: Sequence[Section], schema: Schema) -> list[Problem]:
    problems = []
    known = sorted(schema.groups.keys() - {DEFAULT})
    seen: dict[str, list[Section]] = {}
    for section in raw:
        seen.setdefault(section.name, []).append(section)
    for name, copies in seen.items():
        if name == DEFAULT or name in schema.groups:
            files = [c.where.rsplit(":", 1)[0] for c in copies]
            repeated = len(files) != len(set(files))
        elif name.startswith(policy.SECTION_PREFIX):
            repeated = len(copies) > 1
        else:
            _, colon, rest = name.partition(":")
            candidates = known + (
                [policy.SECTION_PREFIX + rest] if colon else []
            )
            close = difflib.get_close_matches(name, candidates, n=1)
            hint = f"did you mean [{close[0]}]? " if close else ""
            problems.append(
                Problem(
                    name,
                    SECTION,
                    f"unknown section ({copies[0].where}); {hint}expected "
                    "[policy:NAME] or one of "
                    + ", ".join(f"[{g}]" for g in known),
                )
            )
            continue
        if repeated:
            where = ", ".join(c.where for c in copies)
            problems.append(
                Problem(
                    name,
                    SECTION,
                    f"defined {len(copies)} times ({where}), which "
                    "oslo.config merges silently; expected one section "
                    "(rename one, or merge them by hand)",
                )
            )
    return problems


def _check_values(
    section: str, values: Mapping[str, str], known: Mapping[str, cfg.Opt]
) -> tuple[list[Problem], dict[str, Any]]:
    """Check each option of one section; return the problems and the
    typed values of those that are fine."""
    problems = []
    typed: dict[str, Any] = {}
    for key, text in values.items():
        opt = known.get(key)
        if opt is None:
            names = sorted({o.dest for o in known.values()})
            close = difflib.get_close_matches(key, names, n=1)
            expected = (
                f"did you mean {close[0]!r}?"
                if close
                else "expected one of " + ", ".join(names)
            )
            problems.append(
                Problem(section, key, f"unknown option; {expected}")
            )
            continue
        if "$" in text:
            continue  # oslo.config substitutes $name; checked on use
        try:
            typed[opt.dest] = opt.type(text)
        except (ValueError, TypeError) as exc:
            problems.append(
                Problem(
                    section,
                    opt.dest,
                    f"{text!r} is not valid ({exc}); expected "
                    + describe(opt),
                )
            )
    return problems, typed


_FREE_FORM: Mapping[str, Callable[[str], object]] = {
    "schedule": policy.parse_schedule,
    "verify_schedule": policy.parse_schedule,
    "retention": retention.parse_retention,
    "full_every": chains.parse_full_every,
    "verify_sample": policy.parse_sample,
}


def _check_policy(
    name: str, typed: Mapping[str, Any], schema: Schema
) -> tuple[list[Problem], policy.Policy | None]:
    """Parse one policy section's typed values; every option checked."""
    section = policy.SECTION_PREFIX + name
    values = {
        opt.dest: opt.default for opt in schema.policy_opts.values()
    } | dict(typed)
    problems = []
    if not values.get("schedule"):
        problems.append(
            Problem(
                section,
                "schedule",
                "a value is required; expected "
                "a crontab expression ('0 3 * * *') or 'every 6h'",
            )
        )
    for option, parser in _FREE_FORM.items():
        text = values.get(option)
        if text is None or str(text).strip() == "":
            continue
        try:
            parser(str(text))
        except (ValueError, OverflowError) as exc:
            problems.append(Problem(section, option, str(exc)))
    if problems:
        return problems, None
    try:
        return [], policy.parse_policy(name, values)
    except policy.PolicyConfigError as exc:
        return [Problem(section, exc.option, str(exc).split(": ", 1)[1])], None
    except (ValueError, OverflowError) as exc:
        return [Problem(section, SECTION, f"cannot be used: {exc}")], None


def _check_capabilities(
    policies: Mapping[str, policy.Policy],
    fixed: Mapping[str, Mapping[str, Any]],
    schema: Schema,
) -> list[Problem]:
    """Whether the drivers and access configured can do what each policy
    asks, so that it fails now rather than per volume at run time."""
    problems = []
    quiescer = fixed.get("consistency", {}).get("quiescer", "noop")
    if quiescer not in schema.quiescers:
        hint = _suggest(quiescer, schema.quiescers)
        problems.append(
            Problem(
                "consistency",
                "quiescer",
                f"no quiescer {quiescer!r} is installed; {hint}expected "
                "one of " + ", ".join(sorted(schema.quiescers)),
            )
        )
        capabilities: frozenset[Capability] = frozenset()
    else:
        capabilities = schema.quiescers[quiescer]
    cluster = bool(fixed.get("volume_cluster", {}).get("conf"))
    for _, found in sorted(policies.items()):
        required = found.quiesce == "required"
        if required and Capability.APPLICATION_CONSISTENT not in capabilities:
            problems.append(
                Problem(
                    found.section,
                    "quiesce",
                    f"'required' needs a quiescer that can freeze guests, "
                    f"[consistency] quiescer {quiescer!r} cannot; expected "
                    "preferred or off, or a quiescer such as libvirt",
                )
            )
        if (
            required
            and found.transfer_mode is policy.TransferMode.VOLUME
            and not cluster
        ):
            problems.append(
                Problem(
                    found.section,
                    "transfer_mode",
                    "'volume' with quiesce = required needs read-only "
                    "access to the volume cluster to confirm the copy lies "
                    "inside the freeze; expected [volume_cluster] conf, or "
                    "transfer_mode = snapshot",
                )
            )
        if found.verify_schedule is not None and not cluster:
            problems.append(
                Problem(
                    found.section,
                    "verify_schedule",
                    "verification reads restored images on the volume "
                    "cluster; expected [volume_cluster] conf, or no "
                    "verify_schedule",
                )
            )
    return problems


def check(raw: Sequence[Section], schema: Schema) -> list[Problem]:
    """Given the sections as read and the schema, return every problem,
    sorted: unknown or repeated sections, unknown options (with the
    nearest known name), values out of range or of the wrong form,
    policies that do not parse, and what the drivers cannot do."""
    problems = _check_sections(raw, schema)
    fixed: dict[str, dict[str, Any]] = {}
    policies: dict[str, policy.Policy] = {}
    for name, values in merged(raw).items():
        if name.startswith(policy.SECTION_PREFIX):
            found, typed = _check_values(name, values, schema.policy_opts)
            problems += found
            more, parsed = _check_policy(
                name[len(policy.SECTION_PREFIX) :], typed, schema
            )
            problems += more
            if parsed is not None:
                policies[parsed.name] = parsed
        elif name in schema.groups:
            found, fixed[name] = _check_values(
                name, values, schema.groups[name]
            )
            problems += found
    deployment = fixed.get(DEFAULT, {}).get("deployment_id")
    if deployment is not None and not deployment.strip():
        problems.append(
            Problem(
                DEFAULT,
                "deployment_id",
                "empty: it is the owner mark on every backup, and expiry "
                "trusts it; expected a non-empty name unique to this "
                "deployment",
            )
        )
    problems += _check_capabilities(policies, fixed, schema)
    problems += _check_coordination(fixed, schema)
    return sorted(set(problems))


def _check_coordination(
    fixed: Mapping[str, Mapping[str, Any]], schema: Schema
) -> list[Problem]:
    """Several daemons need a backend with group membership and one
    journal they all reach: SQLite is one file on one host."""
    url = fixed.get(coordination.GROUP, {}).get("backend_url")
    if not url:
        return []
    problems = []
    scheme = str(url).split("://", 1)[0] if "://" in str(url) else ""
    if scheme not in schema.coordination_drivers:
        hint = _suggest(scheme, schema.coordination_drivers)
        problems.append(
            Problem(
                coordination.GROUP,
                "backend_url",
                f"no tooz driver with group membership for {scheme!r}; "
                f"{hint}expected a URL such as etcd3+http://HOST:2379 "
                "(drivers installed: "
                + ", ".join(sorted(schema.coordination_drivers))
                + ")",
            )
        )
    lease = _value(fixed, schema, coordination.GROUP, "lease")
    interval = _value(fixed, schema, coordination.GROUP, "check_interval")
    if (
        isinstance(lease, int | float)
        and isinstance(interval, int | float)
        and interval * 3 > lease
    ):
        problems.append(
            Problem(
                coordination.GROUP,
                "check_interval",
                f"{interval:g} s is more than a third of lease ({lease:g} "
                "s): a daemon must beat and look at the group several "
                f"times per lease; expected at most {lease / 3:g}",
            )
        )
    connection = fixed.get("journal", {}).get("connection")
    if connection is None:
        known = schema.groups.get("journal", {}).get("connection")
        connection = getattr(known, "default", None)
    connection = str(connection or "")
    if connection.startswith("sqlite"):
        problems.append(
            Problem(
                "journal",
                "connection",
                "SQLite cannot be shared by several daemons, and "
                "[coordination] backend_url is set; expected a "
                "PostgreSQL or MySQL URL every daemon reaches",
            )
        )
    return problems


def _value(
    fixed: Mapping[str, Mapping[str, Any]],
    schema: Schema,
    group: str,
    name: str,
) -> Any:
    """An option's value as set, or its default."""
    if name in fixed.get(group, {}):
        return fixed[group][name]
    return getattr(schema.groups.get(group, {}).get(name), "default", None)


# -- what changes on reload -------------------------------------------------


def changed_options(
    old: Mapping[tuple[str, str], object],
    new: Mapping[tuple[str, str], object],
) -> list[str]:
    """Given (section, option) -> value before and after a reload,
    return the options whose value changed, as '[section] option'."""
    keys = sorted(old.keys() | new.keys())
    return [
        f"[{s}] {o}" for s, o in keys if old.get((s, o)) != new.get((s, o))
    ]


# -- the whole pass (I/O) -----------------------------------------------------


def option_values(conf: cfg.ConfigOpts) -> dict[tuple[str, str], object]:
    """Every fixed option's value in ``conf`` (policies aside); a value
    that cannot be read is None."""
    values: dict[tuple[str, str], object] = {}
    for group, group_opts in _known_groups():
        for opt in group_opts:
            try:
                if group == DEFAULT:
                    values[(group, opt.dest)] = conf[opt.dest]
                else:
                    values[(group, opt.dest)] = conf[group][opt.dest]
            except (cfg.Error, ValueError, KeyError):
                values[(group, opt.dest)] = None
    return values


def _known_groups() -> list[tuple[str, list[cfg.Opt]]]:
    """The fixed groups and their options, as the sample lists them."""
    schema = load_schema()
    return [(g, list(opts.values())) for g, opts in schema.groups.items()]


def validate(
    conf: cfg.ConfigOpts, *, reach: bool = True, reach_cloud: bool = True
) -> list[Problem]:
    """Check the files ``conf`` was parsed from; with ``reach``, also what
    they point at (the cloud only with ``reach_cloud``: a caller that
    connects next reports that failure itself). Return every problem."""
    raw = read_files(config_files(conf))
    problems = check(raw, load_schema(raw))
    if reach:
        problems += check_environment(conf, cloud=reach_cloud)
    return problems


def check_environment(
    conf: cfg.ConfigOpts, *, cloud: bool = True
) -> list[Problem]:
    """Reach what the configuration points at; return what fails."""
    from cinderbak import env_check

    return env_check.run(conf, cloud=cloud)
