"""Data sets: training data, the phantom and simulator, Mayo, real CT."""
