//! E-mail over SMTP (lettre), SMS to the spool.

use std::path::PathBuf;

use crate::{Mailer, Outbound, Spool};

/// Sends e-mail over SMTP (plain, to a local relay or smarthost; no TLS) and SMS to the spool,
/// there being no SMS gateway to speak to.
#[derive(Clone)]
pub struct Smtp {
    transport: lettre::SmtpTransport,
    from: lettre::message::Mailbox,
    sms: Spool,
}

impl std::fmt::Debug for Smtp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Smtp")
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl Smtp {
    /// `url` is `smtp://host[:port]` (port 25 by default).
    pub fn new(url: &str, sms_dir: impl Into<PathBuf>) -> Result<Self, String> {
        let rest = url
            .strip_prefix("smtp://")
            .ok_or_else(|| format!("`{url}` is not an smtp:// URL"))?;
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("bad port in `{url}`"))?,
            ),
            None => (rest, 25),
        };
        if host.is_empty() {
            return Err(format!("no host in `{url}`"));
        }
        let transport = lettre::SmtpTransport::builder_dangerous(host)
            .port(port)
            .timeout(Some(std::time::Duration::from_secs(10)))
            .build();
        let from = "shopflow <no-reply@shopflow.invalid>"
            .parse()
            .map_err(|e| format!("{e}"))?;
        Ok(Self {
            transport,
            from,
            sms: Spool::new(sms_dir),
        })
    }
}

impl Mailer for Smtp {
    fn deliver(&self, m: &Outbound) -> std::io::Result<String> {
        use lettre::Transport;
        if m.channel == "sms" {
            return self.sms.deliver(m);
        }
        let io = |e: String| std::io::Error::other(e);
        let to: lettre::message::Mailbox =
            m.to.parse()
                .map_err(|e| io(format!("recipient {}: {e}", m.to)))?;
        let message = lettre::Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(m.subject.clone())
            .message_id(Some(format!(
                "<{}@shopflow.invalid>",
                m.id.replace(':', ".")
            )))
            .header(lettre::message::header::ContentType::TEXT_PLAIN)
            .body(m.body.clone())
            .map_err(|e| io(e.to_string()))?;
        let resp = self
            .transport
            .send(&message)
            .map_err(|e| io(e.to_string()))?;
        Ok(format!(
            "smtp: {}",
            resp.message().collect::<Vec<_>>().join(" ")
        ))
    }

    /// The mail server has accepted what it answered for; the SMS spool syncs its appends.
    fn sync(&self) -> std::io::Result<()> {
        self.sms.sync()
    }
}
