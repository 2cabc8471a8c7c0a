"""A minimal Django project, Celery configured the Django way (see its ``celery`` module).

Everything comes from the environment (``TEST_*``), so each test gives its real
beat and worker processes their own SQLite database, key prefix and queue.  A real
project's package ``__init__`` also imports its Celery app (``from .celery import
app``); this one does not, so that importing the settings does not set Django up.
"""
