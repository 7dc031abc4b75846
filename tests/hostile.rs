//! Hostile clients and least privilege (issue 9): floods cannot lock kindler out, pages of
//! other sites and rebound DNS names cannot drive it, and scripts see only what they need.
//! Through the real binary, real sockets and real processes.

mod common;

use std::time::Duration;

use common::Env;

const SEC: Duration = Duration::from_secs(1);

#[test]
fn scripts_get_an_allow_list_of_the_daemons_environment_and_no_secrets() {
    let env = Env::new();
    let mut cmd = env.command(&[
        "--script-env-pass",
        "STANDIN_DIR,MY_VAR,MY_PREFIX_*",
        "--script-env-set",
        "EXTRA=fixed,LANG=C",
    ]);
    for (k, v) in [
        ("FOO_TOKEN", "secret1"),
        ("AWS_SECRET_ACCESS_KEY", "secret2"),
        ("GITHUB_TOKEN", "secret3"),
        ("DATABASE_URL", "postgres://u:secret4@db/x"),
        ("DOCKER_HOST", "unix:///run/docker.sock"),
        ("KUBECONFIG", "/var/lib/kindler/.kube/config"),
        ("LC_ALL", "C.UTF-8"),
        ("LANG", "de_DE.UTF-8"),
        ("MY_VAR", "mine"),
        ("MY_PREFIX_A", "a"),
        ("MY_OTHER", "not passed"),
    ] {
        cmd.env(k, v);
    }
    let _d = env.spawn(cmd);
    let r = env.post("/api/clusters", r#"{"name":"dev","provider":"k3d"}"#);
    assert_eq!(r.status, 202, "{r:?}");
    env.await_state("dev", "running", 10 * SEC);
    let seen = env.script_env("create-dev");
    for secret in [
        "FOO_TOKEN",
        "AWS_SECRET_ACCESS_KEY",
        "GITHUB_TOKEN",
        "DATABASE_URL",
        "MY_OTHER",
    ] {
        assert!(
            !seen.contains_key(secret),
            "{secret} reached the script: {seen:?}"
        );
    }
    assert!(
        !seen.values().any(|v| v.contains("secret")),
        "no secret value either: {seen:?}"
    );
    for (k, v) in [
        ("DOCKER_HOST", "unix:///run/docker.sock"),
        ("KUBECONFIG", "/var/lib/kindler/.kube/config"),
        ("LC_ALL", "C.UTF-8"),
        ("MY_VAR", "mine"),
        ("MY_PREFIX_A", "a"),
        ("EXTRA", "fixed"),
        ("LANG", "C"),
        ("KINDLER_CLUSTER", "dev"),
    ] {
        assert_eq!(seen.get(k).map(String::as_str), Some(v), "{k}: {seen:?}");
    }
    assert!(seen.contains_key("PATH"));
    // kindler's own settings stay kindler's.
    assert!(!seen.contains_key("KINDLER_CONFIG"), "{seen:?}");
}

#[test]
fn environment_settings_are_checked() {
    let env = Env::new();
    for (flag, value) in [
        ("--script-env-pass", "BAD-NAME"),
        ("--script-env-pass", "KINDLER_CONFIG"),
        ("--script-env-set", "NOEQUALS"),
        ("--script-env-set", "KINDLER_X=1"),
    ] {
        let out = env.command(&[flag, value]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(text.contains(flag), "{text}");
    }
}
