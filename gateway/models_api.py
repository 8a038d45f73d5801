"""GET /v1/models and /v1/models/{id}, in OpenAI's list and object format."""

from __future__ import annotations

import msgspec
from litestar import Controller, get

from .errors import NotFound
from .settings import Settings


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
        data=[Model(m.name, m.created, m.owned_by or m.provider) for m in settings.models]
    )


class ModelsController(Controller):
    """The models clients may ask for."""

    path = "/v1/models"

    @get("/", sync_to_thread=False)
    def list_models(self, models: ModelList) -> ModelList:
        """Every configured model."""
        return models

    @get("/{model_id:path}", sync_to_thread=False)
    def get_model(self, models: ModelList, model_id: str) -> Model:
        """One model, or 404 `model_not_found`."""
        wanted = model_id.lstrip("/")
        for model in models.data:
            if model.id == wanted:
                return model
        raise NotFound(
            f"The model `{wanted}` does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )
