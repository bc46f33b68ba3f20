"""After fine-tuning, part 2: the fine-tuned model taken to deployment.

``export`` (ONNX, Hugging Face, timm, TorchScript folders, each checked against the eager
model), ``quantize`` (int8 through ONNX Runtime), ``prune`` (magnitude and structured, with
recovery fine-tuning), ``benchmark`` (every variant measured on this machine), and the runtime
that lets ``graft eval`` / ``graft predict`` use an exported model (:mod:`graft.deploy.variants`).
See docs/deployment.md.
"""
