//! The man pages, generated from the command line's own definitions (clap_mangen): kindler(8)
//! with the commands, every KINDLER_* variable, the files, the API and its metrics; and one
//! page per command, kindler-serve(8), kindler-ls(1), ... `debian/rules` writes them at
//! build time with `kindler manpages DIR`.

use std::io::Write;
use std::path::Path;

use clap_mangen::Man;

/// The commands that administer the daemon (section 8); the others are clients (section 1).
const ADMIN: [&str; 3] = ["serve", "reconcile", "migrate"];

/// Writes kindler.8 and a page per visible command into `dir`.
pub fn write_all(cmd: clap::Command, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = cmd;
    cmd.build();
    let write = |name: String, page: Vec<u8>| std::fs::write(dir.join(name), ascii(&page));
    write("kindler.8".into(), main_page(&cmd)?)?;
    for sub in commands(&cmd) {
        let name = sub.get_name();
        let section = if ADMIN.contains(&name) { "8" } else { "1" };
        let page = sub
            .clone()
            .display_name(format!("kindler-{name}"))
            .bin_name(format!("kindler {name}"));
        let mut out = Vec::new();
        manual(Man::new(page), section).render(&mut out)?;
        writeln!(out, ".SH \"SEE ALSO\"")?;
        writeln!(out, ".BR kindler (8)")?;
        write(format!("kindler-{name}.{section}"), out)?;
    }
    Ok(())
}

/// The page with every character beyond ASCII as a groff escape (`\[u2013]`), so that it
/// reads the same whatever encoding the reader's man assumes.
/// ... and with the packaged scripts' directory where a default names the source checkout
/// this binary was built in (the package's binary finds its scripts in /usr/lib/kindler).
fn ascii(page: &[u8]) -> Vec<u8> {
    let checkout = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts");
    let text = String::from_utf8_lossy(page)
        .replace(checkout, "/usr/lib/kindler")
        .replace(&checkout.replace('-', "\\-"), "/usr/lib/kindler");
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            out.push_str(&format!("\\[u{:04X}]", c as u32));
        }
    }
    out.into_bytes()
}

/// The commands that get a page: the visible ones, not clap's own `help`.
fn commands(cmd: &clap::Command) -> impl Iterator<Item = &clap::Command> {
    cmd.get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
}

fn manual(man: Man, section: &str) -> Man {
    man.section(section)
        .manual("kindler")
        .source(format!("kindler {}", env!("CARGO_PKG_VERSION")))
}

