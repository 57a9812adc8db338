//! Dense indices of catalog entities: the dataflow carries these small integers, and names are
//! resolved back (through the catalog) only when rows are written.

use serde::{Deserialize, Serialize};

macro_rules! index_type {
    ($name:ident) => {
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        pub struct $name(pub u32);
        impl $name {
            pub fn ix(self) -> usize {
                self.0 as usize
            }
        }
    };
}

index_type!(CustomerIdx);
index_type!(ContractIdx);
index_type!(SkuIdx);
index_type!(RateCardIdx);
index_type!(PriceIdx);
index_type!(RegionIdx);
index_type!(TaxIdx);

impl SkuIdx {
    /// Stands for "the whole invoice" on lines that belong to no single SKU (subscription fees,
    /// invoice-wide discounts, commitments, caps, tax).
    pub const INVOICE: SkuIdx = SkuIdx(u32::MAX);
}
