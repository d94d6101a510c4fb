#!/usr/bin/python3
"""Runs inside L1 (python3, standard library only): VFIO facts and actions as JSON.

Uploaded by the harness at the start of each L1 session. It asks the kernel
directly - sysfs, /dev, and the VFIO_DEVICE_FEATURE_PROBE ioctl - so that what
it reports does not depend on the QEMU under test.

  vfio_l1.py inventory VENDOR:DEVICE...   devices, their groups, /dev/iommu, ...
  vfio_l1.py bind BDF...                  hand devices to vfio-pci (driver_override)
  vfio_l1.py restore BDF...               undo bind: back to no override
  vfio_l1.py probe BDF...                 does the kernel offer VFIO dma-buf per device?
  vfio_l1.py wait-closed PID N SECONDS    wait until PID holds fewer than N VFIO device fds
  vfio_l1.py kmsg [SINCE]                 the kernel's log records after sequence number
                                          SINCE, and its taint
  vfio_l1.py stuck PID                    each task of PID: its state, wait channel and
                                          kernel stack
  vfio_l1.py wait-gone PID SECONDS        wait until PID has exited (and been reaped)
  vfio_l1.py wait-started SECONDS PIDFILE[,PIDFILE...] ENDPOINT...
                                          wait until each PIDFILE names its process and
                                          every ENDPOINT (a TCP port, or a UNIX socket's
                                          path) listens, or a process is gone, or SECONDS
                                          are over
  vfio_l1.py terminate SECONDS PID...     SIGTERM each PID, then wait until all are gone
  vfio_l1.py ended PID SECONDS STATUS [TAIL]
                                          how PID ended: waited up to SECONDS to be gone,
                                          then up to SECONDS for its keeper's STATUS file;
                                          with the last lines of TAIL (its stderr)
  vfio_l1.py leftover SECONDS EXPORTER... the dma-bufs of EXPORTER(s) the kernel still
                                          has (debugfs dma_buf/bufinfo) and who holds
                                          a VFIO fd, waited up to SECONDS to be none
  vfio_l1.py reopen BDF...                open each device afresh, bound to an iommufd,
                                          and ask for a live dma-buf of its first BAR
  vfio_l1.py closed-before-unmap BDF      a BAR's dma-buf mapped into an IOAS, its fd
                                          closed, then unmapped and the device closed
  vfio_l1.py pid                          the helper's own pid
  vfio_l1.py serve                        the same actions, one JSON line each way
  vfio_l1.py process PID [FILES [BDF...]]
      the dma-buf fds (and whether each is revoked), VFIO device fds and mappings a
      process holds; FILES: TRACE[,STDERR], whose line counts to report with them;
      BDF: devices whose command register to read
"""

import errno
import fcntl
import json
import os
import signal
import struct
import subprocess
import sys
import time

PCI = "/sys/bus/pci/devices"

# include/uapi/linux/vfio.h: _IO(VFIO_TYPE=';', VFIO_BASE=100 + n)
VFIO_DEVICE_FEATURE = (ord(";") << 8) | (100 + 17)
VFIO_DEVICE_BIND_IOMMUFD = (ord(";") << 8) | (100 + 18)
VFIO_DEVICE_FEATURE_GET = 1 << 16
VFIO_DEVICE_FEATURE_PROBE = 1 << 18
VFIO_DEVICE_FEATURE_DMA_BUF = 11
VFIO_DEVICE_GET_REGION_INFO = (ord(";") << 8) | (100 + 8)
VFIO_PCI_CONFIG_REGION_INDEX = 7
PCI_COMMAND, PCI_COMMAND_MEMORY = 4, 0x2
DEBUGFS = "/sys/kernel/debug"
# include/uapi/linux/iommufd.h: _IO(IOMMUFD_TYPE=';', 0x80 + n)
IOMMU_IOAS_ALLOC = (ord(";") << 8) | 0x81
IOMMU_IOAS_UNMAP = (ord(";") << 8) | 0x86
IOMMU_IOAS_MAP_FILE = (ord(";") << 8) | 0x8F
VFIO_DEVICE_ATTACH_IOMMUFD_PT = (ord(";") << 8) | (100 + 19)
IOMMU_IOAS_MAP_WRITEABLE, IOMMU_IOAS_MAP_READABLE = 1 << 1, 1 << 2
SYS_PIDFD_OPEN, SYS_PIDFD_GETFD = 434, 438


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
        # How the kernel can reset the device alone (flr, pm, bus, ...); empty: it cannot.
        "reset_method": _read(base + "/reset_method", ""),
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


