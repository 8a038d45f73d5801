"""GET /v1/models and /v1/models/{id}, in OpenAI's list and object format."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, get

from ..errors import NotFound
from ..settings import Settings


class Model(msgspec.Struct):
    id: str
    created: int
    owned_by: str
    object: str = "model"


class ModelList(msgspec.Struct):
    data: list[Model]
    object: str = "list"


def model_list(settings: Settings) -> ModelList:
    """The configured models, in configuration order."""
    return ModelList(
        data=[
            Model(m.name, m.created, m.owned_by or m.served_by()[0].provider)
            for m in settings.models
        ]
    )


class ModelsController(Controller):
    """The models clients may ask for."""

    path = "/v1/models"

    @get("/", sync_to_thread=False)
    def list_models(self, models: ModelList, request: Request[Any, Any, Any]) -> ModelList:
        """Every configured model the caller may use."""
        allowed = _allowed(request)
        if allowed is None:
            return models
        return ModelList(data=[m for m in models.data if m.id in allowed])

    @get("/{model_id:path}", sync_to_thread=False)
    def get_model(self, models: ModelList, model_id: str, request: Request[Any, Any, Any]) -> Model:
        """One model, or 404 `model_not_found` (also for one the caller may not use)."""
        wanted = model_id.lstrip("/")
        allowed = _allowed(request)
        for model in models.data:
            if model.id == wanted and (allowed is None or wanted in allowed):
                return model
        raise NotFound(
            f"The model `{wanted}` does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )


def _allowed(request: Request[Any, Any, Any]) -> frozenset[str] | None:
    """The models the caller's key is limited to (set by the app's guard); None: all."""
    allowed: frozenset[str] | None = request.state.get("allowed_models")
    return allowed
