//! Per-client-address limits (`--max-tunnels-per-client`): how many tunnels
//! one client IP address may have open at once.
//!
//! The client address is the connection's peer, or the PROXY header's
//! source when PROXY protocol is on. State exists only for addresses with a
//! tunnel open (an entry is removed when its last tunnel closes), so it is
//! bounded by the global tunnel cap whatever clients do. This module never
//! answers a request or decides where bytes may go; `server` turns a full
//! slot into the 429 from `answer`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Open tunnels per client address, against one limit.
#[derive(Debug)]
pub struct ClientTunnels {
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl ClientTunnels {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(ClientTunnels { limit, open: Mutex::new(HashMap::new()) })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A slot for one more tunnel from `client`, or `None` if it has `limit` open.
    /// IPv4-mapped IPv6 addresses count as their IPv4 address.
    pub fn try_acquire(self: &Arc<Self>, client: IpAddr) -> Option<ClientSlot> {
        let client = client.to_canonical();
        let mut open = self.open.lock().ok()?;
        let count = open.entry(client).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(ClientSlot { tunnels: Arc::clone(self), client })
    }

    /// Tunnels open now for `client` (for tests and diagnostics).
    pub fn open_for(&self, client: IpAddr) -> usize {
        self.open.lock().map_or(0, |open| open.get(&client.to_canonical()).copied().unwrap_or(0))
    }

    /// Client addresses with a tunnel open now.
    pub fn clients(&self) -> usize {
        self.open.lock().map_or(0, |open| open.len())
    }
}

/// One tunnel counted against its client address until dropped.
#[derive(Debug)]
pub struct ClientSlot {
    tunnels: Arc<ClientTunnels>,
    client: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.tunnels.open.lock()
            && let Some(count) = open.get_mut(&self.client)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure

    use super::*;

    #[test]
    fn each_address_gets_its_own_limit_and_slots_free_on_drop() {
        let tunnels = ClientTunnels::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let first = tunnels.try_acquire(a).unwrap();
        let second = tunnels.try_acquire(a).unwrap();
        assert!(tunnels.try_acquire(a).is_none(), "third tunnel from a");
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert!(tunnels.try_acquire(mapped).is_none(), "the mapped form is the same client");
        let other = tunnels.try_acquire(b).unwrap();
        assert_eq!((tunnels.open_for(a), tunnels.open_for(b), tunnels.clients()), (2, 1, 2));
        drop(first);
        let again = tunnels.try_acquire(a).unwrap();
        drop((second, again, other));
        assert_eq!(tunnels.clients(), 0, "no state is kept for addresses without tunnels");
    }
}
