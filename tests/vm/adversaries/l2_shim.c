/*
 * LD_PRELOAD shim around the QEMU under test: breaks one thing the way a real
 * bug would, chosen by VFIO_HARNESS_SHIM:
 *
 *   refuse-dmabuf  VFIO_DEVICE_FEATURE(DMA_BUF) fails with ENOTTY, as on a kernel
 *                  without VFIO dma-buf (a QEMU that never gets its dma-bufs)
 *   shrink-dmabuf  the dma-buf asked for covers only the first page of each range
 *   forge-dmabuf   a memfd of the right size comes back instead of a dma-buf
 *   anon-bar-mmap  mmap of a VFIO device fd gives anonymous memory: the BAR
 *                  looks mapped but is not the device
 *   keep-decode    writes of the PCI command register through a VFIO device fd
 *                  keep memory decode on: L2 turns it off in its own copy only,
 *                  the device (and its dma-buf) never sees it
 *   borrow-dmabuf  a region gets a dup of another device's dma-buf of the same size
 *                  (ivshmem BAR 2 gets edu BAR 0's): one dma-buf, two regions
 *   foreign-dmabuf a region gets a dma-buf of its own, freshly made, but of another
 *                  device's BAR of the same size: right size, exporter and count
 *   stale-dmabuf   a device plugged again gets a dup of the dma-buf its unplugged
 *                  predecessor left open (revoked), not a new one
 *
 * Only the harness's adversarial tests use it; it is built on L0 and carried
 * into L1 inside the wrapper script that becomes the QEMU under test.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define VFIO_DEVICE_FEATURE (((unsigned long)';' << 8) | (100 + 17))
#define VFIO_DEVICE_FEATURE_GET (1u << 16)
#define VFIO_DEVICE_FEATURE_PROBE (1u << 18)
#define VFIO_DEVICE_FEATURE_MASK 0xffffu
#define VFIO_DEVICE_FEATURE_DMA_BUF 11u

struct feature { uint32_t argsz, flags; };
struct dma_range { uint64_t offset, length; };
struct dma_buf { uint32_t region_index, open_flags, flags, nr_ranges; struct dma_range r[]; };

static const char *mode(void)
{
    const char *m = getenv("VFIO_HARNESS_SHIM");
    return m ? m : "";
}

static int is_dmabuf_get(unsigned long request, void *arg)
{
    struct feature *f = arg;
    return request == VFIO_DEVICE_FEATURE && f &&
           (f->flags & VFIO_DEVICE_FEATURE_MASK) == VFIO_DEVICE_FEATURE_DMA_BUF &&
           (f->flags & VFIO_DEVICE_FEATURE_GET) && !(f->flags & VFIO_DEVICE_FEATURE_PROBE);
}

/* The dma-bufs made so far: which device fd asked, for what, and whether that device fd
 * has been closed since (an unplugged device's). */
#define MAX_MADE 64
static struct made {
    int device_fd, dmabuf_fd, closed;
    uint64_t size;
    size_t argsz;
    unsigned char arg[256];
} made[MAX_MADE];
static int n_made;

static uint64_t total_size(const struct dma_buf *d)
{
    uint64_t total = 0;
    for (uint32_t i = 0; i < d->nr_ranges; i++)
        total += d->r[i].length;
    return total;
}

/* An earlier dma-buf of `size` asked for by another device: one whose fd is still open
 * (and not this one), or one whose fd was closed since (its number may be this one's now). */
static struct made *earlier(int device_fd, uint64_t size, int closed)
{
    for (int i = 0; i < n_made; i++)
        if (made[i].size == size && made[i].closed == closed &&
            (closed || made[i].device_fd != device_fd))
            return &made[i];
    return NULL;
}

static void remember(int device_fd, int dmabuf_fd, uint64_t size, const void *arg)
{
    const struct feature *f = arg;
    if (dmabuf_fd < 0 || n_made >= MAX_MADE || f->argsz > sizeof(made[0].arg))
        return;
    struct made *m = &made[n_made++];
    m->device_fd = device_fd;
    m->dmabuf_fd = dmabuf_fd;
    m->closed = 0;
    m->size = size;
    m->argsz = f->argsz;
    memcpy(m->arg, arg, f->argsz);
}

int close(int fd)
{
    static int (*real)(int);
    if (!real)
        real = dlsym(RTLD_NEXT, "close");
    for (int i = 0; i < n_made; i++)
        if (made[i].device_fd == fd)
            made[i].closed = 1;
    return real(fd);
}

