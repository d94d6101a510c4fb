#!/usr/bin/python3
"""Runs inside L1 (python3, standard library only): a vfio-user server for one real device.

QEMU's client (`-device vfio-user-pci`) is the code under test; its own server
(`x-vfio-user-server`) is not built into the Debian QEMU the rootfs carries (the
object type is missing: it needs libvfio-user, which Debian does not package). So the
harness serves the devices itself, and serves the real ones: the device bound to
vfio-pci in L1 is opened through its VFIO cdev and bound to an iommufd, and each
vfio-user request is the VFIO ioctl it is modelled on. The regions QEMU mmaps are the
device's own (the device fd passed with the region's offset), the DMA QEMU maps is
L2's memory mapped into the device's IOAS (IOMMU_IOAS_MAP_FILE of the fd QEMU sends),
so what L2 sees is a real device's answer, not an emulation of it.

  vfio_user_server.py SOCKET BDF LOG [--no-mmap]

--no-mmap: announce no region mmappable (no fd goes out), so that every BAR access is
a REGION_READ/WRITE message: the mmap fallback of this path (QEMU's vfio-user-pci has
no x-no-mmap property).

One client at a time; each connection opens the device afresh and closes it when the
client goes (an unplug, a quit or a kill), as the kernel backends' close would. LOG
gets one JSON line per request and per connection: what the harness's checks read as
"what the server announced and did". SIGTERM ends the server after the current request.
"""

import errno
import fcntl
import json
import os
import signal
import socket
import struct
import sys
import time

# The message header (hw/vfio-user/protocol.h, docs/interop/vfio-user.rst).
HEADER = struct.Struct("<HHIII")  # id, command, size, flags, error_reply
REQUEST, REPLY, TYPE_MASK, NO_REPLY, ERROR = 0x0, 0x1, 0xF, 0x10, 0x20

VERSION, DMA_MAP, DMA_UNMAP, DEVICE_GET_INFO, DEVICE_GET_REGION_INFO = 1, 2, 3, 4, 5
DEVICE_GET_REGION_IO_FDS, DEVICE_GET_IRQ_INFO, DEVICE_SET_IRQS = 6, 7, 8
REGION_READ, REGION_WRITE, DMA_READ, DMA_WRITE, DEVICE_RESET = 9, 10, 11, 12, 13
DIRTY_PAGES, REGION_WRITE_MULTI = 14, 15
COMMANDS = {1: "VERSION", 2: "DMA_MAP", 3: "DMA_UNMAP", 4: "DEVICE_GET_INFO",
            5: "DEVICE_GET_REGION_INFO", 6: "DEVICE_GET_REGION_IO_FDS",
            7: "DEVICE_GET_IRQ_INFO", 8: "DEVICE_SET_IRQS", 9: "REGION_READ",
            10: "REGION_WRITE", 11: "DMA_READ", 12: "DMA_WRITE", 13: "DEVICE_RESET",
            14: "DIRTY_PAGES", 15: "REGION_WRITE_MULTI"}

#: What this server offers the client. Kept short: QEMU receives the reply into its
#: request's buffer, so the reply's JSON may not be longer than the client's own.
CAPABILITIES = {"capabilities": {"max_msg_fds": 8, "max_data_xfer_size": 1 << 20,
                                 "pgsizes": 4096, "max_dma_maps": 65535}}

# The VFIO and iommufd ioctls each request is modelled on (include/uapi/linux/vfio.h,
# include/uapi/linux/iommufd.h).
_VFIO = ord(";") << 8
VFIO_DEVICE_GET_INFO, VFIO_DEVICE_GET_REGION_INFO = _VFIO | 107, _VFIO | 108
VFIO_DEVICE_GET_IRQ_INFO, VFIO_DEVICE_SET_IRQS = _VFIO | 109, _VFIO | 110
VFIO_DEVICE_RESET, VFIO_DEVICE_BIND_IOMMUFD = _VFIO | 111, _VFIO | 118
VFIO_DEVICE_ATTACH_IOMMUFD_PT = _VFIO | 119
IOMMU_IOAS_ALLOC, IOMMU_IOAS_UNMAP, IOMMU_IOAS_MAP_FILE = _VFIO | 0x81, _VFIO | 0x86, \
    _VFIO | 0x8F
