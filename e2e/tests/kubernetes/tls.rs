//! The suite's TLS step (#14, Secret rotation): a DynamoCluster under mutual TLS whose
//! CA is rotated the way a platform team rotates one, in three updates of its Secret,
//! each reaching every pod before the next (the new CA added to `ca.crt`, the
//! certificate re-issued from it, the old CA dropped), while clients write over TLS.
//! No pod restarts, no write fails, every pod serves the new certificate and refuses
//! the old CA; a pod re-created afterwards (trusting only the new CA) is called by its
//! peers, so their own internode calls present the re-issued certificate too.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dynamo_e2e::k8s::{CLIENT_PORT, Kubectl, PodCluster, wait};
use dynamo_node::proto::kv_client::KvClient;
use dynamo_node::proto::{GetRequest, PutRequest};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use super::{NAMESPACE, SETTLE, cluster_yaml};

/// The DynamoCluster of this step, and its TLS Secret.
const NAME: &str = "secure";
const SECRET: &str = "secure-tls";
/// Clients writing during the rotation.
const WRITERS: usize = 4;

/// A CA that issues the cluster's certificates.
struct TestCa {
    pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// A certificate and its key (PEM).
struct Leaf {
    cert: String,
    key: String,
}

impl TestCa {
    fn generate(name: &str) -> Self {
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().expect("CA key");
        let pem = params.self_signed(&key).expect("self-signing the CA").pem();
        Self {
            pem,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// The certificate every node of the cluster shares, as cert-manager would issue
    /// it: the peers' names (how nodes and the operator dial each other) first (the
    /// name a `Replica` caller must carry), then the client Service's.
    fn issue(&self) -> Leaf {
        let names = vec![
            format!("*.{NAME}-peers.{NAMESPACE}.svc"),
            format!("{NAME}.{NAMESPACE}.svc"),
        ];
        let mut params = rcgen::CertificateParams::new(names).expect("certificate parameters");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "dynamo-node");
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("signing");
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// The Secret `spec.tls.secretName` names, with the keys cert-manager writes.
fn secret(ca: &str, leaf: &Leaf) -> String {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET},
        "type": "Opaque",
        "stringData": {"ca.crt": ca, "tls.crt": leaf.cert, "tls.key": leaf.key},
    })
    .to_string()
}

/// Client settings trusting `trust`, presenting `identity` when given, and checking
/// the server's certificate for `server_name`.
fn tls(trust: &str, identity: Option<&Leaf>, server_name: &str) -> ClientTlsConfig {
    let config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(trust))
        .domain_name(server_name);
    match identity {
        Some(leaf) => config.identity(Identity::from_pem(&leaf.cert, &leaf.key)),
        None => config,
    }
}

/// A pod's name in the shared certificate.
fn peer_name(pod: &str) -> String {
    format!("{pod}.{NAME}-peers.{NAMESPACE}.svc")
}

/// A client API connection over TLS to `address`, trusting `trust`.
async fn kv(
    address: SocketAddr,
    trust: &str,
    server_name: &str,
) -> Result<KvClient<Channel>, String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{address}"))
        .map_err(|e| e.to_string())?
        .tls_config(tls(trust, None, server_name))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| format!("connecting to {address} over TLS: {e:?}"))?;
    Ok(KvClient::new(channel))
}

