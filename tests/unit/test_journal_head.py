"""The journal's HEAD constant names alembic's newest revision: start-up
trusts it to skip alembic when the database is current."""

from alembic import config, script

from cinderbak.journal import api
from cinderbak.journal.migrations import HEAD


def test_head_is_the_newest_migration():
    settings = config.Config()
    settings.set_main_option("script_location", api.MIGRATIONS)
    scripts = script.ScriptDirectory.from_config(settings)
    assert scripts.get_heads() == [HEAD]
