"""The nested stack booted and driven: each check's evidence gathered through L2s in L1."""
