"""The admin surface: the HTTP API under ``/admin`` (keys, users' limits, usage of anyone) and
the ``gateway keys`` and ``gateway usage`` commands that call it."""

from __future__ import annotations

from .keys_api import AdminController
from .keys_cli import add_keys_commands, run_keys_command
from .usage_api import UsageAdminController
from .usage_cli import add_usage_commands, run_usage_command

__all__ = [
    "AdminController",
    "UsageAdminController",
    "add_keys_commands",
    "add_usage_commands",
    "run_keys_command",
    "run_usage_command",
]
