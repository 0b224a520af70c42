//! Where the cluster is and how topics are created: `kafka://` URLs.

use std::time::Duration;

use rdkafka::config::ClientConfig;

/// How to reach the cluster and how to create topics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaConfig {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    /// Copies of each partition of the topics this bus creates.
    pub replication_factor: u16,
    /// Client id sent to the brokers (shows up in their logs and metrics).
    pub client_id: String,
    /// Deadline of metadata, admin and offset requests.
    pub request_timeout: Duration,
    /// Further librdkafka settings (`security.protocol`, `sasl.*`, …), applied to every client.
    pub extra: Vec<(String, String)>,
    /// Prefixed to every topic and consumer group this bus touches, so that several
    /// deployments (staging and production, or parallel test runs) can share one cluster.
    pub namespace: String,
}

impl KafkaConfig {
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            replication_factor: 1,
            client_id: "shopflow".into(),
            request_timeout: Duration::from_secs(10),
            extra: Vec::new(),
            namespace: String::new(),
        }
    }

    /// Parses `kafka://host:port[,host:port…][?replication=N&namespace=…&client.id=…&<librdkafka
    /// setting>=…]`.
    pub fn from_url(url: &str) -> std::result::Result<Self, String> {
        let rest = url
            .strip_prefix("kafka://")
            .ok_or_else(|| format!("`{url}` is not a kafka:// URL"))?;
        let (hosts, query) = rest.split_once('?').unwrap_or((rest, ""));
        let hosts = hosts.trim_end_matches('/');
        if hosts.is_empty()
            || hosts.split(',').any(|h| {
                h.rsplit_once(':')
                    .is_none_or(|(_, p)| p.parse::<u16>().is_err())
            })
        {
            return Err(format!("`{url}`: expected kafka://host:port[,host:port…]"));
        }
        let mut c = Self::new(hosts);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("`{pair}` in `{url}` is not key=value"))?;
            match k {
                "replication" => {
                    c.replication_factor = v
                        .parse()
                        .map_err(|_| format!("replication `{v}` is not a number"))?
                }
                "client.id" => c.client_id = v.to_owned(),
                "namespace" => {
                    if !v
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
                    {
                        return Err(format!("namespace `{v}` may contain only [A-Za-z0-9._-]"));
                    }
                    c.namespace = v.to_owned()
                }
                _ => c.extra.push((k.to_owned(), v.to_owned())),
            }
        }
        Ok(c)
    }

    /// Applies the user's librdkafka settings again, over the defaults a client type sets after
    /// [`KafkaConfig::client`]: what the deployment's URL says wins.
    pub(crate) fn user_settings_win<'a>(&self, c: &'a mut ClientConfig) -> &'a mut ClientConfig {
        for (k, v) in &self.extra {
            c.set(k, v);
        }
        c
    }

    pub(crate) fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id)
            .set("allow.auto.create.topics", "false")
            .set("topic.metadata.refresh.interval.ms", "10000");
        for (k, v) in &self.extra {
            c.set(k, v);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let c = KafkaConfig::from_url("kafka://127.0.0.1:9092").unwrap();
        assert_eq!(c.brokers, "127.0.0.1:9092");
        assert_eq!(c.replication_factor, 1);
        let c =
            KafkaConfig::from_url("kafka://a:9092,b:9093?replication=3&security.protocol=SASL_SSL")
                .unwrap();
        assert_eq!(c.brokers, "a:9092,b:9093");
        assert_eq!(c.replication_factor, 3);
        assert_eq!(
            c.extra,
            vec![("security.protocol".into(), "SASL_SSL".into())]
        );
        for bad in [
            "http://x:1",
            "kafka://",
            "kafka://host",
            "kafka://h:port",
            "kafka://h:1?replication=x",
            "kafka://h:1?flag",
            "kafka://h:1?namespace=a/b",
        ] {
            assert!(KafkaConfig::from_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_urls_settings_win_over_a_clients_defaults() {
        let c = KafkaConfig::from_url("kafka://h:1?fetch.wait.max.ms=5").unwrap();
        let mut settings = c.client();
        settings
            .set("fetch.wait.max.ms", "50")
            .set("linger.ms", "1");
        c.user_settings_win(&mut settings);
        assert_eq!(settings.get("fetch.wait.max.ms"), Some("5"));
        assert_eq!(settings.get("linger.ms"), Some("1"));
    }
}
