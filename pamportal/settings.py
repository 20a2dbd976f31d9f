"""Settings for a pamportal node, read from the environment.

The defaults give a working embedded node (SQLite, kombu's filesystem broker, HTTPS on
8443, everything under ``PAM_DATA_DIR``). ``DATABASE_URL`` and ``CELERY_BROKER_URL``
switch to PostgreSQL and Redis; ``PAM_ENV=production`` turns on production settings.
"""

from __future__ import annotations

import os
import secrets
import socket
from datetime import timedelta
from pathlib import Path

from pamportal.core import config
from pamportal.core.files import write_private
from pamportal.replication import database as _replication_database

BASE_DIR = Path(__file__).resolve().parent.parent
PAM_ENV = os.environ.get("PAM_ENV", "development")
PRODUCTION = PAM_ENV == "production"


def _env_int(name: str, default: int) -> int:
    return config.env(name, default, int)


def _env_float(name: str, default: float) -> float:
    return config.env(name, default, float)


PAM_DATA_DIR = Path(os.environ.get("PAM_DATA_DIR", BASE_DIR / "var")).resolve()
PAM_DATA_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
PAM_LOG_DIR = PAM_DATA_DIR / "logs"
PAM_LOG_DIR.mkdir(exist_ok=True, mode=0o700)
# mkdir's mode does nothing to a directory that already exists (an installer's 0755):
# the data dir holds the database, keys and sessions, so it is owner-only. `serve`
# tightens the files already in it (pamportal.core.management.commands.serve).
for _dir in (PAM_DATA_DIR, PAM_LOG_DIR):
    try:
        if _dir.stat().st_mode & 0o077:
            _dir.chmod(0o700)
    except OSError:  # not ours to change (read-only mount, another owner): leave it
        pass


def _secret_file(path: Path, nbytes: int = 50) -> str:
    """Read a secret from a 0600 file in the data dir, creating it on first use."""
    if not path.exists():
        try:
            write_private(path, secrets.token_urlsafe(nbytes).encode(), exclusive=True)
        except FileExistsError:  # another process made it first: use theirs
            pass
    return path.read_text().strip()


try:
    SECRET_KEY = os.environ.get("SECRET_KEY") or _secret_file(PAM_DATA_DIR / "secret_key")
except FileExistsError:  # another process created it between our check and open
    SECRET_KEY = (PAM_DATA_DIR / "secret_key").read_text().strip()

DEBUG = os.environ.get("PAM_DEBUG", "") == "1" and not PRODUCTION

PAM_VERSION = "1.0.0"
PAM_HTTPS_PORT = _env_int("PAM_HTTPS_PORT", 443 if PRODUCTION else 8443)
# Cluster ports (DESIGN.md "Ports"); settings so that several nodes can share a machine.
PAM_CLIENT_PORT = _env_int("PAM_CLIENT_PORT", 9002)
PAM_ETCD_CLIENT_PORT = _env_int("PAM_ETCD_CLIENT_PORT", 2379)
PAM_ETCD_PEER_PORT = _env_int("PAM_ETCD_PEER_PORT", 2380)
PAM_SETUP_API_PORT = _env_int("PAM_SETUP_API_PORT", 2390)
PAM_DELEGATION_API_PORT = _env_int("PAM_DELEGATION_API_PORT", 2391)
PAM_POSTGRES_PORT = _env_int("PAM_POSTGRES_PORT", 5432)
PAM_PATRONI_PORT = _env_int("PAM_PATRONI_PORT", 8008)
# PostgreSQL members live outside the data dir (0700 root): postgres must traverse it.
PAM_POSTGRES_BASE = Path(os.environ.get("PAM_POSTGRES_BASE", "/var/lib/pamportal/pg"))
PAM_BIND_ADDRESS = os.environ.get("PAM_BIND_ADDRESS", "0.0.0.0" if PRODUCTION else "127.0.0.1")
PAM_NODE_ADDRESS = os.environ.get("PAM_NODE_ADDRESS") or socket.getfqdn() or "localhost"
PAM_TLS_CERT = PAM_DATA_DIR / "tls" / "node.crt"
PAM_TLS_KEY = PAM_DATA_DIR / "tls" / "node.key"

