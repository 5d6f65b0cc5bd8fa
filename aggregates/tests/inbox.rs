//! Given events / when command / then events or error for the `Inbox`
//! aggregate: every command on a fresh and a used inbox, idempotent repeats,
//! recipient and item id checks, and the wire form of every event.

use chrono::{DateTime, Utc};
use cqrs_es::test::TestFramework;
use cqrs_es::DomainEvent;
use tally_aggregates::inbox::{MAX_ITEM_ID_CHARS, MAX_RECIPIENT_NAME_CHARS};
use tally_aggregates::{
    valid_recipient, DomainError, Inbox, InboxCommand, InboxEvent, EVENT_VERSION,
};

fn t(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .expect("test time")
        .with_timezone(&Utc)
}

const AT: &str = "2025-03-02T10:00:00Z";
const ME: &str = "customer:cus_1";

fn mark_read(item_id: &str) -> InboxCommand {
    InboxCommand::MarkRead {
        recipient: ME.to_owned(),
        item_id: item_id.to_owned(),
        at: t(AT),
    }
}

fn archive(item_id: &str) -> InboxCommand {
    InboxCommand::Archive {
        recipient: ME.to_owned(),
        item_id: item_id.to_owned(),
        at: t(AT),
    }
}

fn read_all() -> InboxCommand {
    InboxCommand::ReadAll {
        recipient: ME.to_owned(),
        at: t(AT),
    }
}

fn item_read(item_id: &str) -> InboxEvent {
    InboxEvent::ItemRead {
        recipient: ME.to_owned(),
        item_id: item_id.to_owned(),
        read_at: t(AT),
    }
}

fn item_archived(item_id: &str) -> InboxEvent {
    InboxEvent::ItemArchived {
        recipient: ME.to_owned(),
        item_id: item_id.to_owned(),
        archived_at: t(AT),
    }
}

fn all_read() -> InboxEvent {
    InboxEvent::AllRead {
        recipient: ME.to_owned(),
        read_at: t(AT),
    }
}

fn given(events: &[InboxEvent]) -> Inbox {
    let mut inbox = Inbox::default();
    for event in events {
        inbox.evolve(event);
    }
    inbox
}

/// Decides `command` and applies its events, as the command layer does.
fn run(inbox: &mut Inbox, command: InboxCommand) -> Result<Vec<InboxEvent>, DomainError> {
    let events = inbox.decide(command)?;
    for event in &events {
        inbox.evolve(event);
    }
    Ok(events)
}

fn assert_validation(result: Result<Vec<InboxEvent>, DomainError>, expected_field: &str) {
    match result {
        Err(DomainError::Validation { field, .. }) if field == expected_field => {}
        other => panic!("expected a validation error on {expected_field}, got {other:?}"),
    }
}

/// A fresh inbox, and one that has seen every kind of event for other items.
fn histories() -> [Vec<InboxEvent>; 2] {
    [
        vec![],
        vec![item_read("ntf_a"), item_archived("ntf_b"), all_read()],
    ]
}

#[test]
fn every_command_is_accepted_on_a_fresh_and_a_used_inbox() {
    for history in histories() {
        let inbox = given(&history);
        assert_eq!(
            inbox.decide(mark_read("ntf_1")),
            Ok(vec![item_read("ntf_1")])
        );
        assert_eq!(
            inbox.decide(archive("ntf_1")),
            Ok(vec![item_archived("ntf_1")])
        );
        assert_eq!(inbox.decide(read_all()), Ok(vec![all_read()]));
    }
}

#[test]
fn the_first_event_makes_the_inbox_the_recipients() {
    for command in [mark_read("ntf_1"), archive("ntf_1"), read_all()] {
        let mut inbox = Inbox::default();
        assert_eq!(inbox.recipient, None);
        run(&mut inbox, command).unwrap();
        assert_eq!(inbox.recipient.as_deref(), Some(ME));
    }
}

#[test]
fn marking_a_read_item_read_again_changes_nothing() {
    let mut inbox = Inbox::default();
    assert_eq!(run(&mut inbox, mark_read("ntf_1")).unwrap().len(), 1);
    assert_eq!(run(&mut inbox, mark_read("ntf_1")), Ok(vec![]));
    assert_eq!(inbox.read.len(), 1);
    assert!(inbox.read.contains("ntf_1"));
    // Another item is still news.
    assert_eq!(run(&mut inbox, mark_read("ntf_2")).unwrap().len(), 1);
}

#[test]
fn marking_an_archived_item_read_changes_nothing() {
    let inbox = given(&[item_archived("ntf_1")]);
    assert_eq!(inbox.decide(mark_read("ntf_1")), Ok(vec![]));
}

