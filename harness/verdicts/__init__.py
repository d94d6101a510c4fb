"""The checks' verdicts: pure functions of the evidence, nothing run here."""
