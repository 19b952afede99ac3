# The any2any deployment on NVIDIA's Triton container: release 24.12 (Triton 2.53, CUDA 12.6,
# Ubuntu 24.04 with Python 3.12; Python, ONNX Runtime and TensorRT backends). The image holds the
# runtime and the Python models' code; the model repository and the engines are volumes, so one
# image serves any build (docs/deploy.md).
FROM nvcr.io/nvidia/tritonserver:24.12-py3

# The Python backend runs the container's own python3, so the packages go there, pinned.
ENV PIP_BREAK_SYSTEM_PACKAGES=1 \
    PYTHONPATH=/opt/any2any
WORKDIR /opt/any2any
COPY constraints.txt deploy/requirements-server.txt ./
RUN python3 -m pip install --no-cache-dir -c constraints.txt -r requirements-server.txt
COPY runtime/ runtime/
COPY triton_repo/ triton_repo/

# not root: any non-root uid reads the mounted volumes and writes /tmp
USER 1000
# HTTP (KServe v2 and the health endpoints), gRPC, Prometheus metrics
EXPOSE 8000 8001 8002
ENTRYPOINT ["tritonserver"]
CMD ["--model-repository=/srv/any2any/triton_models"]
