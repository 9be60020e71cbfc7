"""Core utilities: errors, switches, devices, atomic writes, HU scaling, metrics."""
