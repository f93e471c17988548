"""The router's refusals as OpenAI error bodies: ``{"error": {message, type, param, code}}``
with an HTTP status (and headers such as ``Retry-After``)."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from engine.errors import EngineError


class ApiError(EngineError):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.param, self.code = status, kind, param, code
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status, headers=self.headers)
