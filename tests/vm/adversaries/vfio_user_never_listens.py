#!/usr/bin/python3
"""A vfio-user server that ends before it listens (a device it cannot serve, a crash at
start): the harness must name it and how it ended at once, not wait out the start's
deadline for a socket that will never come.

Runs in L1 in place of the harness's server."""

import sys

sys.stderr.write(f"cannot serve {sys.argv[2]}: refusing\n")
sys.exit(3)
