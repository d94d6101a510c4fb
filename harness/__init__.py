"""vfio-harness: prove VFIO device assignment end to end under nested virtualization.

Where things live:
  l0.py         L0, this host: the QEMU that boots L1 (vIOMMU, edu, ivshmem)
  l1.py         L1, the guest: an SSH session into it
  l1_vfio.py    L1-side VFIO: bind devices, groups, cdevs, the kernel's dma-buf probe
  images.py     the L1 kernel variants and rootfs, built into the cache
  cli.py        the one entry point
"""
__version__ = "0.1.0"
