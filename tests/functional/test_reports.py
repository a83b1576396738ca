"""Run reports, notifications, metrics and alerts on the real stack.

A run with one failing volume (tenant-c, where cinderbak has no role)
is reported with that volume's reason: mailed to a real SMTP server
(aiosmtpd, in-process), sent as OpenStack notifications to the stack's
RabbitMQ and read back by a real oslo.messaging notification listener,
and printed by ``cinderbak runs show``. Then a real Prometheus (Debian's
package) scrapes the daemon and fires the RPO alert for a volume whose
backups keep failing.
"""

from __future__ import annotations

import datetime
import email
import email.policy
import ipaddress
import json
import ssl
import subprocess
import urllib.request
import uuid
from typing import Any

import pytest
import yaml
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from oslo_config import cfg

from cinderbak import mailer, opts, report
from cinderbak.journal import Journal
from tests.functional.conftest import CINDERBAK, ROOT, free_port
from tests.functional.test_daemon import Daemons, wait_until
from tests.unit import test_report as unit_report

OPT_IN = "cinderbak:policy"
RULES = "etc/cinderbak/cinderbak-alerts.rules.yml"


class Inbox:
    """aiosmtpd handler: keeps every message it is given."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], Any]] = []

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802
        self.messages.append(
            (
                envelope.mail_from,
                list(envelope.rcpt_tos),
                email.message_from_bytes(
                    envelope.original_content, policy=email.policy.default
                ),
            )
        )
        return "250 OK"


@pytest.fixture
def smtp():
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller.port, inbox
    controller.stop()


def _section(name: str, **values) -> str:
    return f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())


def test_a_failing_volume_is_reported_mailed_and_notified(
    stack,
    alice,
    carol,
    make_volume,
    cinderbak_config,
    tmp_path,
    smtp,
    consumer,
):
    port, inbox = smtp
    topic, received = consumer
    policy = f"rep-{uuid.uuid4().hex[:6]}"
    cinderbak = cinderbak_config(
        _section(f"policy:{policy}", schedule="0 3 * * *", retention="last=3")
        + _section(
            "report",
            recipients="ops@example.org,dba@example.org",
            smtp_host="127.0.0.1",
            smtp_port=port,
            mail_from="cinderbak@example.org",
        )
        + _section(
            "oslo_messaging_notifications",
            driver="messagingv2",
            topics=topic,
            transport_url=stack.raw["rabbitmq_url"],
        )
    )
    good = make_volume(alice, metadata={OPT_IN: policy})
    bad = make_volume(carol, metadata={OPT_IN: policy})
    rows = cinderbak.run("run-once", "--policy", policy, "--no-audit")
    by_id = {row["volume_id"]: row for row in rows}
    assert by_id[good.id]["status"] == "ok", cinderbak.last_stderr
    assert by_id[bad.id]["status"] == "error"
    tenant_a, tenant_c = stack.projects["tenant-a"], stack.projects["tenant-c"]

    # The mail: one, to both recipients, naming the failed volume's reason.
    [(sender, recipients, mail)] = inbox.messages
    assert sender == "cinderbak@example.org"
    assert sorted(recipients) == ["dba@example.org", "ops@example.org"]
    assert f"backup run of policy {policy}" in mail["Subject"]
    assert "FAILED (1 ok, 1 failed)" in mail["Subject"]
    text = mail.get_content()
    assert f"{bad.id} (project {tenant_c}): " in text
    assert "grant it a role" in text
    assert "1 full, 0 incremental" in text

    # The notifications, read back from RabbitMQ.
    def arrived():
        return (
            len(received.of("cinderbak.run.end")) >= 2
            and len(received.events) >= 4
        )

    wait_until(arrived, 30, "the notifications")
    [end] = received.of("cinderbak.backup.end")
    assert end["volume_id"] == good.id
    assert end["project_id"] == tenant_a
    assert end["status"] == "ok"
    assert end["kind"] == "full"
    assert end["backup_id"] == by_id[good.id]["backup_id"]
    assert end["cinderbak_version"] == "1.0"
    [error] = received.of("cinderbak.backup.error")
    assert error["volume_id"] == bad.id
    assert error["project_id"] == tenant_c
    assert "grant it a role" in error["error"]
    runs = {p["project_id"]: p for p in received.of("cinderbak.run.end")}
    assert set(runs) == {tenant_a, tenant_c}
    assert runs[tenant_c]["failures"][0]["volume_id"] == bad.id
    assert runs[tenant_c]["project"]["failed"] == 1
    assert runs[tenant_a]["project"]["ok"] == 1
    assert runs[tenant_a]["run"] == runs[tenant_c]["run"]
    assert runs[tenant_a]["policy"] == policy
    assert runs[tenant_a]["state"] == "partial"
    priorities = {
        (p, e, payload.get("project_id")) for p, e, payload in received.events
    }
    assert ("error", "cinderbak.run.end", tenant_c) in priorities

    # The same report, later, from the journal.
    journal = Journal.from_url(f"sqlite:///{tmp_path}/journal.sqlite")
    [run] = journal.runs(target=bad.id)
    shown = subprocess.run(
        [
            str(CINDERBAK),
            "--config-file",
            str(cinderbak.path),
            "runs",
            "show",
            run.id,
        ],
        env=cinderbak.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert f"{bad.id} (project {tenant_c}): " in shown
    assert "grant it a role" in shown
    assert shown == text.replace("\r\n", "\n")


def _prometheus(tmp_path, metrics_port: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ROOT / RULES)],
        "scrape_configs": [
            {
                "job_name": "cinderbak",
                "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
            }
        ],
    }
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    out = open(tmp_path / "prometheus.out", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={path}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    return proc, port


def _get(port: int, path: str) -> dict:
    with urllib.request.urlopen(
        f"http://127.0.0.1:{port}{path}", timeout=5
    ) as answer:
        return json.load(answer)


def test_prometheus_scrapes_the_daemon_and_the_rpo_alert_fires(
    stack, carol, make_volume, cinderbak_config, tmp_path, clouds_env
):
    policy = f"rpo-{uuid.uuid4().hex[:6]}"
    metrics_port = free_port()
    config = cinderbak_config(
        _section(f"policy:{policy}", schedule="every 10s", retention="last=1")
        + _section("metrics", port=metrics_port, rpo_factor="1.0")
    )
    failing = make_volume(carol, metadata={OPT_IN: policy})
    daemons = Daemons(tmp_path, clouds_env)
    prometheus = None
    try:
        daemon = daemons.start(config)
        prometheus, port = _prometheus(tmp_path, metrics_port)

        def firing():
            try:
                alerts = _get(port, "/api/v1/alerts")["data"]["alerts"]
            except OSError:
                return None
            names = {
                (a["labels"]["alertname"], a["labels"].get("volume_id"))
                for a in alerts
                if a["state"] == "firing"
            }
            if ("CinderbakVolumeOutOfRPO", failing.id) in names and (
                "CinderbakRunFailed",
                None,
            ) in names:
                return alerts
            return None

        alerts = wait_until(
            firing, 90, "the RPO alert", interval=1, daemon=daemon
        )
        rpo_alert = next(
            a
            for a in alerts
            if a["labels"]["alertname"] == "CinderbakVolumeOutOfRPO"
        )
        assert rpo_alert["labels"]["policy"] == policy
        assert rpo_alert["labels"]["project_id"] == stack.projects["tenant-c"]
        assert rpo_alert["labels"]["never_succeeded"] == "true"
        up = _get(port, "/api/v1/query?query=up")["data"]["result"]
        assert [r["value"][1] for r in up] == ["1"]
        # The daemon's own series, as Prometheus stored them.
        rpo = _get(
            port,
            f"/api/v1/query?query=cinderbak_policy_rpo_seconds"
            f'{{policy="{policy}"}}',
        )["data"]["result"]
        assert [r["value"][1] for r in rpo] == ["10"]
        errors = _get(
            port,
            f'/api/v1/query?query=cinderbak_backups_total{{policy="{policy}"}}',
        )["data"]["result"]
        assert {r["metric"]["status"] for r in errors} == {"error"}
        latency = _get(
            port,
            "/api/v1/query?query=cinderbak_api_request_duration_seconds_count",
        )["data"]["result"]
        assert sum(float(r["value"][1]) for r in latency) > 0
        assert daemon.stop() == 0
        # The daemon's slot reports, read back: the volume is out of RPO.
        slots = [
            r
            for r in daemons.journal().runs(policy=policy, target="*")
            if r.is_final
        ]
        assert len(slots) >= 2, slots
        shown = subprocess.run(
            [
                CINDERBAK,
                "--config-file",
                config.path,
                "runs",
                "show",
                slots[0].id,
            ],
            env=config.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        assert f"state:      {slots[0].state}" in shown
        assert "grant it a role" in shown
        late = shown.split("Out of RPO (10 s):\n", 1)[1]
        assert f"{failing.id} (project {stack.projects['tenant-c']})" in late
        assert "last good backup never" in late
    finally:
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(30)
        daemons.kill_all()


def _self_signed(tmp_path) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key, as files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "smtp.crt", tmp_path / "smtp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


def test_the_report_mail_uses_starttls_and_auth(tmp_path):
    """Against a real SMTP server that insists on STARTTLS and AUTH: the
    certificate is checked against smtp_ca_file, a wrong password is
    logged and reported as not sent, never raised."""
    cert, key = _self_signed(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (auth_data.login, auth_data.password) == (b"cb", b"s3cret")
        return AuthResult(success=ok)

    inbox = Inbox()
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=free_port(),
        tls_context=tls,
        require_starttls=True,
        authenticator=authenticator,
        auth_required=True,
    )
    controller.start()
    try:
        conf = cfg.ConfigOpts()
        opts.register_opts(conf)
        conf(args=[], project="cinderbak", default_config_files=[])
        for key_, value in {
            "recipients": ["ops@example.org"],
            "smtp_host": "127.0.0.1",
            "smtp_port": controller.port,
            "smtp_starttls": True,
            "smtp_ca_file": cert,
            "smtp_user": "cb",
            "smtp_password": "s3cret",
            # aiosmtpd answers a failed AUTH by going quiet: the timeout
            # is what ends that attempt.
            "smtp_timeout": 3.0,
        }.items():
            conf.set_override(key_, value, group="report")
        done = report.build(unit_report.slot(), unit_report.SLOT)
        assert mailer.send(conf, done)
        [(_, recipients, mail)] = inbox.messages
        assert recipients == ["ops@example.org"]
        assert "grant it a role" in mail.get_content()

        conf.set_override("smtp_password", "wrong", group="report")
        assert not mailer.send(conf, done)
        conf.set_override("smtp_password", "s3cret", group="report")
        conf.set_override("smtp_ca_file", None, group="report")
        assert not mailer.send(conf, done)  # not a CA the system trusts
        assert len(inbox.messages) == 1
    finally:
        controller.stop()
