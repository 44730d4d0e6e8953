//! pandad's configuration file (TOML): parsing and validation.
//! CONTRACT STUB — to be implemented (see the field docs; names are fixed).
use std::{net::Ipv6Addr, path::{Path, PathBuf}};

/// An IPv6 prefix with its host bits zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    network: Ipv6Addr,
    len: u8,
}

impl Prefix {
    pub fn network(&self) -> Ipv6Addr { self.network }
    pub fn len(&self) -> u8 { self.len }
    /// First address of the prefix after the network address (e.g. fd00:1009:bacc::1).
    pub fn anchor(&self) -> Ipv6Addr { todo!() }
    pub fn contains(&self, _addr: &Ipv6Addr) -> bool { todo!() }
}

/// `mechanism` key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MechanismChoice { Auto, Freebind, Guard }

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub prefix: Prefix,
    pub mechanism: MechanismChoice,
    /// None: the root of the cgroup2 hierarchy.
    pub cgroup: Option<PathBuf>,
    /// The API socket `panda` talks to.
    pub socket: PathBuf,
    /// Where pandad records what it changed, so a crashed instance can be undone.
    pub state_dir: PathBuf,
    /// Name of the nftables table (family inet).
    pub table: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Todo(String),
}

impl Config {
    pub fn load(_path: &Path) -> Result<Config, ConfigError> { todo!() }
    pub fn from_toml_str(_s: &str) -> Result<Config, ConfigError> { todo!() }
}

impl Default for Config {
    fn default() -> Self { todo!() }
}
