"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}` with the right status.

Every failure on the request path is raised as an `ApiError`, so the pipeline has one place
that turns failures into responses and call records.
"""
from __future__ import annotations

import orjson
from django.http import HttpResponse


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> bytes:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)

    def response(self) -> HttpResponse:
        response = HttpResponse(self.body(), status=self.status, content_type="application/json")
        for name, value in self.headers.items():
            response[name] = value
        return response


def error_body(
    message: str, *, type: str, param: str | None = None, code: str | None = None
) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type, "param": param, "code": code}})


def invalid(message: str, *, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def unauthorized(message: str) -> ApiError:
    return ApiError(401, message, code="invalid_api_key")


def model_not_found(model: str) -> ApiError:
    return ApiError(
        404,
        f"The model `{model}` does not exist or no backend serves it.",
        param="model",
        code="model_not_found",
    )


def forbidden(message: str, *, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(403, message, type="permission_error", param=param, code=code)


def overloaded(message: str, *, retry_after_s: float, code: str) -> ApiError:
    """503 with Retry-After: the pool is full or unavailable for now, try again later."""
    return ApiError(
        503, message, type="server_error", code=code,
        headers={"Retry-After": str(max(1, round(retry_after_s)))},
    )


def internal_error() -> ApiError:
    """500 for a bug of Sluice's own: still OpenAI-shaped, never a traceback page."""
    return ApiError(500, "Sluice failed to handle this request.", type="server_error",
                    code="internal_error")
