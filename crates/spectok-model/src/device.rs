//! Device and dtype selection by name.

use candle_core::{DType, Device};

use crate::error::{Error, Result};

/// Parses `cpu`, `cuda` (GPU 0) or `cuda:N`. CUDA needs the crate's
/// `cuda` feature; without it a CUDA name is an error saying so.
pub fn device(name: &str) -> Result<Device> {
    let err = |message: String| Error::Device {
        name: name.to_string(),
        message,
    };
    let lower = name.trim().to_ascii_lowercase();
    if lower == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match lower.as_str() {
        "cuda" => 0,
        s => match s.strip_prefix("cuda:") {
            Some(n) => n
                .parse::<usize>()
                .map_err(|_| err(format!("`{n}` is not a GPU number")))?,
            None => return Err(err("expected `cpu`, `cuda` or `cuda:N`".into())),
        },
    };
    cuda_device(ordinal).map_err(err)
}

#[cfg(feature = "cuda")]
fn cuda_device(ordinal: usize) -> std::result::Result<Device, String> {
    Device::new_cuda(ordinal).map_err(|e| e.to_string())
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(_ordinal: usize) -> std::result::Result<Device, String> {
    Err("spectok-model was built without the `cuda` feature".into())
}

/// Parses a dtype name: `f32`, `bf16` or `f16`.
pub fn dtype(name: &str) -> Result<DType> {
    match name.trim().to_ascii_lowercase().as_str() {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        other => Err(Error::Device {
            name: other.to_string(),
            message: "expected dtype `f32`, `bf16` or `f16`".into(),
        }),
    }
}

/// The default dtype for a device: f32 on CPU, bf16 on GPU.
pub fn default_dtype(device: &Device) -> DType {
    if device.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    }
}
