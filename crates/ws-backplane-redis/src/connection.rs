//! The connection to Redis: one server (a reconnecting [`ConnectionManager`]) or a Redis
//! Cluster (the redis crate's cluster client, which follows `MOVED` and keeps a connection
//! per node), behind one type, so the rest of the backplane sends the same commands to both.
//!
//! On a cluster, channels are sharded (`SSUBSCRIBE`/`SPUBLISH`, Redis 7): a channel lives on
//! the shard that owns its slot, the same rule as keys, so a room's channel
//! (`{<prefix>:<room>}:room`) sits next to its history keys, and a publish costs one shard,
//! not every node of the cluster as plain `PUBLISH` does.

use std::{collections::HashMap, time::Duration};

use redis::{
    Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo as _, Pipeline, RedisError,
    RedisFuture, RedisResult, TlsCertificates, Value,
    aio::{ConnectionLike, ConnectionManager, MultiplexedConnection},
    cluster_async::ClusterConnection,
};

/// A connection to one Redis or to a cluster; cloning is cheap and shares it.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Single(_) => "Conn::Single",
            Conn::Cluster(_) => "Conn::Cluster",
        })
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(manager) => manager.req_packed_command(cmd),
            Conn::Cluster(cluster) => cluster.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(manager) => manager.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(cluster) => cluster.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(manager) => manager.get_db(),
            Conn::Cluster(cluster) => cluster.get_db(),
        }
    }
}

/// What a probe of the cluster found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shards {
    /// The address of each shard's master, sorted.
    pub(crate) masters: Vec<String>,
    /// How many of them did not answer.
    pub(crate) unreachable: usize,
}

impl Conn {
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }

    /// The command that publishes on a channel: `PUBLISH`, or `SPUBLISH` on a cluster.
    pub(crate) fn publish_command(&self) -> &'static str {
        if self.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// A publish of `payload` on `channel`.
    pub(crate) fn publish(&self, channel: &str, payload: &[u8]) -> Cmd {
        let mut cmd = redis::cmd(self.publish_command());
        cmd.arg(channel).arg(payload);
        cmd
    }

    /// Subscribes to the channels; on a cluster, each on its shard (`SSUBSCRIBE` takes the
    /// channels of one slot only), all at once.
    pub(crate) async fn subscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            Conn::Single(manager) => manager.subscribe(channels).await,
            Conn::Cluster(cluster) => {
                let each = channels.iter().map(|channel| {
                    let mut cluster = cluster.clone();
                    async move { cluster.ssubscribe(channel).await }
                });
                futures_util::future::join_all(each)
                    .await
                    .into_iter()
                    .collect()
            }
        }
    }

    pub(crate) async fn unsubscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Conn::Single(manager) => manager.unsubscribe(channel).await,
            Conn::Cluster(cluster) => cluster.sunsubscribe(channel).await,
        }
    }

    /// Runs commands whose replies are not needed, each placed by its key or channel: one
    /// pipeline on one server; on a cluster one pipeline per key (a pipeline must stay in
    /// one slot), all at once, each within `timeout`. Returns how many failed and the first
    /// error.
    pub(crate) async fn exec_placed(
        &mut self,
        commands: Vec<(String, Cmd)>,
        timeout: Duration,
    ) -> (usize, Option<String>) {
        let groups: Vec<(usize, Pipeline)> = match self {
            Conn::Single(_) => {
                let mut pipe = redis::pipe();
                let n = commands.len();
                for (_, cmd) in commands {
                    pipe.add_command(cmd).ignore();
                }
                vec![(n, pipe)]
            }
            Conn::Cluster(_) => {
                // In order of first appearance, so each key's commands keep their order.
                let mut groups: Vec<(String, usize, Pipeline)> = Vec::new();
                let mut index = HashMap::new();
                for (key, cmd) in commands {
                    let at = *index.entry(key.clone()).or_insert_with(|| {
                        groups.push((key, 0, redis::pipe()));
                        groups.len() - 1
                    });
                    let (_, n, pipe) = &mut groups[at];
                    *n += 1;
                    pipe.add_command(cmd).ignore();
                }
                groups.into_iter().map(|(_, n, pipe)| (n, pipe)).collect()
            }
        };
        let runs = groups.into_iter().map(|(n, pipe)| {
            let mut conn = self.clone();
            async move {
                match tokio::time::timeout(timeout, pipe.exec_async(&mut conn)).await {
                    Ok(Ok(())) => (0, None),
                    Ok(Err(error)) => (n, Some(error.to_string())),
                    Err(_) => (n, Some(format!("no answer within {timeout:?}"))),
                }
            }
        });
        futures_util::future::join_all(runs)
            .await
            .into_iter()
            .fold((0, None), |(failed, first), (n, error)| {
                (failed + n, first.or(error))
            })
    }
}

/// Probes a cluster's masters over connections of its own: asking the cluster client for a
/// node it holds no connection to (a dead master) makes it reconnect to every initial node,
/// replacing every connection, and what arrives on the subscriptions meanwhile is lost.
pub(crate) struct Prober {
    template: ConnectionInfo,
    tls: Option<TlsCertificates>,
    /// The nodes given, then the masters last found: where `CLUSTER SLOTS` is asked.
    seeds: Vec<(String, u16)>,
    masters: Vec<(String, u16)>,
    connections: HashMap<(String, u16), MultiplexedConnection>,
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober")
            .field("masters", &self.masters)
            .finish_non_exhaustive()
    }
}

