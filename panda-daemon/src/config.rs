//! pandad's configuration file (TOML): parsing and validation.
//!
//! Every key is optional; an empty file (or [`Config::default`]) gives the
//! stock setup: `fd00:1009:bacc::/48` on `lo`, mechanism chosen at start-up.
//!
//! ```toml
//! prefix    = "fd00:1009:bacc::/48"   # IPv6 prefix, length 8..=127
//! mechanism = "auto"                  # "auto" | "freebind" | "guard"
//! # cgroup  = "/..."                 # absolute path; absent: the cgroup2 root
//! socket    = "/run/panda/pandad.sock"
//! state_dir = "/run/panda"
//! table     = "panda"                 # nftables table (family inet)
//! bpffs     = "/sys/fs/bpf"           # where the BPF links are pinned
//! # socket_group   = "panda"          # group allowed to use the API socket
//! # metrics_listen = "127.0.0.1:9464" # Prometheus endpoint; absent: off
//! lease_mode = "open"                 # "open" | "leased-only"
//! # exec_cgroup = "/sys/fs/cgroup/panda.exec" # where `panda exec` makes cgroups
//! ```
//!
//! Validation happens here, once, so that the rest of the daemon can trust a
//! [`Config`]: a bad value is reported as a [`ConfigError`] naming the key
//! and the reason before pandad touches any kernel state.
use std::{
    fmt,
    net::Ipv6Addr,
    path::{Path, PathBuf},
    str::FromStr,
};

use serde::Deserialize;

/// Default `prefix`: a ULA /48 that reads "fd00:10:09 back".
pub const DEFAULT_PREFIX: Prefix = Prefix {
    network: Ipv6Addr::new(0xfd00, 0x1009, 0xbacc, 0, 0, 0, 0, 0),
    len: 48,
};
/// Default `socket`: where `panda` looks for the daemon unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/panda/pandad.sock";
/// Default `state_dir`: tmpfs, so stale state cannot survive a reboot (the
/// kernel state it describes does not either).
pub const DEFAULT_STATE_DIR: &str = "/run/panda";
/// Default `table`: the name of the nftables table pandad owns.
pub const DEFAULT_TABLE: &str = "panda";
/// Default `bpffs`: the conventional bpffs mount point.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

/// Shortest accepted prefix length. Anything shorter would swallow large
/// parts of the address space (and the kernel's own special ranges).
pub const MIN_PREFIX_LEN: u8 = 8;
/// Longest accepted prefix length: a /128 has no room for a network address
/// *and* an anchor.
pub const MAX_PREFIX_LEN: u8 = 127;

/// Longest path a unix socket can bind to (`sun_path` is 108 bytes including
/// the terminating NUL); checked up front so a long `socket` fails at config
/// time instead of with an obscure bind error.
const MAX_SOCKET_PATH: usize = 107;

/// Ranges the loopback subnet must stay clear of: addresses with a fixed
/// meaning to the kernel that panda's route and BPF hooks would break.
const RESERVED: &[(Ipv6Addr, u8, &str, &str)] = &[
    (Ipv6Addr::LOCALHOST, 128, "::1/128", "the loopback address"),
    (
        Ipv6Addr::UNSPECIFIED,
        128,
        "::/128",
        "the unspecified address",
    ),
    (
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
        10,
        "fe80::/10",
        "link-local addresses",
    ),
    (
        Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
        8,
        "ff00::/8",
        "multicast addresses",
    ),
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0),
        96,
        // Spelt out: Ipv6Addr's Display would write ::ffff:0.0.0.0.
        "::ffff:0:0/96",
        "IPv4-mapped addresses",
    ),
];

/// The config keys, in the order the documentation lists them; used to tell
/// the user what a misspelt key could have been.
const KEYS: &[&str] = &[
    "prefix",
    "mechanism",
    "cgroup",
    "socket",
    "state_dir",
    "table",
    "bpffs",
    "socket_group",
    "metrics_listen",
    "lease_mode",
    "exec_cgroup",
];

/// Network mask of a prefix of `len` bits, as a host-order `u128`.
fn mask(len: u8) -> u128 {
    match len {
        0 => 0,
        l if l >= 128 => u128::MAX,
        l => u128::MAX << (128 - u32::from(l)),
    }
}

/// Whether `addr` lies in `network/len` (no validation of either).
fn raw_contains(network: Ipv6Addr, len: u8, addr: Ipv6Addr) -> bool {
    let m = mask(len);
    u128::from(addr) & m == u128::from(network) & m
}

