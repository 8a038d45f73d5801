"""The small read-only routes: /v1/models, a caller's /v1/usage, and the probes (/healthz,
/readyz, /metrics)."""

from __future__ import annotations

from .health import healthz, metrics, readyz
from .models import ModelList, ModelsController, model_list
from .usage import CallerUsageController

__all__ = [
    "CallerUsageController",
    "ModelList",
    "ModelsController",
    "healthz",
    "metrics",
    "model_list",
    "readyz",
]