ALLOWED_HOSTS = [
    h.strip()
    for h in os.environ.get(
        "PAM_ALLOWED_HOSTS", f"localhost,127.0.0.1,[::1],{PAM_NODE_ADDRESS},{PAM_BIND_ADDRESS}"
    ).split(",")
    if h.strip()
]
if os.environ.get("PAM_TESTING") == "1":
    ALLOWED_HOSTS.append("testserver")

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_otp",
    # Kept only for its migrations: accounts 0004 moves its plaintext devices into
    # accounts.TOTPDevice (sealed). Nothing else uses its model.
    "django_otp.plugins.otp_totp",
    "axes",
    "csp",
    "django_htmx",
    "pamportal.core",
    "pamportal.audit",
    "pamportal.accounts",
    "pamportal.jobs",
    "pamportal.nodes",
    "pamportal.setup",
    "pamportal.licensing",
    "pamportal.preflight",
    "pamportal.cluster",
    "pamportal.replication",
    "pamportal.backups",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "pamportal.core.middleware.RequestContextMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "pamportal.core.middleware.AuditActorMiddleware",
    # After authentication: any answer to a logged-in user gets Cache-Control: no-store.
    "pamportal.core.middleware.NeverCacheAuthenticatedMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "pamportal.setup.middleware.FirstBootMiddleware",
    "pamportal.accounts.middleware.AccountPolicyMiddleware",
    # Axes last, as its documentation asks.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "pamportal.urls"
WSGI_APPLICATION = "pamportal.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "pamportal.core.context_processors.portal",
                "pamportal.licensing.context_processors.licence_banner",
                "pamportal.cluster.context_processors.pending_approvals",
            ],
        },
    }
]

# --- Database -------------------------------------------------------------------------
# <data dir>/database.json (the node moved onto its Patroni PostgreSQL), else
# DATABASE_URL, else SQLite in the data dir; a database.json that cannot be used stops
# the process rather than falling back (pamportal.replication.database).
DATABASES = _replication_database.databases(
    data_dir=PAM_DATA_DIR,
    database_url=os.environ.get("DATABASE_URL"),
    ca_file=PAM_TLS_CERT.with_name("cluster-ca.crt"),
    cert_file=PAM_TLS_CERT,
    key_file=PAM_TLS_KEY,
)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Accounts, sessions, lockout -------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "accounts:login"
LOGIN_REDIRECT_URL = "nodes:dashboard"

# Database sessions that restart their expiry at most once a minute (not on every
# request: each write takes SQLite's write lock), see pamportal.core.sessions.
SESSION_ENGINE = "pamportal.core.sessions"
# Idle timeout: the session's expiry restarts with the requests, so it ends after this
# many seconds without one (up to SESSION_REFRESH_SECONDS sooner, never later).
SESSION_COOKIE_AGE = _env_int("PAM_IDLE_TIMEOUT", 15 * 60)
SESSION_SAVE_EVERY_REQUEST = True
SESSION_REFRESH_SECONDS = 60
SESSION_EXPIRE_AT_BROWSER_CLOSE = True
SESSION_COOKIE_SECURE = True
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Strict"
SESSION_COOKIE_NAME = "pamportal_session"
CSRF_COOKIE_SECURE = True
CSRF_COOKIE_HTTPONLY = True
CSRF_COOKIE_SAMESITE = "Strict"
CSRF_COOKIE_NAME = "pamportal_csrftoken"
# A refused form gets the console's page and an audit event (auth.access_denied).
CSRF_FAILURE_VIEW = "pamportal.core.views.csrf_failure"

