"""The HTTP surfaces: ASGI dispatch, the chat endpoint (REST + SSE), the relay core, the other routes."""
