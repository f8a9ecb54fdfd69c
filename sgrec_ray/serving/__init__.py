"""The library side of the online endpoint: request/response models, catalogue and history loading,
the engine that answers a batch of requests, and app metrics. Ray Serve wiring lives in serve_apps/.
"""