def _poll(look, seconds, ready=bool, every=0.02):
    """Ask `look` until `ready` holds of its answer or `seconds` are over: (its last
    answer, the seconds waited). The polls are this process's, not a `sleep` program
    started per poll under L1's TCG beside the very processes being waited for."""
    began = time.monotonic()
    while True:
        got = look()
        if ready(got) or time.monotonic() - began >= seconds:
            return got, round(time.monotonic() - began, 3)
        time.sleep(every)


def _bound(infos):
    return all(i["driver"] == "vfio-pci" and i["cdev"] and os.path.exists(i["cdev"])
               for i in infos)


def bind(bdfs, timeout=10.0):
    for bdf in bdfs:
        base = os.path.join(PCI, bdf)
        if os.path.exists(base + "/driver"):
            if os.path.basename(os.readlink(base + "/driver")) == "vfio-pci":
                continue
            _write(base + "/driver/unbind", bdf)
        _write(base + "/driver_override", "vfio-pci")
        _write("/sys/bus/pci/drivers_probe", bdf)
    infos, _ = _poll(lambda: [device_info(b) for b in bdfs], timeout, _bound, every=0.05)
    if _bound(infos):
        return {"devices": infos}
    return {"devices": infos, "error": f"devices not bound to vfio-pci after {timeout} s"}


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


def _fd_targets(pid):
    """fd -> what /proc/PID/fd says it is, in fd order (fds closed meanwhile left out)."""
    out = {}
    for fd in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
        try:
            out[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
    return out


def _is_vfio_device(target):
    """A VFIO device fd: a cdev (iommufd backend) or one from a group (legacy)."""
    return target.startswith("/dev/vfio/devices/") or target == "anon_inode:[vfio-device]"


def dmabuf_state(pid, fd):
    """Whether the exporter has revoked a process's dma-buf, in the kernel's own words:
    a copy of the fd (pidfd_getfd) mapped into a private IOAS of a new iommufd. VFIO's
    exporter refuses a revoked dma-buf with ENODEV and one of several ranges with
    EOPNOTSUPP; 0 is a live one. Closing the iommufd undoes the mapping."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = libc.syscall(SYS_PIDFD_OPEN, int(pid), 0)
    if pidfd < 0:
        return f"pidfd_open: {os.strerror(ctypes.get_errno())}"
    try:
        copy = libc.syscall(SYS_PIDFD_GETFD, pidfd, int(fd), 0)
        if copy < 0:
            return f"pidfd_getfd: {os.strerror(ctypes.get_errno())}"
    finally:
        os.close(pidfd)
    try:
        return _map_private(copy)
    except OSError as e:  # no iommufd, or no IOAS from it
        return f"iommufd: {e.strerror}"
    finally:
        os.close(copy)


def process(args):
    """What the kernel says a process holds: dma-buf fds (fdinfo, and whether each is
    revoked), VFIO device fds, VFIO mmaps and its number of fds; with a second argument,
    that file's line count (L2's trace: where the trace stood at this moment)."""
    pid = args[0]
    dmabufs = []
    targets = _fd_targets(pid)
    for fd, target in targets.items():
        if not target.startswith("/dmabuf:"):
            continue
        info = {}
        for line in (_read(f"/proc/{pid}/fdinfo/{fd}", "") or "").splitlines():
            key, _, value = line.partition(":")
            info[key.strip()] = value.strip()
        dmabufs.append({"fd": int(fd), "size": int(info.get("size", -1)),
                        "exp_name": info.get("exp_name"), "count": info.get("count"),
                        "ino": int(info.get("ino", -1)), "state": dmabuf_state(pid, fd)})
    maps = [line for line in (_read(f"/proc/{pid}/maps", "") or "").splitlines()
            if "vfio" in line]
    out = {"pid": int(pid), "dmabufs": dmabufs, "vfio_maps": maps, "fd_count": len(targets),
           "vfio_device_fds": [fd for fd, t in targets.items() if _is_vfio_device(t)]}
    if len(args) > 1:  # TRACE[,STDERR]: where L2's trace (and its stderr) stood
        counts = []
        for path in args[1].split(","):
            try:
                with open(path, "rb") as f:
                    counts.append(sum(1 for _ in f))
            except OSError:
                counts.append(None)
        out["trace_lines"], out["stderr_lines"] = (counts + [None])[:2]
    # The command register of each device named, as the L1 kernel reads it from the device:
    # whether it decodes memory, whatever L2's emulated copy says.
    commands = {}
    for bdf in args[2:]:
        try:
            with open(os.path.join(PCI, bdf, "config"), "rb") as f:
                f.seek(4)
                commands[bdf] = int.from_bytes(f.read(2), "little")
        except OSError:
            commands[bdf] = None
    out["commands"] = commands
    return out


def _vfio_device_fds(pid):
    return [fd for fd, target in _fd_targets(pid).items() if _is_vfio_device(target)]


def wait_closed(args):
    """Wait (up to SECONDS) until PID holds fewer than N VFIO device fds and none of its
    tasks is still in a VFIO device's release: QEMU closes an unplugged device's fd some
    time after the device left QOM, and the fd leaves the table before the kernel's
    release returns, so a release that hangs would otherwise pass for a close."""
    pid, n, seconds = args[0], int(args[1]), float(args[2])

    def look():
        held = _vfio_device_fds(pid)
        closing = _releasing(pid) if len(held) < n else []
        return {"vfio_device_fds": sorted(held), "closed": len(held) < n and not closing,
                "closing": closing}
    state, waited = _poll(look, seconds, lambda state: state["closed"])
    return {**state, "waited_s": waited}


#: Where a task of L2 is while it closes a VFIO device (its fd already out of the table).
RELEASE_FRAMES = ("vfio_device_fops_release", "vfio_df_close", "vfio_df_unbind_iommufd")


def _releasing(pid):
    """The tids of PID whose kernel stack is in a VFIO device's release."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    return sorted(int(t) for t in tids
                  if any(f in (_read(f"/proc/{pid}/task/{t}/stack", "") or "")
                         for f in RELEASE_FRAMES))