/// An IPv6 prefix with its host bits zero.
///
/// Exists so that "the loopback subnet" is one validated value: every
/// constructor ([`FromStr`], [`Prefix::new`], deserialization) enforces the
/// length bounds, zero host bits and no overlap with reserved ranges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Prefix {
    network: Ipv6Addr,
    len: u8,
}

/// Why a string or (address, length) pair is not an acceptable loopback
/// prefix. Its Display is the reason only; [`ConfigError`] adds the key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// Not `IPV6ADDR/LEN` at all (including IPv4 prefixes).
    #[error("{0:?} is not an IPv6 prefix (expected ADDRESS/LENGTH, e.g. \"fd00:1009:bacc::/48\")")]
    NotIpv6(String),
    /// Length outside [`MIN_PREFIX_LEN`]..=[`MAX_PREFIX_LEN`].
    #[error(
        "{input:?}: prefix length {len} is out of range {MIN_PREFIX_LEN}..={MAX_PREFIX_LEN} \
         (it must leave room for the network address and an anchor address)"
    )]
    Length { input: String, len: u32 },
    /// Bits set below the prefix length.
    #[error("{input:?} has host bits set; did you mean \"{suggestion}\"?")]
    HostBits { input: String, suggestion: String },
    /// Overlaps (contains or lies in) a range the kernel treats specially.
    #[error("{prefix} overlaps {reserved} ({what})")]
    Overlap {
        prefix: String,
        reserved: String,
        what: &'static str,
    },
}

impl Prefix {
    /// Validates `network/len` (see [`Prefix`] for the rules).
    pub fn new(network: Ipv6Addr, len: u8) -> Result<Prefix, PrefixError> {
        Self::validate(network, u32::from(len), &format!("{network}/{len}"))
    }

    fn validate(network: Ipv6Addr, len: u32, input: &str) -> Result<Prefix, PrefixError> {
        let len = match u8::try_from(len) {
            Ok(l) if (MIN_PREFIX_LEN..=MAX_PREFIX_LEN).contains(&l) => l,
            _ => {
                return Err(PrefixError::Length {
                    input: input.to_owned(),
                    len,
                })
            }
        };
        let bits = u128::from(network);
        let net = bits & mask(len);
        if net != bits {
            return Err(PrefixError::HostBits {
                input: input.to_owned(),
                suggestion: format!("{}/{len}", Ipv6Addr::from(net)),
            });
        }
        for &(reserved, rlen, spelt, what) in RESERVED {
            // Overlap: either prefix contains the other.
            if raw_contains(network, len, reserved) || raw_contains(reserved, rlen, network) {
                return Err(PrefixError::Overlap {
                    prefix: format!("{network}/{len}"),
                    reserved: spelt.to_owned(),
                    what,
                });
            }
        }
        Ok(Prefix { network, len })
    }

    /// The network address (host bits zero), e.g. `fd00:1009:bacc::`.
    pub fn network(&self) -> Ipv6Addr {
        self.network
    }

    /// The prefix length in bits, [`MIN_PREFIX_LEN`]..=[`MAX_PREFIX_LEN`].
    #[allow(clippy::len_without_is_empty)] // a prefix length, not a collection
    pub fn len(&self) -> u8 {
        self.len
    }

    /// First address of the prefix after the network address (e.g.
    /// fd00:1009:bacc::1). pandad configures it on `lo` as the `src` of the
    /// local route. Never overflows: the length is at most 127, so the
    /// network address has a zero last bit.
    pub fn anchor(&self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.network) | 1)
    }

    /// Whether `addr` belongs to the loopback subnet.
    pub fn contains(&self, addr: &Ipv6Addr) -> bool {
        raw_contains(self.network, self.len, *addr)
    }
}

impl fmt::Display for Prefix {
    /// `ADDR/LEN`, the form `ip` and `nft` accept.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.len)
    }
}

impl FromStr for Prefix {
    type Err = PrefixError;

    /// Parses and validates `ADDR/LEN`.
    fn from_str(s: &str) -> Result<Prefix, PrefixError> {
        let not_v6 = || PrefixError::NotIpv6(s.to_owned());
        let (addr, len) = s.split_once('/').ok_or_else(not_v6)?;
        let network: Ipv6Addr = addr.parse().map_err(|_| not_v6())?;
        if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(not_v6());
        }
        // Digits only, so the one failure left is overflow: report it as a
        // length out of range.
        let len: u32 = len.parse().unwrap_or(u32::MAX);
        Prefix::validate(network, len, s)
    }
}

