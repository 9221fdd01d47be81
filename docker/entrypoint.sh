#!/usr/bin/env bash
# Container entrypoint of the psp-toolkit image:
#   train ARGS  -> python train.py ARGS           (e.g. train --config ffhq data.train_dir=/data/ffhq)
#   infer ARGS  -> python infer.py ARGS           (e.g. infer /data/img --out /runs/latents)
#   fetch ARGS  -> psp fetch ARGS                 (e.g. fetch stylegan2-ffhq-config-f.pt; fetch list)
#   -h | --help | help -> this text
#   anything else runs as given                   (bash, python -m ..., torchrun ..., pytest ...)
set -euo pipefail

app_dir="${PSP_APP_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)}"

usage() {
    sed -n '2,7s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

case "${1:-}" in
    train) shift; exec python "${app_dir}/train.py" "$@" ;;
    infer) shift; exec python "${app_dir}/infer.py" "$@" ;;
    fetch) shift; exec python -m psp.cli.main fetch "$@" ;;
    ""|-h|--help|help) usage ;;
    *) exec "$@" ;;
esac
