"""A run: its plan, the L1s side by side, the cells they produce, the A/B run."""
