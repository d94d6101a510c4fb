"""The L1 images: kernels and rootfs built from the recipe, cached, locked, checked."""
