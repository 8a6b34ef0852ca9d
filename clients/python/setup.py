"""Build hook: generates longctx/v1/longctx_pb2{,_grpc}.py and .pyi from the
repository's proto/longctx/v1/longctx.proto with grpcio-tools, so the stubs
always match the proto the server was built from. Everything else is in
pyproject.toml."""
import os
import pathlib

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = pathlib.Path(__file__).resolve().parent
PROTO_REL = pathlib.Path("longctx/v1/longctx.proto")


def find_proto_root() -> pathlib.Path:
    """The directory holding longctx/v1/longctx.proto: the repository's proto/
    (pip install ./clients/python), or LONGCTX_PROTO_DIR."""
    candidates = [os.environ.get("LONGCTX_PROTO_DIR"), HERE.parent.parent / "proto"]
    for c in candidates:
        if c and (pathlib.Path(c) / PROTO_REL).is_file():
            return pathlib.Path(c)
    raise RuntimeError(
        f"cannot find {PROTO_REL}: build from the longctx repository "
        "(pip install ./clients/python) or set LONGCTX_PROTO_DIR")


def generate(out_dir: pathlib.Path) -> None:
    import grpc_tools
    from grpc_tools import protoc

    root = find_proto_root()
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    args = ["grpc_tools.protoc", f"-I{root}", f"-I{well_known}", f"--python_out={out_dir}",
            f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}", str(root / PROTO_REL)]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {root / PROTO_REL}")
    (out_dir / "longctx" / "v1" / "__init__.py").write_text(
        '"""Generated from proto/longctx/v1/longctx.proto at build time."""\n')


class BuildWithStubs(build_py):
    def run(self) -> None:
        super().run()
        generate(pathlib.Path(self.build_lib))


def dependencies() -> list:
    # Generated code needs runtimes at least as new as the generator: grpcio
    # as new as grpcio-tools, protobuf as new as the protoc it bundles.
    from google.protobuf import __version__ as protobuf_version
    from grpc_tools.grpc_version import VERSION as grpc_version

    major = int(protobuf_version.split(".")[0])
    return [f"grpcio>={grpc_version}", f"protobuf>={protobuf_version},<{major + 1}"]


setup(cmdclass={"build_py": BuildWithStubs}, install_requires=dependencies())
