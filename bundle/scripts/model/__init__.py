"""The model and its training: networks, losses, optimisers, engine, handlers, validation."""
