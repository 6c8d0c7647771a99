//! Callers that present a Kubernetes ServiceAccount token instead of a client certificate:
//! the token is checked with TokenReview, and a node agent's token is tied to its node
//! through the pod it is bound to (istiod's node authorization for ztunnel).

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use lanyard_core::identity::Identity;

use crate::entitlement::Caller;

/// The audience Istio's agents request their CA token for; istiod checks the same one.
pub const DEFAULT_AUDIENCE: &str = "istio-ca";

const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token refused by the Kubernetes API: {0}")]
    Refused(String),
    #[error("token is not for audience {0}")]
    WrongAudience(String),
    #[error("token belongs to {0}, not a ServiceAccount")]
    NotServiceAccount(String),
    #[error("node agent token of {0} is not bound to a pod (use a projected token)")]
    Unbound(String),
    #[error("node agent pod {namespace}/{name} no longer exists with uid {uid}")]
    PodGone {
        namespace: String,
        name: String,
        uid: String,
    },
    #[error("node agent pod {namespace}/{name} is not scheduled on a node")]
    Unscheduled { namespace: String, name: String },
    #[error("asking the Kubernetes API: {0}")]
    Api(#[from] kube::Error),
}

/// Which ServiceAccounts are node agents, and how tokens are checked.
#[derive(Clone)]
pub struct TokenAuthenticator {
    client: kube::Client,
    audience: String,
    trust_domain: String,
    /// `(namespace, service account)` of node agents; every other account is a workload.
    node_agents: Vec<(String, String)>,
}

// === impl TokenAuthenticator ===

impl TokenAuthenticator {
    pub fn new(
        client: kube::Client,
        audience: String,
        trust_domain: String,
        node_agents: Vec<(String, String)>,
    ) -> Self {
        Self {
            client,
            audience,
            trust_domain,
            node_agents,
        }
    }

    pub async fn authenticate(&self, token: &str) -> Result<Caller, TokenError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..Default::default()
        };
        let reviews: Api<TokenReview> = Api::all(self.client.clone());
        let status = reviews
            .create(&PostParams::default(), &review)
            .await?
            .status
            .unwrap_or_default();
        if status.authenticated != Some(true) {
            let why = status.error.unwrap_or_else(|| "not authenticated".into());
            return Err(TokenError::Refused(why));
        }
        // An empty list means the API server's own audiences, which include ours only if
        // the server says so.
        if !status
            .audiences
            .unwrap_or_default()
            .contains(&self.audience)
        {
            return Err(TokenError::WrongAudience(self.audience.clone()));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let Some((ns, sa)) = username
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
        else {
            return Err(TokenError::NotServiceAccount(username));
        };
        if !self.node_agents.iter().any(|(n, s)| n == ns && s == sa) {
            return Ok(Caller::Workload(Identity::new(&self.trust_domain, ns, sa)));
        }
        let extra = user.extra.unwrap_or_default();
        let claim = |k: &str| extra.get(k).and_then(|v| v.first()).cloned();
        let (Some(name), Some(uid)) = (claim(POD_NAME), claim(POD_UID)) else {
            return Err(TokenError::Unbound(username));
        };
        // The pod, not a claim of the caller's, says which node it runs on; its uid proves
        // the token was minted for this pod and not a deleted one of the same name.
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let gone = || TokenError::PodGone {
            namespace: ns.to_string(),
            name: name.clone(),
            uid: uid.clone(),
        };
        let pod = pods.get_opt(&name).await?.ok_or_else(gone)?;
        if pod.metadata.uid.as_deref() != Some(uid.as_str()) {
            return Err(gone());
        }
        let node = pod
            .spec
            .and_then(|s| s.node_name)
            .ok_or_else(|| TokenError::Unscheduled {
                namespace: ns.to_string(),
                name: name.clone(),
            })?;
        Ok(Caller::Node {
            trust_domain: self.trust_domain.clone(),
            node,
        })
    }
}

/// `namespace/name` of a ServiceAccount, as flags and Helm values write it.
pub fn parse_account(s: &str) -> Option<(String, String)> {
    let (ns, sa) = s.split_once('/')?;
    (!ns.is_empty() && !sa.is_empty() && !sa.contains('/')).then(|| (ns.into(), sa.into()))
}
