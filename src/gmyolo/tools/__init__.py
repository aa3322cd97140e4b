"""Tools around the models: ``bench`` (speed and memory of every inference mode, training step, data)."""