/// Text for roff: backslashes and minus signs escaped, no line starting with a control
/// character.
pub fn roff(text: &str) -> String {
    text.lines()
        .map(|l| {
            let l = l.replace('\\', "\\e").replace('-', "\\-");
            if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}")
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn main_page(cmd: &clap::Command) -> std::io::Result<Vec<u8>> {
    let man = manual(Man::new(cmd.clone()), "8");
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    out.extend_from_slice(DESCRIPTION.as_bytes());
    writeln!(out, ".SH COMMANDS")?;
    for sub in commands(cmd) {
        let name = sub.get_name();
        let section = if ADMIN.contains(&name) { "8" } else { "1" };
        let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
        writeln!(out, ".TP\n.B kindler {}\n{}", roff(name), roff(&about))?;
        writeln!(out, "See\n.BR kindler\\-{} ({section}).", roff(name))?;
    }
    out.extend_from_slice(EXIT_STATUS.as_bytes());
    writeln!(out, ".SH ENVIRONMENT")?;
    writeln!(
        out,
        "Settings come from the embedded defaults, then the configuration file, then these \
         variables, then the flags of the same names, each overriding the one before. \
         A value is checked the same way whichever gives it."
    )?;
    let serve = cmd
        .find_subcommand("serve")
        .expect("the serve command exists");
    for arg in serve.get_arguments() {
        let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) else {
            continue;
        };
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        let default: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        writeln!(out, ".TP\n.B {}", roff(&env.to_string_lossy()))?;
        write!(out, "{} (flag \\fB\\-\\-{}\\fR", roff(&help), roff(long))?;
        if !default.is_empty() && !default[0].is_empty() {
            write!(out, "; default \\fI{}\\fR", roff(&default.join(",")))?;
        }
        writeln!(out, ").")?;
    }
    out.extend_from_slice(ENVIRONMENT_MORE.as_bytes());
    out.extend_from_slice(FILES.as_bytes());
    out.extend_from_slice(API.as_bytes());
    out.extend_from_slice(SEE_ALSO.as_bytes());
    man.render_version_section(&mut out)?;
    Ok(out)
}

const DESCRIPTION: &str = r#".SH DESCRIPTION
.B kindler
keeps the local Kubernetes clusters (k3d or kind) declared over its HTTP API in an
SQLite database and makes them exist: it runs the configured create, delete, start and
stop commands for each cluster, verifies running clusters with the probe command, and
retries failures with exponential backoff.
.PP
.B kindler serve
is the daemon. It is meant to run as the systemd service
.BR kindler.service ,
activated by
.B kindler.socket
(TCP, 127.0.0.1:8765, for the WebUI) and
.B kindler\-api.socket
(the unix socket
.IR /run/kindler/api.sock ,
for root and members of the group
.BR kindler ).
systemd holds both sockets while the daemon restarts or is upgraded, so clients wait
instead of being refused.
.PP
The other commands are clients of that API:
.B kindler ls
lists the clusters,
.B kindler create dev \-\-provider k3d \-\-wait
declares one and follows its create live,
.B kindler status
shows the daemon.
They reach kindler at
.B \-\-server
or
.BR KINDLER_SERVER ;
otherwise at
.I /run/kindler/api.sock
when it exists and can be opened, else at http://127.0.0.1:8765.
.PP
Commands run with an argument vector (never a shell), each in its own process group,
and get only an allow\-list of kindler's environment:
.BR PATH ,
.BR HOME ,
.BR LANG ,
.BR LANGUAGE ,
.BR LC_* ,
.BR TZ ,
.BR USER ,
.BR LOGNAME ,
.BR TMPDIR ,
and when set
.BR DOCKER_HOST ,
.BR DOCKER_CONFIG ,
.BR DOCKER_CONTEXT ,
.BR DOCKER_CERT_PATH ,
.BR DOCKER_TLS_VERIFY ,
.BR KUBECONFIG ,
.B KIND_EXPERIMENTAL_PROVIDER
and
.BR K3D_* ;
then what the setting
.B script_env_pass
names and what
.B script_env_set
sets; then the cluster's fields as
.B KINDLER_*
variables. Anything else in kindler's environment (tokens, passwords, proxies,
kindler's own settings) does not reach them.
.PP
On TCP the API refuses requests naming a host other than a loopback name or address
(or one in
.BR allowed_hosts ),
changes from pages of another origin (unless in
.BR allowed_origins ),
and request bodies that are not JSON; the unix socket is exempt.
"#;

const EXIT_STATUS: &str = r#".SH "EXIT STATUS"
.TP
.B 0
Done; the daemon stopped after a stop signal; with
.BR \-\-wait ,
the cluster is as declared.
.TP
.B 1
kindler refused a client's request, or (with
.BR \-\-wait )
the action failed; the daemon ended at once on a second stop signal;
.B reconcile \-\-once
saw an action fail, or found another kindler working on the database.
.TP
.B 2
A usage error: an unknown option, a bad value, an invalid cluster name (checked before
anything is sent).
.TP
.B 3
A client cannot reach kindler, or
.B \-\-wait
ran out of time.
.TP
.B 78
A configuration error, or nothing to listen on (EX_CONFIG); the unit's
.B RestartPreventExitStatus=78
keeps systemd from restarting a daemon that cannot start.
"#;

