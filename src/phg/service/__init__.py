"""phg as a service: the ingest API for apps, the status page, health and metrics, on one ASGI app
(Starlette, served by uvicorn inside `phg run`'s event loop). See docs/service.md."""
