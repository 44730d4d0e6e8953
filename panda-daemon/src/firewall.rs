//! CONTRACT STUB — the nftables table.
use crate::config::Prefix;
pub fn install(_table: &str, _prefix: &Prefix) -> anyhow::Result<()> { todo!() }
pub fn remove(_table: &str) -> anyhow::Result<()> { todo!() }
pub fn exists(_table: &str) -> anyhow::Result<bool> { todo!() }
