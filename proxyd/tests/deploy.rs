//! The deployment files (`Dockerfile`, `deploy/fly.toml`,
//! `deploy/kubernetes/`) checked against the code they deploy: each file
//! parses, every path it names exists, every `proxyd` command line in them is
//! accepted by `proxyd`'s own argument parser, ports and probes agree with
//! the flags, and the grace periods agree with `--shutdown-grace`. The
//! Dockerfile's build stage runs `deploy/build-stage.sh`, which `.ci/run`
//! runs as plain cargo commands. Finally each command line really starts the
//! real binary (moved to loopback, with the named policy compiled) and its
//! readiness probe answers 200.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Parser;
use egress_policy::decision::{PolicyTable, Verdict};
use egress_policy::signature::{self, PrivateKey};
use egress_policy::table::{self, Metadata};
use egress_policy::{acl, host, policy::ActionSet};
use proxyd::config::{Args, parse_duration};
use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("proxyd/ has a parent").to_path_buf()
}

fn read(path: &str) -> String {
    let full = repo_root().join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("cannot read {}: {e}", full.display()))
}

fn yaml(path: &str) -> Value {
    serde_saphyr::from_str::<Value>(&read(path)).unwrap_or_else(|e| panic!("{path} is not valid YAML: {e}"))
}

/// `proxyd`'s parser on a command line from a deployment file.
fn proxyd_args<S: AsRef<str>>(words: &[S]) -> Args {
    let argv = std::iter::once("proxyd").chain(words.iter().map(AsRef::as_ref));
    Args::try_parse_from(argv)
        .unwrap_or_else(|e| panic!("proxyd refuses {:?}:\n{e}", words.iter().map(AsRef::as_ref).collect::<Vec<_>>()))
}

fn strings(value: &Value) -> Vec<String> {
    value.as_array().expect("a list").iter().map(|v| v.as_str().expect("a string").to_owned()).collect()
}

/// The name stage of `policies/<name>.yaml`, compiled by the library.
fn policy_table(name: &str) -> PolicyTable {
    let path = format!("policies/{name}.yaml");
    let checked = acl::check_source(&path, &read(&path), ActionSet::default());
    let policy = checked.policy.unwrap_or_else(|| panic!("{path} does not compile: {:#?}", checked.diagnostics));
    PolicyTable::new(&policy)
}

fn verdict(table: &PolicyTable, role: Option<&str>, name: &str) -> Verdict {
    table.decide(role, &host::canonical(name).expect("a valid host")).verdict
}

// ---------------------------------------------------------------- Dockerfile

/// One Dockerfile instruction: keyword and the rest of the line.
fn instructions(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            assert!(!l.ends_with('\\'), "keep Dockerfile instructions on one line so this test reads them: {l}");
            let (keyword, rest) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            (keyword.to_ascii_uppercase(), rest.trim().to_owned())
        })
        .collect()
}

/// The instructions of each stage, split at `FROM`.
fn stages(text: &str) -> Vec<Vec<(String, String)>> {
    let mut stages: Vec<Vec<(String, String)>> = Vec::new();
    for (keyword, rest) in instructions(text) {
        if keyword == "FROM" {
            stages.push(Vec::new());
        }
        stages.last_mut().expect("the Dockerfile starts with FROM").push((keyword, rest));
    }
    stages
}

fn json_words(rest: &str) -> Vec<String> {
    strings(&serde_json::from_str(rest).unwrap_or_else(|e| panic!("not an exec-form JSON list: {rest}: {e}")))
}