IOMMU_IOAS_MAP_FIXED_IOVA, IOMMU_IOAS_MAP_WRITEABLE, IOMMU_IOAS_MAP_READABLE = 1, 2, 4
VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE = 1, 2
VFIO_DMA_UNMAP_FLAG_ALL = 2
VFIO_DEVICE_FLAGS_RESET, VFIO_DEVICE_FLAGS_PCI = 1, 2
VFIO_REGION_INFO_FLAG_MMAP = 4
VFIO_IRQ_SET_DATA_NONE, VFIO_IRQ_SET_DATA_BOOL, VFIO_IRQ_SET_DATA_EVENTFD = 1, 2, 4

PCI = "/sys/bus/pci/devices"


class Refused(Exception):
    """A request answered with an error reply: errno, and what was refused."""

    def __init__(self, err: int, what: str):
        super().__init__(what)
        self.errno = err


def header(msg_id, command, size, flags, error=0):
    return HEADER.pack(msg_id, command, size, flags, error)


def reply(msg_id, command, payload=b""):
    return header(msg_id, command, HEADER.size + len(payload), REPLY) + payload


def error_reply(msg_id, command, err):
    return header(msg_id, command, HEADER.size, REPLY | ERROR, err)


def version_payload():
    caps = json.dumps(CAPABILITIES, separators=(",", ":")).encode()
    return struct.pack("<HH", 0, 0) + caps + b"\0"


def cdev_of(bdf):
    names = os.listdir(f"{PCI}/{bdf}/vfio-dev")
    if not names:
        raise OSError(errno.ENODEV, f"{bdf} has no VFIO cdev (not bound to vfio-pci?)")
    return f"/dev/vfio/devices/{names[0]}"


def _errname(err):
    return errno.errorcode.get(err, str(err))


class Device:
    """The real device behind one connection: its cdev bound to a new iommufd, attached to
    an IOAS of its own that holds what the client maps for DMA."""

    def __init__(self, bdf):
        self.bdf = bdf
        self.iommufd = os.open("/dev/iommu", os.O_RDWR | os.O_CLOEXEC)
        self.fd = -1
        try:
            alloc = bytearray(struct.pack("<III", 12, 0, 0))
            fcntl.ioctl(self.iommufd, IOMMU_IOAS_ALLOC, alloc, True)
            self.ioas = struct.unpack("<III", alloc)[2]
            self.fd = os.open(cdev_of(bdf), os.O_RDWR | os.O_CLOEXEC)
            fcntl.ioctl(self.fd, VFIO_DEVICE_BIND_IOMMUFD,
                        bytearray(struct.pack("<IIiIQ", 24, 0, self.iommufd, 0, 0)), True)
            fcntl.ioctl(self.fd, VFIO_DEVICE_ATTACH_IOMMUFD_PT,
                        bytearray(struct.pack("<III", 12, 0, self.ioas)), True)
        except BaseException:
            self.close()
            raise
        self.regions = {}  # index -> (flags, size, offset), as the kernel gave them

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        os.close(self.iommufd)

    def info(self):
        buf = bytearray(struct.pack("<IIIIII", 24, 0, 0, 0, 0, 0))
        fcntl.ioctl(self.fd, VFIO_DEVICE_GET_INFO, buf, True)
        _, flags, regions, irqs, _, _ = struct.unpack("<IIIIII", buf)
        return flags & (VFIO_DEVICE_FLAGS_RESET | VFIO_DEVICE_FLAGS_PCI), regions, irqs

    def region(self, index):
        if index not in self.regions:
            buf = bytearray(struct.pack("<IIIIQQ", 32, 0, index, 0, 0, 0))
            fcntl.ioctl(self.fd, VFIO_DEVICE_GET_REGION_INFO, buf, True)
            _, flags, _, _, size, offset = struct.unpack("<IIIIQQ", buf)
            self.regions[index] = (flags & 0x7, size, offset)  # READ, WRITE, MMAP: no caps
        return self.regions[index]

    def access(self, index, offset, count):
        flags, size, base = self.region(index)
        if offset + count > size:
            raise Refused(errno.EINVAL, f"region {index} [{offset:#x}, +{count}) past its "
                                        f"size {size:#x}")
        return base + offset

    def irq_info(self, index):
        buf = bytearray(struct.pack("<IIII", 16, 0, index, 0))
        fcntl.ioctl(self.fd, VFIO_DEVICE_GET_IRQ_INFO, buf, True)
        return struct.unpack("<IIII", buf)

    def set_irqs(self, flags, index, start, count, data):
        buf = bytearray(struct.pack("<IIIII", 20 + len(data), flags, index, start, count)
                        + data)
        fcntl.ioctl(self.fd, VFIO_DEVICE_SET_IRQS, buf, True)

    def map_file(self, fd, offset, iova, size, flags):
        access = (IOMMU_IOAS_MAP_READABLE if flags & VFIO_DMA_MAP_FLAG_READ else 0) | (
            IOMMU_IOAS_MAP_WRITEABLE if flags & VFIO_DMA_MAP_FLAG_WRITE else 0)
        arg = bytearray(struct.pack("<IIIiQQQ", 40, IOMMU_IOAS_MAP_FIXED_IOVA | access,
                                    self.ioas, fd, offset, size, iova))
        fcntl.ioctl(self.iommufd, IOMMU_IOAS_MAP_FILE, arg, True)

    def unmap(self, iova, size):
        fcntl.ioctl(self.iommufd, IOMMU_IOAS_UNMAP,
                    bytearray(struct.pack("<IIQQ", 24, self.ioas, iova, size)), True)


