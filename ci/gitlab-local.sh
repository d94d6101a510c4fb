#!/usr/bin/env bash
# Runs ci/gitlab-ci.yml for real, here, with gitlab-ci-local on its shell
# executor: images, unit, lint, the four matrix shards that `parallel: matrix`
# expands, and the report job merging the shards' artifacts.
#
#   bash ci/gitlab-local.sh            # the whole pipeline
#   bash ci/gitlab-local.sh unit lint  # some jobs (gitlab-ci-local's arguments)
#
# Why these choices:
# - gitlab-ci-local is pinned: 4.52.0 is the newest that runs on Debian's
#   Node 20 (4.75 needs a newer Node). It is installed in the image cache,
#   outside the clone.
# - --shell-isolation gives each job its own copy of the tracked files and
#   passes artifacts between jobs as GitLab does; without it every job would
#   share this working tree and the report would see files no job produced.
# - The jobs share this machine's image cache (VFIO_HARNESS_CACHE) rather than
#   GitLab's cache: keys, which would copy gigabytes per job.
# - The jobs share one virtualenv too ($STATE/venv, VFIO_HARNESS_VENV), made
#   before the first job and kept between runs: every job has the same tracked
#   files, and a virtualenv per job cost each of the twelve jobs 10 s of pip.
#   In GitLab each job makes its own, as ci/setup.sh does on a fresh clone.
# - GCL_CONCURRENCY (default 2) jobs at once: two shards, one L1 each, fit the
#   two cores.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'ci/gitlab-local.sh: %s\n' "$*" >&2; exit 2; }

GCL_VERSION=4.52.0
CACHE=${VFIO_HARNESS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vfio-harness}
TOOL="$CACHE/tools/gitlab-ci-local-$GCL_VERSION"
GCL="$TOOL/node_modules/.bin/gitlab-ci-local"
STATE=.gitlab-ci-local

command -v node >/dev/null && command -v npm >/dev/null ||
  die "needs Node.js and npm (gitlab-ci-local is an npm package); install nodejs and npm"
command -v git >/dev/null || die "needs git"
git rev-parse --git-dir >/dev/null 2>&1 ||
  die "$(pwd) is not a git work tree: gitlab-ci-local copies the tracked files"
if ! command -v rsync >/dev/null; then
  step "installing rsync (gitlab-ci-local's --shell-isolation copies with it)"
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends rsync
fi
if [ ! -x "$GCL" ]; then
  step "installing gitlab-ci-local $GCL_VERSION in $TOOL"
  mkdir -p "$TOOL"
  npm install --prefix "$TOOL" --no-audit --no-fund --loglevel=error \
    "gitlab-ci-local@$GCL_VERSION" >&2
fi

# A previous run's builds and artifacts would be copied into this run's jobs; its
# virtualenv is kept (ci/setup.sh renews it when pyproject.toml changes).
if [ -d "$STATE" ]; then
  find "$STATE" -mindepth 1 -maxdepth 1 ! -name venv -exec rm -rf {} +
fi
VENV="$(pwd)/$STATE/venv"
# Both extras the jobs ask for (the lint job's are "test,lint"), each marked installed.
for extras in test test,lint; do
  # shellcheck source=ci/setup.sh
  VFIO_HARNESS_VENV=$VENV VFIO_HARNESS_EXTRAS=$extras source ci/setup.sh
done
step "pipeline ci/gitlab-ci.yml on gitlab-ci-local $GCL_VERSION (shell executor, image cache $CACHE)"
status=0
# gitlab-ci-local in a process group of its own (job control), so that an interrupt
# of this script reaches every job it started (the harness then stops its QEMUs).
set -m
"$GCL" --file ci/gitlab-ci.yml --state-dir "$STATE" --shell-isolation \
  --concurrency "${GCL_CONCURRENCY:-2}" --timestamps --max-job-name-padding 0 \
  --variable "VFIO_HARNESS_CACHE=$CACHE" --variable "VFIO_HARNESS_VENV=$VENV" "$@" &
gcl=$!
trap 'kill -TERM -- "-$gcl" 2>/dev/null; wait "$gcl" || true; echo "ci/gitlab-local.sh: interrupted" >&2; exit 130' INT TERM
wait "$gcl" || status=$?
trap - INT TERM
step "job logs and artifacts: $(pwd)/$STATE/ (artifacts/<job>/, output/<job>.log)"
if [ "$status" != 0 ]; then
  echo "ci/gitlab-local.sh: the pipeline failed (gitlab-ci-local exit $status)" >&2
  exit 1
fi
echo "ci/gitlab-local.sh: the pipeline passed" >&2
