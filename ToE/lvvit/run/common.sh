# Sourced by the run scripts: stop with a clear message when a required variable is unset.
require() {
  for name in "$@"; do
    if [ -z "${!name:-}" ]; then
      echo "error: set $name first, e.g. $name=/path/to/... $0" >&2
      exit 2
    fi
  done
}
# the repository root, so that the scripts run from anywhere
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
