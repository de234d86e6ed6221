//! The device, its buffers, and the launch helpers every kernel module shares.
//!
//! [`Gpu`] owns a cubecl client (wgpu, or CUDA behind the `cuda` feature). [`GpuTensor`] is an
//! f32 row-major buffer with a shape; [`GpuIndices`] a u32 buffer (class indices, masks). Every
//! operation in this crate is a method on [`Gpu`] taking device buffers, so a training step can
//! stay on the device and only read back what it needs.

use cubecl::client::Client;
use cubecl::prelude::*;
use cubecl::server::Handle;

use crate::error::{shape_err, KernelError, Result};

/// Threads per cube for the element-wise kernels.
pub(crate) const ELEMWISE_CUBE: u32 = 256;
/// Threads per cube for the row-reduction kernels (one cube per row).
pub(crate) const ROW_CUBE: u32 = 256;
/// The largest cube count in one grid dimension every backend accepts.
const MAX_GRID_DIM: u32 = 65_535;

/// A compute device and its cubecl client.
#[derive(Clone)]
pub struct Gpu {
    pub(crate) client: Client,
    runtime: &'static str,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu({} / {})", self.runtime, self.client.name())
    }
}

/// An f32 row-major tensor on the device. Cloning it clones the handle: both name the same buffer.
#[derive(Clone, Debug)]
pub struct GpuTensor {
    /// The device buffer.
    pub handle: Handle,
    /// Row-major shape; the buffer holds `shape.iter().product()` f32s.
    pub shape: Vec<usize>,
}

impl GpuTensor {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The same buffer viewed with another shape of the same element count.
    pub fn reshape(&self, shape: &[usize]) -> Result<GpuTensor> {
        if shape.iter().product::<usize>() != self.len() {
            return Err(shape_err(
                "reshape",
                format!("cannot view {:?} as {shape:?}", self.shape),
            ));
        }
        Ok(GpuTensor {
            handle: self.handle.clone(),
            shape: shape.to_vec(),
        })
    }

    pub(crate) fn arg(&self) -> BufferArg {
        // SAFETY: the handle was allocated by this crate for exactly `len()` f32s.
        unsafe { BufferArg::from_raw_parts(self.handle.clone(), self.len()) }
    }

    /// The (rows, cols) of a 2-D tensor, or a shape error naming `op` and `name`.
    pub(crate) fn dims2(&self, op: &'static str, name: &str) -> Result<(usize, usize)> {
        match self.shape[..] {
            [r, c] => Ok((r, c)),
            _ => Err(shape_err(
                op,
                format!("{name} must be 2-D, got {:?}", self.shape),
            )),
        }
    }

    /// Checks the shape is exactly `want`.
    pub(crate) fn expect(&self, op: &'static str, name: &str, want: &[usize]) -> Result<()> {
        if self.shape == want {
            Ok(())
        } else {
            Err(shape_err(
                op,
                format!("{name} must be {want:?}, got {:?}", self.shape),
            ))
        }
    }
}

/// A u32 tensor on the device (class indices, row masks).
#[derive(Clone, Debug)]
pub struct GpuIndices {
    /// The device buffer.
    pub handle: Handle,
    /// Number of elements.
    pub len: usize,
}

impl GpuIndices {
    pub(crate) fn arg(&self) -> BufferArg {
        // SAFETY: allocated by this crate for exactly `len` u32s.
        unsafe { BufferArg::from_raw_parts(self.handle.clone(), self.len) }
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

/// Checks that the two libraries cudarc loads with dlopen are there: the driver's libcuda and
/// NVRTC. cudarc panics on the first call into a library it cannot load, and cubecl only guards
/// the driver (a machine without it reports zero devices, which reads as the wrong problem); NVRTC
/// is first called at the first kernel launch. The checks are the ones cubecl-cuda makes itself.
#[cfg(feature = "cuda")]
fn check_cuda_libraries() -> Result<()> {
    // SAFETY: each only tries to dlopen the library's candidate names, closing what it opens.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(KernelError::NoCudaDriver {
            detail: not_loaded("cuda"),
        });
    }
    // SAFETY: as above.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(KernelError::NoNvrtc {
            detail: not_loaded("nvrtc"),
        });
    }
    Ok(())
}

