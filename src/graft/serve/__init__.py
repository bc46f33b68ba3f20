"""``graft serve``: a fine-tuned model as an HTTP service (FastAPI + uvicorn, prometheus-client).

- :mod:`graft.serve.settings` — every option and limit, checked once;
- :mod:`graft.serve.inputs` — what a request body may hold;
- :mod:`graft.serve.engine` — the model: raw inputs → probabilities, a batch at a time;
- :mod:`graft.serve.batcher` — dynamic micro-batching over a bounded queue;
- :mod:`graft.serve.monitoring` — the Prometheus metrics;
- :mod:`graft.serve.state` — one process's model, batcher and status (loading → ready);
- :mod:`graft.serve.responses` — the error answers and the API's paths;
- :mod:`graft.serve.gateway` — request ids, load shedding, request logs, 500s with an id;
- :mod:`graft.serve.app` — the HTTP API: routes and request bodies;
- :mod:`graft.serve.server` — uvicorn: the socket, the workers, signals.

How it works and what it was measured to do: docs/serving.md.
"""
