#!/usr/bin/python3
"""Runs inside L1 (python3, standard library only): VFIO facts and actions as JSON.

Uploaded by the harness at the start of each L1 session. It asks the kernel
directly - sysfs, /dev, and the VFIO_DEVICE_FEATURE_PROBE ioctl - so that what
it reports does not depend on the QEMU under test.

  vfio_l1.py inventory VENDOR:DEVICE...   devices, their groups, /dev/iommu, ...
  vfio_l1.py bind BDF...                  hand devices to vfio-pci (driver_override)
  vfio_l1.py restore BDF...               undo bind: back to no override
  vfio_l1.py probe BDF...                 does the kernel offer VFIO dma-buf per device?
  vfio_l1.py process PID                  the dma-buf fds and VFIO mappings a process holds
"""

import errno
import fcntl
import json
import os
import struct
import sys
import time

PCI = "/sys/bus/pci/devices"

# include/uapi/linux/vfio.h: _IO(VFIO_TYPE=';', VFIO_BASE=100 + n)
VFIO_DEVICE_FEATURE = (ord(";") << 8) | (100 + 17)
VFIO_DEVICE_BIND_IOMMUFD = (ord(";") << 8) | (100 + 18)
VFIO_DEVICE_FEATURE_GET = 1 << 16
VFIO_DEVICE_FEATURE_PROBE = 1 << 18
VFIO_DEVICE_FEATURE_DMA_BUF = 11


def _read(path, default=None):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def device_info(bdf):
    base = os.path.join(PCI, bdf)
    driver = os.path.join(base, "driver")
    group_link = os.path.join(base, "iommu_group")
    group = os.path.basename(os.readlink(group_link)) if os.path.exists(group_link) else None
    members = sorted(os.listdir(f"/sys/kernel/iommu_groups/{group}/devices")) if group else []
    vfio_dev = os.path.join(base, "vfio-dev")
    cdevs = sorted(os.listdir(vfio_dev)) if os.path.isdir(vfio_dev) else []
    bars = []
    for i, line in enumerate((_read(os.path.join(base, "resource"), "") or "").splitlines()[:6]):
        start, end, flags = (int(x, 16) for x in line.split())
        if end:
            bars.append({"index": i, "start": start, "size": end - start + 1,
                         "mem": bool(flags & 0x200), "prefetch": bool(flags & 0x2000)})
    return {
        "bdf": bdf,
        "vendor_device": f"{_read(base + '/vendor')[2:]}:{_read(base + '/device')[2:]}",
        "driver": os.path.basename(os.readlink(driver)) if os.path.exists(driver) else None,
        "driver_override": _read(base + "/driver_override") or None,
        "iommu_group": group,
        "group_members": members,
        "group_dev": f"/dev/vfio/{group}" if group and os.path.exists(f"/dev/vfio/{group}")
        else None,
        "cdev": f"/dev/vfio/devices/{cdevs[0]}" if cdevs else None,
        "bars": bars,
    }


def inventory(wanted):
    devices = []
    for bdf in sorted(os.listdir(PCI)):
        vd = f"{_read(f'{PCI}/{bdf}/vendor')[2:]}:{_read(f'{PCI}/{bdf}/device')[2:]}"
        if vd in wanted:
            devices.append(device_info(bdf))
    iommus = sorted(os.listdir("/sys/class/iommu")) if os.path.isdir("/sys/class/iommu") else []
    return {
        "kernel": os.uname().release,
        "cmdline": _read("/proc/cmdline"),
        "iommus": iommus,
        "dev_iommu": os.path.exists("/dev/iommu"),
        "dev_vfio_container": os.path.exists("/dev/vfio/vfio"),
        "devices": devices,
    }