#[test]
fn dockerfile_builds_with_the_ci_script_and_runs_as_non_root() {
    let stages = stages(&read("Dockerfile"));
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage");
    let (build, runtime) = (&stages[0], &stages[1]);

    // Build stage: the toolchain is at least the workspace's rust-version,
    // and its only build step is the script CI runs.
    let from = &build[0].1;
    let toolchain = from.split_once(':').expect("a tagged rust image").1.split('-').next().unwrap();
    let manifest = read("Cargo.toml");
    let msrv =
        manifest.lines().find_map(|l| l.strip_prefix("rust-version = ")).expect("rust-version").trim_matches('"');
    assert!(from.starts_with("rust:") && toolchain == msrv, "build image {from} should be rust:{msrv}");
    assert!(from.ends_with(" AS build"), "{from}");
    let runs: Vec<&str> = build.iter().filter(|(k, _)| k == "RUN").map(|(_, r)| r.as_str()).collect();
    assert_eq!(runs, ["deploy/build-stage.sh /out \"$POLICY\""]);
    let script = repo_root().join("deploy/build-stage.sh");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&script).unwrap().permissions());
    assert!(mode & 0o111 != 0, "deploy/build-stage.sh must be executable");
    let default_policy =
        build.iter().find_map(|(k, r)| if k == "ARG" { r.strip_prefix("POLICY=") } else { None }).expect("ARG POLICY=");
    assert!(repo_root().join(format!("policies/{default_policy}.yaml")).is_file());

    // Runtime stage: nothing but the file system the script lays out
    // (OUT_DIR/rootfs, static binaries), non-root.
    assert_eq!(runtime[0].1, "scratch", "the runtime stage is FROM scratch: the binaries are static");
    let user = runtime.iter().find(|(k, _)| k == "USER").map(|(_, r)| r.as_str()).expect("a USER");
    let uid: u32 = user.split(':').next().unwrap().parse().expect("a numeric USER, so runAsNonRoot can verify it");
    assert_ne!(uid, 0);
    let script_text = read("deploy/build-stage.sh");
    assert!(script_text.contains("STATIC"), "the script builds static binaries on request");
    assert!(build.iter().any(|(k, r)| k == "ENV" && r == "STATIC=1"), "the build stage asks for static binaries");
    let copies: Vec<&str> = runtime.iter().filter(|(k, _)| k == "COPY").map(|(_, r)| r.as_str()).collect();
    assert_eq!(copies, ["--from=build /out/rootfs/ /"], "the image is exactly the script's OUT_DIR/rootfs");
    assert!(script_text.contains("OUT_DIR/rootfs"), "the script documents the file system it lays out");
    let policy_dir = "/etc/proxyd/policy";
    assert!(script_text.contains(&format!("$root{policy_dir}")), "the script puts the policy in {policy_dir}");

    // The default command is one proxyd accepts, serving the baked-in table.
    let entrypoint = runtime.iter().find(|(k, _)| k == "ENTRYPOINT").map(|(_, r)| json_words(r)).unwrap();
    assert_eq!(entrypoint, ["/usr/local/bin/proxyd"]);
    let cmd = runtime.iter().find(|(k, _)| k == "CMD").map(|(_, r)| json_words(r)).unwrap();
    let args = proxyd_args(&cmd);
    assert_eq!(args.policy.as_deref(), Some(Path::new(policy_dir).join("policy.bin").as_path()));
    assert!(args.proxy_password_env.is_some(), "the image must not start as an open proxy");
    let exposed: BTreeSet<u16> = runtime
        .iter()
        .filter(|(k, _)| k == "EXPOSE")
        .flat_map(|(_, r)| r.split_whitespace().map(|p| p.parse::<u16>().unwrap()).collect::<Vec<_>>())
        .collect();
    let admin: SocketAddr = args.admin_listen.expect("the image serves the admin endpoints");
    assert_eq!(exposed, BTreeSet::from([args.listen_port.unwrap_or(4750), admin.port()]));
}

// ------------------------------------------------------------------ Fly.io

