"""An OpenAI-compatible /v1/responses gateway."""

from .app import create_app
from .settings import ConfigError, Settings, load_settings

__all__ = ["ConfigError", "Settings", "create_app", "load_settings"]
