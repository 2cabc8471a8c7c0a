"""``celery -A app reliable-*`` sub-commands (entry-point group ``celery.commands``).

Commands are thin: they call the Python API and format its answer; nothing
here reaches into a store directly.
"""