def fd_kind(fd):
    """What the client handed over for DMA: a memfd (L2's RAM), a dma-buf (another
    device's BAR, as QEMU 11 hands a vfio-pci BAR's RAMBlock fd), or another file."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "unknown"
    if target.startswith("/memfd:"):
        return "memfd"
    if target.startswith("anon_inode:dmabuf") or target.startswith("/dmabuf:"):
        return "dma-buf"
    return target


class Connection:
    """One client: requests in, replies out, each logged."""

    def __init__(self, sock, device, log, mmap=True):
        self.sock, self.device, self.log, self.mmap = sock, device, log, mmap
        self.mappings = {}  # iova -> (size, kind)

    def receive(self):
        """One request: (header fields, body, fds), or None when the client has gone."""
        fds = []
        data, ancdata, _, _ = self.sock.recvmsg(HEADER.size, socket.CMSG_SPACE(16 * 4))
        if not data:
            return None
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds += list(struct.unpack(f"<{len(payload) // 4}i",
                                          payload[:len(payload) // 4 * 4]))
        while len(data) < HEADER.size:
            more = self.sock.recv(HEADER.size - len(data))
            if not more:
                return None
            data += more
        msg_id, command, size, flags, _ = HEADER.unpack(data)
        body = b""
        while len(body) < size - HEADER.size:
            more = self.sock.recv(size - HEADER.size - len(body))
            if not more:
                return None
            body += more
        return (msg_id, command, flags), body, fds

    def send(self, data, fds=()):
        if fds:
            self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                        struct.pack(f"<{len(fds)}i", *fds))])
        else:
            self.sock.sendall(data)

    def serve(self):
        while True:
            received = self.receive()
            if received is None:
                return
            (msg_id, command, flags), body, fds = received
            if flags & TYPE_MASK != REQUEST:
                continue  # no request of ours awaits a reply
            entry = {"t": round(time.monotonic(), 6), "id": msg_id,
                     "command": COMMANDS.get(command, str(command))}
            try:
                payload, out_fds = self.handle(command, body, fds, entry)
                answer = reply(msg_id, command, payload)
            except (Refused, OSError) as e:
                err = e.errno or errno.EIO
                entry.update(error=_errname(err), why=str(e))
                answer, out_fds = error_reply(msg_id, command, err), ()
            finally:
                for fd in fds:
                    os.close(fd)  # what the kernel needed of them it holds on its own
            self.log(entry)  # before the reply: what the client saw answered is logged
            if not flags & NO_REPLY:
                self.send(answer, out_fds)

    def handle(self, command, body, fds, entry):
        dev = self.device
        if command == VERSION:
            major, minor = struct.unpack_from("<HH", body)
            entry["client"] = [major, minor, body[4:].rstrip(b"\0").decode(errors="replace")]
            return version_payload(), ()
        if command == DEVICE_GET_INFO:
            flags, regions, irqs = dev.info()
            entry.update(flags=flags, regions=regions, irqs=irqs)
            return struct.pack("<IIII", 16, flags, regions, irqs), ()
        if command == DEVICE_GET_REGION_INFO:
            argsz, _, index = struct.unpack_from("<III", body)
            entry["index"] = index
            flags, size, offset = dev.region(index)
            if not self.mmap:
                flags &= ~VFIO_REGION_INFO_FLAG_MMAP
            out_fds = (dev.fd,) if flags & VFIO_REGION_INFO_FLAG_MMAP and size else ()
            entry.update(flags=flags, size=size, fd=bool(out_fds), offset=offset)
            # offset: where the region lies in the fd passed (the device's own)
            return struct.pack("<IIIIQQ", 32, flags, index, 0, size, offset), out_fds
        if command == DEVICE_GET_IRQ_INFO:
            _, _, index, _ = struct.unpack_from("<IIII", body)
            entry["index"] = index
            _, flags, index, count = dev.irq_info(index)
            entry["count"] = count
            return struct.pack("<IIII", 16, flags, index, count), ()
        if command == DEVICE_SET_IRQS:
            _, flags, index, start, count = struct.unpack_from("<IIIII", body)
            entry.update(index=index, start=start, count=count, flags=flags,
                         eventfds=sum(1 for fd in fds if fd >= 0))
            data = b""
            if flags & VFIO_IRQ_SET_DATA_EVENTFD:
                given = fds if fds else [-1] * count
                if len(given) != count:
                    raise Refused(errno.EINVAL, f"{count} interrupt(s), {len(fds)} fd(s)")
                data = struct.pack(f"<{count}i", *given)
            elif flags & VFIO_IRQ_SET_DATA_BOOL:
                data = body[20:20 + count]
            dev.set_irqs(flags, index, start, count, data)
            return b"", ()
        if command in (REGION_READ, REGION_WRITE):
            offset, index, count = struct.unpack_from("<QII", body)
            entry.update(region=index, offset=offset, count=count)
            where = dev.access(index, offset, count)
            if command == REGION_READ:
                data = os.pread(dev.fd, count, where)
                return struct.pack("<QII", offset, index, len(data)) + data, ()
            written = os.pwrite(dev.fd, body[16:16 + count], where)
            return struct.pack("<QII", offset, index, written), ()
        if command == DMA_MAP:
            argsz, flags, offset, iova, size = struct.unpack_from("<IIQQQ", body)
            kind = fd_kind(fds[0]) if fds else "none"
            entry.update(iova=iova, size=size, offset=offset, flags=flags, fd=kind)
            if fds:
                dev.map_file(fds[0], offset, iova, size, flags)
            # No fd: the client keeps that memory to itself (DMA_READ/WRITE would reach
            # it); a real device cannot, so nothing is mapped and its DMA there faults.
            self.mappings[iova] = (size, kind if fds else "unmapped")
            return b"", ()
        if command == DMA_UNMAP:
            argsz, flags, iova, size = struct.unpack_from("<IIQQ", body)
            entry.update(iova=iova, size=size, flags=flags)
            gone = list(self.mappings) if flags & VFIO_DMA_UNMAP_FLAG_ALL else [iova]
            for start in gone:
                length, kind = self.mappings.pop(start, (size, "unmapped"))
                if kind != "unmapped":
                    dev.unmap(start, length)
            return struct.pack("<IIQQ", argsz, flags, iova, size), ()
        if command == DEVICE_RESET:
            fcntl.ioctl(dev.fd, VFIO_DEVICE_RESET)
            return b"", ()
        raise Refused(errno.ENOTSUP, f"{COMMANDS.get(command, command)} is not served")


def main(argv):
    mmap = "--no-mmap" not in argv
    argv = [a for a in argv if a != "--no-mmap"]
    if len(argv) != 3:
        print(__doc__.split("\n\n")[2], file=sys.stderr)
        return 2
    path, bdf, log_path = argv
    with open(log_path, "a", buffering=1) as log_file:
        def log(entry):
            log_file.write(json.dumps(entry) + "\n")

        def stop(*_):
            raise SystemExit(0)

        signal.signal(signal.SIGTERM, stop)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if os.path.exists(path):
            os.unlink(path)
        listener.bind(path)
        listener.listen(1)
        log({"event": "listening", "socket": path, "bdf": bdf, "pid": os.getpid()})
        try:
            while True:
                sock, _ = listener.accept()
                with sock:
                    try:
                        device = Device(bdf)
                    except OSError as e:
                        log({"event": "refused", "why": f"{bdf}: {e}"})
                        continue
                    log({"event": "connected", "bdf": bdf})
                    try:
                        Connection(sock, device, log, mmap).serve()
                    except OSError as e:
                        log({"event": "connection lost", "why": str(e)})
                    finally:
                        device.close()
                    log({"event": "disconnected", "bdf": bdf})
        finally:
            listener.close()
            os.unlink(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
