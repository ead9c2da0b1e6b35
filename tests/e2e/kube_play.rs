//! `deploy/kubernetes/` played with `podman kube play` on the image `make
//! image` built (`make kube-play-test`): the kustomization rendered to plain
//! manifests by `deploy/kube-render.py` (no kubectl here), with a signed
//! policy and its public key, as `make kubernetes-policy` makes them.
//!
//! The test plays the kubelet's two parts podman does not: it runs the
//! pod's own readinessProbe (podman runs probes as commands inside the
//! container, and the image has no shell or curl), and it updates the policy
//! ConfigMap volume as the kubelet does, a `..data` symlink swap in a
//! directory (podman copies a ConfigMap into a volume once and never
//! updates it). Then: a CONNECT through the pod behaves as in image-test, and
//! the swapped-in table is served without a restart.
//!
//! The pod uses the host network (`hostNetwork: true`, one replica), so its
//! ports are the manifest's own, 4750 and 9810 on this host: the test fails
//! up front, clearly, if something else holds them.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::client::{self, lo};
use testkit::upstream::Upstream;

use crate::container::{image, podman, podman_ok, probe, uid_of};
use crate::support::{AUTH, policyc};

/// `deploy/kube-render.py ARGS`, which must succeed; its stdout.
fn render(args: &[&str]) -> String {
    let script = testkit::repo_root().join("deploy/kube-render.py");
    let out = Command::new(&script).args(args).output().expect("run deploy/kube-render.py");
    assert!(out.status.success(), "kube-render.py {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The first container's readinessProbe, resolved as the kubelet does: the
/// named port looked up in the container's ports.
fn readiness_probe(manifest: &str) -> (String, u16, Duration, Duration) {
    let deployment = manifest
        .split("\n---\n")
        .find(|doc| doc.contains("kind: Deployment"))
        .expect("the rendered manifests hold the Deployment");
    let json: Value = serde_json::from_str(
        &String::from_utf8(
            Command::new("python3")
                .args(["-c", "import json,sys,yaml; print(json.dumps(yaml.safe_load(sys.stdin)))"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .and_then(|mut child| {
                    use std::io::Write as _;
                    child.stdin.take().unwrap().write_all(deployment.as_bytes())?;
                    child.wait_with_output()
                })
                .expect("python3 with yaml")
                .stdout,
        )
        .unwrap(),
    )
    .unwrap();
    let container = &json["spec"]["template"]["spec"]["containers"][0];
    let probe = &container["readinessProbe"];
    let path = probe["httpGet"]["path"].as_str().unwrap().to_owned();
    let port = match &probe["httpGet"]["port"] {
        Value::String(name) => container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name.as_str())
            .and_then(|p| p["containerPort"].as_u64())
            .expect("the probe's named port"),
        number => number.as_u64().unwrap(),
    };
    let period = Duration::from_secs(probe["periodSeconds"].as_u64().unwrap_or(10));
    let timeout = Duration::from_secs(probe["timeoutSeconds"].as_u64().unwrap_or(1));
    (path, u16::try_from(port).unwrap(), period, timeout)
}

fn copy_kustomization(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    let from = testkit::repo_root().join("deploy/kubernetes");
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        if entry.path().extension().is_some_and(|e| e == "yaml") {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// A GET on the admin listener with the admin token the test's Secret holds.
async fn admin_get(admin: SocketAddr, path: &str) -> testkit::scrape::AdminReply {
    let head = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer kube-play-admin-token\r\n\r\n");
    testkit::scrape::request(admin, head.as_bytes()).await
}

/// Removes the pod on drop, whatever happened.
struct Played(String);

impl Drop for Played {
    fn drop(&mut self) {
        let _ = podman(&["kube", "down", &self.0]);
        let _ = podman(&["secret", "rm", "egress-proxy"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs podman and `make image`: run by `make kube-play-test`"]
async fn the_kubernetes_manifests_play_in_podman_and_take_a_configmap_update_live() {
    for port in [4750, 9810] {
        assert!(
            std::net::TcpListener::bind(("0.0.0.0", port)).is_ok(),
            "port {port} is taken on this host: the pod uses the manifest's ports on the host network"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let kube = d.join("kubernetes");
    copy_kustomization(&kube);

    // What `make kubernetes-policy` makes: a signed table and the public key.
    let repo = testkit::repo_root();
    let default_policy = repo.join("policies/default.yaml");
    let default_tests = repo.join("policies/tests/default.yaml");
    let run =
        policyc(d, &["keygen", "--private", "ci.key", "--public", kube.join("policy-signing.pub").to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let compile = |source: &Path, tests: Option<&Path>, out: &Path, serial: &str| {
        let mut args = vec!["compile", source.to_str().unwrap(), "-o", out.to_str().unwrap(), "--sign", "ci.key"];
        args.extend(["--serial", serial]);
        if let Some(tests) = tests {
            args.extend(["--test", tests.to_str().unwrap()]);
        }
        let run = policyc(d, &args);
        assert_eq!(run.code, 0, "{}", run.stderr);
        run.stderr.split("(revision ").nth(1).and_then(|r| r.split(',').next()).unwrap().to_owned()
    };
    let rev1 = compile(&default_policy, Some(&default_tests), &kube.join("policy.bin"), "1");

    // The admin token Secret's volume (`kubectl create secret generic egress-proxy-admin
    // --from-literal=token=...`), laid out as the kubelet does: podman 4.3's kube play crashes on
    // a secret volume with `items`, so it is a host directory here. The kubelet writes the file
    // with the volume's defaultMode (0400) and, with the pod's fsGroup, proxyd's group: here the
    // file is proxyd's own (UID 65532), mode 0400, which proxyd accepts (never world-readable).
    let admin_dir = d.join("secret-egress-proxy-admin");
    let token_file = d.join("token");
    std::fs::write(&token_file, "kube-play-admin-token\n").unwrap();
    render(&["project", admin_dir.to_str().unwrap(), token_file.to_str().unwrap()]);
    let data = std::fs::read_link(admin_dir.join("..data")).unwrap();
    let token_path = admin_dir.join(data).join("token");
    std::fs::set_permissions(&token_path, std::os::unix::fs::PermissionsExt::from_mode(0o400)).unwrap();
    std::os::unix::fs::chown(&token_path, Some(65532), Some(65532)).unwrap();

    // The policy ConfigMap's volume, laid out as the kubelet does.
    let volume = d.join("configmap-egress-proxy-policy");
    render(&["project", volume.to_str().unwrap(), kube.join("policy.bin").to_str().unwrap()]);

    let upstream = Upstream::echo(lo(29, 0, 1)).await;
    let allowed = upstream.addr.ip().to_string();
    let manifest = render(&[
        "render",
        kube.to_str().unwrap(),
        "--image",
        &image(),
        // One pod on the host network: the manifest's ports are fixed, so three would collide.
        "--replicas",
        "1",
        "--host-network",
        // The test's overlay: the echo upstream is on loopback, which proxyd refuses unless allowed.
        "--add-arg",
        "--allow-address",
        "--add-arg",
        &allowed,
        "--configmap-dir",
        &format!("egress-proxy-policy={}", volume.display()),
        "--secret-dir",
        &format!("egress-proxy-admin={}", admin_dir.display()),
    ]);
    let manifest_path = d.join("egress-proxy.yaml");
    std::fs::write(&manifest_path, &manifest).unwrap();
    let (probe_path, probe_port, period, probe_timeout) = readiness_probe(&manifest);

    let manifest_arg = manifest_path.to_str().unwrap().to_owned();
    let _ = podman(&["kube", "down", &manifest_arg]);
    let _ = podman(&["secret", "rm", "egress-proxy"]);
    // `kubectl create secret generic egress-proxy --from-literal=PROXY_PASSWORD=...`, in the
    // form podman 4's secretKeyRef reads: a podman secret holding a JSON map of base64 values
    // (it cannot read back a Secret document of its own making).
    let secret = d.join("egress-proxy.secret.json");
    std::fs::write(&secret, r#"{"PROXY_PASSWORD": "czNjcmV0"}"#).unwrap();
    podman_ok(&["secret", "create", "egress-proxy", secret.to_str().unwrap()]);
    let played = Played(manifest_arg.clone());
    // podman kube play has no --ulimit: its defaults (nofile 1048576) are above this
    // sandbox's hard limits, so a containers.conf sets explicit ones within them.
    let limits = crate::container::ulimits(65_536, 4_096);
    let conf = d.join("containers.conf");
    std::fs::write(&conf, format!("[containers]\ndefault_ulimits = [\"{}\", \"{}\"]\n", limits[1], limits[3])).unwrap();
    let started = Instant::now();
    let out = Command::new("podman")
        .env("CONTAINERS_CONF", &conf)
        .args(crate::container::PODMAN_GLOBAL)
        .args(["kube", "play", &played.0])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "podman kube play: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("kube-play: podman kube play:\n{}", String::from_utf8_lossy(&out.stdout));

    // The kubelet's prober: the readinessProbe every periodSeconds until it passes.
    let admin = SocketAddr::from(([127, 0, 0, 1], probe_port));
    let ready_after = loop {
        if tokio::time::timeout(probe_timeout, probe(admin, &probe_path)).await.ok().flatten() == Some(200) {
            break started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the pod is not ready after 60 s: {}", pod_logs());
        tokio::time::sleep(period).await;
    };
    println!("kube-play: ready through readinessProbe GET {probe_path} :{probe_port} after {ready_after:?}");

    let pods = podman_ok(&["pod", "ps", "--filter", "name=egress-proxy", "--format", "{{.Name}} {{.Status}}"]);
    println!("kube-play: {pods}");
    // podman names a Deployment's pod NAME-pod-0 and its containers POD-CONTAINER.
    let containers = podman_ok(&["ps", "--filter", "pod=egress-proxy-pod-0", "--format", "{{.Names}}"]);
    let proxyd = containers.lines().find(|n| n.ends_with("-proxyd")).expect("the proxyd container").to_owned();
    let pid: u32 = podman_ok(&["inspect", "--format", "{{.State.Pid}}", &proxyd]).parse().unwrap();
    assert_eq!(uid_of(pid), 65532, "the pod's securityContext.runAsUser");

    // As in image-test: the allowed echo, and the metadata address refused.
    let proxy = SocketAddr::from(([127, 0, 0, 1], 4750));
    let reply = client::connect(proxy, &upstream.addr.to_string(), AUTH).await;
    assert_eq!(reply.status, 200, "CONNECT to the allowed upstream through the pod: {}", reply.reason);
    let mut tunnel = reply.stream;
    assert_eq!(client::echo_through(&mut tunnel, b"through the pod").await, b"through the pod");
    drop(tunnel);
    let refused = client::connect(proxy, "169.254.169.254:80", AUTH).await;
    assert_eq!(refused.status, 403, "CONNECT 169.254.169.254:80 through the pod");
    let unauthenticated = client::connect(proxy, &upstream.addr.to_string(), "").await;
    assert_eq!(unauthenticated.status, 407, "the manifest's proxy password is required");
    // The admin token from the Secret guards /policy; the probes and /metrics stay open.
    assert_eq!(testkit::scrape::get(admin, "/policy").await.status, 401, "/policy needs the Secret's token");
    assert_eq!(testkit::scrape::get(admin, "/metrics").await.status, 200, "--admin-metrics-open");
    let policy: Value = serde_json::from_str(&admin_get(admin, "/policy").await.body).unwrap();
    assert_eq!(policy["revision"], rev1.as_str());
    assert_eq!(policy["signature"], "verified", "the manifest's --policy-public-key checks the ConfigMap's table");

    // A ConfigMap update: a new table (one more denied name), swapped in as the kubelet does.
    let updated_source = d.join("updated.yaml");
    let source = std::fs::read_to_string(&default_policy).unwrap();
    let updated = source.replacen("global_deny_list:\n", "global_deny_list:\n  - denied-after-update.test\n", 1);
    assert_ne!(updated, source, "policies/default.yaml has a global_deny_list to extend");
    std::fs::write(&updated_source, updated).unwrap();
    let new_table = d.join("new").join("policy.bin");
    std::fs::create_dir_all(new_table.parent().unwrap()).unwrap();
    let rev2 = compile(&updated_source, None, &new_table, "2");
    assert_ne!(rev1, rev2);
    let swapped = Instant::now();
    render(&["project", volume.to_str().unwrap(), new_table.to_str().unwrap()]);
    loop {
        let policy: Value = serde_json::from_str(&admin_get(admin, "/policy").await.body).unwrap();
        if policy["revision"] == rev2.as_str() {
            break;
        }
        assert!(swapped.elapsed() < Duration::from_secs(40), "the swapped-in table is not served: {policy}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reload_took = swapped.elapsed();
    let denied = client::connect(proxy, "denied-after-update.test:443", AUTH).await;
    assert_eq!(denied.status, 403, "the updated table's deny list applies");
    assert_eq!(podman_ok(&["inspect", "--format", "{{.RestartCount}}", &proxyd]), "0", "no restart");
    println!("kube-play: ConfigMap ..data swap {rev1} -> {rev2} served after {reload_took:?}, no restart");

    println!("\nkube-play-test: deploy/kubernetes/ with podman kube play ({})", image());
    println!("| check | result |\n|---|---|");
    println!("| ready through its readinessProbe | {ready_after:.1?} (period {period:?}) |");
    println!("| runs as | UID 65532 |");
    println!("| CONNECT allowed loopback echo | 200, echoed |");
    println!("| CONNECT 169.254.169.254:80 | 403 |");
    println!("| no proxy password | 407 |");
    println!("| signed ConfigMap table | verified, revision {rev1} |");
    println!("| ConfigMap update (..data swap) | revision {rev2} live after {reload_took:.2?}, 0 restarts |");
    drop(played);
}

fn pod_logs() -> String {
    let out = podman(&["logs", "egress-proxy-pod-0-proxyd"]);
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}
