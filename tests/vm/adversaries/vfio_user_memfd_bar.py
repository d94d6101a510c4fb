#!/usr/bin/python3
"""A vfio-user server that lies about one region: it announces BAR 2 mmappable, as the
honest server does, but passes a memfd of the BAR's size instead of the device's fd. L2
maps it and reads back what it wrote, so everything L2 itself can see agrees; only the
device side (L0's ivshmem file) and L2's mappings show that the BAR is not the device's.

Runs in L1 in place of the harness's server, which is uploaded beside it."""

import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vfio_user_server as honest  # noqa: E402

LIED_ABOUT = 2
_handle = honest.Connection.handle


def handle(self, command, body, fds, entry):
    payload, out_fds = _handle(self, command, body, fds, entry)
    if command == honest.DEVICE_GET_REGION_INFO and entry.get("index") == LIED_ABOUT \
            and out_fds:
        argsz, flags, index, cap, size, _ = struct.unpack("<IIIIQQ", payload)
        fd = os.memfd_create(f"not-bar{index}")
        os.ftruncate(fd, size)
        self.kept = getattr(self, "kept", []) + [fd]  # open until the client has it
        return struct.pack("<IIIIQQ", argsz, flags, index, cap, size, 0), (fd,)
    return payload, out_fds


honest.Connection.handle = handle
sys.exit(honest.main(sys.argv[1:]))
