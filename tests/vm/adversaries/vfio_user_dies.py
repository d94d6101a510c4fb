#!/usr/bin/python3
"""A vfio-user server that dies mid-run: SIGKILL right after it answered the config write
that turns a device's memory decode on (the L2 is then set up and running). L2 keeps the
regions it mmapped and the DMA mappings the server's IOAS holds; what is gone is every
request over the socket. The harness must name the server and how it ended, and not hang.

Runs in L1 in place of the harness's server, which is uploaded beside it."""

import os
import signal
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vfio_user_server as honest  # noqa: E402

PCI_COMMAND, PCI_COMMAND_MEMORY, CONFIG = 4, 0x2, 7
_handle, _receive = honest.Connection.handle, honest.Connection.receive


def handle(self, command, body, fds, entry):
    if command == honest.REGION_WRITE:
        offset, region, count = struct.unpack_from("<QII", body)
        value = int.from_bytes(body[16:16 + count], "little")
        if (region, offset) == (CONFIG, PCI_COMMAND) and value & PCI_COMMAND_MEMORY:
            self.dying = True
    return _handle(self, command, body, fds, entry)


def receive(self):
    if getattr(self, "dying", False):  # the write was answered (or posted): now
        os.kill(os.getpid(), signal.SIGKILL)
    return _receive(self)


honest.Connection.handle, honest.Connection.receive = handle, receive
sys.exit(honest.main(sys.argv[1:]))
