"""The L1 vfio-user server's side of the protocol, over a real socket pair: framing, the
fds each way, error and posted replies. The device behind it here is a file whose
regions are byte ranges (what pread/pwrite on a VFIO device fd are); the server on a
real device, with QEMU's client, is tests/vm/test_vfio_user.py."""

import json
import os
import socket
import struct
import threading

import pytest

from harness.l1.guest import vfio_user_server as vus

REGIONS = {0: (vus.VFIO_REGION_INFO_FLAG_MMAP | 3, 0x1000, 0x10000),  # a BAR, mmappable
           7: (3, 0x100, 0x70000)}                                    # config space


class FileDevice:
    """Regions laid out in a file as the kernel lays them out in a device fd."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT)
        os.ftruncate(self.fd, 0x80000)
        self.maps = []

    def info(self):
        return vus.VFIO_DEVICE_FLAGS_PCI, 9, 5

    def region(self, index):
        return REGIONS.get(index, (0, 0, index << 40))

    access = vus.Device.access

    def map_file(self, fd, offset, iova, size, flags):
        self.maps.append((vus.fd_kind(fd), iova, size))

    def unmap(self, iova, size):
        self.maps.remove(next(m for m in self.maps if m[1] == iova))


@pytest.fixture
def served(tmp_path):
    client, server = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    device = FileDevice(tmp_path / "device")
    log = []
    thread = threading.Thread(target=vus.Connection(server, device, log.append).serve)
    thread.start()
    yield client, device, log
    client.close()
    thread.join(5)
    server.close()
    os.close(device.fd)
    assert not thread.is_alive()


def ask(client, msg_id, command, body=b"", fds=(), flags=0):
    data = vus.header(msg_id, command, vus.HEADER.size + len(body), flags) + body
    if fds:
        client.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                 struct.pack(f"<{len(fds)}i", *fds))])
    else:
        client.sendall(data)
    if flags & vus.NO_REPLY:
        return None
    head, anc, _, _ = client.recvmsg(vus.HEADER.size, socket.CMSG_SPACE(4 * 4))
    got_id, got_command, size, got_flags, error = vus.HEADER.unpack(head)
    assert (got_id, got_command) == (msg_id, command)
    payload = client.recv(size - vus.HEADER.size, socket.MSG_WAITALL) if size > 16 else b""
    got_fds = [fd for _, _, p in anc for fd in struct.unpack(f"<{len(p) // 4}i", p)]
    return got_flags, error, payload, got_fds


def test_the_version_reply_fits_in_the_clients_request(served):
    client, _, log = served
    # QEMU 11.1.3's request, as its trace showed it: the reply lands in its buffer
    caps = (b'{"capabilities": {"pgsizes": 4096, "max_msg_fds": 16, "max_dma_maps": 65535, '
            b'"max_data_xfer_size": 1048576, "migration": {"max_bitmap_size": 268435456, '
            b'"pgsize": 4096}, "write_multiple": true}}\0')
    flags, error, payload, _ = ask(client, 1, vus.VERSION, struct.pack("<HH", 0, 0) + caps)
    assert (flags, error) == (vus.REPLY, 0)
    assert len(payload) <= 4 + len(caps)
    assert payload[-1:] == b"\0"
    assert json.loads(payload[4:-1])["capabilities"]["max_msg_fds"] == 8
    assert log[0]["command"] == "VERSION" and "write_multiple" in log[0]["client"][2]


def test_an_mmappable_region_comes_with_the_device_fd_and_its_offset(served):
    client, device, log = served
    _, _, payload, fds = ask(client, 2, vus.DEVICE_GET_REGION_INFO,
                             struct.pack("<IIIIQQ", 32, 0, 0, 0, 0, 0))
    argsz, flags, index, _, size, offset = struct.unpack("<IIIIQQ", payload)
    assert (index, size, offset) == (0, 0x1000, 0x10000) and flags & 4
    assert len(fds) == 1 and os.fstat(fds[0]).st_ino == os.fstat(device.fd).st_ino
    os.close(fds[0])
    _, _, payload, fds = ask(client, 3, vus.DEVICE_GET_REGION_INFO,
                             struct.pack("<IIIIQQ", 32, 0, 7, 0, 0, 0))
    assert fds == [] and struct.unpack("<IIIIQQ", payload)[4] == 0x100
    assert [e["fd"] for e in log] == [True, False]


def test_region_reads_and_writes_reach_the_region_and_posted_writes_get_no_reply(served):
    client, device, log = served
    ask(client, 4, vus.REGION_WRITE, struct.pack("<QII", 4, 7, 2) + b"\x06\x01",
        flags=vus.NO_REPLY)
    _, error, payload, _ = ask(client, 5, vus.REGION_READ, struct.pack("<QII", 4, 7, 2))
    assert error == 0 and payload == struct.pack("<QII", 4, 7, 2) + b"\x06\x01"
    assert os.pread(device.fd, 2, 0x70004) == b"\x06\x01"
    flags, error, payload, _ = ask(client, 6, vus.REGION_READ, struct.pack("<QII", 0xff, 7, 4))
    assert flags & vus.ERROR and error == 22 and payload == b""  # past the region's end
    assert "past its size" in log[-1]["why"]


def test_dma_maps_name_what_the_client_handed_over_and_its_fds_are_closed(served):
    client, device, log = served
    memfd = os.memfd_create("memory-backend-memfd")
    os.ftruncate(memfd, 0x10000)
    body = struct.pack("<IIQQQ", 32, 3, 0, 0, 0x10000)
    assert ask(client, 7, vus.DMA_MAP, body, fds=[memfd])[1] == 0
    os.close(memfd)
    assert ask(client, 8, vus.DMA_MAP, struct.pack("<IIQQQ", 32, 3, 0, 0xfe000000, 0x1000)
               )[1] == 0
    assert device.maps == [("memfd", 0, 0x10000)]
    assert [(e["iova"], e["fd"]) for e in log] == [(0, "memfd"), (0xfe000000, "none")]
    # the server's copy went once mapped: the IOAS holds what it needs
    assert "memfd" not in {vus.fd_kind(int(f)) for f in os.listdir("/proc/self/fd")}
    ask(client, 9, vus.DMA_UNMAP, struct.pack("<IIQQ", 24, vus.VFIO_DMA_UNMAP_FLAG_ALL, 0, 0))
    assert device.maps == []


def test_a_request_the_server_does_not_serve_is_refused_by_name(served):
    client, _, log = served
    flags, error, _, _ = ask(client, 10, vus.DIRTY_PAGES, b"\0" * 8)
    assert flags & vus.ERROR and error == 95  # EOPNOTSUPP
    assert log[-1]["why"] == "DIRTY_PAGES is not served"


def test_served_without_mmap_no_region_is_announced_mappable_and_no_fd_goes_out(tmp_path):
    client, server = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    device = FileDevice(tmp_path / "device")
    thread = threading.Thread(target=vus.Connection(server, device, [].append, False).serve)
    thread.start()
    try:
        _, _, payload, fds = ask(client, 1, vus.DEVICE_GET_REGION_INFO,
                                 struct.pack("<IIIIQQ", 32, 0, 0, 0, 0, 0))
        assert struct.unpack("<IIIIQQ", payload)[1] == 3 and fds == []  # READ | WRITE only
    finally:
        client.close()
        thread.join(5)
        server.close()
        os.close(device.fd)
