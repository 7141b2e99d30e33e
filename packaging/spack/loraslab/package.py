# Spack recipe for loraslab: `spack repo add packaging/spack` (repo.yaml there names the
# namespace), then `spack install loraslab` (+cuda cuda_arch=80,90, +nccl, ~python).
# Checked with Spack 0.23.0.dev0 (audit, spec, dev-build --test=root; NOTES.md), not yet with a
# Spack 1.x.  Releases will be tagged v<project(VERSION)>; until then the one version is the
# main branch.
from spack.package import *


class Loraslab(CMakePackage, CudaPackage):
    """Merge a LoRA fine-tune whose weights are sharded across ranks and GPUs (FSDP1, FSDP2, DDP,
    offline files) into one checkpoint, each rank writing its own slice: one parallel-HDF5 file
    or a Hugging Face safetensors directory."""

    homepage = "https://github.com/loraslab/loraslab"
    git = "https://github.com/loraslab/loraslab.git"

    version("main", branch="main")

    variant("nccl", default=False, when="+cuda",
            description="Gather LoRA A over NCCL when every rank has its own GPU")
    variant("python", default=True, description="Install the Python package (ctypes binding)")

    depends_on("c", type="build")
    depends_on("cmake@3.22:", type="build")
    depends_on("pkgconfig", type="build")
    depends_on("mpi")
    depends_on("hdf5@1.10:+mpi")
    depends_on("jansson")
    depends_on("isa-l")
    depends_on("blas")
    depends_on("cmocka", type="test")
    depends_on("nccl", when="+nccl")
    depends_on("python@3.9:", when="+python", type=("build", "run"))
    extends("python", when="+python")

    def cmake_args(self):
        spec = self.spec
        args = [
            self.define("LSL_TESTS", self.run_tests),
            self.define("MPI_C_COMPILER", spec["mpi"].mpicc),
            self.define_from_variant("LSL_CUDA", "cuda"),
            self.define("LSL_NCCL_MODE", "ON" if spec.satisfies("+nccl") else "OFF"),
        ]
        if spec.satisfies("+cuda"):
            archs = spec.variants["cuda_arch"].value
            if archs and archs[0] != "none":
                args.append(self.define("CMAKE_CUDA_ARCHITECTURES", ";".join(archs)))
        return args

    @run_after("install")
    def python_package(self):
        # cmake --install puts the package in PREFIX/lib/python3/site-packages; Spack's python
        # extension layout wants it under the interpreter's site-packages directory.
        if self.spec.satisfies("~python"):
            return
        src = join_path(self.prefix.lib, "python3", "site-packages", "loraslab")
        dst = join_path(python_platlib, "loraslab")
        if src != dst:
            mkdirp(python_platlib)
            install_tree(src, dst)

    def check(self):
        # build-time tests (spack install --test=root): the library's own C and MPI tests at 1-4
        # ranks against the dependencies just resolved (the whole suite needs PyTorch and PEFT:
        # ci/test.sh)
        with working_dir(self.builder.build_directory):
            Executable("ctest")("-L", "unit|mpi", "--output-on-failure")
