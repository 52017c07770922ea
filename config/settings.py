"""Stepwise settings, read from the environment (django-environ).

The defaults are the embedded mode `make run` uses: SQLite and django-q2's ORM broker in
`var/`. Production sets `STEPWISE_ENV=production`, which refuses to start without a real
`SECRET_KEY` and `ALLOWED_HOSTS`.
"""

from datetime import timedelta
from pathlib import Path

import environ
from csp import constants as csp

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

STEPWISE_ENV = env.str("STEPWISE_ENV", default="development")
PRODUCTION = STEPWISE_ENV == "production"
VAR_DIR = Path(env.str("STEPWISE_VAR_DIR", default=str(BASE_DIR / "var")))

if PRODUCTION:
    SECRET_KEY = env.str("SECRET_KEY")  # no default: refuse to start without one
    ALLOWED_HOSTS = env.list("ALLOWED_HOSTS")
else:
    SECRET_KEY = env.str("SECRET_KEY", default="stepwise-insecure-development-key-change-me")
    ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver"])

DEBUG = env.bool("DEBUG", default=False)
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
CSRF_FAILURE_VIEW = "config.api.errors.csrf_failure"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "knox",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_q",
    "django_htmx",
    "template_partials",
    "axes",
    "csp",
    "config.apps.CoreConfig",
    "runbooks",
    "runs",
    "approvals",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "config.middleware.ContentSecurityPolicyMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, as django-axes asks: it turns a locked-out sign-in into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

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
                "config.views.ui_context",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
# SQLite runs in WAL mode with IMMEDIATE transactions so that concurrent writers queue on the
# busy timeout instead of failing with "database is locked" when a read lock is upgraded.
SQLITE_OPTIONS = {
    "transaction_mode": "IMMEDIATE",
    "timeout": 20,
    "init_command": (
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;"
        " PRAGMA busy_timeout=20000;"
    ),
}
DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'stepwise.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("OPTIONS", {}).update(SQLITE_OPTIONS)
    # Tests run workers in other processes, so the test database must be a file they can open.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-stepwise.sqlite3")}
# Persistent connections, SQLite included: django-q2 calls close_old_connections() on every
# broker poll, and reopening SQLite each time (PRAGMAs and all) was most of an idle
# cluster's CPU (docs/benchmarks.md).
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=600))
DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "staticfiles"
STATICFILES_DIRS = [path for path in [BASE_DIR / "static"] if path.is_dir()]
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
MEDIA_ROOT = Path(env.str("STEPWISE_MEDIA_DIR", default=str(VAR_DIR / "media")))

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

# --- Security -------------------------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE = PRODUCTION
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=PRODUCTION)
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]  # load balancers probe over plain HTTP
# Behind a proxy that terminates TLS, trust its X-Forwarded-Proto header.
STEPWISE_BEHIND_PROXY = env.bool("STEPWISE_BEHIND_PROXY", default=False)
if STEPWISE_BEHIND_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# HSTS is off unless asked for: once browsers cache it, a mistake cannot be undone
# (docs/running.md). With it off we silence Django's reminder on purpose.
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0)
SILENCED_SYSTEM_CHECKS = ["security.W004"] if SECURE_HSTS_SECONDS == 0 else []
SECURE_CONTENT_TYPE_NOSNIFF = True

# Sign-in lockout (django-axes): after STEPWISE_LOGIN_FAILURES failed sign-ins for one
# username from one address, that pair is refused (429, the lockout page) for
# STEPWISE_LOGIN_LOCKOUT_MINUTES. Keyed on the pair, so nobody can lock a colleague out from
# elsewhere. Failures are counted in the database, shared by every web process. The client
# address is the one throttling uses (`config.api.auth.client_address`).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env.int("STEPWISE_LOGIN_FAILURES", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("STEPWISE_LOGIN_LOCKOUT_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_DISABLE_ACCESS_LOG = True  # failures are kept; a row per successful sign-in is not
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_CLIENT_IP_CALLABLE = "config.api.auth.client_address"
X_FRAME_OPTIONS = "DENY"
# Content-Security-Policy (django-csp; on pages, not the API: config.middleware): scripts
# only from our own static files, so text that slips into a page (a runbook description, a
# log line) can never run as script. Styles allow inline `style=` attributes (the progress
# bars' widths); nothing else is loosened.
# tests/ui/test_security_headers.py checks no page carries an inline script.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [csp.SELF],
        "script-src": [csp.SELF],
        "style-src": [csp.SELF, csp.UNSAFE_INLINE],
        "img-src": [csp.SELF, "data:"],
        "font-src": [csp.SELF, "data:"],
        "connect-src": [csp.SELF],
        "object-src": [csp.NONE],
        "base-uri": [csp.SELF],
        "form-action": [csp.SELF],
        "frame-ancestors": [csp.NONE],
    }
}

