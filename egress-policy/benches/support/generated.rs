//! Generated policies for the benchmarks (shared by `egress-policy`'s decide
//! bench and `policyc`'s diff bench): deterministic, no fixture files.
#![allow(dead_code)]

use std::fmt::Write as _;

pub const LARGE_ROLES: usize = 5_000;
pub const PATTERNS_PER_ROLE: usize = 20;
pub const GLOBAL_LIST_LEN: usize = 100;
/// Rotating query set; a power of two so the index wraps with a mask.
pub const QUERIES: usize = 4_096;
pub const QUERY_MASK: usize = QUERIES - 1;

/// Deterministic xorshift64*: no `rand` dependency, same inputs every run.
#[derive(Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

// ---------------------------------------------------------------------------
// Policy generation (as YAML text, so `compile/100k` times the real front end)
// ---------------------------------------------------------------------------

/// The shape of a generated ACL. Names are zero-padded so hosts have the same
/// length in the small and the large policy: only the table size differs.
#[derive(Debug)]
pub struct Shape {
    pub roles: usize,
    pub exact_per_role: usize,
    pub wildcard_per_role: usize,
    pub global_exact: usize,
    pub global_wildcard: usize,
}

pub const SMALL: Shape =
    Shape { roles: 1, exact_per_role: 5, wildcard_per_role: 5, global_exact: 2, global_wildcard: 2 };

pub const LARGE: Shape = Shape {
    roles: LARGE_ROLES,
    exact_per_role: PATTERNS_PER_ROLE / 2,
    wildcard_per_role: PATTERNS_PER_ROLE / 2,
    global_exact: GLOBAL_LIST_LEN / 2,
    global_wildcard: GLOBAL_LIST_LEN / 2,
};

pub fn role_name(i: usize) -> String {
    format!("svc-{i:04}")
}

pub fn exact_host(role: usize, j: usize) -> String {
    format!("api-{role:04}-{j}.example-{role:04}.com")
}

pub fn wildcard_suffix(role: usize, j: usize) -> String {
    format!("hooks-{role:04}-{j}.example.net")
}

pub fn deny_exact(k: usize) -> String {
    format!("bad-{k:03}.evil-corp.org")
}

pub fn deny_wildcard(k: usize) -> String {
    format!("tracker-{k:03}.ads.net")
}

pub fn allow_exact(k: usize) -> String {
    format!("mirror-{k:03}.pkg.dev")
}

pub fn allow_wildcard(k: usize) -> String {
    format!("cdn-{k:03}.static.io")
}

pub fn acl_yaml(shape: &Shape) -> String {
    acl_yaml_with(shape, false)
}

/// Port ranges every role of the v2 policy gets (443 is inside, so the
/// shared query mix decides as in v1 at port 443).
pub const V2_PORTS: &str = "[443, \"8000-8099\", \"9443-9444\"]";
/// Internal destinations per role in the v2 policy.
pub const V2_INTERNAL_PER_ROLE: usize = 2;

/// The host of role `role`'s `k`th internal destination in the v2 policy.
pub fn internal_host(role: usize, k: usize) -> String {
    format!("db-{role:04}-{k}.internal.example")
}

/// The same policy as [`acl_yaml`], as `version: v2` with every role given
/// three port ranges and two internal destinations.
pub fn acl_yaml_v2(shape: &Shape) -> String {
    acl_yaml_with(shape, true)
}

fn acl_yaml_with(shape: &Shape, v2: bool) -> String {
    let mut y = String::with_capacity(shape.roles * (PATTERNS_PER_ROLE * 40 + 400) + 16 * 1024);
    y.push_str(if v2 { "version: v2\nservices:\n" } else { "version: v1\nservices:\n" });
    for i in 0..shape.roles {
        // Mostly enforce, some report, a few open: realistic, and all three
        // action arms of the decision run.
        let action = match i % 10 {
            0 => "report",
            1 if i % 100 == 1 => "open",
            _ => "enforce",
        };
        let _ = write!(
            y,
            "  - name: {}\n    project: team-{:03}\n    action: {action}\n    allowed_domains:\n",
            role_name(i),
            i % 250
        );
        for j in 0..shape.exact_per_role {
            let _ = writeln!(y, "      - {}", exact_host(i, j));
        }
        for j in 0..shape.wildcard_per_role {
            let _ = writeln!(y, "      - \"*.{}\"", wildcard_suffix(i, j));
        }
        if v2 {
            let _ = writeln!(y, "    allowed_ports: {V2_PORTS}\n    internal_destinations:");
            for k in 0..V2_INTERNAL_PER_ROLE {
                let _ = writeln!(
                    y,
                    "      - host: {}\n        cidrs: [10.{}.{}.{}/25]\n        ports: [{}]\n        reason: generated exception {k} of role {i}",
                    internal_host(i, k),
                    i / 256,
                    i % 256,
                    k * 128,
                    5432 + k
                );
            }
        }
    }
    y.push_str("default:\n  project: platform\n  action: enforce\n  allowed_domains:\n");
    y.push_str("      - time.example.org\n      - \"*.status.example.org\"\n");
    y.push_str("global_allow_list:\n");
    for k in 0..shape.global_exact {
        let _ = writeln!(y, "  - {}", allow_exact(k));
    }
    for k in 0..shape.global_wildcard {
        let _ = writeln!(y, "  - \"*.{}\"", allow_wildcard(k));
    }
    y.push_str("global_deny_list:\n");
    for k in 0..shape.global_exact {
        let _ = writeln!(y, "  - {}", deny_exact(k));
    }
    for k in 0..shape.global_wildcard {
        let _ = writeln!(y, "  - \"*.{}\"", deny_wildcard(k));
    }
    y
}
