"""L2: the QEMU under test, started in L1, and the guest driver the harness plays for it."""
