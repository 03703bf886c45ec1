"""The coordinator's HTTP face: the REST API, the dashboard, /metrics (aiohttp, same loop).

bridge.py carries REST calls into the node core as the wire requests a TCP client sends;
routes.py maps routes to those requests; app.py serves them with authentication and the
follower's redirect; metrics.py exports Prometheus figures; openapi.py describes the API;
static/ holds the dashboard's own assets (no CDN).
"""