#[test]
fn fly_toml_reproduces_the_seed_deployment() {
    let fly: toml::Table = read("deploy/fly.toml").parse().expect("deploy/fly.toml is valid TOML");
    let dockerfile = fly["build"]["dockerfile"].as_str().unwrap();
    assert!(repo_root().join("deploy").join(dockerfile).is_file(), "{dockerfile} relative to deploy/");
    let policy = fly["build"]["args"]["POLICY"].as_str().unwrap();
    assert_eq!(policy, "fly");

    // The seed ACL: `authed` reports, the default rule enforces.
    let table = policy_table(policy);
    assert_eq!(verdict(&table, Some("authed"), "api.example.com"), Verdict::AllowAndReport);
    assert_eq!(verdict(&table, None, "api.example.com"), Verdict::Deny);

    // The process command line: the proxy password from the secret, role `authed`.
    let command = fly["processes"]["app"].as_str().unwrap();
    let args = proxyd_args(&command.split_whitespace().collect::<Vec<_>>());
    assert_eq!(args.proxy_password_env.as_deref(), Some("PROXY_PASSWORD"));
    assert_eq!(args.proxy_auth_role.as_deref().unwrap_or("authed"), "authed");
    assert!(args.allow_missing_role, "clients without the password fall to the default rule");
    assert_eq!(args.policy.as_deref(), Some(Path::new("/etc/proxyd/policy/policy.bin")));

    // Port 4750 on the TCP service; health checked on the admin port.
    let service = &fly["services"].as_array().unwrap()[0];
    assert_eq!(service["protocol"].as_str(), Some("tcp"));
    let listen_port = i64::from(args.listen_port.unwrap_or(4750));
    assert_eq!(service["internal_port"].as_integer(), Some(listen_port));
    assert_eq!(service["ports"][0]["port"].as_integer(), Some(4750));
    let admin = args.admin_listen.expect("--admin-listen");
    assert_ne!(admin.port(), 4750);
    let check = &fly["checks"]["readyz"];
    assert_eq!(check["type"].as_str(), Some("http"));
    assert_eq!(check["port"].as_integer(), Some(i64::from(admin.port())));
    assert_eq!(check["path"].as_str(), Some("/readyz"));
    assert_eq!(fly["metrics"]["port"].as_integer(), Some(i64::from(admin.port())));
    assert_eq!(fly["metrics"]["path"].as_str(), Some("/metrics"));

    // Fly kills the Machine after kill_timeout: proxyd must have drained first.
    let kill = parse_duration(fly["kill_timeout"].as_str().unwrap()).unwrap();
    let grace = args.shutdown_grace.expect("an explicit --shutdown-grace");
    assert_eq!(kill, grace + Duration::from_secs(5), "kill_timeout = --shutdown-grace + 5 s to exit");
}

// --------------------------------------------------------------- Kubernetes

fn kubernetes(file: &str) -> Value {
    yaml(&format!("deploy/kubernetes/{file}"))
}

