//! The mail spool: one append-only mbox per channel and day, once per id, durable after `sync`.

use shopflow_notification::{Mailer, Outbound, Spool, read_spooled};

fn mail(id: &str, body: &str) -> Outbound {
    Outbound {
        id: id.to_owned(),
        channel: "email",
        to: "ada@example.com".into(),
        subject: "Your order is confirmed".into(),
        body: body.to_owned(),
    }
}

fn mbox_files(dir: &std::path::Path, channel: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir.join(channel))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

fn messages_in(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("From "))
        .count()
}

#[test]
fn a_delivered_message_reads_back_with_its_headers_and_body() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::new(dir.path());
    let body = "Hello Ada,\n\nFrom now on, your order ships.\n>From the warehouse\nBye";
    let at = spool.deliver(&mail("e1:email", body)).unwrap();
    assert!(
        at.starts_with(dir.path().join("mail").to_str().unwrap()),
        "{at}"
    );
    let text = read_spooled(&at).unwrap();
    assert!(
        text.starts_with("From: shopflow <no-reply@shopflow.invalid>\n"),
        "{text}"
    );
    assert!(text.contains("\nTo: ada@example.com\n"), "{text}");
    assert!(
        text.contains("\nSubject: Your order is confirmed\n"),
        "{text}"
    );
    assert!(
        text.contains("\nMessage-ID: <e1.email@shopflow.invalid>\n"),
        "{text}"
    );
    assert!(text.ends_with(&format!("\n\n{body}\n")), "{text:?}");
    // In the file, body lines that look like an mbox separator are quoted.
    let file = std::fs::read_to_string(at.split('#').next().unwrap()).unwrap();
    assert!(file.contains("\n>From now on"), "{file}");
    assert!(file.contains("\n>>From the warehouse"), "{file}");
    assert_eq!(messages_in(at.split('#').next().unwrap().as_ref()), 1);

    let sms = spool
        .deliver(&Outbound {
            id: "e1:sms".into(),
            channel: "sms",
            to: "+4915100000000".into(),
            subject: "ignored".into(),
            body: "Shipped.".into(),
        })
        .unwrap();
    assert!(
        sms.starts_with(dir.path().join("sms").to_str().unwrap()),
        "{sms}"
    );
    assert!(read_spooled(&sms).unwrap().ends_with("\n\nShipped.\n"));
}

#[test]
fn the_same_id_is_spooled_once_also_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::new(dir.path());
    let first = spool.deliver(&mail("e1:email", "one")).unwrap();
    let other = spool.deliver(&mail("e2:email", "two")).unwrap();
    assert_ne!(first, other);
    assert_eq!(spool.deliver(&mail("e1:email", "one")).unwrap(), first);
    // A new process reads the ids back from the file.
    let again = Spool::new(dir.path());
    assert_eq!(again.deliver(&mail("e2:email", "two")).unwrap(), other);
    let third = again.deliver(&mail("e3:email", "three")).unwrap();
    let files = mbox_files(dir.path(), "mail");
    assert_eq!(files.len(), 1);
    assert_eq!(messages_in(&files[0]), 3);
    assert!(read_spooled(&third).unwrap().ends_with("\n\nthree\n"));
}

#[test]
fn concurrent_deliveries_all_land_whole() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::new(dir.path());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let spool = spool.clone();
            std::thread::spawn(move || {
                (0..50)
                    .map(|i| {
                        let body = format!("message {t}/{i}\n").repeat(1 + i % 7);
                        (
                            spool
                                .deliver(&mail(&format!("t{t}-{i}:email"), &body))
                                .unwrap(),
                            body,
                        )
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for t in threads {
        for (at, body) in t.join().unwrap() {
            assert!(read_spooled(&at).unwrap().ends_with(&format!("\n\n{body}")));
        }
    }
    let files = mbox_files(dir.path(), "mail");
    assert_eq!(messages_in(&files[0]), 400);
    // And a new process finds all 400 (nothing taken for a torn tail).
    let again = Spool::new(dir.path());
    let at = again.deliver(&mail("t3-7:email", "")).unwrap();
    assert!(read_spooled(&at).unwrap().contains("message 3/7"));
    assert_eq!(messages_in(&files[0]), 400);
}

#[test]
fn a_torn_last_message_is_cut_off_and_a_corrupt_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    Spool::new(dir.path())
        .deliver(&mail("e1:email", "whole"))
        .unwrap();
    let file = mbox_files(dir.path(), "mail").remove(0);
    let whole = std::fs::read(&file).unwrap();
    // A crash mid-append: half of a second message.
    let mut torn = whole.clone();
    torn.extend_from_slice(
        b"From MAILER-DAEMON Tue Nov 24 08:05:31 2026\nFrom: x\nMessage-ID: <e2",
    );
    std::fs::write(&file, &torn).unwrap();
    let spool = Spool::new(dir.path());
    let at = spool.deliver(&mail("e2:email", "second")).unwrap();
    assert!(read_spooled(&at).unwrap().ends_with("\n\nsecond\n"));
    assert_eq!(messages_in(&file), 2);
    assert!(std::fs::read(&file).unwrap().starts_with(&whole));

    // Damage in the middle is not a torn tail: delivery fails and says which file and where.
    let mut bad = b"garbage\n".to_vec();
    bad.extend(std::fs::read(&file).unwrap());
    std::fs::write(&file, &bad).unwrap();
    let err = Spool::new(dir.path())
        .deliver(&mail("e3:email", "third"))
        .unwrap_err();
    assert!(err.to_string().contains("is corrupt at byte 0"), "{err}");
    assert!(err.to_string().contains(file.to_str().unwrap()), "{err}");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        bad,
        "a corrupt file is left as it is"
    );
}

#[test]
fn a_location_that_is_not_the_spools_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    for bad in [
        "nowhere",
        "x#y",
        &format!("{}#0", dir.path().join("none").display()),
    ] {
        assert!(read_spooled(bad).is_err(), "{bad}");
    }
}

/// Whatever byte a crash cuts the file at, a reopened spool keeps the whole messages before it,
/// drops the torn one, and appends after them.
#[test]
fn a_cut_at_any_byte_is_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::new(dir.path());
    spool
        .deliver(&mail("e1:email", "first\nFrom here\n"))
        .unwrap();
    let one = std::fs::metadata(&mbox_files(dir.path(), "mail")[0])
        .unwrap()
        .len() as usize;
    spool
        .deliver(&mail("e2:email", "second\n\nline\n"))
        .unwrap();
    let file = mbox_files(dir.path(), "mail").remove(0);
    let full = std::fs::read(&file).unwrap();
    drop(spool);
    for cut in 0..=full.len() {
        std::fs::write(&file, &full[..cut]).unwrap();
        let spool = Spool::new(dir.path());
        let at = spool
            .deliver(&mail("e3:email", "third"))
            .unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let kept = if cut == full.len() {
            2
        } else if cut >= one {
            1
        } else {
            0
        };
        assert_eq!(messages_in(&file), kept + 1, "cut at {cut}");
        assert!(
            read_spooled(&at).unwrap().ends_with("\n\nthird\n"),
            "cut at {cut}"
        );
    }
}
