"""The HTTP API (FastAPI, served by uvicorn): `create_app` builds it."""
