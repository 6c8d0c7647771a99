//! `lanyardctl config dump`: what a running agent or waypoint has loaded, from its admin
//! endpoint (`/config_dump`, and `/certs` on an agent).

use clap::Subcommand;
use serde_json::Value;

use crate::output;
use crate::{admin, Error, Outcome, OutputArg};

#[derive(Subcommand)]
pub enum ConfigCmd {
    /// Dump the config of an agent (`--agent host:port`) or a waypoint (`--waypoint host:port`).
    Dump {
        /// An agent's admin address (default port 15000).
        #[arg(
            long,
            conflicts_with = "waypoint",
            required_unless_present = "waypoint"
        )]
        agent: Option<String>,
        /// A waypoint's admin address (default port 15000).
        #[arg(long)]
        waypoint: Option<String>,
        #[command(flatten)]
        out: OutputArg,
    },
}

pub fn run(cmd: ConfigCmd) -> Result<Outcome, Error> {
    let ConfigCmd::Dump {
        agent,
        waypoint,
        out,
    } = cmd;
    let (base, is_agent) = match (agent, waypoint) {
        (Some(a), _) => (a, true),
        (None, Some(w)) => (w, false),
        (None, None) => return Err(Error::Usage("--agent or --waypoint is required".into())),
    };
    let mut dump = admin::get_json(&admin::join(&base, "/config_dump"))?;
    if is_agent {
        dump["certificates"] = admin::get_json(&admin::join(&base, "/certs"))?;
    }
    match output::structured(out.output, &dump)? {
        Some(text) => println!("{text}"),
        None => print!("{}", summary(&dump)),
    }
    Ok(Outcome::Ok)
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    }
}

/// The operator's view of a dump: who is here, what serves, and what was rejected.
fn summary(d: &Value) -> String {
    // The agent nests the mesh state under "state"; the waypoint's dump is the state itself.
    let state = if d["state"].is_object() {
        &d["state"]
    } else {
        d
    };
    let mut out = String::new();
    if let Some(node) = d["node"].as_str() {
        out.push_str(&format!(
            "agent on node {node}, mTLS default {}, {} pooled HBONE connections\n\n",
            s(&d["mtlsMode"]),
            s(&d["hbonePoolConnections"])
        ));
    }
    if d["waypoint"].is_object() {
        let w = &d["waypoint"];
        out.push_str(&format!(
            "waypoint {}/{} as {}\n\n",
            s(&w["namespace"]),
            s(&w["name"]),
            s(&w["identity"])
        ));
    }
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = list(&state["workloads"])
        .iter()
        .map(|w| {
            vec![
                format!("{}/{}", s(&w["namespace"]), s(&w["name"])),
                s(&w["ip"]),
                s(&w["node"]),
                if w["captured"] == Value::Bool(true) {
                    "yes"
                } else {
                    "no"
                }
                .into(),
                s(&w["identity"]),
            ]
        })
        .collect();
    out.push_str(&output::table(
        &["WORKLOAD", "IP", "NODE", "CAPTURED", "IDENTITY"],
        &rows,
    ));
    out.push('\n');
    let rows: Vec<Vec<String>> = list(&state["services"])
        .iter()
        .map(|svc| {
            let ports: Vec<String> = list(&svc["ports"])
                .iter()
                .map(|p| format!("{}→{}", s(&p["port"]), list(&p["endpoints"]).len()))
                .collect();
            let vips: Vec<String> = list(&svc["vips"]).iter().map(s).collect();
            vec![
                format!("{}/{}", s(&svc["namespace"]), s(&svc["name"])),
                vips.join(","),
                ports.join(" "),
            ]
        })
        .collect();
    out.push_str(&output::table(
        &["SERVICE", "VIPS", "PORT→ENDPOINTS"],
        &rows,
    ));
    // Lists of names, or of objects with a name (the waypoint's traffic objects).
    let named = |key: &str, title: &str, out: &mut String| {
        let items: Vec<String> = list(&state[key])
            .iter()
            .map(|v| if v.is_object() { s(&v["name"]) } else { s(v) })
            .collect();
        if !items.is_empty() {
            out.push_str(&format!("\n{title}:\n"));
            for i in items {
                out.push_str(&format!("  {i}\n"));
            }
        }
    };
    named("authorizationPolicies", "AuthorizationPolicies", &mut out);
    named("peerAuthentications", "PeerAuthentications", &mut out);
    named("virtualServices", "VirtualServices", &mut out);
    named("destinationRules", "DestinationRules", &mut out);
    if let Some(certs) = d["certificates"].as_array() {
        let rows: Vec<Vec<String>> = certs
            .iter()
            .map(|c| {
                vec![
                    s(&c["identity"]),
                    s(&c["state"]),
                    s(&c["notAfter"]),
                    s(&c["lastError"]),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&output::table(
            &["CERTIFICATE", "STATE", "NOT AFTER (UNIX)", "LAST ERROR"],
            &rows,
        ));
    }
    named("rejected", "Rejected objects", &mut out);
    named("warnings", "Warnings", &mut out);
    out
}
