"""OpenAI-compatible HTTP server around one Engine (`svip-local serve`).

Local assistants that talk to an OpenAI endpoint get speculative decoding without code changes.
Nothing in the engine imports this package: Starlette and uvicorn load only when serving.
"""

from svip_local.server.app import create_app

__all__ = ["create_app"]