impl Prober {
    /// For the cluster whose nodes are `nodes` (URLs; the first one's scheme, credentials and
    /// TLS settings are used for every node).
    pub(crate) fn new(nodes: &[&str], tls: Option<TlsCertificates>) -> RedisResult<Prober> {
        let infos = nodes
            .iter()
            .map(|node| node.into_connection_info())
            .collect::<RedisResult<Vec<_>>>()?;
        let template = infos
            .first()
            .cloned()
            .ok_or_else(|| RedisError::from((redis::ErrorKind::InvalidClientConfig, "no node")))?;
        let seeds = infos
            .iter()
            .filter_map(|info| match info.addr() {
                ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
                    Some((host.clone(), *port))
                }
                _ => None,
            })
            .collect();
        Ok(Prober {
            template,
            tls,
            seeds,
            masters: Vec::new(),
            connections: HashMap::new(),
        })
    }

    /// The cluster's masters, as the first node that answers says, and how many of them
    /// answer a `PING`; each step within `timeout`.
    pub(crate) async fn probe(&mut self, timeout: Duration) -> Result<Shards, String> {
        let mut asked: Vec<(String, u16)> = self.masters.clone();
        asked.extend(self.seeds.iter().cloned());
        let mut slots = None;
        for node in asked {
            if let Some(answer) = self
                .ask(&node, redis::cmd("CLUSTER").arg("SLOTS"), timeout)
                .await
            {
                slots = Some(answer);
                break;
            }
        }
        let slots = slots.ok_or_else(|| "no node of the cluster answers".to_owned())?;
        let mut masters = masters_of(slots);
        masters.sort();
        masters.dedup();
        if masters.is_empty() {
            return Err("CLUSTER SLOTS named no master".to_owned());
        }
        let mut unreachable = 0;
        for master in &masters {
            if self
                .ask(master, &redis::cmd("PING"), timeout)
                .await
                .is_none()
            {
                unreachable += 1;
            }
        }
        // Gone from the cluster: not asked again.
        self.connections.retain(|node, _| masters.contains(node));
        self.masters.clone_from(&masters);
        Ok(Shards {
            unreachable,
            masters: masters
                .into_iter()
                .map(|(host, port)| format!("{host}:{port}"))
                .collect(),
        })
    }

    /// One command to one node, on a connection kept for the next probe (and dropped when it
    /// fails); None when the node does not answer in time.
    async fn ask(&mut self, node: &(String, u16), cmd: &Cmd, timeout: Duration) -> Option<Value> {
        let mut connection = match self.connections.get(node) {
            Some(connection) => connection.clone(),
            None => {
                let connection = tokio::time::timeout(timeout, self.connect(node))
                    .await
                    .ok()?
                    .ok()?;
                self.connections.insert(node.clone(), connection.clone());
                connection
            }
        };
        match tokio::time::timeout(timeout, cmd.query_async::<Value>(&mut connection)).await {
            Ok(Ok(value)) => Some(value),
            _ => {
                self.connections.remove(node);
                None
            }
        }
    }

    async fn connect(&self, (host, port): &(String, u16)) -> RedisResult<MultiplexedConnection> {
        let addr = match self.template.addr() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host: host.clone(),
                port: *port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host.clone(), *port),
        };
        let info = self.template.clone().set_addr(addr);
        let client = match &self.tls {
            Some(certificates) => redis::Client::build_with_tls(info, certificates.clone())?,
            None => redis::Client::open(info)?,
        };
        client.get_multiplexed_async_connection().await
    }
}

/// The master (host, port) of each slot range in a `CLUSTER SLOTS` answer: ranges are
/// `[start, end, [host, port, id, ...], replicas...]`.
fn masters_of(slots: Value) -> Vec<(String, u16)> {
    let Value::Array(ranges) = slots else {
        return Vec::new();
    };
    ranges
        .into_iter()
        .filter_map(|range| {
            let Value::Array(range) = range else {
                return None;
            };
            let Some(Value::Array(master)) = range.into_iter().nth(2) else {
                return None;
            };
            let mut master = master.into_iter();
            let host = match master.next()? {
                Value::BulkString(host) => String::from_utf8(host).ok()?,
                Value::SimpleString(host) => host,
                _ => return None,
            };
            let port = match master.next()? {
                Value::Int(port) => u16::try_from(port).ok()?,
                _ => return None,
            };
            Some((host, port))
        })
        .collect()
}

/// Whether `url` names a cluster: several node URLs separated by commas.
pub(crate) fn node_urls(url: &str) -> Option<Vec<&str>> {
    let nodes: Vec<&str> = url
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    (url.contains(',')).then_some(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_urls_is_a_cluster() {
        assert_eq!(node_urls("redis://a:1/"), None);
        assert_eq!(
            node_urls("redis://a:1, redis://b:2,"),
            Some(vec!["redis://a:1", "redis://b:2"])
        );
    }

    #[test]
    fn masters_come_from_each_slot_range() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let slots = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("127.0.0.1", 7000),
                node("127.0.0.1", 7003),
            ]),
            Value::Array(vec![Value::Int(5461), Value::Int(16383), node("h", 7001)]),
            Value::Int(3),
        ]);
        assert_eq!(
            masters_of(slots),
            vec![("127.0.0.1".to_owned(), 7000), ("h".to_owned(), 7001)]
        );
        assert!(masters_of(Value::Nil).is_empty());
    }
}