def stuck(args):
    """Each task of PID as the kernel has it: name, state, wait channel and kernel stack
    (/proc/PID/task/TID/stack: root only). A close or ioctl that never returns shows here
    as a task in D state and the kernel function it waits in."""
    pid = args[0]
    tasks = []
    try:
        tids = sorted(os.listdir(f"/proc/{pid}/task"), key=int)
    except OSError as e:
        return {"pid": int(pid), "tasks": [], "error": f"/proc/{pid}/task: {e.strerror}"}
    for tid in tids:
        base = f"/proc/{pid}/task/{tid}"
        state = ""
        for line in (_read(base + "/status", "") or "").splitlines():
            if line.startswith("State:"):
                state = line.split(":", 1)[1].strip()
        tasks.append({"tid": int(tid), "comm": _read(base + "/comm", ""), "state": state,
                      "wchan": _read(base + "/wchan", ""),
                      "stack": (_read(base + "/stack", "") or "").splitlines()})
    return {"pid": int(pid), "tasks": tasks}


def _gone(pid):
    state = ""
    for line in (_read(f"/proc/{pid}/status", "") or "").splitlines():
        if line.startswith("State:"):
            state = line.split()[1]
    return state in ("", "Z", "X")


def wait_gone(args):
    """Wait (up to SECONDS) until PID has exited: gone from /proc, or a zombie (its files
    closed, what is left is its parent's to reap)."""
    pid, seconds = args[0], float(args[1])
    gone, waited = _poll(lambda: _gone(pid), seconds)
    return {"gone": gone, "waited_s": waited}


