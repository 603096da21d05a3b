"""Dense evaluation of trained models on held-out volumes: inference, sliding windows, metrics."""
