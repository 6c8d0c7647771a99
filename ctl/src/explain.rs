//! `lanyardctl explain`: would a connection (or an HTTP request) be allowed, and which policy
//! decides. From config files it walks the hops the data path takes (the waypoint, if one is
//! bound, then the destination's node agent) with the same decision functions they call
//! (`MeshState::authorize_at_waypoint`, `MeshState::admit_inbound`); with `--agent` it asks a
//! running agent, which answers from its live state.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use clap::Args;
use lanyard_core::policy::authz::{Decision, Headers, HttpAttrs, Request};
use lanyard_core::policy::peer::MtlsMode;
use lanyard_core::state::{MeshState, Peer, Protocol, Service, Workload};
use serde::Serialize;

use crate::output::{self, Format};
use crate::{admin, input, Error, Mesh, Outcome, OutputArg};

#[derive(Args)]
pub struct Cmd {
    /// Config files to decide from (as the agents would load them).
    #[arg(short = 'f', long = "file", conflicts_with = "agent")]
    files: Vec<std::path::PathBuf>,
    /// Decide from the cluster's objects (in-cluster credentials or KUBECONFIG).
    #[arg(long, conflicts_with_all = ["agent", "files"])]
    kube: bool,
    /// Ask a running agent's admin endpoint instead (`host:port`); --from and --to are then
    /// IP addresses.
    #[arg(long)]
    agent: Option<String>,
    /// The client: `namespace/pod` or a pod IP.
    #[arg(long)]
    from: String,
    /// The destination: `namespace/pod:port`, `namespace/service:port`, or `IP:port`.
    #[arg(long)]
    to: String,
    /// HTTP method of the request (at a waypoint).
    #[arg(long, default_value = "GET")]
    method: String,
    /// HTTP path of the request (at a waypoint).
    #[arg(long, default_value = "/")]
    path: String,
    /// A request header, `name=value` (repeatable).
    #[arg(long = "header", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// The request's authenticated JWT principal (`issuer/subject`).
    #[arg(long)]
    request_principal: Option<String>,
    /// The agents' mesh-wide mTLS default (`--mtls-mode` of lanyard-agent).
    #[arg(long, value_enum, default_value_t = Mode::Permissive)]
    mtls_mode: Mode,
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    #[arg(long, default_value = "istio-system")]
    root_namespace: String,
    #[command(flatten)]
    out: OutputArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Mode {
    Permissive,
    Strict,
}

fn parse_header(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .ok_or_else(|| format!("{raw:?}: expected name=value"))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Explanation {
    source: String,
    source_identity: Option<String>,
    destination: String,
    via_waypoint: Option<String>,
    steps: Vec<Step>,
    allowed: bool,
    notes: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Step {
    /// Where the decision is made.
    at: String,
    allowed: bool,
    decided_by: Option<String>,
    reason: String,
}

enum Target {
    Workload(Arc<Workload>, u16),
    Service(Arc<Service>, u16),
}

pub fn run(cmd: Cmd) -> Result<Outcome, Error> {
    let ex = match &cmd.agent {
        Some(agent) => live(&cmd, agent)?,
        None => offline(&cmd)?,
    };
    print(cmd.out.output, &ex)?;
    Ok(if ex.allowed { Outcome::Ok } else { Outcome::No })
}

fn print(format: Format, ex: &Explanation) -> Result<(), Error> {
    if let Some(text) = output::structured(format, ex)? {
        println!("{text}");
        return Ok(());
    }
    let id = ex.source_identity.as_deref().unwrap_or("plaintext");
    println!("FROM  {} ({id})", ex.source);
    match &ex.via_waypoint {
        Some(w) => println!("TO    {} via waypoint {w}", ex.destination),
        None => println!("TO    {}", ex.destination),
    }
    println!();
    let rows: Vec<Vec<String>> = ex
        .steps
        .iter()
        .map(|s| {
            vec![
                s.at.clone(),
                if s.allowed { "ALLOW" } else { "DENY" }.into(),
                s.decided_by.clone().unwrap_or_else(|| "-".into()),
                s.reason.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(&["STEP", "RESULT", "DECIDED BY", "REASON"], &rows)
    );
    for n in &ex.notes {
        println!("note: {n}");
    }
    println!();
    println!("{}", if ex.allowed { "allowed" } else { "denied" });
    Ok(())
}

fn step(at: String, d: &Decision) -> Step {
    let by = d.policy();
    Step {
        at,
        allowed: d.allowed,
        decided_by: (!by.is_empty()).then_some(by),
        reason: d.reason.to_string(),
    }
}

fn offline(cmd: &Cmd) -> Result<Explanation, Error> {
    if cmd.files.is_empty() && !cmd.kube {
        return Err(Error::Usage(
            "explain needs config files (-f), the cluster (--kube) or a running agent (--agent)"
                .into(),
        ));
    }
    let state = input::load(&Mesh {
        files: cmd.files.clone(),
        kube: cmd.kube,
        trust_domain: cmd.trust_domain.clone(),
        cluster_domain: cmd.cluster_domain.clone(),
        root_namespace: cmd.root_namespace.clone(),
    })?;
    let src = source(&state, &cmd.from)?;
    let src_ip =
        IpAddr::V4(src.ip.ok_or_else(|| {
            Error::NotFound(format!("pod {}/{} has no IP", src.namespace, src.name))
        })?);
    let identity = state
        .is_captured(&src)
        .then(|| src.identity(state.trust_domain()));
    let target = target(&state, &cmd.to)?;
    let mut ex = Explanation {
        source: format!("{}/{}", src.namespace, src.name),
        source_identity: identity.as_ref().map(|i| i.to_string()),
        destination: cmd.to.clone(),
        via_waypoint: None,
        steps: Vec::new(),
        allowed: true,
        notes: Vec::new(),
    };
    let (svc, port) = match &target {
        Target::Service(s, p) => (Some(s.as_ref()), *p),
        Target::Workload(_, p) => (None, *p),
    };
    let waypoint = match &target {
        Target::Service(s, _) => state.waypoint_for_service(s),
        Target::Workload(w, _) => state.waypoint_for_workload(w),
    };
    let mut peer = Peer {
        ip: src_ip,
        identity: identity.clone(),
    };
    // Only mesh traffic is sent to a waypoint: a plaintext client reaches the pod directly.
    if let (Some(wp), Some(id)) = (&waypoint, &identity) {
        ex.via_waypoint = Some(format!("{}/{}", wp.namespace, wp.name));
        let http = svc
            .and_then(|s| s.port(port))
            .is_none_or(|p| p.protocol() != Protocol::Tcp);
        let host = svc.map(|s| s.hostname(state.cluster_domain()));
        let principal = id.principal();
        let headers: Vec<(&str, &str)> = cmd
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let dst_ip = match &target {
            Target::Service(s, _) => s.vips.first().map(|v| IpAddr::V4(*v)),
            Target::Workload(w, _) => w.ip.map(IpAddr::V4),
        };
        let req = Request {
            principal: Some(principal),
            source_namespace: Some(id.namespace()),
            source_service_account: Some(id.service_account()),
            source_ip: src_ip,
            destination_ip: dst_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            destination_port: port,
            http: http.then(|| HttpAttrs {
                host: host.as_deref().unwrap_or_default(),
                method: &cmd.method,
                path: &cmd.path,
                headers: Headers::Pairs(&headers),
                request_principal: cmd.request_principal.as_deref(),
                claims: None,
                remote_ip: Some(src_ip),
            }),
        };
        let d = state.authorize_at_waypoint(wp, svc, &req);
        ex.steps
            .push(step(format!("waypoint {}/{}", wp.namespace, wp.name), &d));
        if !d.allowed {
            ex.allowed = false;
            return Ok(ex);
        }
        if !http {
            ex.notes
                .push("opaque TCP port: the waypoint sees no HTTP attributes".into());
        }
        peer = state.waypoint_peer(wp).ok_or_else(|| {
            Error::NotFound(format!(
                "waypoint {}/{} has no ready instance",
                wp.namespace, wp.name
            ))
        })?;
    } else if cmd.request_principal.is_some() || !cmd.headers.is_empty() {
        ex.notes
            .push("no waypoint on this path: node agents decide on L4 attributes only".into());
    }
    let endpoints: Vec<(Arc<Workload>, u16)> = match &target {
        Target::Workload(w, p) => vec![(w.clone(), *p)],
        Target::Service(s, p) => state
            .endpoints(s, *p)
            .iter()
            .map(|e| (e.workload.clone(), e.port))
            .collect(),
    };
    if endpoints.is_empty() {
        return Err(Error::NotFound(format!("{} has no ready endpoint", cmd.to)));
    }
    let default = match cmd.mtls_mode {
        Mode::Permissive => MtlsMode::Permissive,
        Mode::Strict => MtlsMode::Strict,
    };
    for (w, port) in endpoints {
        let at = format!("agent of {}/{} (port {port})", w.namespace, w.name);
        let Some(ip) = w.ip else { continue };
        if !state.is_captured(&w) {
            ex.steps.push(Step {
                at,
                allowed: true,
                decided_by: None,
                reason: "destination is not in the mesh: no policy applies".into(),
            });
            continue;
        }
        match state.admit_inbound(default, &w, &peer, SocketAddr::from((ip, port))) {
            Ok(d) => ex.steps.push(step(at, &d)),
            Err(denial) => {
                ex.allowed = false;
                ex.steps.push(Step {
                    at,
                    allowed: false,
                    decided_by: Some(denial.policy),
                    reason: denial.detail,
                });
            }
        }
    }
    Ok(ex)
}

fn source(state: &MeshState, raw: &str) -> Result<Arc<Workload>, Error> {
    let found = match raw.split_once('/') {
        Some((ns, name)) => state.workload_by_name(ns, name),
        None => raw
            .parse::<Ipv4Addr>()
            .ok()
            .and_then(|ip| state.workload_by_ip(ip)),
    };
    found
        .cloned()
        .ok_or_else(|| Error::NotFound(format!("no pod {raw} in the given config")))
}

fn target(state: &MeshState, raw: &str) -> Result<Target, Error> {
    let bad = || {
        Error::Usage(format!(
            "--to {raw:?}: expected namespace/name:port or IP:port"
        ))
    };
    let (name, port) = raw.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if let Some((ns, name)) = name.split_once('/') {
        if let Some(w) = state.workload_by_name(ns, name) {
            return Ok(Target::Workload(w.clone(), port));
        }
        if let Some(s) = state.service(ns, name) {
            return Ok(Target::Service(s.clone(), port));
        }
    } else if let Ok(ip) = name.parse::<Ipv4Addr>() {
        if let Some(w) = state.workload_by_ip(ip) {
            return Ok(Target::Workload(w.clone(), port));
        }
        if let Some(s) = state.service_by_vip(ip) {
            return Ok(Target::Service(s.clone(), port));
        }
    } else {
        return Err(bad());
    }
    Err(Error::NotFound(format!(
        "no pod or service {name} in the given config"
    )))
}

fn live(cmd: &Cmd, agent: &str) -> Result<Explanation, Error> {
    let usage = || Error::Usage("with --agent, --from is a pod IP and --to is podIP:port".into());
    let src: Ipv4Addr = cmd.from.parse().map_err(|_| usage())?;
    let dst: SocketAddr = cmd.to.parse().map_err(|_| usage())?;
    let url = admin::join(
        agent,
        &format!("/explain?src={src}&dst={}&port={}", dst.ip(), dst.port()),
    );
    let v = admin::get_json(&url)?;
    let s = |v: &serde_json::Value| v.as_str().map(str::to_string);
    let allowed = v["allowed"].as_bool().unwrap_or(false);
    let at = format!(
        "agent of {}",
        s(&v["destination"]["workload"]).unwrap_or_else(|| dst.to_string())
    );
    Ok(Explanation {
        source: s(&v["source"]["workload"]).unwrap_or_else(|| src.to_string()),
        source_identity: s(&v["source"]["identity"]),
        destination: cmd.to.clone(),
        via_waypoint: None,
        steps: vec![Step {
            at,
            allowed,
            decided_by: s(&v["decidedBy"]),
            reason: s(&v["reason"]).unwrap_or_default(),
        }],
        allowed,
        notes: Vec::new(),
    })
}
