//! One delivery attempt for the recipients of one remote domain: MX plan,
//! then each address of each MX in turn until every recipient has a final
//! answer. A host that cannot be reached, or that answers 4xx, passes the
//! still-undecided recipients to the next one (RFC 5321 §5.1); a 5xx is
//! final for the recipients it concerns.

use std::net::SocketAddr;

use hickory_resolver::TokioResolver;

use crate::client::{self, ClientSettings, Envelope};
use crate::error::{DeliveryError, Diagnostic};
use crate::mx::{self, MxPlan};
use crate::pool::{Connections, Lane, Open};
use crate::tls::TlsOutcome;

/// How one recipient of the group fared.
#[derive(Debug, Clone)]
pub enum RcptResult {
    Delivered {
        mx: String,
        /// The server's reply to the final dot.
        reply: String,
        tls: Option<TlsOutcome>,
    },
    Failed(DeliveryError),
}

/// What remote delivery needs, shared by every worker.
#[derive(Clone)]
pub struct Remote {
    pub resolver: TokioResolver,
    pub client: ClientSettings,
    /// `delivery.remote_smtp_port`: 25, other in tests.
    pub port: u16,
    /// `delivery.relay_host`: every remote message goes to this smarthost
    /// (host, port) instead of the recipient domain's MX.
    pub relay: Option<(String, u16)>,
    /// Connections per domain, idle ones kept for the next message, each
    /// holding a slot of `delivery.max_connections_per_domain`.
    pub connections: Connections,
}

impl Remote {
    /// Delivers `message` from `mail_from` to `recipients`, all in `domain`,
    /// over the one connection `lane` allows at a time (from
    /// [`Connections::checkout`]). Returns one result per recipient, in order.
    pub async fn deliver(
        &self,
        domain: &str,
        lane: &mut Lane,
        mail_from: &str,
        recipients: &[String],
        message: &[u8],
    ) -> Vec<RcptResult> {
        let fail_all = |error: DeliveryError| vec![RcptResult::Failed(error); recipients.len()];

        let (hosts, port) = match &self.relay {
            Some((host, port)) => (
                vec![mx::MxHost {
                    name: host.clone(),
                    preference: 0,
                    implicit: false,
                }],
                *port,
            ),
            None => match self.plan(domain).await {
                Ok(hosts) => (hosts, self.port),
                Err(error) => return fail_all(error),
            },
        };
        self.try_hosts(domain, lane, &hosts, port, mail_from, recipients, message)
            .await
    }

    /// The MX hosts of `domain`, or why there are none to try.
    async fn plan(&self, domain: &str) -> Result<Vec<mx::MxHost>, DeliveryError> {
        match mx::lookup(&self.resolver, domain).await {
            Ok(MxPlan::Hosts(hosts)) => Ok(hosts),
            // RFC 7505 §4.2: 556 5.1.10 is the reply for a null MX.
            Ok(MxPlan::NullMx) => Err(DeliveryError::Permanent(Diagnostic::local(
                "5.1.10",
                format!("{domain} does not accept mail (null MX, RFC 7505)"),
            ))),
            Err(error) => Err(error),
        }
    }

