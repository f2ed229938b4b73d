//! DICOMweb (PS3.18) under `/dicomweb`:
//!
//! - [`stow`]: `POST /studies[/{study}]`, multipart/related of Part 10
//!   instances, stored by the same durable ingest as C-STORE.
//! - [`qido`]: `GET /studies`, `/series`, `/instances` and their nested
//!   forms; searches received instances and the results Vigie created.
//! - [`wado`]: `GET /studies/{study}[/series/{series}[/instances/{sop}]]`
//!   and `/metadata`.
//!
//! Not implemented: bulk data and frame retrieval, rendered resources,
//! the JSON/XML forms of STOW-RS (metadata plus bulk data), UPS-RS.

pub mod qido;
pub mod stow;
pub mod wado;

/// DICOM JSON media type.
pub const DICOM_JSON: &str = "application/dicom+json";
