"""The Dynflow console: HTML pages to watch and steer plans (``/console``, spec §6).

:class:`Console` builds the pages of one world; its routes are part of the task API's
application (:func:`smart_proxy_dynflow.api.create_app`). :class:`ConsoleAccess` holds the
``console_auth`` / ``console_http`` settings and the check of the client (trusted hosts,
:func:`core_console_check` in the standalone core). The console uses only the world's public
methods.
"""

from .app import Console
from .security import ConsoleAccess, core_console_check

__all__ = ["Console", "ConsoleAccess", "core_console_check"]
