"""WSGI entry point for Keystone under gunicorn (used by tools/localstack).

Keystone's own entry point parses sys.argv with oslo.config, which then
rejects gunicorn's command line; hide it before importing.
"""

import sys

sys.argv = sys.argv[:1]

from keystone.wsgi.api import application  # noqa: E402,F401
