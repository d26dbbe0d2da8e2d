# Sourced by the run scripts: the shared helpers (require, REPO_ROOT) of the DeiT scripts.
source "$(dirname "${BASH_SOURCE[0]}")/../../deit/run/common.sh"
