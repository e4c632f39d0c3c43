#!/usr/bin/env python
"""Installs the `ov2vss` package from projects/ov2vss (detectron2 is installed separately, see README)."""
from setuptools import find_packages, setup

setup(
    name="ov2vss",
    version="0.1.0",
    description="Open-vocabulary video semantic segmentation (OV2VSS) for detectron2",
    python_requires=">=3.10",
    package_dir={"ov2vss": "projects/ov2vss"},
    packages=["ov2vss"] + ["ov2vss." + p for p in find_packages("projects/ov2vss")],
    package_data={"ov2vss": ["data/*.json", "modeling/clip_configs/*.json"]},
    install_requires=[],  # pinned in requirements.txt; tools/setup_env.sh installs them
)
