"""The Smart Proxy host: settings, TLS listeners, logging, plugins."""
