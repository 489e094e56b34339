#!/usr/bin/env bash
# The wheels bench/gpu_evidence.sh needs on the lent GPU machine, which has no package registry: Python 3.12 with
# torch, torchvision, numpy, scipy, statsmodels, scikit-image, h5py, OpenCV (without its contrib modules), typer,
# rich, pyyaml and matplotlib already (/work/.library/device/KINDS.md), but not pydantic (and its three helpers),
# pycocotools, or OpenCV's contrib build (cv2.ximgproc: the selective-search boxes of the D3SSL study). Downloads them
# for CPython 3.12 manylinux x86-64 into .whl/ (git-ignored), one version each: the versions this machine's
# environment uses, except OpenCV: 4.10.0.84, whose wheel is 56 MB where 5.x's is 73 MB, over the 64 MiB that may
# travel to the GPU machine with the working tree (about 59 MB of wheels + 5 MB of repository). gpu_evidence.sh
# installs them with `pip install --no-index --target`. selectivesearch and submitit (the reference box backend and
# the Slurm executor) are not needed there and are left out.
#   bench/make_wheelhouse.sh [DIR]      (default .whl in the repository root; PYTHON=... picks the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-.whl}"
python="${PYTHON:-python3}"
packages=(pydantic pydantic-core annotated-types typing-inspection typing-extensions pycocotools)
pins=(opencv-contrib-python-headless==4.10.0.84)
for name in "${packages[@]}"; do
  version="$("$python" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")" || {
    echo "make_wheelhouse: $name is not installed in $python's environment (install the project first)" >&2; exit 2; }
  pins+=("$name==$version")
done
mkdir -p "$dest"
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
           manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$tag")
done
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$dest" "${pins[@]}"
echo "wheelhouse $dest: ${pins[*]}"
du -sh "$dest"