const ENVIRONMENT_MORE: &str = r#".TP
.B KINDLER_SERVER
Where the client commands reach kindler (flag \fB\-\-server\fR): http://HOST:PORT or
unix:/PATH.
.TP
.B NO_COLOR
When set (and not empty), the client commands print no colour. Colour is used only on a
terminal anyway.
.TP
.B STATE_DIRECTORY
Set by systemd's StateDirectory=; the default database is kindler.db there.
.PP
Scripts do not get kindler's own KINDLER_* variables. They get an allow\-list of its
environment (PATH, HOME, locale, TZ, the tools' own variables), what
.B script_env_pass
names and
.B script_env_set
sets, and the cluster's fields: KINDLER_CLUSTER, KINDLER_PROVIDER, KINDLER_CONTEXT,
KINDLER_NODE_PORT, KINDLER_PF_PORT, KINDLER_HTTP_PORT, KINDLER_HTTPS_PORT,
KINDLER_CLUSTER_SUBNET, KINDLER_REGISTER_PORTAINER, KINDLER_HAPROXY_ROUTE,
KINDLER_REGISTER_ARGOCD, KINDLER_ACTION, KINDLER_RUN_ID, KINDLER_ATTEMPT,
KINDLER_GENERATION and KINDLER_PROCESS_TAG.
"#;

const FILES: &str = r#".SH FILES
.TP
.I /etc/kindler/kindler.toml
Configuration file; every setting is shown with its default, commented out.
Apply changes with
.BR "systemctl reload kindler" .
.TP
.I /var/lib/kindler/kindler.db
The SQLite database with the declared and observed state of the clusters and the runs'
history (with \fIkindler.db.lock\fR, held by the kindler working on it).
.TP
.I /usr/lib/kindler/
The default create, delete, start, stop and probe scripts.
.TP
.I /run/kindler/api.sock
The HTTP API on a unix socket (root and the group kindler).
.TP
.I /lib/systemd/system/kindler.service, kindler.socket, kindler\-api.socket
The units.
.TP
.I /usr/share/doc/kindler/README.Debian
Who can use the API, sockets and upgrades, removing the package.
"#;

const API: &str = r#".SH API
Every socket serves the same API (JSON; errors are {"detail": ...}):
.TP
.B GET /api/health
200 while declarations are acted on; 503 with every reason otherwise.
.TP
.B GET /api/status
Version, database, sockets, clusters by state, the next retry (what
.B kindler status
shows).
.TP
.B GET /api/clusters\fR, \fBPOST /api/clusters
List the clusters; declare one (202 with its task id).
.TP
.B GET\fR, \fBDELETE /api/clusters/NAME
One cluster; declare it absent.
.TP
.B POST /api/clusters/NAME/start\fR, \fB.../stop\fR, \fB.../forget
Declare it present or stopped; remove it from the store without running its delete.
.TP
.B GET /api/clusters/NAME/status\fR, \fB.../history
Nodes and add\-ons; its runs, newest first.
.TP
.B GET /api/tasks/ID\fR, \fBGET /ws/tasks
A declaration's task; task updates over a WebSocket.
.TP
.B GET /metrics
Prometheus metrics: kindler_clusters, kindler_reconcile_total,
kindler_reconcile_errors_total, kindler_reconcile_time_seconds, kindler_actions_running,
kindler_actions_waiting, kindler_http_requests_total, kindler_store_write_seconds,
kindler_change_feed_lag_seconds, process_* and kindler_build_info, among others.
.SH EXAMPLES
.nf
kindler create dev \-\-provider k3d \-\-wait
kindler ls \-w
kindler logs dev \-f
curl \-\-unix\-socket /run/kindler/api.sock http://localhost/api/clusters
journalctl \-u kindler KINDLER_CLUSTER=dev
.fi
"#;

const SEE_ALSO: &str = r#".SH "SEE ALSO"
.BR kindler\-ls (1),
.BR kindler\-create (1),
.BR kindler\-serve (8),
.BR systemctl (1),
.BR journalctl (1),
.BR systemd.socket (5),
.BR systemd.service (5),
.I /usr/share/doc/kindler/README.Debian
"#;