def bind(bdfs, timeout=10.0):
    for bdf in bdfs:
        base = os.path.join(PCI, bdf)
        if os.path.exists(base + "/driver"):
            if os.path.basename(os.readlink(base + "/driver")) == "vfio-pci":
                continue
            _write(base + "/driver/unbind", bdf)
        _write(base + "/driver_override", "vfio-pci")
        _write("/sys/bus/pci/drivers_probe", bdf)
    end = time.monotonic() + timeout
    while True:
        infos = [device_info(b) for b in bdfs]
        if all(i["driver"] == "vfio-pci" and i["cdev"] and os.path.exists(i["cdev"])
               for i in infos):
            return {"devices": infos}
        if time.monotonic() > end:
            return {"devices": infos, "error": f"devices not bound to vfio-pci after {timeout} s"}
        time.sleep(0.05)


def restore(bdfs):
    for bdf in bdfs:
        base = os.path.join(PCI, bdf)
        if os.path.exists(base + "/driver"):
            _write(base + "/driver/unbind", bdf)
        _write(base + "/driver_override", "\n")
        try:
            _write("/sys/bus/pci/drivers_probe", bdf)
        except OSError:  # no driver wants it: it stays unbound, as it was at boot
            pass
    return {"devices": [device_info(b) for b in bdfs]}


def probe_dmabuf(cdev):
    """The kernel's own answer: VFIO_DEVICE_FEATURE with PROBE for DMA_BUF.

    A cdev accepts no ioctl but BIND_IOMMUFD until it is bound to an iommufd,
    so bind first. 0 means supported; ENOTTY is the stub of a kernel built
    without CONFIG_VFIO_PCI_DMABUF.
    """
    iommufd = os.open("/dev/iommu", os.O_RDWR)
    try:
        dev = os.open(cdev, os.O_RDWR)
        try:
            bind_arg = struct.pack("<IIiIQ", 24, 0, iommufd, 0, 0)
            fcntl.ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, bytearray(bind_arg), True)
            feature = bytearray(struct.pack("<II", 8, VFIO_DEVICE_FEATURE_PROBE
                                            | VFIO_DEVICE_FEATURE_GET
                                            | VFIO_DEVICE_FEATURE_DMA_BUF))
            try:
                fcntl.ioctl(dev, VFIO_DEVICE_FEATURE, feature, True)
                return {"supported": True, "errno": 0, "error": None}
            except OSError as e:
                return {"supported": False, "errno": e.errno,
                        "error": f"{errno.errorcode.get(e.errno, e.errno)}: {e.strerror}"}
        finally:
            os.close(dev)
    finally:
        os.close(iommufd)


def probe(bdfs):
    out = {}
    for bdf in bdfs:
        info = device_info(bdf)
        if not info["cdev"]:
            out[bdf] = {"supported": False, "errno": None,
                        "error": "no VFIO cdev (not bound to vfio-pci?)"}
            continue
        try:
            out[bdf] = probe_dmabuf(info["cdev"])
        except OSError as e:
            out[bdf] = {"supported": False, "errno": e.errno,
                        "error": f"cannot ask the kernel: {e.filename}: {e.strerror}"}
    return {"probe": out}


def process(args):
    """What the kernel says a process holds: dma-buf fds (fdinfo) and VFIO mmaps."""
    pid = args[0]
    dmabufs = []
    fd_dir = f"/proc/{pid}/fd"
    for fd in sorted(os.listdir(fd_dir), key=int):
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue
        if not target.startswith("/dmabuf:"):
            continue
        info = {}
        for line in (_read(f"/proc/{pid}/fdinfo/{fd}", "") or "").splitlines():
            key, _, value = line.partition(":")
            info[key.strip()] = value.strip()
        dmabufs.append({"fd": int(fd), "size": int(info.get("size", -1)),
                        "exp_name": info.get("exp_name"), "count": info.get("count")})
    maps = [line for line in (_read(f"/proc/{pid}/maps", "") or "").splitlines()
            if "vfio" in line]
    return {"pid": int(pid), "dmabufs": dmabufs, "vfio_maps": maps}


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    action, args = argv[1], argv[2:]
    actions = {"inventory": inventory, "bind": bind, "restore": restore, "probe": probe,
               "process": process}
    if action not in actions:
        print(f"unknown action {action!r}", file=sys.stderr)
        return 2
    json.dump(actions[action](args), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