    /// Each address of each host in turn until every recipient has a
    /// final answer.
    #[allow(clippy::too_many_arguments)]
    async fn try_hosts(
        &self,
        domain: &str,
        lane: &mut Lane,
        hosts: &[mx::MxHost],
        port: u16,
        mail_from: &str,
        recipients: &[String],
        message: &[u8],
    ) -> Vec<RcptResult> {
        let mut results: Vec<Option<RcptResult>> = vec![None; recipients.len()];
        let mut last_error = DeliveryError::Transient(Diagnostic::local(
            "4.4.1",
            format!("no mail exchanger of {domain} could be reached"),
        ));
        'hosts: for host in hosts {
            let ips = match mx::addresses(&self.resolver, host).await {
                Ok(ips) => ips,
                Err(error) => {
                    tracing::info!(domain, mx = %host.name, %error, "mx has no usable address");
                    if hosts.len() == 1 {
                        last_error = error;
                    } else if let DeliveryError::Permanent(d) = error {
                        // One broken MX among several is not final.
                        last_error = DeliveryError::Transient(Diagnostic {
                            status: "4.4.3".into(),
                            ..d
                        });
                    } else {
                        last_error = error;
                    }
                    continue;
                }
            };
            // From a pinned source address only its family can be reached.
            let ips = ips.into_iter().filter(|ip| {
                self.client
                    .source_ip
                    .is_none_or(|source| source.is_ipv4() == ip.is_ipv4())
            });
            for ip in ips {
                let pending: Vec<usize> = (0..recipients.len())
                    .filter(|i| results[*i].is_none())
                    .collect();
                let addresses: Vec<String> =
                    pending.iter().map(|i| recipients[*i].clone()).collect();
                let envelope = Envelope {
                    mail_from,
                    recipients: &addresses,
                    message,
                };
                let addr = SocketAddr::new(ip, port);
                match self.transaction(lane, addr, &host.name, &envelope).await {
                    Ok(transaction) => {
                        let mut deferred = false;
                        for (k, i) in pending.iter().enumerate() {
                            let outcome = match transaction.outcome(k) {
                                Some(reply) if reply.code / 100 == 2 => RcptResult::Delivered {
                                    mx: host.name.clone(),
                                    reply: reply.to_string(),
                                    tls: transaction.tls.clone(),
                                },
                                Some(reply) if reply.is_permanent() => RcptResult::Failed(
                                    DeliveryError::from_reply(&host.name, reply.clone()),
                                ),
                                Some(reply) => {
                                    last_error =
                                        DeliveryError::from_reply(&host.name, reply.clone());
                                    deferred = true;
                                    continue;
                                }
                                None => continue,
                            };
                            tracing::info!(domain, mx = %host.name, %ip, recipient = %recipients[*i], delivered = matches!(outcome, RcptResult::Delivered { .. }), tls = ?transaction.tls, "remote answer");
                            results[*i] = Some(outcome);
                        }
                        if results.iter().all(Option::is_some) {
                            break 'hosts;
                        }
                        if deferred {
                            // 4xx from this host: the next MX may accept.
                            continue 'hosts;
                        }
                    }
                    Err(error) if error.is_permanent() => {
                        tracing::info!(domain, mx = %host.name, %ip, %error, "remote refused the transaction");
                        for i in pending {
                            results[i] = Some(RcptResult::Failed(error.clone()));
                        }
                        break 'hosts;
                    }
                    Err(error) => {
                        tracing::info!(domain, mx = %host.name, %ip, %error, "remote attempt failed, trying the next address");
                        last_error = error;
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| RcptResult::Failed(last_error.clone())))
            .collect()
    }

    /// One SMTP transaction on the lane's session to `addr` or a new one,
    /// which stays on the lane while the server talks; a failed TLS
    /// handshake is retried once in plaintext, as opportunistic TLS does
    /// (better than not delivering).
    async fn transaction(
        &self,
        lane: &mut Lane,
        addr: SocketAddr,
        host: &str,
        envelope: &Envelope<'_>,
    ) -> Result<client::Transaction, DeliveryError> {
        let idle = lane.session_for(addr, host).await;
        let (result, session) = client::deliver_on(idle, addr, host, &self.client, envelope).await;
        if let Some(session) = session {
            lane.open = Some(Open {
                addr,
                host: host.to_owned(),
                session,
            });
        }
        match result {
            // The failed handshake left no connection: the lane's one slot
            // is free for the plaintext one.
            Err(error) if error.is_tls_failure() => {
                tracing::warn!(mx = host, %addr, %error, "starttls failed, retrying in plaintext");
                let plain = ClientSettings {
                    starttls: false,
                    ..self.client.clone()
                };
                // Closed after: the next message tries TLS again.
                client::deliver(addr, host, &plain, envelope)
                    .await
                    .map_err(|e| DeliveryError::from_smtp(host, e))
            }
            result => result.map_err(|e| DeliveryError::from_smtp(host, e)),
        }
    }
}
