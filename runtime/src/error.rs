//! Typed errors of the runtime. Every variant names what went wrong in words a user can act on.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("no GPU adapter found for backend {0} (is a Vulkan/GL driver installed? on Debian: mesa-vulkan-drivers)")]
    NoAdapter(String),
    #[error("unknown backend '{0}' (expected auto, vulkan, gl, metal, dx12 or webgpu)")]
    UnknownBackend(String),
    /// The adapter's limits are below what the kernels need ([`crate::requirements`]).
    #[error("the GPU adapter {adapter} cannot run Kestrel's kernels: it offers {shortfalls}")]
    AdapterTooSmall { adapter: String, shortfalls: String },
    #[error("could not open the GPU device: {0}")]
    RequestDevice(String),
    #[error("GPU device lost: {0}")]
    DeviceLost(String),
    #[error("GPU out of memory: {0}")]
    OutOfMemory(String),
    #[error("GPU validation error in {context}: {message}")]
    Validation { context: String, message: String },
    #[error("limit exceeded: {what} needs {needed} but the adapter allows {allowed}")]
    LimitExceeded {
        what: String,
        needed: u64,
        allowed: u64,
    },
    #[error("shape mismatch in {context}: expected {expected:?}, got {got:?}")]
    ShapeMismatch {
        context: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("graph error: {0}")]
    Graph(String),
    #[error("buffer readback failed: {0}")]
    Readback(String),
    #[error("input out of range: {0}")]
    InputOutOfRange(String),
    /// An option the user chose needs an adapter feature this adapter lacks.
    #[error("{option} needs the adapter feature {feature}, which {adapter} does not offer")]
    MissingFeature {
        option: String,
        feature: &'static str,
        adapter: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
