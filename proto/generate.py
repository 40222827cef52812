"""Regenerate the Python stubs for proto/sagesched/v1/*.proto into sagesched/v1/.

Run `python proto/generate.py` after editing a .proto; tests/test_proto_stubs.py fails while the
committed stubs differ from what this produces. Needs grpcio-tools (the `test` extra).
"""
from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc
import grpc_tools

PROTO_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PROTO_ROOT.parent


def generate(out_dir: Path) -> list[Path]:
    """Compile every .proto under proto/ into `out_dir`; returns the files written."""
    sources = sorted(PROTO_ROOT.rglob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(s.relative_to(PROTO_ROOT)) for s in sources),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed: " + " ".join(args))
    package = out_dir / "sagesched" / "v1"
    (package / "__init__.py").write_text('"""Generated gRPC stubs (proto/generate.py). Do not edit."""\n')
    return sorted(p for p in package.iterdir() if p.suffix in {".py", ".pyi"})


if __name__ == "__main__":
    written = generate(REPO_ROOT)
    sys.stdout.write("".join(f"{p.relative_to(REPO_ROOT)}\n" for p in written))