/// What was tried for library `lib`: cudarc's candidate file names (first and last) and the
/// search path. (For the driver cudarc also tries Windows' `nvcuda`, left out of the message.)
#[cfg(feature = "cuda")]
fn not_loaded(lib: &str) -> String {
    let names = cudarc::get_lib_name_candidates(lib);
    let path = std::env::var("LD_LIBRARY_PATH").unwrap_or_else(|_| "unset".into());
    format!(
        "the dynamic loader opens none of the {} names cudarc tries ({} ... {}; LD_LIBRARY_PATH \
         {path})",
        names.len(),
        names.first().map_or("", String::as_str),
        names.last().map_or("", String::as_str),
    )
}

impl Gpu {
    /// The default wgpu adapter (Vulkan on Linux; Mesa's lavapipe on a machine without a GPU).
    pub fn wgpu() -> Result<Gpu> {
        let device =
            cubecl::Device::wgpu(Default::default()).map_err(|e| KernelError::NoWgpuAdapter {
                detail: e.to_string(),
            })?;
        let client = std::panic::catch_unwind(|| device.client()).map_err(|p| {
            KernelError::RuntimeStart {
                runtime: "wgpu",
                detail: panic_message(p),
            }
        })?;
        Ok(Gpu {
            client,
            runtime: "wgpu",
        })
    }

    /// Whether this build can start CUDA here: the `cuda` feature, the driver's libcuda and NVRTC
    /// (what `device: "auto"` asks before choosing CUDA over the CPU).
    pub fn cuda_available() -> bool {
        #[cfg(feature = "cuda")]
        return check_cuda_libraries().is_ok();
        #[cfg(not(feature = "cuda"))]
        return false;
    }

    /// CUDA device `index` (kernels are compiled at run time with NVRTC).
    ///
    /// Fails with [`KernelError::NoCudaDriver`] or [`KernelError::NoNvrtc`] where a library
    /// the runtime needs does not load, rather than letting cudarc panic on its first call into it.
    #[cfg(feature = "cuda")]
    pub fn cuda(index: usize) -> Result<Gpu> {
        check_cuda_libraries()?;
        let device = cubecl::Device::cuda(index).map_err(|e| KernelError::NoCudaDevice {
            index,
            detail: e.to_string(),
        })?;
        let client = std::panic::catch_unwind(|| device.client()).map_err(|p| {
            KernelError::RuntimeStart {
                runtime: "cuda",
                detail: panic_message(p),
            }
        })?;
        Ok(Gpu {
            client,
            runtime: "cuda",
        })
    }

    /// "wgpu" or "cuda".
    pub fn runtime(&self) -> &'static str {
        self.runtime
    }

    /// The cubecl client, for callers that launch kernels of their own.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Copies `data` to a new device tensor of `shape`.
    pub fn upload(&self, data: &[f32], shape: &[usize]) -> Result<GpuTensor> {
        let want: usize = shape.iter().product();
        if data.len() != want {
            return Err(shape_err(
                "upload",
                format!("{} values do not fill shape {shape:?}", data.len()),
            ));
        }
        // An empty buffer is not a valid binding on every backend: keep at least one element.
        let handle = if data.is_empty() {
            self.client.empty(4)
        } else {
            self.client.create_from_slice(f32::as_bytes(data))
        };
        Ok(GpuTensor {
            handle,
            shape: shape.to_vec(),
        })
    }

    /// Copies `data` to a new u32 device tensor.
    pub fn upload_indices(&self, data: &[u32]) -> GpuIndices {
        let handle = if data.is_empty() {
            self.client.empty(4)
        } else {
            self.client.create_from_slice(u32::as_bytes(data))
        };
        GpuIndices {
            handle,
            len: data.len(),
        }
    }

    /// A new device tensor whose contents are unspecified.
    pub fn uninit(&self, shape: &[usize]) -> GpuTensor {
        let len: usize = shape.iter().product();
        GpuTensor {
            handle: self.client.empty(len.max(1) * 4),
            shape: shape.to_vec(),
        }
    }

    /// A new device tensor filled with `value`.
    pub fn full(&self, shape: &[usize], value: f32) -> GpuTensor {
        let t = self.uninit(shape);
        self.fill(&t, value);
        t
    }

    /// Overwrites every element of `t` with `value`.
    pub fn fill(&self, t: &GpuTensor, value: f32) {
        let len = t.len();
        if len == 0 {
            return;
        }
        fill_kernel::launch(
            &self.client,
            elemwise_count(len),
            CubeDim::new_1d(ELEMWISE_CUBE),
            t.arg(),
            value,
        );
    }

    /// Reads a device tensor back.
    pub fn download(&self, t: &GpuTensor) -> Result<Vec<f32>> {
        let bytes = self
            .client
            .read_one(t.handle.clone())
            .map_err(|e| KernelError::Device(format!("{e:?}")))?;
        let all = f32::from_bytes(&bytes);
        Ok(all[..t.len()].to_vec())
    }

    /// Waits until every launched kernel has finished (for timing).
    pub fn sync(&self) -> Result<()> {
        cubecl::future::block_on(self.client.sync())
            .map_err(|e| KernelError::Device(format!("{e:?}")))
    }
}

