"""Setting names in the user's own spelling, for error messages.

A ``reliable_*`` setting reaches us from wherever Celery read its configuration:
``app.conf.reliable_lease_seconds``, or a Django settings module read with
``config_from_object("django.conf:settings", namespace="CELERY")``, where the
user wrote ``CELERY_RELIABLE_LEASE_SECONDS``.  An error that says
``reliable_lease_second`` to someone who typed ``CELERY_RELIABLE_LEASE_SECOND``
sends them looking for a name that is nowhere in their code: errors name the
key as it was written (Celery's configuration keeps the keys of its source), and
a fix or a setting that was not written is spelled the same way (the prefix as
typed, upper case if the user's was), or from the app's Celery namespace.
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "reliable_"


@dataclass(frozen=True)
class Spelling:
    """How one configuration spells our settings: ``prefix`` + name (upper case too?)."""

    prefix: str = PREFIX
    upper: bool = False

    def __call__(self, name: str) -> str:
        """``name`` (a field of the settings table: ``lease_seconds``) as the user would
        write it."""
        return self.prefix + (name.upper() if self.upper else name)

    @classmethod
    def of_key(cls, key: str, name: str) -> Spelling:
        """The spelling of ``key``, a configuration key that stands for setting ``name``
        (``CELERY_RELIABLE_LEASE_SECOND`` for ``lease_second``)."""
        cut = len(key) - len(name)
        return cls(key[:cut], key[cut:].isupper())

    @classmethod
    def of_namespace(cls, namespace: str | None) -> Spelling:
        """The spelling Celery expects with ``config_from_object(..., namespace=...)``:
        ``CELERY_RELIABLE_<NAME>`` for Django's ``CELERY``; ``reliable_<name>`` without."""
        if not namespace:
            return cls()
        return cls(f"{namespace}_{PREFIX}".upper(), upper=True)

    def missing(self, name: str, example: str) -> str:
        """The message for setting ``name`` that is needed and not set (``example``: a
        value to show)."""
        return f"{self(name)} is not set; {self.where(name, example)}"

    def where(self, name: str, example: str) -> str:
        """Where to set ``name``, in this spelling: on the app, or (a namespace:
        Django) in the settings Celery reads."""
        shown = self(name)
        if self.prefix.lower() == PREFIX:
            return f"set it on the app, e.g. app.conf.{shown} = {example!r}"
        namespace = self.prefix[: -len(PREFIX) - 1]
        return (f"add {shown} = {example!r} to the settings the app reads with "
                f"config_from_object(..., namespace={namespace!r}) (Django: settings.py)")