def _listening(ports):
    """The TCP ports of `ports` something listens on (state 0A in /proc/net/tcp*)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in (_read(table, "") or "").splitlines()[1:]:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A":
                port = int(fields[1].rsplit(":", 1)[1], 16)
                if port in ports:
                    found.add(port)
    return found


def _unix_listening(paths):
    """The UNIX socket paths of `paths` something listens on: /proc/net/unix's Flags with
    __SO_ACCEPTCON (a socket that is bound has its file before it listens)."""
    found = set()
    for line in (_read("/proc/net/unix", "") or "").splitlines()[1:]:
        fields = line.split()  # Num RefCount Protocol Flags Type St Inode [Path]
        if len(fields) >= 8 and int(fields[3], 16) & 0x10000 and fields[7] in paths:
            found.add(fields[7])
    return found


def _pid_in(path):
    """The pid a keeper shell wrote into `path`, once the whole line is there."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    return int(text) if text.endswith("\n") and text.strip().isdigit() else None


def wait_started(args):
    """Wait (up to SECONDS) until each PIDFILE holds its process's pid (its keeper shell
    writes it) and something listens on every ENDPOINT (a TCP port, or the absolute path
    of a UNIX socket), or one of the processes is gone: the polls are this process's, not
    a `sleep` program started per poll under L1's TCG beside the very processes being
    waited for."""
    seconds, files = float(args[0]), args[1].split(",")
    ports = {int(a) for a in args[2:] if not a.startswith("/")}
    paths = {a for a in args[2:] if a.startswith("/")}

    def look():
        pids = [_pid_in(f) for f in files]
        found = _listening(ports) | _unix_listening(paths)
        missing = sorted(str(e) for e in (ports | paths) - found)
        return {"pids": pids, "listening": None not in pids and not missing,
                "gone": any(p is not None and _gone(p) for p in pids), "missing": missing}
    state, waited = _poll(look, seconds, lambda state: state["listening"] or state["gone"])
    return {**state, "waited_s": waited}


def ended(args):
    """How PID ended, as its keeper shell wrote it into STATUS: PID gets up to SECONDS to be
    gone or a zombie (a dying process closes its sockets before), then its keeper up to
    SECONDS to write the status. A PID that still runs has no status ("")."""
    pid, seconds, status = args[0], float(args[1]), args[2]
    gone, _ = _poll(lambda: _gone(pid), seconds)
    text = _poll(lambda: _read(status, "") or "", seconds)[0] if gone else ""
    tail = []
    if len(args) > 3:
        tail = (_read(args[3], "") or "").splitlines()[-5:]
    return {"gone": gone, "status": text, "tail": tail}


def terminate(args):
    """SIGTERM each PID, then wait (up to SECONDS) until every one has exited: the PIDs
    left are the caller's to SIGKILL."""
    seconds, pids = float(args[0]), args[1:]
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGTERM)
        except ProcessLookupError:
            pass
    left, waited = _poll(lambda: [int(p) for p in pids if not _gone(p)], seconds,
                         lambda left: not left)
    return {"left": left, "waited_s": waited}


def _bufinfo(path):
    """Every dma-buf alive, from debugfs (drivers/dma-buf/dma-buf.c, dma_buf_debug_show):
    ([[exp_name, ino, size], ...], the total it states), or None if the text is not in
    the format known (a list read wrong must never pass for an empty one)."""
    text = _read(path, None)
    if text is None or "Dma-buf Objects:" not in text:
        return None
    objects, total = [], None
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) == 7 and fields[0].isdigit():  # size flags mode count exp_name ino name
            objects.append([fields[4], int(fields[5]), int(fields[0])])
        elif line.startswith("Total ") and " objects, " in line:
            total = int(line.split()[1])
    if total != len(objects):
        return None
    return objects


def leftover(args):
    """The dma-bufs of EXPORTER(s) the kernel still has, whoever holds them (an fd, a
    mapping, a reference nobody will put): debugfs' bufinfo lists every dma-buf alive, fd
    or not; and every VFIO fd any process holds. Waits up to SECONDS for both to be none:
    a process's exit releases its files just after it is reaped."""
    seconds = float(args[0]) if args else 2.0
    exporters = set(args[1:])
    path = DEBUGFS + "/dma_buf/bufinfo"
    if not os.path.exists(path):
        if subprocess.run(["mount", "-t", "debugfs", "none", DEBUGFS],
                          capture_output=True).returncode != 0 or not os.path.exists(path):
            return {"error": f"{path}: not there (no debugfs, or a kernel without dma-buf "
                             f"debugfs)"}

    def look():
        objects = _bufinfo(path)
        if objects is None:
            return {"error": f"{path}: not in the format of dma_buf_debug_show"}
        return {"dmabufs": [o for o in objects if o[0] in exporters], "alive": len(objects),
                "holders": _vfio_holders()}
    state, waited = _poll(look, seconds, lambda state: "error" in state or not (
        state["dmabufs"] or state["holders"]), every=0.05)
    return state if "error" in state else {**state, "waited_s": waited}


