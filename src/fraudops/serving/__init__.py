"""Real-time scoring: protocols, the numpy tree runtime, hot reload, metrics, the ASGI app."""
