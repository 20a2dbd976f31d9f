"""Settings for the test suite: the node's settings, a data dir of its own, fast hashing."""

import os
from pathlib import Path

os.environ.setdefault("PAM_DATA_DIR", str(Path(__file__).resolve().parent.parent / "var" / "test"))
os.environ["PAM_TESTING"] = "1"

from pamportal.settings import *  # noqa: E402,F401,F403

# Hashing cost is not what the suite tests; production keeps Django's default.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
CELERY_TASK_ALWAYS_EAGER = False