def _vfio_holders():
    """Every process of L1 that holds a VFIO device, group or container fd, as
    [pid, comm, fd, target]: once L2 is gone, nothing should."""
    out = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            targets = _fd_targets(pid)
        except OSError:
            continue
        for fd, target in targets.items():
            if _is_vfio_device(target) or target.startswith("/dev/vfio/"):
                out.append([int(pid), _read(f"/proc/{pid}/comm", ""), fd, target])
    return out


def _region_info(dev, index):
    info = bytearray(struct.pack("<IIIIQQ", 32, 0, index, 0, 0, 0))
    fcntl.ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, info, True)
    _, _, _, _, size, offset = struct.unpack("<IIIIQQ", info)
    return size, offset


def _map_private(fd):
    """Map dma-buf `fd` into a private IOAS of a new iommufd: 'live', or why not."""
    iommufd = os.open("/dev/iommu", os.O_RDWR)
    try:
        alloc = bytearray(struct.pack("<III", 12, 0, 0))
        fcntl.ioctl(iommufd, IOMMU_IOAS_ALLOC, alloc, True)
        ioas = struct.unpack("<III", alloc)[2]
        arg = bytearray(struct.pack("<IIIiQQQ", 40, IOMMU_IOAS_MAP_WRITEABLE
                                    | IOMMU_IOAS_MAP_READABLE, ioas, fd, 0,
                                    os.fstat(fd).st_size, 0))
        try:
            fcntl.ioctl(iommufd, IOMMU_IOAS_MAP_FILE, arg, True)
            return "live"
        except OSError as e:
            return {errno.ENODEV: "revoked", errno.EOPNOTSUPP: "several-ranges"}.get(
                e.errno, f"IOMMU_IOAS_MAP_FILE: {errno.errorcode.get(e.errno, e.errno)}")
    finally:
        os.close(iommufd)


def reopen_one(bdf):
    """What the next user of the device gets: its cdev opened and bound to an iommufd;
    then, if the kernel offers VFIO dma-buf, memory decode on (through VFIO's config
    region, as QEMU does it) and a dma-buf of its first memory BAR, mapped into a
    private IOAS. Everything is closed again, dma-buf first."""
    info = device_info(bdf)
    if not info["cdev"]:
        return "no VFIO cdev (not bound to vfio-pci?)"
    bars = [b for b in info["bars"] if b["mem"] and b["size"] >= 4096]
    try:
        iommufd = os.open("/dev/iommu", os.O_RDWR)
    except OSError as e:
        return f"/dev/iommu: {e.strerror}"
    try:
        try:
            dev = os.open(info["cdev"], os.O_RDWR)
        except OSError as e:
            return f"open {info['cdev']}: {errno.errorcode.get(e.errno, e.errno)}"
        try:
            try:
                fcntl.ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD,
                            bytearray(struct.pack("<IIiIQ", 24, 0, iommufd, 0, 0)), True)
            except OSError as e:
                return f"VFIO_DEVICE_BIND_IOMMUFD: {errno.errorcode.get(e.errno, e.errno)}"
            if probe_dmabuf_bound(dev) is not None:
                return "opened (the kernel offers no dma-buf)"
            if not bars:
                return "opened (no memory BAR)"
            _, config = _region_info(dev, VFIO_PCI_CONFIG_REGION_INDEX)
            command = int.from_bytes(os.pread(dev, 2, config + PCI_COMMAND), "little")
            os.pwrite(dev, (command | PCI_COMMAND_MEMORY).to_bytes(2, "little"),
                      config + PCI_COMMAND)
            bar = bars[0]
            get = bytearray(struct.pack("<IIIIIIQQ", 40, VFIO_DEVICE_FEATURE_GET
                                        | VFIO_DEVICE_FEATURE_DMA_BUF, bar["index"],
                                        os.O_RDWR | os.O_CLOEXEC, 0, 1, 0, bar["size"]))
            try:
                fd = fcntl.ioctl(dev, VFIO_DEVICE_FEATURE, get, True)
            except OSError as e:
                return f"VFIO_DEVICE_FEATURE(DMA_BUF) of BAR {bar['index']}: " \
                       f"{errno.errorcode.get(e.errno, e.errno)}"
            try:
                return _map_private(fd)
            finally:
                os.close(fd)
        finally:
            os.close(dev)
    finally:
        os.close(iommufd)


