#!/usr/bin/env bash
# Creates (or refreshes) the project environment in .venv; idempotent and fast when already done.
#  - Python packages come from requirements.txt.
#  - detectron2: left alone when already importable (e.g. built from source with CUDA ops);
#    otherwise the pure-Python part of upstream detectron2 (sal-detectron2 0.7.2, built for
#    Python 3.10 but pure Python) is installed into .venv/detectron2-py and put on the path
#    with a .pth file. Its compiled _C ops (deformable conv, rotated boxes) are not needed here.
#  - the project itself is installed in editable mode (package `ov2vss` from projects/ov2vss),
#    with the web app's extra (its packages are pinned in requirements.txt, as the tests use it).
#  - Debian's Chromium for the web app's browser test, where it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${OV2VSS_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

# The browser of the web app's test (tests/test_app.py): Debian's Chromium, installed where it
# is missing and apt-get can be used (as root, or with password-less sudo); without it that
# test fails and says so.
if [ ! -x "${OV2VSS_CHROMIUM:-/usr/bin/chromium}" ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
  echo "[setup] installing Chromium for the browser test (apt-get install chromium)"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q chromium >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q chromium >/dev/null 2>&1; } \
    || echo "[setup] warning: could not install Chromium; tests/test_app.py will fail saying so"
fi

stamp_key=$(cat requirements.txt setup.py tools/setup_env.sh | sha256sum | cut -c1-16)
STAMP=$VENV/.ov2vss-setup-$stamp_key
if [ -f "$STAMP" ] && "$VENV/bin/python" -c "import detectron2, ov2vss" >/dev/null 2>&1; then
  exit 0
fi

echo "[setup] preparing environment in $VENV"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
VPY=$VENV/bin/python
"$VPY" -m pip install --quiet --upgrade "pip>=23" wheel "setuptools>=64"
"$VPY" -m pip install --quiet -r requirements.txt

if "$VPY" -c "import detectron2" >/dev/null 2>&1 && [ ! -f "$VENV/detectron2-py/.ov2vss-managed" ]; then
  echo "[setup] detectron2 already importable; leaving it alone"
else
  D2=$VENV/detectron2-py
  if [ ! -f "$D2/.ov2vss-managed" ]; then
    echo "[setup] installing detectron2 (pure-Python part of sal-detectron2==0.7.2)"
    rm -rf "$D2"
    "$VPY" -m pip install --quiet --no-deps --only-binary=:all: --python-version 3.10 \
      --target "$D2" sal-detectron2==0.7.2
    rm -rf "$D2/tools" "$D2"/detectron2/_C*.so "$D2/bin"
    touch "$D2/.ov2vss-managed"
  fi
  SITE=$("$VPY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  echo "$D2" > "$SITE/ov2vss-detectron2.pth"
fi

"$VPY" -m pip install --quiet --no-deps --no-build-isolation -e ".[app]"
"$VPY" -c "import detectron2, ov2vss; print('[setup] detectron2', detectron2.__version__, '| ov2vss ready')"
rm -f "$VENV"/.ov2vss-setup-*
touch "$STAMP"
