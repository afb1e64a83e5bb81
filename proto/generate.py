"""Generate Peregrine's Python gRPC code from the .proto files (run by CMake at build time).

The generated modules register their descriptors in a private descriptor pool, not protobuf's default
pool. The Open Inference Protocol's messages live in package ``inference``, as they must for wire
compatibility, and so do tritonclient's: with one shared pool, a process that imports both (a test, a
user's application, a benchmark) fails with "duplicate symbol 'inference.DataType'".

Usage: python proto/generate.py OUT_DIR PROTO...
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from grpc_tools import protoc

PACKAGE = "peregrine/proto"
POOL_MODULE = '''"""The descriptor pool of Peregrine's generated protocol code (see proto/generate.py)."""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
'''


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    protos = [Path(p) for p in argv[1:]]
    src = protos[0].parent
    pkg = out / PACKAGE
    pkg.mkdir(parents=True, exist_ok=True)
    args = ["grpc_tools.protoc", f"-I{PACKAGE}={src}", f"--python_out={out}", f"--pyi_out={out}",
            f"--grpc_python_out={out}", *map(str, protos)]
    if protoc.main(args) != 0:
        print("protoc failed", file=sys.stderr)
        return 1
    for path in pkg.glob("*_pb2.py"):
        text = path.read_text()
        text, n = re.subn(r"_descriptor_pool\.Default\(\)", "_pool.POOL", text)
        if n != 1:
            print(f"{path}: expected one use of the default pool, found {n}", file=sys.stderr)
            return 1
        text = text.replace("from google.protobuf import descriptor_pool as _descriptor_pool\n",
                            "from google.protobuf import descriptor_pool as _descriptor_pool\n"
                            "from peregrine.proto import _pool\n", 1)
        path.write_text(text)
    (pkg / "_pool.py").write_text(POOL_MODULE)
    (pkg / "__init__.py").write_text('"""Generated protocol code (built from proto/, never committed)."""\n')
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