def probe_dmabuf_bound(dev):
    """None if a device fd bound to an iommufd offers VFIO dma-buf, else why not."""
    feature = bytearray(struct.pack("<II", 8, VFIO_DEVICE_FEATURE_PROBE
                                    | VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_BUF))
    try:
        fcntl.ioctl(dev, VFIO_DEVICE_FEATURE, feature, True)
        return None
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


def _errno(e):
    return errno.errorcode.get(e.errno, str(e.errno))


def _alive(inode):
    """Whether debugfs lists a dma-buf of this inode (None: it cannot say)."""
    objects = _bufinfo(DEBUGFS + "/dma_buf/bufinfo")
    return None if objects is None else any(o[1] == inode for o in objects)


def closed_before_unmap(args):
    """The order a VMM may take, with no QEMU: the device's cdev bound to an iommufd and
    attached to a new IOAS, memory decode on, a dma-buf of its largest memory BAR mapped
    into the IOAS (IOMMU_IOAS_MAP_FILE), the dma-buf fd closed while mapped, then the
    mapping undone and the device closed. Each step's answer ("ok" or the errno), and
    whether debugfs still lists the dma-buf after each act."""
    bdf = args[0]
    out = {"bdf": bdf, "steps": [], "alive": {}}

    def step(name, act):
        try:
            result = act()
            out["steps"].append([name, "ok"])
            return result
        except OSError as e:
            out["steps"].append([name, _errno(e)])
            raise

    info = device_info(bdf)
    bars = sorted((b for b in info["bars"] if b["mem"] and b["size"] >= 4096),
                  key=lambda b: -b["size"])
    if not info["cdev"] or not bars:
        out["error"] = "no VFIO cdev or no memory BAR of a page or more"
        return out
    bar = bars[0]
    out["bar"], out["size"] = bar["index"], bar["size"]
    iommufd = os.open("/dev/iommu", os.O_RDWR)
    dev = fd = None
    try:
        alloc = bytearray(struct.pack("<III", 12, 0, 0))
        step("IOMMU_IOAS_ALLOC", lambda: fcntl.ioctl(iommufd, IOMMU_IOAS_ALLOC, alloc, True))
        ioas = struct.unpack("<III", alloc)[2]
        dev = step("open", lambda: os.open(info["cdev"], os.O_RDWR))
        step("VFIO_DEVICE_BIND_IOMMUFD", lambda: fcntl.ioctl(
            dev, VFIO_DEVICE_BIND_IOMMUFD,
            bytearray(struct.pack("<IIiIQ", 24, 0, iommufd, 0, 0)), True))
        step("VFIO_DEVICE_ATTACH_IOMMUFD_PT", lambda: fcntl.ioctl(
            dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, bytearray(struct.pack("<III", 12, 0, ioas)),
            True))
        _, config = _region_info(dev, VFIO_PCI_CONFIG_REGION_INDEX)
        command = int.from_bytes(os.pread(dev, 2, config + PCI_COMMAND), "little")
        step("memory decode on", lambda: os.pwrite(
            dev, (command | PCI_COMMAND_MEMORY).to_bytes(2, "little"), config + PCI_COMMAND))
        get = bytearray(struct.pack("<IIIIIIQQ", 40, VFIO_DEVICE_FEATURE_GET
                                    | VFIO_DEVICE_FEATURE_DMA_BUF, bar["index"],
                                    os.O_RDWR | os.O_CLOEXEC, 0, 1, 0, bar["size"]))
        fd = step("VFIO_DEVICE_FEATURE(DMA_BUF)",
                  lambda: fcntl.ioctl(dev, VFIO_DEVICE_FEATURE, get, True))
        inode = os.fstat(fd).st_ino
        out["inode"] = inode
        arg = bytearray(struct.pack("<IIIiQQQ", 40, IOMMU_IOAS_MAP_WRITEABLE
                                    | IOMMU_IOAS_MAP_READABLE, ioas, fd, 0, bar["size"], 0))
        step("IOMMU_IOAS_MAP_FILE", lambda: fcntl.ioctl(iommufd, IOMMU_IOAS_MAP_FILE, arg,
                                                        True))
        iova = struct.unpack("<IIIiQQQ", arg)[6]
        out["iova"] = iova
        out["alive"]["mapped"] = _alive(inode)
        os.close(fd)
        fd = None
        out["steps"].append(["close the dma-buf fd", "ok"])
        out["alive"]["fd closed, still mapped"] = _alive(inode)
        step("IOMMU_IOAS_UNMAP", lambda: fcntl.ioctl(
            iommufd, IOMMU_IOAS_UNMAP, bytearray(struct.pack("<IIQQ", 24, ioas, iova,
                                                             bar["size"])), True))
        # the last reference goes with the unmap
        out["alive"]["unmapped"] = _poll(lambda: _alive(inode), 1.0, lambda alive: not alive)[0]
    except OSError:
        pass  # the step that failed says which
    finally:
        if fd is not None:
            os.close(fd)
        if dev is not None:
            began = time.monotonic()
            os.close(dev)
            out["close_s"] = round(time.monotonic() - began, 3)
            out["steps"].append(["close the device", "ok"])
        os.close(iommufd)
    return out