# --- Task queue (django-q2) -----------------------------------------------------------------
# The database is the source of truth for runs; the queue only wakes workers. Step retries are
# ours, so the queue never retries (max_attempts 1) and acknowledges failures. A step may run
# for up to STEPWISE_MAX_STEP_SECONDS; the queue's task timeout sits just above it and its
# redelivery (`retry`) above that, as django-q2 requires.
STEPWISE_MAX_STEP_SECONDS = env.int("STEPWISE_MAX_STEP_SECONDS", default=24 * 3600)
STEPWISE_BROKER = env.str("STEPWISE_BROKER", default="")
Q_CLUSTER = {
    "name": "stepwise",
    "workers": env.int("STEPWISE_WORKERS", default=4),
    "recycle": 500,
    # One task runs a chain of steps (runs.runner.work) and stops chaining once it has run
    # for STEPWISE_MAX_STEP_SECONDS, so twice that bounds it.
    "timeout": 2 * STEPWISE_MAX_STEP_SECONDS + 60,
    "retry": 2 * STEPWISE_MAX_STEP_SECONDS + 120,
    "max_attempts": 1,
    "ack_failures": True,
    "save_limit": -1,  # results are never read; failed tasks are still kept
    "queue_limit": 4,
    # The ORM broker's pusher is woken when a task is queued on this host (runs.broker), so
    # the poll is only its fallback: for tasks queued on other hosts, or a lost wake-up.
    "poll": env.float("STEPWISE_BROKER_POLL", default=5.0),
    # The sentinel checks its processes (and saves its status) this often; each wake-up of
    # an idle cluster costs CPU.
    "guard_cycle": 5,
    "catch_up": False,
    "label": "Task queue",
}
if STEPWISE_BROKER.startswith(("redis://", "rediss://", "unix://")):
    Q_CLUSTER["redis"] = STEPWISE_BROKER
elif STEPWISE_BROKER in ("", "orm"):
    Q_CLUSTER["orm"] = "default"
    Q_CLUSTER["broker_class"] = "runs.broker.WakeableORM"
else:
    raise environ.ImproperlyConfigured(
        f"STEPWISE_BROKER must be empty, 'orm' or a redis:// URL, not {STEPWISE_BROKER!r}"
    )

# --- Engine ---------------------------------------------------------------------------------
# A worker holds a step under a lease it renews while the step runs; the reaper, running in
# every cluster, takes back steps whose lease ran out (the worker died).
STEPWISE_LEASE_SECONDS = env.float("STEPWISE_LEASE_SECONDS", default=30)
STEPWISE_REAPER_INTERVAL = env.float("STEPWISE_REAPER_INTERVAL", default=5)
STEPWISE_REQUEUE_AFTER = env.float("STEPWISE_REQUEUE_AFTER", default=60)
# A fan-out wakes at most this many workers; they keep claiming the group's ready steps.
STEPWISE_FANOUT_WAKEUPS = env.int("STEPWISE_FANOUT_WAKEUPS", default=8)
# A worker claims up to this many ready shell steps of a parallel group at once, runs their
# processes side by side and records them in one transaction (1: one step at a time).
STEPWISE_STEP_BATCH = env.int("STEPWISE_STEP_BATCH", default=16)
STEPWISE_INLINE_RETRY_WAIT = env.float("STEPWISE_INLINE_RETRY_WAIT", default=15)
STEPWISE_KILL_GRACE = env.float("STEPWISE_KILL_GRACE", default=5)
# What one attempt's output may add to the log, in millions of characters: a runaway `yes`
# would otherwise fill the database. Beyond it lines are read and dropped; the step goes on.
STEPWISE_MAX_LOG_MB = env.float("STEPWISE_MAX_LOG_MB", default=100)
# What one attempt's artifacts may take in storage, in MB; a file past it is not kept.
STEPWISE_MAX_ARTIFACTS_MB = env.float("STEPWISE_MAX_ARTIFACTS_MB", default=1000)
STEPWISE_WORK_DIR = Path(env.str("STEPWISE_WORK_DIR", default=str(VAR_DIR / "work")))
STEPWISE_SHELL_PATH = env.str("STEPWISE_SHELL_PATH", default="/usr/local/bin:/usr/bin:/bin")

