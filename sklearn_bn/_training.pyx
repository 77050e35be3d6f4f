"""Training engine (placeholder until the engine lands)."""
