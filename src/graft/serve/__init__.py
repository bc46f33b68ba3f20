"""``graft serve``: a fine-tuned model as an HTTP service (FastAPI + uvicorn, prometheus-client).

- :mod:`graft.serve.settings` — every option and limit, checked once;
- :mod:`graft.serve.inputs` — what a request body may hold;
- :mod:`graft.serve.engine` — the model: raw inputs → probabilities, a batch at a time;
- :mod:`graft.serve.batcher` — dynamic micro-batching over a bounded queue;
- :mod:`graft.serve.monitoring` — the Prometheus metrics;
- :mod:`graft.serve.app` — the HTTP API and its error answers;
- :mod:`graft.serve.server` — uvicorn: the socket, the workers, signals.

How it works and what it was measured to do: docs/serving.md.
"""
