"""Model loading: one adapter per MLM family, a registry, and offline tiny checkpoints."""
