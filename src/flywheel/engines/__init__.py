"""Engine adapters (vLLM, SGLang), the simulated engine server and the request router."""