# Links in notifications point here; the approval webhook (Slack-compatible) is optional.
STEPWISE_BASE_URL = env.str("STEPWISE_BASE_URL", default="http://127.0.0.1:8000")
STEPWISE_APPROVAL_WEBHOOK_URL = env.str("STEPWISE_APPROVAL_WEBHOOK_URL", default="")
EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="stepwise@localhost")
EMAIL_HOST = env.str("EMAIL_HOST", default="localhost")
EMAIL_PORT = env.int("EMAIL_PORT", default=25)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        "django-q": {"level": env.str("Q_LOG_LEVEL", default="WARNING")},
        "axes": {"level": "WARNING"},  # its lockouts; not its start-up banner or each failure
    },
}

# Serve static files straight from the app folders outside production (no collectstatic).
WHITENOISE_USE_FINDERS = not PRODUCTION
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # also makes VAR_DIR

# --- REST API -------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "config.api.auth.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # JSON everywhere; runbooks also take YAML (their views add config.api.parsers.YamlParser).
    "DEFAULT_PARSER_CLASSES": ["config.api.parsers.JsonParser"],
    # Every answer is JSON; `?format=` is ignored like any parameter the API does not know
    # (DRF would answer 404 to a format it has no renderer for).
    "URL_FORMAT_OVERRIDE": None,
    "DEFAULT_FILTER_BACKENDS": ["config.api.filtering.FilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "config.api.pagination.PagePagination",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "config.api.errors.exception_handler",
    # Who an anonymous client is: REMOTE_ADDR, or behind the one proxy STEPWISE_BEHIND_PROXY
    # says there is, the address it saw. DRF's default (None) believes a whole
    # X-Forwarded-For any client can write, and so gives it a fresh throttle on each request.
    "NUM_PROXIES": 1 if STEPWISE_BEHIND_PROXY else 0,
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.AnonRateThrottle",
        "rest_framework.throttling.UserRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": env.str("STEPWISE_THROTTLE_ANON", default="60/min"),
        "user": env.str("STEPWISE_THROTTLE_USER", default="1200/min"),
    },
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
# knox's own token table is never used (ours replaces it) and its migrations would make it.
MIGRATION_MODULES = {"knox": None}
KNOX_TOKEN_MODEL = "core.ApiToken"  # noqa: S105 - a model name, not a secret
REST_KNOX = {
    "AUTH_HEADER_PREFIX": "Bearer",
    "TOKEN_TTL": None,  # expiry is per token, chosen when it is made
    "AUTO_REFRESH": False,
    "TOKEN_PREFIX": "sw_",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Stepwise API",
    "DESCRIPTION": "Runbooks, runs, logs and tokens. See docs/api.md for a walk-through.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "config.api.schema.document_body_errors",
    ],
}

# The default cache holds throttling counters and nothing else. In memory by default: each
# web process counts on its own (so a client gets up to STEPWISE_WEB_WORKERS times its rate)
# and no API request writes to the database. STEPWISE_CACHE=redis://... shares one count.
CACHES = {
    "default": env.cache_url("STEPWISE_CACHE", default="locmemcache://throttling"),
    # django-q2 writes its cluster status to a cache twice a second; kept in memory so an
    # idle cluster does not write to the database.
    "cluster-status": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
}
Q_CLUSTER["cache"] = "cluster-status"