/// Writes under way through the client Service: what was acknowledged, what failed.
struct Writers {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<Mutex<Vec<usize>>>,
    failed: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    fn start(service: SocketAddr, trust: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..WRITERS)
            .map(|writer| {
                let (stop, acknowledged, failed) = (
                    Arc::clone(&stop),
                    Arc::clone(&acknowledged),
                    Arc::clone(&failed),
                );
                let trust = trust.to_owned();
                tokio::spawn(async move {
                    let server_name = format!("{NAME}.{NAMESPACE}.svc");
                    let mut client = None;
                    for i in (writer..).step_by(WRITERS) {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        // One connection per writer, made again after a failure.
                        let kv = match client.take() {
                            Some(kv) => Ok(kv),
                            None => kv(service, &trust, &server_name).await,
                        };
                        let outcome = match kv {
                            Err(error) => Err(error),
                            Ok(mut kv) => {
                                let put = kv
                                    .put(PutRequest {
                                        key: key(i).into(),
                                        context: Vec::new().into(),
                                        value: key(i).into(),
                                        w: None,
                                    })
                                    .await;
                                client = Some(kv);
                                put.map(drop).map_err(|s| s.to_string())
                            }
                        };
                        match outcome {
                            Ok(()) => lock(&acknowledged).push(i),
                            Err(error) => {
                                client = None;
                                lock(&failed).push(format!("key {i}: {error}"));
                            }
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            acknowledged,
            failed,
            tasks,
        }
    }

    fn acknowledged(&self) -> usize {
        lock(&self.acknowledged).len()
    }

    /// Stops the writers: the keys acknowledged, and the failures.
    async fn stop(self) -> (Vec<usize>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("a writer panicked");
        }
        let acknowledged = std::mem::take(&mut *lock(&self.acknowledged));
        let failed = std::mem::take(&mut *lock(&self.failed));
        (acknowledged, failed)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn key(i: usize) -> Vec<u8> {
    format!("tls-key-{i}").into_bytes()
}

/// The node pods' uids and restart counts.
async fn pod_lives(kubectl: &Kubectl) -> Vec<(String, String, i64)> {
    let pods = kubectl
        .json(&[
            "pods",
            "-l",
            &format!("app.kubernetes.io/instance={NAME},app.kubernetes.io/component=node"),
        ])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut lives: Vec<_> = pods["items"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|pod| {
            (
                pod["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                pod["metadata"]["uid"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                pod["status"]["containerStatuses"][0]["restartCount"]
                    .as_i64()
                    .unwrap_or(-1),
            )
        })
        .collect();
    lives.sort();
    lives
}

/// Waits until `check` holds for every ready pod of the cluster.
async fn on_every_pod<F, Fut>(kubectl: &Kubectl, what: &str, check: F)
where
    F: Fn(PodCluster, usize) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    wait(what, SETTLE, || async {
        let pods = PodCluster::observe(kubectl, NAME).await?;
        if pods.pods.len() != 3 {
            return Err(format!("{} pods ready", pods.pods.len()));
        }
        for index in 0..pods.pods.len() {
            check(pods.clone(), index).await?;
        }
        Ok(())
    })
    .await;
}

/// The whole step; the cluster is deleted at its end.
pub(super) async fn rotate_the_ca_under_writes(kubectl: &Kubectl) {
    let (old_ca, new_ca) = (
        TestCa::generate("dynamo old CA"),
        TestCa::generate("dynamo new CA"),
    );
    let (old, new) = (old_ca.issue(), new_ca.issue());
    let bundle = format!("{}{}", old_ca.pem, new_ca.pem);
    kubectl.apply(&secret(&old_ca.pem, &old)).await;
    let spec = "  size: 3\n  replication: {\"n\": 3, r: 2, w: 2}\n  storage: {size: 1Gi, retainOnDelete: false}\n  resources:\n    requests: {cpu: 100m, memory: 128Mi}\n    limits: {memory: 512Mi}\n  tls: {secretName: secure-tls, mutual: true}\n";
    kubectl.apply(&cluster_yaml(NAME, spec)).await;
    wait(
        "DynamoCluster secure Running with 3 ready members over mutual TLS",
        SETTLE,
        || async {
            let cluster = kubectl.json(&["dynamocluster", NAME]).await?;
            let status = &cluster["status"];
            if status["phase"] == "Running" && status["readyNodes"] == 3 && status["members"] == 3 {
                Ok(())
            } else {
                Err(format!("status {status}"))
            }
        },
    )
    .await;
    let ip = kubectl
        .ok(&["get", "service", NAME, "-o", "jsonpath={.spec.clusterIP}"])
        .await;
    let service = SocketAddr::new(
        ip.trim()
            .parse()
            .unwrap_or_else(|e| panic!("cluster IP {ip:?}: {e}")),
        CLIENT_PORT,
    );
    let lives = pod_lives(kubectl).await;
    assert!(
        lives.iter().all(|(_, _, restarts)| *restarts == 0),
        "{lives:?}"
    );
    let writers = Writers::start(service, &bundle);
    wait("writes acknowledged over TLS", SETTLE, || async {
        match writers.acknowledged() {
            0 => Err("none yet".to_owned()),
            _ => Ok(()),
        }
    })
    .await;

    eprintln!("   1/3: ca.crt holds both CAs");
    kubectl.apply(&secret(&bundle, &old)).await;
    on_every_pod(kubectl, "every pod to accept the new CA", |pods, i| {
        let config = tls(&bundle, Some(&new), &peer_name(&pods.pods[i].0));
        async move { pods.status_over_tls(i, config).await.map(drop) }
    })
    .await;

    eprintln!("   2/3: the certificate re-issued by the new CA");
    kubectl.apply(&secret(&bundle, &new)).await;
    on_every_pod(
        kubectl,
        "every pod to serve the new certificate",
        |pods, i| {
            let server_name = peer_name(&pods.pods[i].0);
            let internode = tls(&new_ca.pem, Some(&new), &server_name);
            let client = SocketAddr::new(pods.pods[i].1, CLIENT_PORT);
            let trust = new_ca.pem.clone();
            async move {
                pods.status_over_tls(i, internode).await?;
                // The client port serves it too (trusting only the new CA).
                kv(client, &trust, &server_name).await.map(drop)
            }
        },
    )
    .await;

    eprintln!("   3/3: the old CA dropped");
    kubectl.apply(&secret(&new_ca.pem, &new)).await;
    on_every_pod(kubectl, "every pod to refuse the old CA", |pods, i| {
        let config = tls(&bundle, Some(&old), &peer_name(&pods.pods[i].0));
        async move {
            match pods.status_over_tls(i, config).await {
                Ok(_) => Err(format!("{} still accepts the old CA", pods.pods[i].0)),
                Err(_) => Ok(()),
            }
        }
    })
    .await;
    let before = writers.acknowledged();
    wait("more writes after the rotation", SETTLE, || async {
        if writers.acknowledged() > before + 100 {
            Ok(())
        } else {
            Err(format!("{} acknowledged", writers.acknowledged()))
        }
    })
    .await;
    let (acknowledged, failed) = writers.stop().await;
    eprintln!(
        "   {} writes acknowledged during the rotation, {} failed",
        acknowledged.len(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "writes failed during the rotation: {failed:?}"
    );
    assert_eq!(
        pod_lives(kubectl).await,
        lives,
        "a pod restarted or was replaced"
    );

    eprintln!("   a pod re-created: it trusts only the new CA, its peers call it");
    let pod = format!("{NAME}-2");
    kubectl.ok(&["delete", "pod", &pod, "--wait=true"]).await;
    let trust = new_ca.pem.clone();
    let sample: Vec<usize> = acknowledged.iter().copied().step_by(25).collect();
    on_every_pod(kubectl, "R=3 reads through every pod", |pods, i| {
        let address = SocketAddr::new(pods.pods[i].1, CLIENT_PORT);
        let server_name = peer_name(&pods.pods[i].0);
        let (trust, sample) = (trust.clone(), sample.clone());
        async move {
            let mut kv = kv(address, &trust, &server_name).await?;
            for &k in &sample {
                let reply = kv
                    .get(GetRequest {
                        key: key(k).into(),
                        r: Some(3),
                    })
                    .await
                    .map_err(|s| format!("R=3 get of key {k} through {server_name}: {s}"))?
                    .into_inner();
                let values: Vec<Vec<u8>> = reply.values.iter().map(|v| v.to_vec()).collect();
                if values != [key(k)] {
                    return Err(format!("key {k} read {values:?}"));
                }
            }
            Ok(())
        }
    })
    .await;

    kubectl
        .ok(&["delete", "dynamocluster", NAME, "--timeout=300s"])
        .await;
    kubectl.ok(&["delete", "secret", SECRET]).await;
}
