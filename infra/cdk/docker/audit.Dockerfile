# The audit function (ig3.audit): audit jobs re-scored by llama.cpp against the reference copy of the
# pinned model file. llama-cpp-python has no manylinux wheel, so it is compiled here from its sdist,
# pinned with its hash from requirements/dev.lock, portable (GGML_NATIVE=OFF: no -march=native, the
# image runs on any Graviton / x86-64 host Lambda picks). Multi-stage: compilers and build tools stay
# in the builder; the runtime stage gets the installed site-packages only.
# Built by `cdk deploy` (asset publishing), never at synth. The build context is prepared by
# infra/cdk (ig3_cdk.constructs.functions, IMAGES["audit"]): requirements.txt (core + llama-cpp-python
# + gguf, exact pins with hashes), audit-build.lock (build-only pins with hashes), ig3/, ig3_functions/,
# and the edge agent's re-scoring modules (ig3_edge/: scoring, models, backends/llama_cpp).
# The model files are not in the image: the function fetches them from the models bucket on first use
# (ig3.audit.models.CachedModelStore, /tmp).
ARG BASE=public.ecr.aws/lambda/python:3.11

FROM ${BASE} AS build
# Amazon Linux 2 (the python3.11 base): its gcc 7.3 has no std::filesystem in libstdc++, which ggml
# (ggml-backend-reg.cpp) includes; its gcc10 packages do. (dnf: should the base move to Amazon Linux
# 2023, whose gcc 11 is enough.)
RUN if command -v dnf >/dev/null; then \
        dnf install -y gcc gcc-c++ make binutils && dnf clean all \
        && ln -s /usr/bin/gcc /usr/local/bin/cc && ln -s /usr/bin/g++ /usr/local/bin/c++; \
    else \
        yum install -y gcc10 gcc10-c++ make binutils && yum clean all \
        && ln -s /usr/bin/gcc10-gcc /usr/local/bin/cc && ln -s /usr/bin/gcc10-g++ /usr/local/bin/c++; \
    fi
ENV CC=/usr/local/bin/cc CXX=/usr/local/bin/c++ \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY audit-build.lock requirements.txt /build/
# Build backend (scikit-build-core) + CMake + Ninja: pinned with hashes; --no-build-isolation below
# makes pip use exactly these instead of fetching unpinned build requirements.
RUN pip install --require-hashes --no-deps -r /build/audit-build.lock
# Everything else: wheels only (hash-checked), llama-cpp-python from its sdist (hash-checked).
# GGML_OPENMP=OFF: ggml's own thread pool (the runtime image has no libgomp); libstdc++/libgcc linked
# statically so the shared libraries need nothing newer than the base image's own runtime.
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DCMAKE_SHARED_LINKER_FLAGS='-static-libstdc++ -static-libgcc'" \
    CMAKE_BUILD_PARALLEL_LEVEL=4
RUN pip install --require-hashes --no-deps --no-build-isolation \
        --only-binary=:all: --no-binary=llama-cpp-python \
        --target /opt/site -r /build/requirements.txt
# Debug sections of our own llama.cpp build (not of the auditwheel-repaired wheels: left as shipped).
RUN find /opt/site/llama_cpp -name '*.so*' -type f -exec strip --strip-debug {} +

FROM ${BASE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    IG3_AUDIT_MODELS_CACHE_DIR=/tmp/ig3-models
# Ahead of the runtime's own boto3 on sys.path: the pinned versions the tests ran against.
COPY --from=build /opt/site ${LAMBDA_TASK_ROOT}
COPY ig3 ${LAMBDA_TASK_ROOT}/ig3
COPY ig3_functions ${LAMBDA_TASK_ROOT}/ig3_functions
COPY ig3_edge ${LAMBDA_TASK_ROOT}/ig3_edge
# Fails the build (not the first audit) if the compiled library cannot load in the runtime image.
RUN cd ${LAMBDA_TASK_ROOT} && python -c "import llama_cpp, ig3_edge.scoring, ig3.audit.rescorer; llama_cpp.llama_backend_init()" \
    && python -m compileall -q ig3 ig3_functions ig3_edge
CMD ["ig3_functions.audit.handler.handler"]
