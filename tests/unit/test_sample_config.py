"""The committed sample config is what the generator writes today."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_sample_config_is_up_to_date(tmp_path):
    generated = tmp_path / "cinderbak.conf.sample"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "oslo_config.generator",
            "--config-file",
            str(ROOT / "etc/cinderbak/cinderbak-config-generator.conf"),
            "--output-file",
            str(generated),
        ],
        check=True,
        cwd=ROOT,
    )
    committed = ROOT / "etc/cinderbak/cinderbak.conf.sample"
    assert committed.read_text() == generated.read_text(), (
        "etc/cinderbak/cinderbak.conf.sample is out of date: run "
        "'tox -e genconfig' and commit the result"
    )
