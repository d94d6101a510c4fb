# Sourced by ci/main.sh and ci/test.sh: host packages, the virtualenv, the package.
# Safe to run again: it installs only what is missing.

step() { printf '\n==> %s\n' "$*" >&2; }

HOST_PACKAGES=(
  qemu-system-x86 qemu-utils          # L0
  qemu-system-arm gcc-aarch64-linux-gnu libc6-dev-arm64-cross  # arm64 (--arch aarch64): L0, L1 kernel, fixtures
  qemu-user-static                    # arm64 rootfs: its second stage in a chroot (not an L1 boot)
  debootstrap e2fsprogs debian-archive-keyring  # the L1 rootfs
  make gcc libc6-dev flex bison bc libelf-dev libssl-dev xz-utils patch  # the L1 kernel
  openssh-client python3-venv procps git
  patchelf                            # builds the carried-libraries QEMU of a VM test
  chromium                            # renders the HTML report in its test
)

if [ "$(id -u)" != 0 ]; then
  echo "vfio-harness needs root (debootstrap, /dev/shm, apt-get); run as root" >&2
  exit 2
fi

missing=()
for p in "${HOST_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  step "installing host packages: ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  step "host packages: all present"
fi

VENV=${VFIO_HARNESS_VENV:-$PWD/.venv}
# Extras beyond the CLI's own needs: pytest for the tests; ci/avocado.sh adds avocado.
EXTRAS=${VFIO_HARNESS_EXTRAS:-test}
MARK="$VENV/.installed-${EXTRAS//,/-}"
if [ ! -x "$VENV/bin/vfio-harness" ] || [ pyproject.toml -nt "$MARK" ]; then
  step "python environment: $VENV (qemu.qmp, paramiko; extras: $EXTRAS)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -e ".[$EXTRAS]"
  touch "$MARK"
else
  step "python environment: $VENV is up to date (extras: $EXTRAS)"
fi
export PATH="$VENV/bin:$PATH"
