#!/usr/bin/env bash
# Create or update the project's virtual environment: torch and torchvision from the pinned
# releases (`pip install torch==2.14.1 torchvision==0.29.1` takes them from local disk on our
# machines), then imrec itself in editable mode with its test tools.
set -euo pipefail
venv=${1:-.venv}
python=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
fi
"$venv/bin/pip" install -q "torch==2.14.1" "torchvision==0.29.1"
"$venv/bin/pip" install -q -e ".[dev]"
