//! Concurrent signing load against a running appliance, keeping every outcome: what the fault
//! and crash tests compare with the ledger and the audit log afterwards.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hsmca::api::client::Client;
use serde_json::{Value, json};

/// What became of one request.
#[derive(Debug)]
pub enum Outcome {
    /// 200: the native answer.
    Issued(Value),
    /// Any other HTTP status, with the error body.
    Refused(u16, Value),
    /// The connection failed or closed before an answer.
    Lost(String),
}

/// Requests running on `connections` keep-alive connections until [`Load::finish`].
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Outcome>>>,
}

impl Load {
    /// Starts `connections` loops, each sending `POST /v1/sign` for `profile` with the CSRs
    /// of `csrs` in turn, one request at a time on its connection. A loop whose connection
    /// breaks opens a new one; while the server is unreachable it retries every 20 ms.
    pub fn start(
        rt: &tokio::runtime::Runtime,
        client: &Client,
        connections: usize,
        csrs: &[String],
        profile: &str,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        // Encoded once, shared by every connection.
        let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
            csrs.iter()
                .map(|csr| {
                    json!({ "csr": csr, "profile": profile })
                        .to_string()
                        .into_bytes()
                })
                .collect(),
        );
        let tasks = (0..connections)
            .map(|index| {
                let (client, stop, bodies) = (client.clone(), stop.clone(), bodies.clone());
                rt.spawn(async move {
                    let mut outcomes = Vec::new();
                    let mut connection = None;
                    let mut next = index;
                    while !stop.load(Ordering::Relaxed) {
                        if connection.is_none() {
                            match client.connect().await {
                                Ok(fresh) => connection = Some(fresh),
                                Err(_) => {
                                    tokio::time::sleep(Duration::from_millis(20)).await;
                                    continue;
                                }
                            }
                        }
                        let body = bodies[next % bodies.len()].clone();
                        next += connections;
                        let sent = connection
                            .as_mut()
                            .expect("connected above")
                            .send(
                                "POST",
                                "/v1/sign",
                                &[("content-type", "application/json")],
                                body,
                            )
                            .await;
                        outcomes.push(match sent {
                            Ok(response) => {
                                let answer = response.json().unwrap_or(Value::Null);
                                if response.status == 200 {
                                    Outcome::Issued(answer)
                                } else {
                                    Outcome::Refused(response.status, answer)
                                }
                            }
                            Err(error) => {
                                connection = None;
                                Outcome::Lost(error)
                            }
                        });
                    }
                    outcomes
                })
            })
            .collect();
        Load { stop, tasks }
    }

    /// Stops the loops after their current request and returns every outcome.
    pub fn finish(self, rt: &tokio::runtime::Runtime) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        rt.block_on(async {
            let mut outcomes = Vec::new();
            for task in self.tasks {
                outcomes.extend(task.await.unwrap());
            }
            outcomes
        })
    }
}

/// The answers of the issued requests.
pub fn issued(outcomes: &[Outcome]) -> Vec<&Value> {
    outcomes
        .iter()
        .filter_map(|outcome| match outcome {
            Outcome::Issued(answer) => Some(answer),
            _ => None,
        })
        .collect()
}

/// `count` distinct SPIRE-shaped issuing-CA CSRs for the test trust domain.
pub fn distinct_csrs(count: usize) -> Vec<String> {
    (0..count)
        .map(|_| super::appliance::spire_csr(&super::appliance::p256(), &["spiffe://mesh.example"]))
        .collect()
}
