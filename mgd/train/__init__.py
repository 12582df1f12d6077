"""Training engine: one loop, methods as objectives."""
