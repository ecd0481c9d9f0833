"""facerender: differentiable rendering of 3D morphable face models and face reenactment.

Install with ``pip install torch==2.13.0`` first (CPU wheel), then ``pip install -e ".[all]"``.
"""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

extras = {
    "video": ["av>=12"],
    # per-step phone features for audio-driven methods (the wheel ships the US-English acoustic model)
    "speech": ["pocketsphinx>=5.1"],
    "landmarks": ["dlib-bin>=19.24", "face-recognition-models>=0.3.0"],
    # pdoc: the API reference built from the docstrings (docs/build_api.py; tests/test_docs.py builds it)
    "dev": ["pytest>=7", "pytest-timeout", "matplotlib>=3.7", "pdoc>=14"],
    # training logs for TensorBoard (neural_renderers' trainer writes events when it is installed)
    "train": ["tensorboard>=2.14"],
    # Basel Face Model 2017 (.h5) and MATLAB v7.3 files (morphable_models.bfm)
    "models": ["h5py>=3"],
    # Optional backends: NOT part of "all" (they compile, need CUDA or special install steps).
    "pytorch3d": ["pytorch3d"],
    "nvdiffrast": ["nvdiffrast"],
    "mediapipe": ["mediapipe==0.10.21"],
}
extras["all"] = sorted(set(extras["video"] + extras["landmarks"] + extras["dev"] + extras["speech"]
                           + extras["train"] + extras["models"]))

setup(
    name="facerender",
    version="0.1.0",
    description="Differentiable rendering of 3D morphable face models, fitting, tracking and face reenactment",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["morphable_models*", "facerender*", "neural_renderers*"]),
    package_data={"facerender": ["assets/*", "assets/**/*"], "morphable_models": ["data/*"]},
    include_package_data=True,
    install_requires=[
        # torch is pinned by the README commands (install torch==2.13.0 first); any 2.x >= 2.1 works.
        "torch>=2.1",
        "numpy>=1.23",
        "scipy>=1.9",
        "pillow>=9",
        "tqdm>=4.60",
        "kornia>=0.7",
        # caps NumPy's / SciPy's OpenBLAS at one thread inside the small dense kernels (fitting/solver_np.py)
        "threadpoolctl>=3.1",
    ],
    extras_require=extras,
    entry_points={"console_scripts": ["facerender=facerender.cli:main"]},
    classifiers=[
        "License :: OSI Approved :: MIT License",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
