#!/usr/bin/env python
"""OV2VSS in the browser: a Gradio page over the demo's code path (docs/DEMO.md).

    pip install -e ".[app]"    # or `make app`, which also sets up .venv and starts it
    python demo/app.py [--port 7860] [--host 127.0.0.1] [--config-file configs/...]

The page itself is :mod:`ov2vss.web_app`.
"""

import ov2vss  # noqa: F401  isort: skip  (first: registers everything, quiets import noise)
from ov2vss.web_app import main

if __name__ == "__main__":
    main()
