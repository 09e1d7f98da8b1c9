"""The web app's parts (installed with the `app` extra): request parsing and presets (`requests`),
loading, caching, the GPU handler and error messages (`service`), the handlers that turn a run into
outputs (`page`), their HTML and plotly rendering with one theme (`render`, `plots`, `theme`),
download files (`exports`) and the named API endpoints (`api`).

Top-level `app.py` lays the page out and wires events to these; the library never imports them.
"""
