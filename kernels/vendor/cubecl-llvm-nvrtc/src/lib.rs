//! rtlab's stand-in for `cubecl-llvm` 0.11.3: the items `cubecl-cuda` 0.11.3 names, without LLVM.
//!
//! `cubecl-cuda` has two compilers: CUDA C++ handed to NVRTC at run time, and an LLVM backend
//! that lowers to PTX itself. It depends on `cubecl-llvm` for the second one unconditionally, and
//! that crate's build script downloads a prebuilt LLVM from GitHub (`tracel-llvm-bundler`), which
//! makes a `cuda` build impossible offline or behind a firewall. rtlab only ever runs the C++/NVRTC
//! backend (`rtlab-kernels` turns on cubecl's `cuda-cpp`, which makes it cubecl-cuda's default), so
//! the workspace's `[patch.crates-io]` swaps this crate in:
//!
//! - [`nvptx::ptx_version::PtxVersion`] is the real one (cubecl-cuda computes it on either backend);
//! - [`shared::lowered_features::restrict_features`] does nothing: cubecl-cuda calls it only when
//!   the LLVM backend is the default, and every compile then fails anyway;
//! - [`PlironCompiler::compile`] returns [`CompilationError::Generic`] saying the LLVM backend is
//!   not compiled in, so choosing `CudaBackend::Llvm` explicitly is an error, never a panic.
//!
//! Everything else only has the shape cubecl-cuda's code needs in order to type-check. When
//! cubecl-cuda is upgraded, re-check `grep -rn cubecl_llvm` in its sources against this file.

use cubecl_core::environment::backtrace::BackTrace;
use cubecl_core::ir::attributes::BufferIOAttr;
use cubecl_core::ir::nvidia::SmArch;
use cubecl_core::prelude::KernelDefinition;
use cubecl_core::{CompilationError, Compiler};
use nvptx::ptx_version::PtxVersion;

/// What `PlironCompiler::compile` answers.
pub const NOT_COMPILED_IN: &str =
    "rtlab builds cubecl-cuda with its C++/NVRTC backend only; the LLVM backend is not compiled in";

/// The NVPTX-specific parts cubecl-cuda uses.
pub mod nvptx {
    pub mod ptx_version;
}

/// The part of cubecl-llvm's `shared` module cubecl-cuda uses.
pub mod shared {
    /// Narrowing a GPU's advertised features to what the LLVM backend lowers.
    pub mod lowered_features {
        use cubecl_core::ir::DeviceProperties;

        /// The GPU target a device's features are narrowed for.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum GpuTarget {
            Nvptx,
        }

        /// Leaves `props` as they are. The real function drops the features the LLVM backend
        /// cannot lower; with no LLVM backend there is nothing to narrow for, and cubecl-cuda only
        /// calls this when that backend is the default, which rtlab's build never makes it.
        pub fn restrict_features(_props: &mut DeviceProperties, _target: GpuTarget) {}
    }
}

/// The targets the real crate lowers for; cubecl-cuda only names NVPTX.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LlvmTarget {
    Nvptx,
}

/// Stands in for cubecl-ir's AMD architecture type (behind its `amd` feature, which this crate
/// does not turn on): cubecl-cuda only ever sets [`PlironOptions::arch`] to `None`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GfxArch {}

/// The options cubecl-cuda sets, with the real field names; it fills the rest from `Default`.
#[derive(Clone, Debug, Default)]
pub struct PlironOptions {
    /// AMDGPU architecture: always `None` from cubecl-cuda.
    pub arch: Option<GfxArch>,
    /// NVPTX architecture.
    pub sm_arch: Option<SmArch>,
    /// PTX version to emit.
    pub ptx_version: Option<PtxVersion>,
    /// Pass scalars and static metadata in the kernel parameter block.
    pub grid_constants: bool,
}

/// A compiled NVPTX module, with the fields cubecl-cuda reads to load and cache it. Never built
/// here: it exists so cubecl-cuda's `CudaRepresentation::Llvm` type-checks.
#[derive(Clone, Debug)]
pub struct NvptxModule {
    /// NUL-terminated PTX assembly.
    pub ptx: Vec<core::ffi::c_char>,
    /// Kernel entry point symbol.
    pub entrypoint: String,
    /// IR for logging and cache keys.
    pub ir: String,
    /// Shared memory required per launch, in bytes.
    pub shared_memory_size: usize,
    /// Buffer access modes in binding order.
    pub io: Vec<BufferIOAttr>,
}

/// A compiled kernel. `non_exhaustive` because the real enum has other variants, and cubecl-cuda
/// matches it with a catch-all arm that would otherwise be an unreachable pattern.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum PlironArtifact {
    NvptxCode(NvptxModule),
}

impl core::fmt::Display for PlironArtifact {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PlironArtifact::NvptxCode(module) => f.write_str(&module.ir),
        }
    }
}

/// The LLVM backend's compiler; here, one that refuses every kernel.
#[derive(Clone, Debug)]
pub struct PlironCompiler {
    pub target: LlvmTarget,
}

impl Compiler for PlironCompiler {
    type Representation = PlironArtifact;
    type CompilationOptions = PlironOptions;

    fn buffer_io(repr: &Self::Representation) -> Option<Vec<BufferIOAttr>> {
        match repr {
            PlironArtifact::NvptxCode(module) => Some(module.io.clone()),
        }
    }

    fn compile(
        &mut self,
        _kernel: KernelDefinition,
        _options: &Self::CompilationOptions,
    ) -> Result<Self::Representation, CompilationError> {
        Err(CompilationError::Generic {
            reason: NOT_COMPILED_IN.to_string(),
            backtrace: BackTrace::capture(),
        })
    }

    fn extension(&self) -> &'static str {
        "ll"
    }

    fn lang_tag(&self) -> &'static str {
        "llvm"
    }
}
