/*
 * LD_PRELOAD fixture for the multi-range check: L2 QEMU sees every region
 * without VFIO_REGION_INFO_CAP_MSIX_MAPPABLE.
 *
 * Why: Linux's vfio-pci gives that capability to every MSI-X BAR
 * (msix_mmappable_cap, drivers/vfio/pci/vfio_pci_core.c) and QEMU mmaps a BAR
 * around its MSI-X table only when the capability is absent
 * (vfio_pci_fixup_msix_region, hw/vfio/pci.c), as it does on a kernel before
 * 4.16. Without it, no region on x86 is mmapped in more than one piece, so a
 * multi-range dma-buf is never created. Everything else is the real thing:
 * QEMU's split, its dma-buf request with two ranges, the kernel's answer and
 * iommufd's. The kernel still allows mmap of the table's page; QEMU just does
 * not ask for it.
 *
 * Built on L0 by harness/collect/msix_split.py and preloaded only into the L2 of the
 * multi-range check; the devices of the other checks have no MSI-X.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>

#define VFIO_DEVICE_GET_REGION_INFO (((unsigned long)';' << 8) | (100 + 8))
#define VFIO_REGION_INFO_FLAG_CAPS (1u << 3)
#define VFIO_REGION_INFO_CAP_MSIX_MAPPABLE 3

struct region_info {
    uint32_t argsz, flags, index, cap_offset;
    uint64_t size, offset;
};
struct cap_header { uint16_t id, version; uint32_t next; };

/* Said on L2's stderr, so the evidence shows the fixture acted (and on what). */
#define TAG "vfio-harness msix-split: "

static void withhold(int fd, struct region_info *info)
{
    if (!(info->flags & VFIO_REGION_INFO_FLAG_CAPS) || !info->cap_offset)
        return;  /* no capabilities, or the buffer was too small to hold them */
    uint32_t *link = &info->cap_offset;
    while (*link) {
        struct cap_header *h = (void *)((char *)info + *link);
        if (h->id == VFIO_REGION_INFO_CAP_MSIX_MAPPABLE) {
            *link = h->next;  /* offsets are from the start of info: unlinking is enough */
            fprintf(stderr, TAG "withheld MSIX_MAPPABLE from region %u of device fd %d\n",
                    info->index, fd);
        } else
            link = &h->next;
    }
    if (!info->cap_offset)
        info->flags &= ~VFIO_REGION_INFO_FLAG_CAPS;
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
    int ret = real(fd, request, arg);
    if (ret == 0 && request == VFIO_DEVICE_GET_REGION_INFO && arg)
        withhold(fd, arg);
    return ret;
}
