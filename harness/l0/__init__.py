"""L0: the QEMU on this host that boots L1, and the accelerator it runs under."""
