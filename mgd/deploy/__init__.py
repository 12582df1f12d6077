"""Deploying a trained model: `mgd export` (TorchScript / ONNX) and `mgd latency` (measured inference latency)."""
