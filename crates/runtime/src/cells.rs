//! Where the runtime gets its cells: any tier behind one trait.
//!
//! The runner describes a cell completely ([`CellSpec`]: id, workspace and mode, mounts,
//! limits, Landlock scopes, egress socket) and asks a [`Cells`] for one. It then drives it only
//! through [`warren_cell::Cell`]: exec (the agent's tools), terminate (cancel, timeout, lease
//! loss, shutdown), its copy-on-write layer (diff), drop (teardown). So the scheduling,
//! cancel, timeout, resume and approval logic do not know the tier, and are tested without
//! root over [`crate::fake::FakeCells`].

use std::sync::Arc;

use warren_cell::{Cell, CellError, CellSpec, JailProgram, ProcessCell};

/// Starts cells of one tier.
pub trait Cells: Send + Sync {
    /// The tier's name (`process`, `fake`, …), for diagnostics.
    fn tier(&self) -> &'static str;
    /// Start a cell as `spec` describes, or refuse naming what is missing. Blocking.
    fn start(&self, spec: &CellSpec) -> Result<Arc<dyn Cell>, CellError>;
}

/// The process tier: namespaces, Landlock, seccomp, cgroups, built by Warren's own jail.
pub struct ProcessCells {
    /// The jail binary and how to run it.
    pub jail: JailProgram,
}

impl Cells for ProcessCells {
    fn tier(&self) -> &'static str {
        "process"
    }

    fn start(&self, spec: &CellSpec) -> Result<Arc<dyn Cell>, CellError> {
        Ok(Arc::new(ProcessCell::start(spec, &self.jail)?))
    }
}
