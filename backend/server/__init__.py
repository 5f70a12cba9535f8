"""``isnet serve``: the HTTP side of the Label Studio ML backend.

| module | job |
| --- | --- |
| :mod:`.app` | Flask app factory: request ids, basic auth, access log, JSON errors |
| :mod:`.routes` | the protocol: ``/health``, ``/setup``, ``/predict``, ``/webhook``, ``/metrics.json`` |
| :mod:`.prometheus` | ``/metrics``: Prometheus text, counted across the workers |
| :mod:`.state` | what handlers share (model, counters, the ``/predict`` slots) |
| :mod:`.auth` | optional basic auth |
| :mod:`.logs` | JSON log lines carrying the request id |
| :mod:`.stats` | counters and recent errors for ``/metrics.json`` |
| :mod:`.inference` | the one thread that runs the network; the served model version |
| :mod:`.cache` | LRU of results per (image hash, version, engine, size, threshold) |
| :mod:`.gunicorn_app` | gunicorn (gthread workers) started from Python |

The model in between (Label Studio JSON <-> masks) is :mod:`backend.model`.
"""