AXES_FAILURE_LIMIT = _env_int("PAM_LOCKOUT_FAILURES", 5)
# Failures from one address across all usernames before the address itself is locked
# (a brake on password spraying); far above AXES_FAILURE_LIMIT so that a few users
# behind one NAT mistyping do not lock each other out.
PAM_LOCKOUT_ADDRESS_FAILURES = _env_int("PAM_LOCKOUT_ADDRESS_FAILURES", 30)
AXES_COOLOFF_TIME = timedelta(minutes=_env_int("PAM_LOCKOUT_MINUTES", 15))
# Lock a username from the address that guessed it (so a stranger cannot lock a user
# out from elsewhere), and an address that guesses across usernames. Each combination
# has its own limit: see pamportal.accounts.lockout.
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"], "ip_address"]
AXES_HANDLER = "pamportal.accounts.lockout.AddressBrakeHandler"
# Tries during a lockout are refused without being counted, so the cool-off runs from
# the failure that caused the lockout and is not restarted by further tries.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "pamportal.accounts.views.locked_out"
AXES_VERBOSE = False
AXES_ENABLE_ACCESS_FAILURE_LOG = True
AXES_SENSITIVE_PARAMETERS = ["password", "otp_token", "token"]

OTP_TOTP_ISSUER = "pamportal"

PAM_SETUP_TOKEN_TTL = timedelta(hours=_env_int("PAM_SETUP_TOKEN_TTL_HOURS", 24))

# --- Security headers ------------------------------------------------------------------
SECURE_HSTS_SECONDS = 63072000
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
# gunicorn serves TLS itself, so there is no plain-HTTP listener to redirect from; the
# redirect still guards any other deployment in production.
SECURE_SSL_REDIRECT = PRODUCTION
X_FRAME_OPTIONS = "DENY"
DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024
DATA_UPLOAD_MAX_NUMBER_FIELDS = 200

CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "font-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

# --- Static files ----------------------------------------------------------------------
STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = PAM_DATA_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if PRODUCTION
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}
WHITENOISE_USE_FINDERS = not PRODUCTION

LANGUAGE_CODE = "en-gb"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

# --- Celery ----------------------------------------------------------------------------
PAM_BROKER_DIR = PAM_DATA_DIR / "broker"
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or "filesystem://"
if CELERY_BROKER_URL.startswith("filesystem://"):
    PAM_BROKER_DIR.mkdir(exist_ok=True, mode=0o700)
    # kombu's filesystem transport, with message files written atomically.
    CELERY_BROKER_TRANSPORT = "pamportal.core.broker:Transport"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(PAM_BROKER_DIR),
        "data_folder_out": str(PAM_BROKER_DIR),
        "control_folder": str(PAM_BROKER_DIR / "control"),
        "store_processed": False,
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("PAM_CELERY_QUEUE", "pamportal")
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = False
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULE_FILENAME = str(PAM_DATA_DIR / "celerybeat-schedule")

# Jobs: a running step holds a lease renewed every third of its length; the reaper
# runs this often and fails (or re-queues) steps whose lease ran out.
PAM_JOB_LEASE_SECONDS = _env_float("PAM_JOB_LEASE_SECONDS", 60.0)
PAM_JOB_REAPER_INTERVAL = _env_float("PAM_JOB_REAPER_INTERVAL", 30.0)
# How often each node's worker records Patroni's leader as the cluster's (cluster.leader_follow).
PAM_LEADER_FOLLOW_SECONDS = _env_float("PAM_LEADER_FOLLOW_SECONDS", 5.0)
# How often the cluster's leader takes a backup on its own (seconds; 0: never).
PAM_BACKUP_INTERVAL_SECONDS = _env_int("PAM_BACKUP_INTERVAL_SECONDS", 86400)
# Extra modules that register job kinds (the test suite adds its own diagnostic job).
PAM_JOB_PLUGINS = [m for m in os.environ.get("PAM_JOB_PLUGINS", "").split(",") if m]

# --- Logging ---------------------------------------------------------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "filters": {"refusals_on_one_line": {"()": "pamportal.core.log_filters.RefusalsOnOneLine"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["refusals_on_one_line"]},
        "file": {
            "filters": ["refusals_on_one_line"],
            "class": "logging.handlers.RotatingFileHandler",
            "filename": str(PAM_LOG_DIR / "pamportal.log"),
            "maxBytes": 10 * 1024 * 1024,
            "backupCount": 5,
            "formatter": "plain",
        },
    },
    "root": {"handlers": ["console", "file"], "level": os.environ.get("PAM_LOG_LEVEL", "INFO")},
    "loggers": {"axes": {"level": "WARNING"}},
}
