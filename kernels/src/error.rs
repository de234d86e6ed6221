//! The one error type of this crate: every message says what to do about it.

use thiserror::Error;

/// What went wrong while setting up a device or running a kernel.
#[derive(Debug, Error)]
pub enum KernelError {
    /// The wgpu runtime found no adapter (no Vulkan/Metal/DX12/GL device).
    #[error(
        "no wgpu adapter found ({detail}): on Linux without a GPU install Mesa's software Vulkan \
         driver (`apt-get install mesa-vulkan-drivers libvulkan1`), or check that \
         VK_ICD_FILENAMES points at an existing ICD json"
    )]
    NoWgpuAdapter {
        /// cubecl's own account of the failure.
        detail: String,
    },
    /// The CUDA driver library does not load: no NVIDIA driver on this machine (or not on the
    /// loader's path). Checked before cubecl is asked, which would only report zero devices.
    #[error(
        "no CUDA driver (libcuda.so) found: {detail}. Install the NVIDIA driver (`nvidia-smi` \
         should then list the GPU), or use the wgpu device"
    )]
    NoCudaDriver {
        /// What was tried.
        detail: String,
    },
    /// NVRTC, which compiles the CUDA kernels at run time, does not load. Checked up front because
    /// it is first called at the first launch, where cudarc would panic.
    #[error(
        "no NVRTC (libnvrtc.so) found: {detail}. It ships with the CUDA toolkit (alone: NVIDIA's \
         cuda-nvrtc-<version> package): install it, or add its lib directory to LD_LIBRARY_PATH"
    )]
    NoNvrtc {
        /// What was tried.
        detail: String,
    },
    /// The CUDA runtime found no usable device.
    #[error(
        "no CUDA device {index} ({detail}): check `nvidia-smi` lists a GPU and that the NVIDIA \
         driver and NVRTC (libnvrtc, part of the CUDA toolkit) are installed"
    )]
    NoCudaDevice {
        /// The device index asked for.
        index: usize,
        /// cubecl's own account of the failure.
        detail: String,
    },
    /// The runtime panicked while bringing the device up.
    #[error("the {runtime} runtime failed to start: {detail}")]
    RuntimeStart {
        /// "wgpu" or "cuda".
        runtime: &'static str,
        /// The panic message.
        detail: String,
    },
    /// A tensor handed to an operation has the wrong shape.
    #[error("{op}: {what} (fix the caller's shapes)")]
    Shape {
        /// The operation that refused its inputs.
        op: &'static str,
        /// Which tensor and what was expected.
        what: String,
    },
    /// An input value is out of range (for example a class index ≥ vocab).
    #[error("{op}: {what}")]
    Value {
        /// The operation that refused its inputs.
        op: &'static str,
        /// What was wrong.
        what: String,
    },
    /// The device failed while running or reading back (out of memory, lost device, ...).
    #[error("device error: {0} (try smaller shapes, or check the driver with `vulkaninfo --summary` / `nvidia-smi`)")]
    Device(String),
}

/// Short for `Result<T, KernelError>`.
pub type Result<T> = std::result::Result<T, KernelError>;

/// Shorthand for a shape error.
pub(crate) fn shape_err(op: &'static str, what: impl Into<String>) -> KernelError {
    KernelError::Shape {
        op,
        what: what.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_to_do() {
        let e = KernelError::NoWgpuAdapter {
            detail: "none".into(),
        };
        assert!(e
            .to_string()
            .contains("apt-get install mesa-vulkan-drivers libvulkan1"));
        let e = KernelError::NoCudaDriver {
            detail: "none loads".into(),
        };
        assert!(e.to_string().starts_with(
            "no CUDA driver (libcuda.so) found: none loads. Install the NVIDIA driver"
        ));
        let e = shape_err("matmul", "c must be [2, 3], got [3, 2]");
        assert_eq!(
            e.to_string(),
            "matmul: c must be [2, 3], got [3, 2] (fix the caller's shapes)"
        );
    }
}