#[test]
fn archiving_an_archived_item_again_changes_nothing() {
    let mut inbox = Inbox::default();
    assert_eq!(
        run(&mut inbox, archive("ntf_1")),
        Ok(vec![item_archived("ntf_1")])
    );
    assert_eq!(run(&mut inbox, archive("ntf_1")), Ok(vec![]));
    assert!(inbox.archived.contains("ntf_1"));
    // The aggregate records the archive only; the read model counts it as read.
    assert!(inbox.read.is_empty());
}

#[test]
fn a_read_item_can_still_be_archived() {
    let inbox = given(&[item_read("ntf_1")]);
    assert_eq!(
        inbox.decide(archive("ntf_1")),
        Ok(vec![item_archived("ntf_1")])
    );
}

#[test]
fn read_all_always_emits_and_is_counted() {
    let mut inbox = Inbox::default();
    for count in 1..=3 {
        assert_eq!(run(&mut inbox, read_all()), Ok(vec![all_read()]));
        assert_eq!(inbox.read_all_count, count);
    }
    // Marking everything read does not make individual reads no-ops: only the
    // read model knows which items the boundary covered.
    assert_eq!(run(&mut inbox, mark_read("ntf_1")).unwrap().len(), 1);
}

#[test]
fn recipients_are_customer_or_user_principals() {
    assert_eq!(MAX_RECIPIENT_NAME_CHARS, 128);
    for good in [
        "customer:cus_1",
        "user:alice",
        "user:alice@example.com",
        "customer:a:b",
        &format!("user:{}", "é".repeat(128)),
    ] {
        assert!(valid_recipient(good), "{good}");
    }
    for bad in [
        "",
        "customer:",
        "user:",
        "cus_1",
        "admin:root",
        "Customer:cus_1",
        " customer:cus_1",
        "user:ali ce",
        "user:alice\n",
        "user:\u{0}",
        &format!("user:{}", "a".repeat(129)),
    ] {
        assert!(!valid_recipient(bad), "{bad:?}");
    }
}

#[test]
fn an_invalid_recipient_is_refused_by_every_command() {
    for bad in ["", "cus_1", "user: alice", "robot:r2"] {
        let inbox = Inbox::default();
        let at = t(AT);
        for command in [
            InboxCommand::MarkRead {
                recipient: bad.to_owned(),
                item_id: "ntf_1".to_owned(),
                at,
            },
            InboxCommand::Archive {
                recipient: bad.to_owned(),
                item_id: "ntf_1".to_owned(),
                at,
            },
            InboxCommand::ReadAll {
                recipient: bad.to_owned(),
                at,
            },
        ] {
            assert_validation(inbox.decide(command), "recipient");
        }
    }
}

#[test]
fn another_recipients_command_is_refused() {
    let inbox = given(&[item_read("ntf_a")]);
    let at = t(AT);
    for command in [
        InboxCommand::MarkRead {
            recipient: "user:alice".to_owned(),
            item_id: "ntf_1".to_owned(),
            at,
        },
        InboxCommand::Archive {
            recipient: "user:alice".to_owned(),
            item_id: "ntf_1".to_owned(),
            at,
        },
        InboxCommand::ReadAll {
            recipient: "user:alice".to_owned(),
            at,
        },
    ] {
        assert_validation(inbox.decide(command), "recipient");
    }
}

#[test]
fn item_ids_are_1_to_64_characters_without_whitespace() {
    assert_eq!(MAX_ITEM_ID_CHARS, 64);
    let inbox = Inbox::default();
    let longest = "n".repeat(MAX_ITEM_ID_CHARS);
    assert!(inbox.decide(mark_read(&longest)).is_ok());
    assert!(inbox.decide(archive(&longest)).is_ok());
    for bad in [
        String::new(),
        "n".repeat(MAX_ITEM_ID_CHARS + 1),
        "ntf 1".to_owned(),
        "ntf\u{7}".to_owned(),
    ] {
        assert_validation(inbox.decide(mark_read(&bad)), "item_id");
        assert_validation(inbox.decide(archive(&bad)), "item_id");
    }
}

#[test]
fn every_event_round_trips_through_json_externally_tagged() {
    let events = [item_read("ntf_1"), item_archived("ntf_1"), all_read()];
    let names: Vec<&str> = events.iter().map(|e| e.name()).collect();
    assert_eq!(names, ["ItemRead", "ItemArchived", "AllRead"]);
    for event in events {
        let json = serde_json::to_value(&event).unwrap();
        let object = json.as_object().expect("an object");
        assert_eq!(object.len(), 1, "{json}");
        assert!(object.contains_key(event.name()), "{json}");
        assert_eq!(serde_json::from_value::<InboxEvent>(json).unwrap(), event);
        assert_eq!(event.event_type(), event.name());
        assert_eq!(event.event_version(), EVENT_VERSION);
        assert_eq!(event.recipient(), ME);
    }
    assert_eq!(
        serde_json::to_value(all_read()).unwrap(),
        serde_json::json!({"AllRead": {"recipient": "customer:cus_1", "read_at": "2025-03-02T10:00:00Z"}})
    );
}

