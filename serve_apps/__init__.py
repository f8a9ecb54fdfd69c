"""Ray Serve applications; serve_apps/config.yaml and cluster/rayservice.yaml import them."""
