//! The catalog: customers, contracts, SKUs and versioned rate cards — pricing as configuration.
//!
//! A catalog is loaded from a directory of TOML files (see [`load`] and `docs/catalog.md`). In
//! memory, every entity has a dense index (`CustomerIdx`, `ContractIdx`, ...) so the dataflow
//! carries small integers, and names are resolved back only when rows are written.

mod load;
mod model;

pub use load::{collect_toml, from_toml_str, load_dir, CatalogError, CatalogErrors};
pub use model::*;
