"""A dialect's request body: a JSON object whatever the Content-Type, its fields checked by a
pydantic model; a wrong field is a 400 naming it (the status these APIs give bad input)."""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ConfigDict, ValidationError

from vectorizer_service.api.dialects.errors import FieldError
from vectorizer_service.api.http_service import HttpService

Body = TypeVar("Body", bound=BaseModel)


class DialectBody(BaseModel):
    """Fields a dialect does not use are ignored (each SDK sends a few of its own: ``user``,
    ``truncate``, ``priority``...); those that change the answer are read or refused."""

    model_config = ConfigDict(extra="ignore")


async def read_body(http: HttpService, request: Request, model: type[Body]) -> tuple[Body, dict[str, Any]]:
    data = await http.json(request)
    if not isinstance(data, dict):
        raise FieldError("body", f"must be a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data), data
    except ValidationError as exc:
        first = exc.errors()[0]
        raise FieldError(".".join(str(p) for p in first["loc"]) or "body", first["msg"]) from None
