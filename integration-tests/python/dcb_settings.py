"""A tiny Django settings module: django-celery-beat on the database of
QTASK_DJANGO_DB (sqlite:///path/to/file or postgres://user@host:port/db)."""

import os
from urllib.parse import urlparse

_url = os.environ["QTASK_DJANGO_DB"]
if _url.startswith("sqlite://"):
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": _url[len("sqlite://"):]}}
else:
    _u = urlparse(_url)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": _u.path.lstrip("/"),
            "USER": _u.username or "postgres",
            "PASSWORD": _u.password or "",
            "HOST": _u.hostname or "127.0.0.1",
            "PORT": str(_u.port or 5432),
        }
    }

INSTALLED_APPS = ["django_celery_beat"]
USE_TZ = True
TIME_ZONE = "UTC"
CELERY_TIMEZONE = "UTC"
SECRET_KEY = "qtask-tests"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