#[test]
fn kubernetes_manifests_agree_with_each_other_and_with_proxyd() {
    let kustomization = kubernetes("kustomization.yaml");
    let resources = strings(&kustomization["resources"]);
    let on_disk: BTreeSet<String> = std::fs::read_dir(repo_root().join("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(resources.iter().cloned().collect::<BTreeSet<_>>(), on_disk, "every manifest is a resource");

    let deployment = kubernetes("deployment.yaml");
    let service = kubernetes("service.yaml");
    let pdb = kubernetes("poddisruptionbudget.yaml");
    assert_eq!(deployment["kind"], "Deployment");
    assert_eq!(service["kind"], "Service");
    assert_eq!(pdb["kind"], "PodDisruptionBudget");

    // Selectors: the Deployment, the Service and the PDB pick the same pods.
    let pod = &deployment["spec"]["template"];
    let labels = &pod["metadata"]["labels"];
    assert_eq!(&deployment["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(&service["spec"]["selector"], labels);
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], labels);
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() >= 2, "more than one replica behind the Service");

    let container = &pod["spec"]["containers"][0];
    let args = proxyd_args(&strings(&container["args"]));
    let port = |name: &str| {
        container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("container port {name}"))
    };
    assert_eq!(port("proxy"), u64::from(args.listen_port.unwrap_or(4750)));
    let admin = args.admin_listen.expect("--admin-listen");
    assert_eq!(port("admin"), u64::from(admin.port()));
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "proxy", "the Service exposes the proxy port only");
    assert_eq!(service["spec"]["ports"].as_array().unwrap().len(), 1);

    // Probes on the admin port.
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], "admin");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], "admin");

    // The termination grace period covers preStop + --shutdown-grace + 5 s to exit.
    let grace = args.shutdown_grace.expect("an explicit --shutdown-grace");
    let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"].as_u64().unwrap();
    let termination = pod["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert_eq!(Duration::from_secs(termination), Duration::from_secs(pre_stop) + grace + Duration::from_secs(5));

    // The policy: a ConfigMap from the kustomize generator, mounted as a
    // directory (never subPath, which would never update), and named by --policy.
    let policy = args.policy.expect("--policy");
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| policy.starts_with(m["mountPath"].as_str().unwrap()))
        .expect("--policy lies inside a volume mount");
    assert!(mount.get("subPath").is_none(), "a subPath mount never receives ConfigMap updates");
    assert_eq!(policy.parent(), Some(Path::new(mount["mountPath"].as_str().unwrap())));
    let volume = pod["spec"]["volumes"].as_array().unwrap().iter().find(|v| v["name"] == mount["name"]).unwrap();
    let generator = &kustomization["configMapGenerator"][0];
    assert_eq!(volume["configMap"]["name"], generator["name"]);
    assert_eq!(strings(&generator["files"]), [policy.file_name().unwrap().to_str().unwrap()]);
    assert_eq!(kustomization["generatorOptions"]["disableNameSuffixHash"], true, "a hash suffix would restart pods");

    // The public key that verifies the table: from its own ConfigMap, mounted as a directory.
    for key in &args.policy_public_key {
        let mount = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| key.parent() == Some(Path::new(m["mountPath"].as_str().unwrap())))
            .expect("--policy-public-key lies in a volume mount");
        let volume = pod["spec"]["volumes"].as_array().unwrap().iter().find(|v| v["name"] == mount["name"]).unwrap();
        let generator = kustomization["configMapGenerator"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["name"] == volume["configMap"]["name"])
            .expect("the key's ConfigMap is generated by the kustomization");
        assert_eq!(strings(&generator["files"]), [key.file_name().unwrap().to_str().unwrap()]);
    }

    // The admin token comes from a Secret mounted for proxyd's user only.
    if let Some(token) = &args.admin_token_file {
        let mount = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| token.parent() == Some(Path::new(m["mountPath"].as_str().unwrap())))
            .expect("--admin-token-file lies in a volume mount");
        let volume = pod["spec"]["volumes"].as_array().unwrap().iter().find(|v| v["name"] == mount["name"]).unwrap();
        assert!(volume["secret"]["secretName"].is_string(), "the admin token is a Secret");
        assert_eq!(volume["secret"]["defaultMode"].as_u64(), Some(0o400), "a token file others may read is refused");
    }

    // The password comes from a Secret, never from the manifest.
    let env = container["env"].as_array().unwrap();
    let password = env.iter().find(|e| Some(e["name"].as_str().unwrap()) == args.proxy_password_env.as_deref());
    assert!(password.expect("the password variable")["valueFrom"]["secretKeyRef"].is_object());

    // Least privilege.
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false);
    assert!(
        container["resources"]["requests"]["cpu"].is_string() && container["resources"]["limits"]["memory"].is_string()
    );
}

// ------------------------------------------------------ the real binary

/// The command lines of the three deployments and the policy each ships.
fn deployment_command_lines() -> Vec<(&'static str, Vec<String>, String)> {
    let dockerfile = stages(&read("Dockerfile"));
    let cmd = dockerfile[1].iter().find(|(k, _)| k == "CMD").map(|(_, r)| json_words(r)).unwrap();
    let image_policy =
        dockerfile[0].iter().find_map(|(k, r)| if k == "ARG" { r.strip_prefix("POLICY=") } else { None });
    let fly: toml::Table = read("deploy/fly.toml").parse().unwrap();
    let fly_cmd = fly["processes"]["app"].as_str().unwrap().split_whitespace().map(str::to_owned).collect();
    let k8s = strings(&kubernetes("deployment.yaml")["spec"]["template"]["spec"]["containers"][0]["args"]);
    vec![
        ("Dockerfile CMD", cmd, image_policy.unwrap().to_owned()),
        ("deploy/fly.toml", fly_cmd, fly["build"]["args"]["POLICY"].as_str().unwrap().to_owned()),
        ("deploy/kubernetes", k8s, "default".to_owned()),
    ]
}

