#!/usr/bin/env bash
# Make the repository's relative weight and run paths point at the container's mount points, so a
# config that says checkpoints/stylegan2-ffhq-config-f.pt or runs/NAME works unchanged in the image:
#   APP_DIR/checkpoints/NAME -> CHECKPOINTS/NAME   (every file of checkpoints/manifest.json)
#   APP_DIR/runs             -> RUNS
# Usage: docker/link-mounts.sh APP_DIR [CHECKPOINTS=/checkpoints] [RUNS=/runs]   ($PYTHON: python)
set -euo pipefail

app_dir="${1:?usage: link-mounts.sh APP_DIR [CHECKPOINTS] [RUNS]}"
checkpoints="${2:-/checkpoints}"
runs="${3:-/runs}"

names="$("${PYTHON:-python}" -m psp.cli.main fetch list --names)"
mkdir -p "${app_dir}/checkpoints"
while read -r name; do
    ln -sfn "${checkpoints}/${name}" "${app_dir}/checkpoints/${name}"
done <<< "${names}"
if [[ -e "${app_dir}/runs" && ! -L "${app_dir}/runs" ]]; then
    echo "link-mounts.sh: ${app_dir}/runs exists and is not a link; leaving it" >&2
else
    ln -sfn "${runs}" "${app_dir}/runs"
fi
