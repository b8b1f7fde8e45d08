"""Smart Proxy Dynflow: the task API Foreman uses, launchers, runners and callbacks."""
