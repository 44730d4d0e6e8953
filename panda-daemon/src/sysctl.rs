//! CONTRACT STUB — net.ipv6.ip_nonlocal_bind of the current netns.
pub fn read_nonlocal_bind() -> anyhow::Result<u32> { todo!() }
pub fn write_nonlocal_bind(_v: u32) -> anyhow::Result<()> { todo!() }
