#!/usr/bin/env python
"""Installs the `ov2vss` package from projects/ov2vss (torch and detectron2 are installed
separately, see README)."""

from setuptools import find_packages, setup

setup(
    name="ov2vss",
    version="0.1.0",
    description="Open-vocabulary video semantic segmentation (OV2VSS) for detectron2",
    python_requires=">=3.10",
    package_dir={"ov2vss": "projects/ov2vss"},
    packages=["ov2vss"] + ["ov2vss." + p for p in find_packages("projects/ov2vss")],
    package_data={"ov2vss": ["data/*.json", "modeling/clip_configs/*.json"]},
    # What the package imports at run time, torch and detectron2 aside (install those first:
    # their builds depend on the CUDA version). requirements.txt pins the tested versions.
    install_requires=[
        "numpy<2",
        "Pillow>=9",
        "opencv-python-headless<4.12",
        "open_clip_torch>=2.20",
        "ftfy",
        "regex",
        "fvcore",
        "iopath",
        "pycocotools>=2.0.2",
        "PyYAML",
        "tqdm>4.29.0",
        "av",
    ],
    # the web app, demo/app.py (docs/DEMO.md): pip install -e ".[app]"
    extras_require={"app": ["gradio>=5,<7"]},
)
