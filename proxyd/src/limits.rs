//! Per-client-address limits: how many tunnels one client IP address may
//! have open at once (`--max-tunnels-per-client`), and how many request heads
//! it may send per second (`--max-requests-per-client-per-second`).
//!
//! The client address is the connection's peer, or the PROXY header's
//! source when PROXY protocol is on. Both keep state only while it matters,
//! so memory is bounded whatever clients do: a tunnel count exists only for
//! an address with a tunnel open (removed when its last tunnel closes, so
//! bounded by the global tunnel cap), and a rate bucket only until it is
//! full again (at most a second after the address's last request; swept
//! every second, and the map never holds more than [`MAX_RATE_CLIENTS`]).
//! This module never answers a request or decides where bytes may go;
//! `server` turns a refusal here into the 429 from `answer`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// Most client addresses the request-rate limiter tracks at once. Each
/// entry lives at most about two seconds after its address's last request
/// (a full bucket is forgotten at the next sweep, once a second), so reaching this takes
/// more than 65,536 distinct addresses in two seconds. At the cap a new
/// address is let through untracked, rather than refused: refusing would let
/// whoever fills the map lock every other new client out, while the global
/// tunnel cap and the header timeout still bound the work it can cause.
pub const MAX_RATE_CLIENTS: usize = 65_536;

/// How often full buckets are swept out of the map.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Request heads per second per client address, as a token bucket of
/// `per_second` tokens refilled at `per_second` a second (a client may send
/// a burst of `per_second` heads, then `per_second` a second). Kept as the
/// generic cell rate algorithm: per address one instant, the time at which
/// its bucket will be full again (`full_at`); an address whose `full_at` is
/// past is the same as an address never seen, so it can be forgotten.
#[derive(Debug)]
pub struct ClientRequestRate {
    per_second: u32,
    /// Time one token takes to come back.
    interval: Duration,
    /// How far ahead of now `full_at` may be for a request to be let through.
    burst_allowance: Duration,
    state: Mutex<RateState>,
}

#[derive(Debug)]
struct RateState {
    full_at: HashMap<IpAddr, Instant>,
    last_sweep: Instant,
}

/// What [`ClientRequestRate::check`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateVerdict {
    /// Within the rate: a token was taken.
    Allowed,
    /// The address has no token left this second.
    Exceeded,
    /// The map is at [`MAX_RATE_CLIENTS`]: a new address passes untracked.
    Untracked,
}

impl ClientRequestRate {
    /// `per_second` must be at least 1 (the config refuses 0).
    pub fn new(per_second: u32) -> Self {
        let per_second = per_second.max(1);
        let interval = Duration::from_secs(1) / per_second;
        ClientRequestRate {
            per_second,
            interval,
            burst_allowance: interval * (per_second - 1),
            state: Mutex::new(RateState { full_at: HashMap::new(), last_sweep: Instant::now() }),
        }
    }

    pub fn per_second(&self) -> u32 {
        self.per_second
    }

    /// Takes a token for one request head from `client` at the current time.
    pub fn check(&self, client: IpAddr) -> RateVerdict {
        self.check_at(client, Instant::now())
    }

    /// [`Self::check`] at `now` (tests drive the clock). IPv4-mapped IPv6
    /// addresses count as their IPv4 address.
    pub fn check_at(&self, client: IpAddr, now: Instant) -> RateVerdict {
        let client = client.to_canonical();
        // A poisoned lock means a panic elsewhere mid-update: the map is still a valid map.
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Once a second at most, so a full map costs no per-request scan.
        if now.saturating_duration_since(state.last_sweep) >= SWEEP_EVERY {
            state.full_at.retain(|_, full_at| *full_at > now);
            state.last_sweep = now;
        }
        let tracked = state.full_at.len();
        match state.full_at.get_mut(&client) {
            Some(full_at) => {
                let from = (*full_at).max(now);
                if from.saturating_duration_since(now) > self.burst_allowance {
                    return RateVerdict::Exceeded;
                }
                *full_at = from + self.interval;
                RateVerdict::Allowed
            }
            None if tracked >= MAX_RATE_CLIENTS => RateVerdict::Untracked,
            None => {
                state.full_at.insert(client, now + self.interval);
                RateVerdict::Allowed
            }
        }
    }

    /// Client addresses tracked now (for tests and diagnostics).
    pub fn tracked(&self) -> usize {
        self.state.lock().map_or(0, |state| state.full_at.len())
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

    #[test]
    fn a_burst_of_the_rate_passes_then_one_token_per_interval() {
        let rate = ClientRequestRate::new(5);
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let t0 = Instant::now();
        let verdicts: Vec<_> = (0..7).map(|_| rate.check_at(client, t0)).collect();
        assert_eq!(&verdicts[..5], &[RateVerdict::Allowed; 5], "a burst of 5");
        assert_eq!(&verdicts[5..], &[RateVerdict::Exceeded; 2], "then nothing left");
        // One token back every 200 ms.
        assert_eq!(rate.check_at(client, t0 + Duration::from_millis(199)), RateVerdict::Exceeded);
        assert_eq!(rate.check_at(client, t0 + Duration::from_millis(200)), RateVerdict::Allowed);
        assert_eq!(rate.check_at(client, t0 + Duration::from_millis(210)), RateVerdict::Exceeded);
        // Refused requests take no token: after a full second the whole burst is back.
        let later = t0 + Duration::from_millis(1200);
        assert_eq!((0..5).filter(|_| rate.check_at(client, later) == RateVerdict::Allowed).count(), 5);
        assert_eq!(rate.check_at(client, later), RateVerdict::Exceeded);
    }

    #[test]
    fn addresses_have_their_own_buckets_and_mapped_v4_is_v4() {
        let rate = ClientRequestRate::new(1);
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(rate.check_at(a, t0), RateVerdict::Allowed);
        assert_eq!(rate.check_at(mapped, t0), RateVerdict::Exceeded, "the mapped form is the same client");
        assert_eq!(rate.check_at(b, t0), RateVerdict::Allowed);
    }

    #[test]
    fn full_buckets_are_forgotten_and_the_map_never_exceeds_its_cap() {
        let rate = ClientRequestRate::new(10);
        let t0 = Instant::now();
        for i in 0..1000u32 {
            rate.check_at(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)), t0);
        }
        assert_eq!(rate.tracked(), 1000);
        // A second later every bucket is full again: the next request sweeps them out.
        let other: IpAddr = "192.0.2.9".parse().unwrap();
        assert_eq!(rate.check_at(other, t0 + Duration::from_secs(1)), RateVerdict::Allowed);
        assert_eq!(rate.tracked(), 1, "only the address that just asked");

        // Distinct addresses all at once: the map stops at the cap, later ones pass untracked.
        let rate = ClientRequestRate::new(1);
        let mut untracked = 0;
        for i in 0..(MAX_RATE_CLIENTS as u32 + 10) {
            let verdict = rate.check_at(IpAddr::from(std::net::Ipv6Addr::from(u128::from(i) + 1)), t0);
            untracked += usize::from(verdict == RateVerdict::Untracked);
        }
        assert_eq!((rate.tracked(), untracked), (MAX_RATE_CLIENTS, 10));
        // An address already tracked is still limited at the cap.
        let first = IpAddr::from(std::net::Ipv6Addr::from(1u128));
        assert_eq!(rate.check_at(first, t0), RateVerdict::Exceeded);
        // Once those buckets are full again the map empties at the next request.
        assert_eq!(rate.check_at(other, t0 + Duration::from_secs(2)), RateVerdict::Allowed);
        assert_eq!(rate.tracked(), 1);
    }
}
