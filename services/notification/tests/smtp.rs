//! Delivery over SMTP, against a minimal SMTP server in the test.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

use shopflow_notification::{Mailer, Outbound, Smtp};

/// Accepts one session and returns the DATA it received.
fn smtp_server() -> (u16, std::thread::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut out = stream.try_clone().unwrap();
        let mut lines = BufReader::new(stream);
        out.write_all(b"220 test ESMTP\r\n").unwrap();
        let mut data = String::new();
        let mut in_data = false;
        loop {
            let mut line = String::new();
            if lines.read_line(&mut line).unwrap() == 0 {
                return data;
            }
            if in_data {
                if line == ".\r\n" {
                    in_data = false;
                    out.write_all(b"250 2.0.0 queued as 42\r\n").unwrap();
                } else {
                    data.push_str(&line);
                }
                continue;
            }
            let cmd = line.to_ascii_uppercase();
            let reply: &[u8] = if cmd.starts_with("EHLO") || cmd.starts_with("HELO") {
                b"250-test\r\n250 8BITMIME\r\n"
            } else if cmd.starts_with("DATA") {
                in_data = true;
                b"354 go ahead\r\n"
            } else if cmd.starts_with("QUIT") {
                out.write_all(b"221 bye\r\n").unwrap();
                return data;
            } else {
                b"250 ok\r\n"
            };
            out.write_all(reply).unwrap();
        }
    });
    (port, handle)
}

#[test]
fn delivers_an_rfc5322_message_over_smtp() {
    let (port, server) = smtp_server();
    let dir = tempfile::tempdir().unwrap();
    let smtp = Smtp::new(&format!("smtp://127.0.0.1:{port}"), dir.path()).unwrap();
    let m = Outbound {
        id: "evt-1:email".into(),
        channel: "email",
        to: "ada@example.com".into(),
        subject: "Your order ord_1 is confirmed".into(),
        body: "Hello Ada,\n\nthank you.".into(),
    };
    let location = smtp.deliver(&m).unwrap();
    assert!(location.contains("queued as 42"), "{location}");
    drop(smtp); // closes the connection: the server returns
    let data = server.join().unwrap();
    assert!(
        data.contains("Subject: Your order ord_1 is confirmed"),
        "{data}"
    );
    assert!(data.contains("To: ada@example.com"), "{data}");
    assert!(data.contains("thank you."), "{data}");
}

#[test]
fn bad_urls_are_refused() {
    for url in ["http://x", "smtp://", "smtp://host:notaport"] {
        assert!(Smtp::new(url, "/tmp").is_err(), "{url}");
    }
}

#[test]
fn an_unreachable_server_is_an_error_not_a_panic() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let smtp = Smtp::new(&format!("smtp://127.0.0.1:{port}"), "/tmp").unwrap();
    let m = Outbound {
        id: "e:email".into(),
        channel: "email",
        to: "a@example.com".into(),
        subject: "s".into(),
        body: "b".into(),
    };
    assert!(smtp.deliver(&m).is_err());
}