#[test]
fn the_state_snapshot_and_commands_round_trip() {
    let inbox = given(&histories()[1]);
    let json = serde_json::to_string(&inbox).unwrap();
    assert_eq!(serde_json::from_str::<Inbox>(&json).unwrap(), inbox);
    for command in [mark_read("ntf_1"), archive("ntf_1"), read_all()] {
        let json = serde_json::to_string(&command).unwrap();
        assert_eq!(
            serde_json::from_str::<InboxCommand>(&json).unwrap(),
            command
        );
    }
    let names: Vec<&str> = [mark_read("n"), archive("n"), read_all()]
        .iter()
        .map(|c| c.name())
        .collect();
    assert_eq!(names, ["mark_read", "archive", "read_all"]);
}

#[test]
fn the_cqrs_adapter_forwards_to_decide_and_evolve() {
    TestFramework::<Inbox>::with(())
        .given_no_previous_events()
        .when(mark_read("ntf_1"))
        .then_expect_events(vec![item_read("ntf_1")]);
    TestFramework::<Inbox>::with(())
        .given(vec![item_read("ntf_1")])
        .when(mark_read("ntf_1"))
        .then_expect_events(vec![]);
    TestFramework::<Inbox>::with(())
        .given(vec![item_archived("ntf_1")])
        .when(archive("ntf_1"))
        .then_expect_events(vec![]);
    TestFramework::<Inbox>::with(())
        .given(vec![all_read()])
        .when(read_all())
        .then_expect_events(vec![all_read()]);
    TestFramework::<Inbox>::with(())
        .given_no_previous_events()
        .when(mark_read(""))
        .then_expect_error(DomainError::validation(
            "item_id",
            "must be 1 to 64 characters",
        ));
    assert_eq!(<Inbox as cqrs_es::Aggregate>::TYPE, "inbox");
}

#[test]
#[should_panic(expected = "ItemRead for another recipient's inbox")]
fn an_event_for_another_recipient_is_a_bug() {
    let mut inbox = given(&[all_read()]);
    inbox.evolve(&InboxEvent::ItemRead {
        recipient: "user:alice".to_owned(),
        item_id: "ntf_1".to_owned(),
        read_at: t(AT),
    });
}

fn notice(severity: &str, title: &str) -> tally_aggregates::inbox::Notice {
    tally_aggregates::inbox::Notice {
        severity: severity.to_owned(),
        title: title.to_owned(),
        body: "Every delivery failed for three days.".to_owned(),
        subject_type: "webhook".to_owned(),
        subject_id: "whk_1".to_owned(),
    }
}

#[test]
fn a_notice_is_delivered_on_a_fresh_and_a_used_inbox() {
    for history in histories() {
        let inbox = given(&history);
        let n = notice("warning", "Webhook endpoint disabled");
        assert_eq!(
            inbox.decide(InboxCommand::Notify {
                recipient: ME.to_owned(),
                notice: n.clone(),
                at: t(AT),
            }),
            Ok(vec![InboxEvent::Notified {
                recipient: ME.to_owned(),
                notice: n,
                notified_at: t(AT),
            }])
        );
    }
}

#[test]
fn a_notice_needs_a_known_severity_a_title_and_the_owner() {
    let inbox = given(&histories()[1]);
    let notify = |recipient: &str, n| InboxCommand::Notify {
        recipient: recipient.to_owned(),
        notice: n,
        at: t(AT),
    };
    assert_validation(inbox.decide(notify(ME, notice("loud", "x"))), "severity");
    assert_validation(inbox.decide(notify(ME, notice("info", "  "))), "title");
    assert_validation(
        inbox.decide(notify(ME, notice("info", &"x".repeat(201)))),
        "title",
    );
    assert_validation(
        inbox.decide(notify("customer:cus_2", notice("info", "x"))),
        "recipient",
    );
    // A notice changes none of the recipient's decisions.
    let mut after = inbox.clone();
    for e in inbox.decide(notify(ME, notice("critical", "x"))).unwrap() {
        after.evolve(&e);
    }
    assert_eq!(after, inbox);
    assert_eq!(
        InboxEvent::Notified {
            recipient: ME.to_owned(),
            notice: notice("info", "x"),
            notified_at: t(AT),
        }
        .event_type(),
        "Notified"
    );
}