int ioctl(int fd, unsigned long request, ...)
{
    static int (*real)(int, unsigned long, ...);
    va_list ap;
    va_start(ap, request);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    if (!real)
        real = dlsym(RTLD_NEXT, "ioctl");
    if (is_dmabuf_get(request, arg)) {
        struct dma_buf *d = (void *)((char *)arg + sizeof(struct feature));
        if (!strcmp(mode(), "refuse-dmabuf")) {
            errno = ENOTTY;
            return -1;
        }
        if (!strcmp(mode(), "shrink-dmabuf")) {
            for (uint32_t i = 0; i < d->nr_ranges; i++)
                if (d->r[i].length > 4096)
                    d->r[i].length = 4096;
        }
        if (!strcmp(mode(), "forge-dmabuf")) {
            int mfd = memfd_create("forged-dmabuf", MFD_CLOEXEC);
            if (mfd >= 0 && ftruncate(mfd, (off_t)total_size(d)) == 0)
                return mfd;
        }
        uint64_t size = total_size(d);
        struct made *m = NULL;
        if (!strcmp(mode(), "borrow-dmabuf") && (m = earlier(fd, size, 0)))
            return fcntl(m->dmabuf_fd, F_DUPFD_CLOEXEC, 0);
        if (!strcmp(mode(), "foreign-dmabuf") && (m = earlier(fd, size, 0))) {
            unsigned char copy[256];
            memcpy(copy, m->arg, m->argsz);
            return real(m->device_fd, request, copy);
        }
        if (!strcmp(mode(), "stale-dmabuf") && (m = earlier(fd, size, 1)))
            return fcntl(m->dmabuf_fd, F_DUPFD_CLOEXEC, 0);
        int ret = real(fd, request, arg);
        remember(fd, ret, size, arg);
        return ret;
    }
    return real(fd, request, arg);
}

static int is_vfio_device(int fd)
{
    char link[64], target[256];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof(target) - 1);
    if (n <= 0)
        return 0;
    target[n] = 0;
    return strstr(target, "vfio-device") || strstr(target, "/dev/vfio/devices/");
}

#define KEPT 16
static struct { void *addr; size_t len; } kept[KEPT];

static void keep(void *addr, size_t len)
{
    for (int i = 0; i < KEPT; i++) {
        if (!kept[i].addr) {
            kept[i].addr = addr;
            kept[i].len = len;
            return;
        }
    }
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    static void *(*real)(void *, size_t, int, int, int, off_t);
    if (!real)
        real = dlsym(RTLD_NEXT, "mmap");
    if (fd >= 0 && !strcmp(mode(), "anon-bar-mmap") && is_vfio_device(fd))
        return real(addr, len, prot, (flags & ~MAP_SHARED) | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    /* BAR 2 (region 2, at 2 << 40 of the device fd) not mmapped: QEMU warns and reaches
     * the BAR another way (vfio-user: REGION_READ/WRITE messages). */
    if (fd >= 0 && !strcmp(mode(), "refuse-bar2-mmap") && is_vfio_device(fd) &&
        (uint64_t)off >= (2ull << 40) && (uint64_t)off < (3ull << 40)) {
        errno = EPERM;
        return MAP_FAILED;
    }
    void *got = real(addr, len, prot, flags, fd, off);
    if (got != MAP_FAILED && fd >= 0 && !strcmp(mode(), "keep-bar2-mapped") &&
        is_vfio_device(fd) && (uint64_t)off >= (2ull << 40) && (uint64_t)off < (3ull << 40))
        keep(got, len);
    return got;
}
void *mmap64(void *, size_t, int, int, int, off_t) __attribute__((alias("mmap")));

/* keep-bar2-mapped: BAR 2's mmaps are never unmapped (an unplug's munmap "succeeds" and
 * leaves the device's pages mapped in L2). */
int munmap(void *addr, size_t len)
{
    static int (*real)(void *, size_t);
    if (!real)
        real = dlsym(RTLD_NEXT, "munmap");
    for (int i = 0; i < KEPT; i++) {
        if (kept[i].addr && kept[i].addr == addr && kept[i].len == len) {
            kept[i].addr = NULL;
            return 0;
        }
    }
    return real(addr, len);
}

/* vfio-pci's config space region (VFIO_PCI_CONFIG_REGION_INDEX 7) at 7 << 40. */
#define CONFIG_REGION_OFFSET (7ull << 40)
#define PCI_COMMAND 4
#define PCI_COMMAND_MEMORY 0x2

ssize_t pwrite(int fd, const void *buf, size_t count, off_t off)
{
    static ssize_t (*real)(int, const void *, size_t, off_t);
    if (!real)
        real = dlsym(RTLD_NEXT, "pwrite");
    if (!strcmp(mode(), "keep-decode") && (uint64_t)off == CONFIG_REGION_OFFSET + PCI_COMMAND &&
        (count == 2 || count == 4) && is_vfio_device(fd)) {
        uint32_t value = 0;
        memcpy(&value, buf, count);  /* the caller's buffer stays as it was */
        value |= PCI_COMMAND_MEMORY;
        return real(fd, &value, count, off);
    }
    return real(fd, buf, count, off);
}
ssize_t pwrite64(int, const void *, size_t, off_t) __attribute__((alias("pwrite")));