def own_pid(args):
    return {"pid": os.getpid()}


def reopen(bdfs):
    return {"reopened": {bdf: reopen_one(bdf) for bdf in bdfs}}


#: The helper's own /dev/kmsg descriptor: each read returns only records it has not yet
#: returned, so a question costs what came since the last one, not the whole boot log.
_KMSG: list = []


def kmsg(args):
    """The kernel's log records after sequence number SINCE (all: -1), as
    [seq, level, usec, text, facility], and /proc/sys/kernel/tainted (facility 0 is the
    kernel's own; what userspace writes into /dev/kmsg gets 1 or more). A helper started
    afresh reads from the first record kept; SINCE leaves out what an earlier one already
    returned."""
    since = int(args[0]) if args else -1
    if not _KMSG:
        _KMSG.append(os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK))
    records, lost = [], 0
    while True:
        try:
            raw = os.read(_KMSG[0], 8192)
        except BlockingIOError:
            break
        except BrokenPipeError:  # EPIPE: records overwritten before this reader got them
            lost += 1
            continue
        if not raw:
            break
        head, _, body = raw.decode("utf-8", "replace").partition(";")
        fields = head.split(",")
        seq = int(fields[1])
        if seq <= since:
            continue
        text = body.split("\n", 1)[0].replace("\\x0a", "\n")  # the dictionary lines left out
        records.append([seq, int(fields[0]) & 7, int(fields[2]), text, int(fields[0]) >> 3])
    return {"records": records, "tainted": int(_read("/proc/sys/kernel/tainted", "0") or 0),
            "lost": lost}


ACTIONS = {"inventory": inventory, "bind": bind, "restore": restore, "probe": probe,
           "process": process, "wait-closed": wait_closed,
           "kmsg": kmsg, "stuck": stuck, "wait-gone": wait_gone, "wait-started": wait_started,
           "terminate": terminate, "ended": ended, "leftover": leftover,
           "reopen": reopen, "closed-before-unmap": closed_before_unmap, "pid": own_pid}


def serve():
    """One JSON request per line on stdin ({"action", "args"}), one JSON answer per line:
    the interpreter starts once per L1 session, not once per question."""
    for line in sys.stdin:
        request = json.loads(line)
        try:
            answer = ACTIONS[request["action"]](request["args"])
        except Exception as e:  # the harness shows it; the next question still gets answered
            answer = {"helper_error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    return 0


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    action, args = argv[1], argv[2:]
    if action == "serve":
        return serve()
    if action not in ACTIONS:
        print(f"unknown action {action!r}", file=sys.stderr)
        return 2
    json.dump(ACTIONS[action](args), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
