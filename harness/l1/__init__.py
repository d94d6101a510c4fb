"""L1: the SSH session into the booted guest and the vfio-pci work done inside it."""