impl serde::Serialize for Prefix {
    /// As its `ADDR/LEN` string, so state files and API replies stay readable.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Prefix {
    /// From its `ADDR/LEN` string, with full validation.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Prefix, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `mechanism` key: how binding to a prefix address is made to succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MechanismChoice {
    /// Let pandad probe the kernel and pick.
    Auto,
    /// Set `IP_FREEBIND` on sockets binding into the prefix (BPF).
    Freebind,
    /// `ip_nonlocal_bind=1` plus a BPF guard that keeps it to the prefix.
    Guard,
}

impl MechanismChoice {
    /// The config-file spelling, also used in logs and `panda status`.
    pub fn as_str(&self) -> &'static str {
        match self {
            MechanismChoice::Auto => "auto",
            MechanismChoice::Freebind => "freebind",
            MechanismChoice::Guard => "guard",
        }
    }
}

impl fmt::Display for MechanismChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MechanismChoice {
    type Err = String;

    /// Parses the config-file spelling; the error is the reason text.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(MechanismChoice::Auto),
            "freebind" => Ok(MechanismChoice::Freebind),
            "guard" => Ok(MechanismChoice::Guard),
            _ => Err(format!(
                "{s:?} is not a mechanism (expected \"auto\", \"freebind\" or \"guard\")"
            )),
        }
    }
}

/// `lease_mode` key: who may bind prefix addresses that nobody leased.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LeaseMode {
    /// Any process outside a leased cgroup (a developer machine's default:
    /// leases are opt-in).
    #[default]
    Open,
    /// Nobody: the prefix is bindable only through a lease.
    LeasedOnly,
}

impl LeaseMode {
    /// The config-file spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            LeaseMode::Open => "open",
            LeaseMode::LeasedOnly => "leased-only",
        }
    }

    /// The value bind6 reads from its CONFIG map.
    pub fn as_bpf(&self) -> u32 {
        match self {
            LeaseMode::Open => panda_common::lease::OPEN,
            LeaseMode::LeasedOnly => panda_common::lease::LEASED_ONLY,
        }
    }
}

impl FromStr for LeaseMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "open" => Ok(LeaseMode::Open),
            "leased-only" => Ok(LeaseMode::LeasedOnly),
            _ => Err(format!(
                "{s:?} is not a lease mode (expected \"open\" or \"leased-only\")"
            )),
        }
    }
}

/// pandad's validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The loopback subnet.
    pub prefix: Prefix,
    /// Which bind mechanism to use (`auto`: decided at start-up).
    pub mechanism: MechanismChoice,
    /// Absolute path of the cgroup the BPF hooks attach to.
    /// None: the root of the cgroup2 hierarchy.
    pub cgroup: Option<PathBuf>,
    /// The API socket `panda` talks to.
    pub socket: PathBuf,
    /// Where pandad records what it changed, so a crashed instance can be undone.
    pub state_dir: PathBuf,
    /// Name of the nftables table (family inet).
    pub table: String,
    /// Mount point of the bpffs the BPF links are pinned on, so that they
    /// outlive pandad (restart, crash) and never leave a bind unguarded.
    pub bpffs: PathBuf,
    /// Group (name or number) that may use the API socket besides root.
    /// None: root's group.
    pub socket_group: Option<String>,
    /// Serve Prometheus metrics over HTTP on this loopback address.
    /// None (the default): metrics only through the API socket.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Whether unleased processes may bind unleased prefix addresses.
    pub lease_mode: LeaseMode,
    /// The cgroup under which `panda exec` creates one cgroup per command.
    /// None: `panda.exec` below the cgroup the hooks attach to.
    pub exec_cgroup: Option<PathBuf>,
}

/// Why a config file was rejected. Every variant's Display says where the
/// problem is (the key, or the file and line) and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML.
    #[error("config file {origin} line {line}: {message}")]
    Syntax {
        /// The file name, or `<string>` for [`Config::from_toml_str`].
        origin: String,
        line: usize,
        message: String,
    },
    /// A key pandad does not know (usually a typo).
    #[error("unknown config key `{key}` (known keys: {})", KEYS.join(", "))]
    UnknownKey { key: String },
    /// A known key with an unacceptable value.
    #[error("config key `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

impl ConfigError {
    /// The offending key, if the error is about one (for tests and callers
    /// that want to point at it).
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::UnknownKey { key } => Some(key),
            ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Read { .. } | ConfigError::Syntax { .. } => None,
        }
    }
}