/// A grid of `cubes` cubes, split over two dimensions when one would exceed the backend limit.
/// Kernels index it with the linear `CUBE_POS` / `ABSOLUTE_POS` and guard the tail.
pub(crate) fn grid(cubes: usize) -> CubeCount {
    let cubes = cubes.max(1) as u32;
    if cubes <= MAX_GRID_DIM {
        CubeCount::Static(cubes, 1, 1)
    } else {
        CubeCount::Static(MAX_GRID_DIM, cubes.div_ceil(MAX_GRID_DIM), 1)
    }
}

/// The grid for an element-wise kernel over `len` elements.
pub(crate) fn elemwise_count(len: usize) -> CubeCount {
    grid(len.div_ceil(ELEMWISE_CUBE as usize))
}

/// Checks a dimension fits the u32 the kernels index with.
pub(crate) fn dim_u32(op: &'static str, len: usize) -> Result<u32> {
    u32::try_from(len).map_err(|_| shape_err(op, format!("dimension {len} exceeds u32")))
}

#[cube(launch)]
fn fill_kernel(out: &mut [f32], value: f32) {
    if ABSOLUTE_POS < out.len() {
        out[ABSOLUTE_POS] = value;
    }
}

/// Sum of `value` over the cube (`block` units, a power of two), returned to every unit.
/// `smem` must hold `block` f32s; every unit of the cube must call this.
#[cube]
pub(crate) fn block_sum(smem: &mut Shared<[f32]>, value: f32, #[comptime] block: usize) -> f32 {
    let tid = UNIT_POS as usize;
    smem[tid] = value;
    sync_cube();
    // A comptime-unrolled tree: a runtime `while stride > 0` over a comptime-initialised
    // stride fails SPIR-V/WGSL validation in cubecl 0.11.
    let log2 = comptime!(block.trailing_zeros() as usize);
    #[unroll]
    for i in 0..log2 {
        let stride = comptime!(block >> (i + 1));
        if tid < stride {
            smem[tid] += smem[tid + stride];
        }
        sync_cube();
    }
    let total = smem[0];
    sync_cube();
    total
}

/// Maximum of `value` over the cube; same contract as [`block_sum`].
#[cube]
pub(crate) fn block_max(smem: &mut Shared<[f32]>, value: f32, #[comptime] block: usize) -> f32 {
    let tid = UNIT_POS as usize;
    smem[tid] = value;
    sync_cube();
    let log2 = comptime!(block.trailing_zeros() as usize);
    #[unroll]
    for i in 0..log2 {
        let stride = comptime!(block >> (i + 1));
        if tid < stride {
            smem[tid] = f32::max(smem[tid], smem[tid + stride]);
        }
        sync_cube();
    }
    let total = smem[0];
    sync_cube();
    total
}