/// The same command line, moved to loopback and ephemeral ports, serving
/// `policy` (the file the deployment would have at `--policy`) and trusting
/// `public_key` where it names a `--policy-public-key`.
fn on_loopback(words: &[String], policy: &Path, public_key: &Path, admin_token: &Path) -> Vec<String> {
    let mut out = vec!["--listen-port".to_owned(), "0".to_owned()];
    let mut words = words.iter();
    while let Some(word) = words.next() {
        out.push(word.clone());
        let replacement = match word.as_str() {
            "--listen-ip" => Some("127.0.0.1".to_owned()),
            "--admin-listen" => Some("127.0.0.1:0".to_owned()),
            "--policy" => Some(policy.display().to_string()),
            "--policy-public-key" => Some(public_key.display().to_string()),
            "--admin-token-file" => Some(admin_token.display().to_string()),
            _ => None,
        };
        if let Some(value) = replacement {
            words.next().expect("a flag value");
            out.push(value);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_deployment_command_line_starts_a_ready_proxyd() {
    for (source, words, policy_name) in deployment_command_lines() {
        let dir = tempfile::tempdir().unwrap();
        let acl_path = format!("policies/{policy_name}.yaml");
        let yaml = read(&acl_path);
        let policy = acl::check_source(&acl_path, &yaml, ActionSet::default()).policy.expect("a shipped policy");
        let mut bytes =
            table::encode(&policy, &Metadata::for_source(Path::new(&acl_path), yaml.as_bytes(), ActionSet::default()));
        let revision = table::decode(&bytes).unwrap().revision().to_owned();
        // A deployment that verifies signatures gets a table signed by a test key.
        let verifies = words.iter().any(|w| w == "--policy-public-key");
        let public_key = dir.path().join("policy-signing.pub");
        if verifies {
            let (_, key) = PrivateKey::generate(&ring::rand::SystemRandom::new()).unwrap();
            std::fs::write(&public_key, key.public_key().to_text()).unwrap();
            bytes = signature::sign_table(&bytes, &key, 1).unwrap();
        }
        let table_path = dir.path().join("policy.bin");
        std::fs::write(&table_path, &bytes).unwrap();

        let admin_token = dir.path().join("admin-token");
        std::fs::write(&admin_token, "deploy-test-admin-token\n").unwrap();
        std::fs::set_permissions(&admin_token, std::os::unix::fs::PermissionsExt::from_mode(0o400)).unwrap();
        let args = on_loopback(&words, &table_path, &public_key, &admin_token);
        let mut child = KillOnDrop(
            Command::new(env!("CARGO_BIN_EXE_proxyd"))
                .args(&args)
                .env("PROXY_PASSWORD", "deploy-test-password")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let stderr = child.0.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let listening = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines.recv_timeout(left).unwrap_or_else(|_| panic!("{source}: proxyd {args:?} did not start"));
            let value: Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("{source}: not JSON ({e}): {line}"));
            if value["message"] == "proxyd listening" {
                break value;
            }
        };
        let admin: SocketAddr = listening["admin"].as_str().expect("admin address").parse().unwrap();
        assert_eq!(testkit::scrape::get(admin, "/readyz").await.status, 200, "{source}");
        let policy_request = "GET /policy HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer deploy-test-admin-token\r\n\r\n";
        let served: Value =
            serde_json::from_str(&testkit::scrape::request(admin, policy_request.as_bytes()).await.body).unwrap();
        assert_eq!(served["revision"], revision.as_str(), "{source} serves the policy it names");
        let signature = if verifies { "verified" } else { "not checked" };
        assert_eq!(served["signature"], signature, "{source}");
    }
}

/// A child process that does not outlive a failed assertion.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `make run`'s configuration loads, with the admin listener on loopback.
#[test]
fn the_development_config_loads() {
    let args = proxyd_args(&["--config-file", &repo_root().join("deploy/dev.yaml").display().to_string()]);
    let config = proxyd::Config::load(Args { policy: Some(PathBuf::from("target/policy/default.bin")), ..args })
        .unwrap_or_else(|e| panic!("deploy/dev.yaml: {e}"));
    let admin = config.admin_listen.expect("make run serves the admin endpoints");
    assert!(admin.ip().is_loopback() && admin.port() != 4750, "{admin}");
}