/// The file as serde sees it. Values stay untyped so that a wrong type is
/// reported against its key by [`Config::from_raw`]; serde only rejects
/// unknown keys.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    prefix: Option<toml::Value>,
    mechanism: Option<toml::Value>,
    cgroup: Option<toml::Value>,
    socket: Option<toml::Value>,
    state_dir: Option<toml::Value>,
    table: Option<toml::Value>,
    bpffs: Option<toml::Value>,
    socket_group: Option<toml::Value>,
    metrics_listen: Option<toml::Value>,
    lease_mode: Option<toml::Value>,
    exec_cgroup: Option<toml::Value>,
}

/// Extracts a string value or says which key has the wrong type.
fn string_of(key: &'static str, v: &toml::Value) -> Result<String, ConfigError> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        other => Err(ConfigError::Invalid {
            key,
            reason: format!("expected a string, found {}", other.type_str()),
        }),
    }
}

/// An absolute path, as required for every path key (pandad's working
/// directory is not something a config should depend on).
fn absolute_path(key: &'static str, v: &toml::Value) -> Result<PathBuf, ConfigError> {
    let s = string_of(key, v)?;
    let p = PathBuf::from(&s);
    if !p.is_absolute() {
        return Err(ConfigError::Invalid {
            key,
            reason: format!("{s:?} is not an absolute path"),
        });
    }
    Ok(p)
}

/// Whether `name` is an acceptable nftables table name for panda:
/// `[A-Za-z][A-Za-z0-9_]{0,31}` (a plain nft identifier that needs no
/// quoting and fits the kernel's name limit).
pub fn valid_table_name(name: &str) -> bool {
    let b = name.as_bytes();
    (1..=32).contains(&b.len())
        && b[0].is_ascii_alphabetic()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

impl Config {
    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Validates a config given as TOML text (errors cite `<string>` as the file).
    pub fn from_toml_str(s: &str) -> Result<Config, ConfigError> {
        Self::parse(s, "<string>")
    }

    fn parse(s: &str, origin: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(s).map_err(|e| map_toml_error(&e, s, origin))?;
        Self::from_raw(raw)
    }

    fn from_raw(raw: RawConfig) -> Result<Config, ConfigError> {
        let mut cfg = Config::default();
        if let Some(v) = &raw.prefix {
            let s = string_of("prefix", v)?;
            cfg.prefix = s.parse().map_err(|e: PrefixError| ConfigError::Invalid {
                key: "prefix",
                reason: e.to_string(),
            })?;
        }
        if let Some(v) = &raw.mechanism {
            cfg.mechanism =
                string_of("mechanism", v)?
                    .parse()
                    .map_err(|reason| ConfigError::Invalid {
                        key: "mechanism",
                        reason,
                    })?;
        }
        if let Some(v) = &raw.cgroup {
            cfg.cgroup = Some(absolute_path("cgroup", v)?);
        }
        if let Some(v) = &raw.socket {
            let p = absolute_path("socket", v)?;
            let n = p.as_os_str().len();
            if n > MAX_SOCKET_PATH {
                return Err(ConfigError::Invalid {
                    key: "socket",
                    reason: format!(
                        "{:?} is {n} bytes long; a unix socket path can have at most \
                         {MAX_SOCKET_PATH}",
                        p.display().to_string()
                    ),
                });
            }
            cfg.socket = p;
        }
        if let Some(v) = &raw.state_dir {
            cfg.state_dir = absolute_path("state_dir", v)?;
        }
        if let Some(v) = &raw.table {
            let t = string_of("table", v)?;
            if !valid_table_name(&t) {
                return Err(ConfigError::Invalid {
                    key: "table",
                    reason: format!(
                        "{t:?} is not a valid table name (a letter, then up to 31 letters, \
                         digits or underscores)"
                    ),
                });
            }
            cfg.table = t;
        }
        if let Some(v) = &raw.bpffs {
            cfg.bpffs = absolute_path("bpffs", v)?;
        }
        if let Some(v) = &raw.socket_group {
            let g = string_of("socket_group", v)?;
            if g.is_empty() || g.contains(|c: char| c.is_whitespace() || c == ':') {
                return Err(ConfigError::Invalid {
                    key: "socket_group",
                    reason: format!("{g:?} is not a group name or number"),
                });
            }
            cfg.socket_group = Some(g);
        }
        if let Some(v) = &raw.metrics_listen {
            let s = string_of("metrics_listen", v)?;
            let addr: std::net::SocketAddr = s.parse().map_err(|_| ConfigError::Invalid {
                key: "metrics_listen",
                reason: format!(
                    "{s:?} is not ADDRESS:PORT (e.g. \"127.0.0.1:9464\" or \"[::1]:9464\")"
                ),
            })?;
            if !addr.ip().is_loopback() {
                return Err(ConfigError::Invalid {
                    key: "metrics_listen",
                    reason: format!(
                        "{addr} is not a loopback address; the metrics endpoint has no \
                         authentication, so it only listens on 127.0.0.0/8 or ::1"
                    ),
                });
            }
            cfg.metrics_listen = Some(addr);
        }
        if let Some(v) = &raw.lease_mode {
            cfg.lease_mode =
                string_of("lease_mode", v)?
                    .parse()
                    .map_err(|reason| ConfigError::Invalid {
                        key: "lease_mode",
                        reason,
                    })?;
        }
        if let Some(v) = &raw.exec_cgroup {
            cfg.exec_cgroup = Some(absolute_path("exec_cgroup", v)?);
        }
        Ok(cfg)
    }
}

/// Turns toml's error into a [`ConfigError`]: serde's "unknown field" becomes
/// [`ConfigError::UnknownKey`], anything else a syntax error with its line.
fn map_toml_error(e: &toml::de::Error, text: &str, origin: &str) -> ConfigError {
    let message = e.message().trim_end().to_owned();
    // serde's `deny_unknown_fields` message: "unknown field `KEY`, expected ...".
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((key, _)) = rest.split_once('`') {
            return ConfigError::UnknownKey {
                key: key.to_owned(),
            };
        }
    }
    let line = e
        .span()
        .map(|span| {
            let end = span.start.min(text.len());
            text.as_bytes()[..end]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1
        })
        .unwrap_or(1);
    ConfigError::Syntax {
        origin: origin.to_owned(),
        line,
        message,
    }
}

