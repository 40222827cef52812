"""The committed gRPC stubs are what proto/generate.py makes from the .proto files."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location("proto_generate", ROOT / "proto" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_match_the_proto_sources(tmp_path: Path) -> None:
    fresh = _generator().generate(tmp_path)
    assert fresh, "protoc produced nothing"
    committed_dir = ROOT / "sagesched" / "v1"
    stale = [p.name for p in fresh if (committed_dir / p.name).read_bytes() != p.read_bytes()]
    missing = [p.name for p in fresh if not (committed_dir / p.name).exists()]
    assert not missing, f"stubs missing, run `python proto/generate.py`: {missing}"
    assert not stale, f"stubs are stale, run `python proto/generate.py`: {stale}"


def test_stubs_expose_the_services() -> None:
    from sagesched.v1 import predictor_pb2_grpc, router_pb2_grpc

    assert hasattr(router_pb2_grpc, "RouterServicer")
    assert hasattr(predictor_pb2_grpc, "PredictorStub")