impl Default for Config {
    /// The stock configuration (what an empty config file gives).
    fn default() -> Self {
        Config {
            prefix: DEFAULT_PREFIX,
            mechanism: MechanismChoice::Auto,
            cgroup: None,
            socket: PathBuf::from(DEFAULT_SOCKET),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            table: DEFAULT_TABLE.to_owned(),
            bpffs: PathBuf::from(DEFAULT_BPFFS),
            socket_group: None,
            metrics_listen: None,
            lease_mode: LeaseMode::Open,
            exec_cgroup: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(toml: &str) -> ConfigError {
        match Config::from_toml_str(toml) {
            Ok(c) => panic!("{toml:?} was accepted: {c:?}"),
            Err(e) => e,
        }
    }

    /// Asserts that `toml` is rejected because of `key`, and that the message
    /// names the key and contains `needle`.
    fn rejects(toml: &str, key: &str, needle: &str) {
        let e = err(toml);
        let msg = e.to_string();
        assert_eq!(e.key(), Some(key), "{toml:?}: {msg}");
        assert!(msg.contains(&format!("`{key}`")), "{toml:?}: {msg}");
        assert!(msg.contains(needle), "{toml:?}: {msg:?} lacks {needle:?}");
    }

    fn prefix(s: &str) -> Prefix {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn defaults() {
        let d = Config::default();
        assert_eq!(d.prefix.to_string(), "fd00:1009:bacc::/48");
        assert_eq!(d.prefix, prefix("fd00:1009:bacc::/48"));
        assert_eq!(d.mechanism, MechanismChoice::Auto);
        assert_eq!(d.cgroup, None);
        assert_eq!(d.socket, PathBuf::from("/run/panda/pandad.sock"));
        assert_eq!(d.state_dir, PathBuf::from("/run/panda"));
        assert_eq!(d.table, "panda");
        assert_eq!(d.bpffs, PathBuf::from("/sys/fs/bpf"));
        assert_eq!(d.socket_group, None);
        assert_eq!(d.metrics_listen, None);
        assert_eq!(d.lease_mode, LeaseMode::Open);
        assert_eq!(d.exec_cgroup, None);
        assert_eq!(Config::from_toml_str("").unwrap(), d);
        assert_eq!(Config::from_toml_str("# nothing\n\n").unwrap(), d);
    }

    #[test]
    fn full_config() {
        let c = Config::from_toml_str(
            r#"
            prefix = "fd12:3456::/32"
            mechanism = "guard"
            cgroup = "/sys/fs/cgroup/system.slice"
            socket = "/tmp/p.sock"
            state_dir = "/var/lib/panda"
            table = "Panda_2"
            "#,
        )
        .unwrap();
        assert_eq!(c.prefix, prefix("fd12:3456::/32"));
        assert_eq!(c.mechanism, MechanismChoice::Guard);
        assert_eq!(c.cgroup, Some(PathBuf::from("/sys/fs/cgroup/system.slice")));
        assert_eq!(c.socket, PathBuf::from("/tmp/p.sock"));
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/panda"));
        assert_eq!(c.table, "Panda_2");
        for (s, m) in [
            ("auto", MechanismChoice::Auto),
            ("freebind", MechanismChoice::Freebind),
            ("guard", MechanismChoice::Guard),
        ] {
            let c = Config::from_toml_str(&format!("mechanism = \"{s}\"")).unwrap();
            assert_eq!(c.mechanism, m);
            assert_eq!(m.to_string(), s);
        }
    }

    #[test]
    fn unknown_key() {
        let e = err("prefx = \"fd00::/48\"");
        assert!(matches!(&e, ConfigError::UnknownKey { key } if key == "prefx"));
        assert!(
            e.to_string().starts_with("unknown config key `prefx`"),
            "{e}"
        );
        let e = err("[prefix]\nlen = 3");
        // A table where a string belongs is a type error of that key.
        assert_eq!(e.key(), Some("prefix"), "{e}");
        let e = err("[extra]\nx = 1");
        assert!(
            e.to_string().starts_with("unknown config key `extra`"),
            "{e}"
        );
    }

    #[test]
    fn syntax_error_names_line() {
        let e = err("table = \"panda\"\nprefix = \n");
        let msg = e.to_string();
        assert!(msg.starts_with("config file <string> line 2: "), "{msg}");
        let e = err("table = \"a\"\ntable = \"b\"\n");
        assert!(matches!(e, ConfigError::Syntax { line: 2, .. }), "{e}");
    }

    #[test]
    fn load_names_the_file() {
        let missing = Path::new("/nonexistent/panda-test/pandad.toml");
        let e = Config::load(missing).unwrap_err();
        assert!(
            e.to_string()
                .contains("/nonexistent/panda-test/pandad.toml"),
            "{e}"
        );

        let dir = std::env::temp_dir().join(format!("panda-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("pandad.toml");
        std::fs::write(&f, "mechanism = \"freebind\"\n").unwrap();
        assert_eq!(
            Config::load(&f).unwrap().mechanism,
            MechanismChoice::Freebind
        );
        std::fs::write(&f, "\n\nmechanism = = 1\n").unwrap();
        let msg = Config::load(&f).unwrap_err().to_string();
        assert!(
            msg.starts_with(&format!("config file {} line 3: ", f.display())),
            "{msg}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn wrong_types_name_the_key() {
        rejects("prefix = 48", "prefix", "expected a string, found integer");
        rejects("mechanism = true", "mechanism", "expected a string");
        rejects("cgroup = []", "cgroup", "expected a string");
        rejects("socket = 1.5", "socket", "expected a string");
        rejects("state_dir = {}", "state_dir", "expected a string");
        rejects("table = 7", "table", "expected a string");
        rejects("bpffs = 1", "bpffs", "expected a string");
        rejects("socket_group = 0", "socket_group", "expected a string");
        rejects(
            "metrics_listen = 9464",
            "metrics_listen",
            "expected a string",
        );
    }

    #[test]
    fn lifecycle_keys() {
        let c = Config::from_toml_str(
            "bpffs = \"/run/panda-bpf\"\nsocket_group = \"adm\"\nmetrics_listen = \"[::1]:9464\"",
        )
        .unwrap();
        assert_eq!(c.bpffs, PathBuf::from("/run/panda-bpf"));
        assert_eq!(c.socket_group.as_deref(), Some("adm"));
        assert_eq!(c.metrics_listen, Some("[::1]:9464".parse().unwrap()));
        rejects("bpffs = \"sys/fs/bpf\"", "bpffs", "not an absolute path");
        rejects("socket_group = \"\"", "socket_group", "not a group name");
        rejects("socket_group = \"a b\"", "socket_group", "not a group name");
        rejects(
            "metrics_listen = \"9464\"",
            "metrics_listen",
            "is not ADDRESS:PORT",
        );
        rejects(
            "metrics_listen = \"0.0.0.0:9464\"",
            "metrics_listen",
            "not a loopback address",
        );
    }

    #[test]
    fn lease_keys() {
        let c = Config::from_toml_str(
            "lease_mode = \"leased-only\"\nexec_cgroup = \"/sys/fs/cgroup/ci\"",
        )
        .unwrap();
        assert_eq!(c.lease_mode, LeaseMode::LeasedOnly);
        assert_eq!(c.exec_cgroup, Some(PathBuf::from("/sys/fs/cgroup/ci")));
        rejects(
            "lease_mode = \"closed\"",
            "lease_mode",
            "is not a lease mode",
        );
        rejects("lease_mode = 1", "lease_mode", "expected a string");
        rejects(
            "exec_cgroup = \"ci\"",
            "exec_cgroup",
            "not an absolute path",
        );
    }

    #[test]
    fn bad_mechanism() {
        rejects(
            "mechanism = \"fast\"",
            "mechanism",
            "\"fast\" is not a mechanism",
        );
        rejects("mechanism = \"Auto\"", "mechanism", "is not a mechanism");
        rejects("mechanism = \"\"", "mechanism", "is not a mechanism");
    }

    #[test]
    fn relative_paths() {
        rejects(
            "cgroup = \"foo\"",
            "cgroup",
            "\"foo\" is not an absolute path",
        );
        rejects("socket = \"run/p.sock\"", "socket", "not an absolute path");
        rejects(
            "state_dir = \"./state\"",
            "state_dir",
            "not an absolute path",
        );
        rejects("state_dir = \"\"", "state_dir", "not an absolute path");
    }

    #[test]
    fn socket_path_length() {
        let ok = format!("/{}", "s".repeat(106));
        assert!(Config::from_toml_str(&format!("socket = \"{ok}\"")).is_ok());
        let long = format!("/{}", "s".repeat(107));
        rejects(&format!("socket = \"{long}\""), "socket", "108 bytes long");
    }

    #[test]
    fn table_names() {
        for good in ["panda", "P", "a_1", &"t".repeat(32)] {
            let c = Config::from_toml_str(&format!("table = \"{good}\"")).unwrap();
            assert_eq!(c.table, good);
        }
        for bad in ["", "1abc", "_x", "has-dash", "sp ace", "ü", &"t".repeat(33)] {
            rejects(
                &format!("table = \"{bad}\""),
                "table",
                "not a valid table name",
            );
        }
    }

    #[test]
    fn ipv4_prefix() {
        let e = err("prefix = \"127.0.0.0/8\"");
        assert_eq!(
            e.to_string(),
            "config key `prefix`: \"127.0.0.0/8\" is not an IPv6 prefix \
             (expected ADDRESS/LENGTH, e.g. \"fd00:1009:bacc::/48\")"
        );
        for bad in [
            "fd00::",
            "fd00::/",
            "fd00::/x",
            "fd00::/+48",
            "/48",
            "fd00::/48/1",
            " fd00::/48",
            "fd00::g/48",
        ] {
            rejects(
                &format!("prefix = \"{bad}\""),
                "prefix",
                "is not an IPv6 prefix",
            );
        }
    }

    #[test]
    fn length_bounds() {
        rejects(
            "prefix = \"fd00::/7\"",
            "prefix",
            "prefix length 7 is out of range 8..=127",
        );
        rejects("prefix = \"fd00::/0\"", "prefix", "out of range");
        rejects(
            "prefix = \"fd00::/128\"",
            "prefix",
            "prefix length 128 is out of range",
        );
        rejects("prefix = \"fd00::/300\"", "prefix", "prefix length 300");
        rejects("prefix = \"fd00::/99999999999\"", "prefix", "out of range");
        assert_eq!(prefix("fd00::/8").len(), 8);
        assert_eq!(prefix("fd00::/127").len(), 127);
        assert!(Prefix::new(a("fd00::"), 128).is_err());
        assert!(Prefix::new(a("fd00::"), 7).is_err());
    }

    #[test]
    fn host_bits() {
        rejects(
            "prefix = \"fd00:1009:bacc::1/48\"",
            "prefix",
            "has host bits set; did you mean \"fd00:1009:bacc::/48\"?",
        );
        rejects(
            "prefix = \"fd00:1009:bacf::/46\"",
            "prefix",
            "did you mean \"fd00:1009:bacc::/46\"?",
        );
        rejects(
            "prefix = \"fd00::1/127\"",
            "prefix",
            "did you mean \"fd00::/127\"?",
        );
        assert!(Prefix::new(a("fd00::2"), 127).is_ok());
    }

    #[test]
    fn overlaps() {
        // (prefix, the reserved range it hits)
        for (p, reserved) in [
            ("::/127", "::1/128"), // also contains ::/128; any prefix with :: has ::1
            ("::/8", "::1/128"),   // contains ::1 and :: and ::ffff:0:0/96
            ("fe80::/10", "fe80::/10"),
            ("fe80::/64", "fe80::/10"),
            ("fe00::/8", "fe80::/10"), // contains link-local
            ("ff00::/8", "ff00::/8"),
            ("ff02::/16", "ff00::/8"),
            ("::ffff:0:0/96", "::ffff:0:0/96"),
            ("::ffff:10.0.0.0/104", "::ffff:0:0/96"),
        ] {
            let e = err(&format!("prefix = \"{p}\""));
            let msg = e.to_string();
            assert_eq!(e.key(), Some("prefix"), "{msg}");
            assert!(msg.contains(" overlaps "), "{p}: {msg}");
            // Either loopback or unspecified is fine for ::/8; check the rest exactly.
            if p != "::/8" {
                assert!(
                    msg.contains(&format!("overlaps {reserved} (")),
                    "{p}: {msg}"
                );
            }
        }
        let msg = err("prefix = \"fe80::/16\"").to_string();
        assert_eq!(
            msg,
            "config key `prefix`: fe80::/16 overlaps fe80::/10 (link-local addresses)"
        );
        // Neighbours of the reserved ranges are fine.
        for ok in [
            "fec0::/10",
            "fe40::/10",
            "fd00::/8",
            "::2/127",
            "::fffe:0:0/96",
            "2001:db8::/32",
        ] {
            prefix(ok);
        }
    }

    #[test]
    fn math_48() {
        let p = prefix("fd00:1009:bacc::/48");
        assert_eq!(p.network(), a("fd00:1009:bacc::"));
        assert_eq!(p.len(), 48);
        assert_eq!(p.anchor(), a("fd00:1009:bacc::1"));
        assert!(p.contains(&a("fd00:1009:bacc::")));
        assert!(p.contains(&a("fd00:1009:bacc::1")));
        assert!(p.contains(&a("fd00:1009:bacc:ffff:ffff:ffff:ffff:ffff")));
        assert!(!p.contains(&a("fd00:1009:bacd::")));
        assert!(!p.contains(&a("fd00:1009:bacb:ffff:ffff:ffff:ffff:ffff")));
        assert!(!p.contains(&Ipv6Addr::LOCALHOST));
    }

    #[test]
    fn math_64() {
        let p = prefix("2001:db8:1:2::/64");
        assert_eq!(p.anchor(), a("2001:db8:1:2::1"));
        assert!(p.contains(&a("2001:db8:1:2:ffff:ffff:ffff:ffff")));
        assert!(!p.contains(&a("2001:db8:1:3::")));
        assert!(!p.contains(&a("2001:db8:1:1:ffff:ffff:ffff:ffff")));
    }

    #[test]
    fn math_127() {
        let p = prefix("fd00::a/127");
        assert_eq!(p.anchor(), a("fd00::b"));
        assert!(p.contains(&a("fd00::a")));
        assert!(p.contains(&a("fd00::b")));
        assert!(!p.contains(&a("fd00::c")));
        assert!(!p.contains(&a("fd00::9")));
        assert_eq!(p.to_string(), "fd00::a/127");
    }

    #[test]
    fn math_52() {
        // 52 is not a multiple of 8 (nor of 16): the boundary is inside a nibble.
        let p = prefix("fd00:1009:bacc:3000::/52");
        assert_eq!(p.anchor(), a("fd00:1009:bacc:3000::1"));
        assert!(p.contains(&a("fd00:1009:bacc:3fff:ffff:ffff:ffff:ffff")));
        assert!(p.contains(&a("fd00:1009:bacc:3000::")));
        assert!(!p.contains(&a("fd00:1009:bacc:4000::")));
        assert!(!p.contains(&a("fd00:1009:bacc:2fff:ffff:ffff:ffff:ffff")));
        assert!("fd00:1009:bacc:3800::/52".parse::<Prefix>().is_err());
        // /13: boundary inside the first hextet.
        let p = prefix("fd08::/13");
        assert!(p.contains(&a("fd0f:ffff::")));
        assert!(!p.contains(&a("fd10::")));
        assert!(!p.contains(&a("fd07:ffff::")));
    }

    #[test]
    fn display_round_trip() {
        for s in [
            "fd00:1009:bacc::/48",
            "fd00::a/127",
            "fd00:1009:bacc:3000::/52",
            "fd00::/8",
        ] {
            assert_eq!(prefix(s).to_string(), s);
            assert_eq!(prefix(&prefix(s).to_string()), prefix(s));
        }
        // Non-canonical spelling is normalised.
        assert_eq!(prefix("FD00:0:0::/16").to_string(), "fd00::/16");
        let json = serde_json::to_string(&prefix("fd00::/16")).unwrap();
        assert_eq!(json, "\"fd00::/16\"");
        assert_eq!(
            serde_json::from_str::<Prefix>(&json).unwrap(),
            prefix("fd00::/16")
        );
        assert!(serde_json::from_str::<Prefix>("\"fe80::/10\"").is_err());
    }
}
