//! Given events / when command / then events or error for the ticket state
//! machine: the `Transition` matrix generated from `TRANSITIONS`, every command
//! in every status, the comment rules that open and reopen, attachment and
//! field limits, what the events carry for the inbox, their wire form, and
//! properties over random command sequences.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};
use cqrs_es::test::TestFramework;
use cqrs_es::DomainEvent;
use proptest::prelude::*;
use tally_aggregates::ticket::{
    MAX_BODY_CHARS, MAX_COMMENTS, MAX_FILE_NAME_CHARS, MAX_PRINCIPAL_CHARS, MAX_STORAGE_KEY_CHARS,
    MAX_SUBJECT_CHARS,
};
use tally_aggregates::AggregateKind;
use tally_aggregates::{
    can_transition, Attachment, Comment, DomainError, Priority, Ticket, TicketCommand, TicketEvent,
    TicketStatus, ALLOWED_CONTENT_TYPES, EVENT_VERSION, MAX_ATTACHMENTS, MAX_ATTACHMENT_BYTES,
    TRANSITIONS,
};

fn t(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .expect("test time")
        .with_timezone(&Utc)
}

/// When fixture tickets are created, and when later commands happen.
const CREATED: &str = "2025-03-01T09:00:00Z";
const LATER: &str = "2025-03-02T10:00:00Z";
/// Who asks, who first answers, and who takes over.
const REQUESTER: &str = "cus_1";
const AGENT: &str = "alice";
const OTHER_AGENT: &str = "bob";
const SUBJECT: &str = "Invoice shows the wrong seat count";

fn create_command() -> TicketCommand {
    TicketCommand::Create {
        ticket_id: "tkt_1".to_owned(),
        subject: SUBJECT.to_owned(),
        description: "We have 3 seats,\nthe invoice says 5.".to_owned(),
        requester: REQUESTER.to_owned(),
        priority: Priority::High,
        subscription_id: Some("sub_1".to_owned()),
        at: t(CREATED),
    }
}

fn created() -> TicketEvent {
    TicketEvent::TicketCreated {
        ticket_id: "tkt_1".to_owned(),
        subject: SUBJECT.to_owned(),
        description: "We have 3 seats,\nthe invoice says 5.".to_owned(),
        requester: REQUESTER.to_owned(),
        priority: Priority::High,
        subscription_id: Some("sub_1".to_owned()),
        created_at: t(CREATED),
    }
}

fn assign(assignee: &str) -> TicketCommand {
    TicketCommand::Assign {
        assignee: assignee.to_owned(),
        at: t(LATER),
    }
}

fn comment(id: &str, author: &str, public: bool) -> TicketCommand {
    TicketCommand::Comment {
        comment_id: id.to_owned(),
        author: author.to_owned(),
        body: format!("A comment by {author}."),
        public,
        at: t(LATER),
    }
}

fn attach_sized(id: &str, content_type: &str, size_bytes: u64) -> TicketCommand {
    TicketCommand::Attach {
        attachment_id: id.to_owned(),
        file_name: "invoice.pdf".to_owned(),
        content_type: content_type.to_owned(),
        size_bytes,
        storage_key: format!("tickets/tkt_1/{id}"),
        at: t(LATER),
    }
}

fn attach(id: &str) -> TicketCommand {
    attach_sized(id, "application/pdf", 1_234)
}

fn transition(to: TicketStatus) -> TicketCommand {
    TicketCommand::Transition { to, at: t(LATER) }
}

fn given(events: &[TicketEvent]) -> Ticket {
    let mut ticket = Ticket::default();
    for event in events {
        ticket.evolve(event);
    }
    ticket
}

/// Decides `command` and applies its events, as the command layer does.
fn run(ticket: &mut Ticket, command: TicketCommand) -> Result<Vec<TicketEvent>, DomainError> {
    let events = ticket.decide(command)?;
    for event in &events {
        ticket.evolve(event);
    }
    Ok(events)
}

/// The events that put a ticket into `status`: created by the requester,
/// assigned to `AGENT` unless it is still new, then moved along the table.
fn history(status: Option<TicketStatus>) -> Vec<TicketEvent> {
    use TicketStatus::{Closed, New, OnHold, Open, Pending, Solved};
    let Some(status) = status else {
        return vec![];
    };
    let mut ticket = Ticket::default();
    let mut events = run(&mut ticket, create_command()).unwrap();
    let path: &[TicketStatus] = match status {
        New => &[],
        Open => &[Open],
        Pending => &[Open, Pending],
        OnHold => &[Open, OnHold],
        Solved => &[Open, Solved],
        Closed => &[Open, Solved, Closed],
    };
    for (i, &to) in path.iter().enumerate() {
        let command = if i == 0 {
            assign(AGENT)
        } else {
            transition(to)
        };
        events.extend(run(&mut ticket, command).unwrap());
    }
    assert_eq!(ticket.status, Some(status), "fixture for {status:?}");
    events
}

fn state(status: Option<TicketStatus>) -> Ticket {
    let ticket = given(&history(status));
    assert_eq!(ticket.status, status);
    ticket
}

fn assert_validation(result: Result<Vec<TicketEvent>, DomainError>, expected_field: &str) {
    match result {
        Err(DomainError::Validation { field, .. }) if field == expected_field => {}
        other => panic!("expected a validation error on {expected_field}, got {other:?}"),
    }
}

fn invalid(from: TicketStatus, command: &'static str) -> DomainError {
    DomainError::InvalidTransition {
        aggregate: AggregateKind::Ticket,
        from: from.as_str().to_owned(),
        command,
    }
}

// ---------------------------------------------------------------------------
// The transition table
// ---------------------------------------------------------------------------

#[test]
fn transition_is_accepted_exactly_for_the_rows_of_the_table() {
    let mut accepted = 0;
    for from in TicketStatus::ALL {
        for to in TicketStatus::ALL {
            let before = state(Some(from));
            let context = format!("{from:?} → {to:?}");
            let result = before.decide(transition(to));
            if TRANSITIONS.contains(&(from, to)) {
                assert!(can_transition(from, to), "{context}");
                let events = result.unwrap_or_else(|e| panic!("{context}: {e:?}"));
                assert_eq!(
                    events,
                    vec![TicketEvent::TicketStatusChanged {
                        from,
                        to,
                        requester: REQUESTER.to_owned(),
                        assignee: before.assignee.clone(),
                        subject: SUBJECT.to_owned(),
                        changed_at: t(LATER),
                        by: None,
                    }],
                    "{context}"
                );
                let after = given(&[history(Some(from)), events].concat());
                assert_eq!(after.status, Some(to), "{context}");
                assert_eq!(after.updated_at, Some(t(LATER)), "{context}");
                accepted += 1;
            } else {
                assert!(!can_transition(from, to), "{context}");
                assert_eq!(result, Err(invalid(from, "transition")), "{context}");
            }
        }
    }
    assert_eq!(accepted, TRANSITIONS.len());
}

#[test]
fn the_table_has_no_duplicate_rows_no_self_moves_and_no_way_out_of_closed() {
    let rows: BTreeSet<(&str, &str)> = TRANSITIONS
        .iter()
        .map(|(from, to)| (from.as_str(), to.as_str()))
        .collect();
    assert_eq!(rows.len(), TRANSITIONS.len(), "duplicate rows");
    for &(from, to) in TRANSITIONS {
        assert_ne!(from, to, "a status never moves to itself");
        assert_ne!(from, TicketStatus::Closed, "closed is terminal");
        assert_ne!(to, TicketStatus::New, "nothing goes back to new");
    }
}

#[test]
fn the_table_is_the_documented_one() {
    use TicketStatus::{Closed, New, OnHold, Open, Pending, Solved};
    let expected: BTreeSet<(&str, &str)> = [
        (Open, Pending),
        (Pending, Open),
        (Open, OnHold),
        (OnHold, Open),
        (Pending, OnHold),
        (OnHold, Pending),
        (New, Solved),
        (Open, Solved),
        (Pending, Solved),
        (OnHold, Solved),
        (Solved, Open),
        (Solved, Closed),
        (New, Open),
    ]
    .map(|(from, to)| (from.as_str(), to.as_str()))
    .into_iter()
    .collect();
    let actual: BTreeSet<(&str, &str)> = TRANSITIONS
        .iter()
        .map(|(from, to)| (from.as_str(), to.as_str()))
        .collect();
    assert_eq!(actual, expected);
}

#[test]
fn every_status_is_reachable_from_new_and_can_reach_closed() {
    let mut reached = BTreeSet::from([TicketStatus::New.as_str()]);
    loop {
        let before = reached.len();
        for &(from, to) in TRANSITIONS {
            if reached.contains(from.as_str()) {
                reached.insert(to.as_str());
            }
        }
        if reached.len() == before {
            break;
        }
    }
    assert_eq!(reached.len(), TicketStatus::ALL.len(), "{reached:?}");
    for status in TicketStatus::ALL {
        let mut reaches = BTreeSet::from([status.as_str()]);
        for _ in 0..TicketStatus::ALL.len() {
            for &(from, to) in TRANSITIONS {
                if reaches.contains(from.as_str()) {
                    reaches.insert(to.as_str());
                }
            }
        }
        assert!(reaches.contains("closed"), "{status:?} cannot be closed");
    }
}

#[test]
fn transition_of_a_ticket_never_created_is_not_found() {
    for to in TicketStatus::ALL {
        assert_eq!(
            Ticket::default().decide(transition(to)),
            Err(DomainError::NotFound(AggregateKind::Ticket))
        );
    }
}

// ---------------------------------------------------------------------------
// Every command in every status
// ---------------------------------------------------------------------------

#[derive(Debug, PartialEq)]
enum Outcome {
    /// These events, in order, after which the status is this.
    Then(Vec<&'static str>, TicketStatus),
    Invalid,
    NotFound,
    AlreadyExists,
}

const COMMAND_NAMES: [&str; 5] = ["create", "assign", "comment", "attach", "transition"];

/// One valid command of each kind: an assignment to another agent, a public
/// comment by an agent, a PDF, and a move to solved.
fn sample_commands() -> Vec<TicketCommand> {
    vec![
        create_command(),
        assign(OTHER_AGENT),
        comment("cmt_x", OTHER_AGENT, true),
        attach("att_x"),
        transition(TicketStatus::Solved),
    ]
}

/// The state machine as a table. No catch-all: a new status or command does
/// not compile until its row is written.
fn expected(status: Option<TicketStatus>, command: &TicketCommand) -> Outcome {
    use Outcome::{AlreadyExists, Invalid, NotFound, Then};
    use TicketCommand as C;
    use TicketStatus::{Closed, New, OnHold, Open, Pending, Solved};
    let Some(status) = status else {
        return match command {
            C::Create { .. } => Then(vec!["TicketCreated"], New),
            C::Assign { .. } | C::Comment { .. } | C::Attach { .. } | C::Transition { .. } => {
                NotFound
            }
        };
    };
    match command {
        C::Create { .. } => AlreadyExists,
        C::Assign { .. } => match status {
            New => Then(vec!["TicketAssigned", "TicketStatusChanged"], Open),
            Open | Pending | OnHold | Solved => Then(vec!["TicketAssigned"], status),
            Closed => Invalid,
        },
        C::Comment { .. } => match status {
            New => Then(vec!["CommentAdded", "TicketStatusChanged"], Open),
            Open | Pending | OnHold | Solved => Then(vec!["CommentAdded"], status),
            Closed => Invalid,
        },
        C::Attach { .. } => match status {
            New | Open | Pending | OnHold | Solved => Then(vec!["AttachmentAdded"], status),
            Closed => Invalid,
        },
        C::Transition { to, .. } => {
            if can_transition(status, *to) {
                Then(vec!["TicketStatusChanged"], *to)
            } else {
                Invalid
            }
        }
    }
}

#[test]
fn every_status_and_command_pair_is_decided_as_the_table_says() {
    let names: BTreeSet<&str> = sample_commands().iter().map(|c| c.name()).collect();
    assert_eq!(names, COMMAND_NAMES.into_iter().collect());

    let statuses = std::iter::once(None).chain(TicketStatus::ALL.map(Some));
    let mut pairs = 0;
    for status in statuses {
        for command in sample_commands() {
            pairs += 1;
            let before = state(status);
            let name = command.name();
            let want = expected(status, &command);
            let context = format!("{status:?} × {name}");
            match (want, before.decide(command)) {
                (Outcome::Then(names, new_status), Ok(events)) => {
                    let got: Vec<&str> = events.iter().map(|e| e.name()).collect();
                    assert_eq!(got, names, "{context}");
                    let after = given(&[history(status), events].concat());
                    assert_eq!(after.status, Some(new_status), "{context}");
                }
                (
                    Outcome::Invalid,
                    Err(DomainError::InvalidTransition {
                        aggregate,
                        from,
                        command,
                    }),
                ) => {
                    assert_eq!(aggregate, AggregateKind::Ticket, "{context}");
                    assert_eq!(Some(from.as_str()), status.map(|s| s.as_str()), "{context}");
                    assert_eq!(command, name, "{context}");
                }
                (Outcome::NotFound, Err(DomainError::NotFound(AggregateKind::Ticket)))
                | (
                    Outcome::AlreadyExists,
                    Err(DomainError::AlreadyExists(AggregateKind::Ticket)),
                ) => {}
                (want, got) => panic!("{context}: expected {want:?}, got {got:?}"),
            }
        }
    }
    assert_eq!(pairs, 7 * 5);
}

#[test]
fn a_closed_ticket_refuses_every_command_but_create_as_a_transition() {
    let closed = state(Some(TicketStatus::Closed));
    assert_eq!(
        closed.decide(assign(AGENT)),
        Err(invalid(TicketStatus::Closed, "assign"))
    );
    assert_eq!(
        closed.decide(comment("cmt_9", REQUESTER, true)),
        Err(invalid(TicketStatus::Closed, "comment"))
    );
    assert_eq!(
        closed.decide(attach("att_9")),
        Err(invalid(TicketStatus::Closed, "attach"))
    );
    for to in TicketStatus::ALL {
        assert_eq!(
            closed.decide(transition(to)),
            Err(invalid(TicketStatus::Closed, "transition"))
        );
    }
    assert_eq!(
        closed.decide(create_command()),
        Err(DomainError::AlreadyExists(AggregateKind::Ticket))
    );
}

#[test]
fn invalid_transition_message_names_the_state_and_the_command() {
    let err = state(Some(TicketStatus::OnHold))
        .decide(transition(TicketStatus::Closed))
        .unwrap_err();
    assert_eq!(err.to_string(), "cannot transition a on_hold ticket");
}

// ---------------------------------------------------------------------------
// Create
// ---------------------------------------------------------------------------

/// The fields of a `Create` command, so a test changes only the one it is about.
#[derive(Debug, Clone)]
struct NewTicket {
    ticket_id: String,
    subject: String,
    description: String,
    requester: String,
    subscription_id: Option<String>,
}

impl NewTicket {
    fn valid() -> NewTicket {
        NewTicket {
            ticket_id: "tkt_1".to_owned(),
            subject: SUBJECT.to_owned(),
            description: String::new(),
            requester: REQUESTER.to_owned(),
            subscription_id: None,
        }
    }

    fn decide(self) -> Result<Vec<TicketEvent>, DomainError> {
        Ticket::default().decide(TicketCommand::Create {
            ticket_id: self.ticket_id,
            subject: self.subject,
            description: self.description,
            requester: self.requester,
            priority: Priority::Normal,
            subscription_id: self.subscription_id,
            at: t(CREATED),
        })
    }
}

#[test]
fn create_opens_a_new_ticket_with_every_field() {
    let events = Ticket::default().decide(create_command()).unwrap();
    assert_eq!(events, vec![created()]);
    let ticket = given(&events);
    assert_eq!(
        ticket,
        Ticket {
            id: Some("tkt_1".to_owned()),
            status: Some(TicketStatus::New),
            subject: SUBJECT.to_owned(),
            description: "We have 3 seats,\nthe invoice says 5.".to_owned(),
            requester: REQUESTER.to_owned(),
            priority: Some(Priority::High),
            subscription_id: Some("sub_1".to_owned()),
            assignee: None,
            comments: vec![],
            attachments: vec![],
            created_at: Some(t(CREATED)),
            updated_at: Some(t(CREATED)),
        }
    );
}

#[test]
fn subject_is_1_to_200_characters_not_only_whitespace() {
    let with = |subject: String| NewTicket {
        subject,
        ..NewTicket::valid()
    };
    assert!(with("é".repeat(MAX_SUBJECT_CHARS)).decide().is_ok());
    assert!(with("x".to_owned()).decide().is_ok());
    assert_eq!(MAX_SUBJECT_CHARS, 200);
    for bad in [
        "x".repeat(MAX_SUBJECT_CHARS + 1),
        String::new(),
        "   ".to_owned(),
        "two\nlines".to_owned(),
    ] {
        assert_validation(with(bad.clone()).decide(), "subject");
    }
}

#[test]
fn description_is_at_most_10000_characters_and_may_be_empty_or_multiline() {
    let with = |description: String| NewTicket {
        description,
        ..NewTicket::valid()
    };
    assert_eq!(MAX_BODY_CHARS, 10_000);
    assert!(with(String::new()).decide().is_ok());
    assert!(with("line\r\n\tline".to_owned()).decide().is_ok());
    assert!(with("é".repeat(MAX_BODY_CHARS)).decide().is_ok());
    assert_validation(with("x".repeat(MAX_BODY_CHARS + 1)).decide(), "description");
    assert_validation(with("bell\u{7}".to_owned()).decide(), "description");
}

#[test]
fn requester_is_1_to_128_characters_not_only_whitespace() {
    let with = |requester: String| NewTicket {
        requester,
        ..NewTicket::valid()
    };
    assert_eq!(MAX_PRINCIPAL_CHARS, 128);
    assert!(with("r".repeat(MAX_PRINCIPAL_CHARS)).decide().is_ok());
    for bad in [
        String::new(),
        " \t ".to_owned(),
        "r".repeat(MAX_PRINCIPAL_CHARS + 1),
        "cus\n1".to_owned(),
    ] {
        assert_validation(with(bad).decide(), "requester");
    }
}

#[test]
fn ticket_and_subscription_ids_are_checked_like_other_ids() {
    for bad in ["", "tkt 1", &"t".repeat(65)] {
        let command = NewTicket {
            ticket_id: bad.to_owned(),
            ..NewTicket::valid()
        };
        assert_validation(command.decide(), "ticket_id");
        let command = NewTicket {
            subscription_id: Some(bad.to_owned()),
            ..NewTicket::valid()
        };
        assert_validation(command.decide(), "subscription_id");
    }
    let command = NewTicket {
        ticket_id: "t".repeat(64),
        subscription_id: Some("s".repeat(64)),
        ..NewTicket::valid()
    };
    assert!(command.decide().is_ok());
}

// ---------------------------------------------------------------------------
// Assign
// ---------------------------------------------------------------------------

#[test]
fn assigning_a_new_ticket_opens_it_and_both_events_name_the_assignee() {
    let ticket = state(Some(TicketStatus::New));
    assert_eq!(
        ticket.decide(assign(AGENT)),
        Ok(vec![
            TicketEvent::TicketAssigned {
                assignee: AGENT.to_owned(),
                previous: None,
                requester: REQUESTER.to_owned(),
                subject: SUBJECT.to_owned(),
                assigned_at: t(LATER),
            },
            TicketEvent::TicketStatusChanged {
                from: TicketStatus::New,
                to: TicketStatus::Open,
                requester: REQUESTER.to_owned(),
                assignee: Some(AGENT.to_owned()),
                subject: SUBJECT.to_owned(),
                changed_at: t(LATER),
                by: None,
            },
        ])
    );
}

#[test]
fn reassigning_names_the_previous_assignee_and_keeps_the_status() {
    for status in [
        TicketStatus::Open,
        TicketStatus::Pending,
        TicketStatus::OnHold,
        TicketStatus::Solved,
    ] {
        let mut ticket = state(Some(status));
        let events = run(&mut ticket, assign(OTHER_AGENT)).unwrap();
        assert_eq!(
            events,
            vec![TicketEvent::TicketAssigned {
                assignee: OTHER_AGENT.to_owned(),
                previous: Some(AGENT.to_owned()),
                requester: REQUESTER.to_owned(),
                subject: SUBJECT.to_owned(),
                assigned_at: t(LATER),
            }],
            "{status:?}"
        );
        assert_eq!(ticket.status, Some(status));
        assert_eq!(ticket.assignee.as_deref(), Some(OTHER_AGENT));
    }
}

#[test]
fn assigning_the_same_assignee_again_changes_nothing() {
    for status in [
        TicketStatus::Open,
        TicketStatus::Pending,
        TicketStatus::OnHold,
        TicketStatus::Solved,
    ] {
        assert_eq!(
            state(Some(status)).decide(assign(AGENT)),
            Ok(vec![]),
            "{status:?}"
        );
    }
}

#[test]
fn assignee_is_1_to_128_characters_not_only_whitespace() {
    for status in [TicketStatus::New, TicketStatus::Open] {
        let ticket = state(Some(status));
        assert!(ticket
            .decide(assign(&"a".repeat(MAX_PRINCIPAL_CHARS)))
            .is_ok());
        for bad in [
            String::new(),
            "  ".to_owned(),
            "a".repeat(MAX_PRINCIPAL_CHARS + 1),
            "a\u{0}".to_owned(),
        ] {
            assert_validation(ticket.decide(assign(&bad)), "assignee");
        }
    }
}

// ---------------------------------------------------------------------------
// Comment
// ---------------------------------------------------------------------------

fn status_after(status: TicketStatus, command: TicketCommand) -> (Vec<TicketEvent>, Ticket) {
    let mut ticket = state(Some(status));
    let events = run(&mut ticket, command).unwrap();
    (events, ticket)
}

#[test]
fn an_agent_comment_on_a_new_ticket_opens_it_public_or_internal() {
    for public in [true, false] {
        let (events, ticket) = status_after(TicketStatus::New, comment("cmt_1", AGENT, public));
        assert_eq!(
            events,
            vec![
                TicketEvent::CommentAdded {
                    comment: Comment {
                        id: "cmt_1".to_owned(),
                        author: AGENT.to_owned(),
                        body: format!("A comment by {AGENT}."),
                        public,
                        created_at: t(LATER),
                    },
                    requester: REQUESTER.to_owned(),
                    assignee: None,
                    subject: SUBJECT.to_owned(),
                },
                TicketEvent::TicketStatusChanged {
                    from: TicketStatus::New,
                    to: TicketStatus::Open,
                    requester: REQUESTER.to_owned(),
                    assignee: None,
                    subject: SUBJECT.to_owned(),
                    changed_at: t(LATER),
                    by: Some(AGENT.to_owned()),
                },
            ]
        );
        assert_eq!(ticket.status, Some(TicketStatus::Open));
        assert_eq!(ticket.comments.len(), 1);
        assert_eq!(ticket.updated_at, Some(t(LATER)));
    }
}

#[test]
fn the_requesters_own_comment_on_a_new_ticket_keeps_it_new() {
    for public in [true, false] {
        let (events, ticket) = status_after(TicketStatus::New, comment("cmt_1", REQUESTER, public));
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].name(), "CommentAdded");
        assert_eq!(ticket.status, Some(TicketStatus::New));
    }
}

#[test]
fn a_public_reply_of_the_requester_reopens_a_solved_ticket() {
    let (events, ticket) = status_after(TicketStatus::Solved, comment("cmt_1", REQUESTER, true));
    assert_eq!(
        events[1],
        TicketEvent::TicketStatusChanged {
            from: TicketStatus::Solved,
            to: TicketStatus::Open,
            requester: REQUESTER.to_owned(),
            assignee: Some(AGENT.to_owned()),
            subject: SUBJECT.to_owned(),
            changed_at: t(LATER),
            by: Some(REQUESTER.to_owned()),
        }
    );
    assert_eq!(events.len(), 2);
    assert_eq!(ticket.status, Some(TicketStatus::Open));
}

#[test]
fn an_internal_requester_comment_or_an_agent_comment_keeps_a_solved_ticket_solved() {
    for command in [
        comment("cmt_1", REQUESTER, false),
        comment("cmt_1", AGENT, true),
        comment("cmt_1", OTHER_AGENT, false),
    ] {
        let (events, ticket) = status_after(TicketStatus::Solved, command.clone());
        assert_eq!(events.len(), 1, "{command:?}");
        assert_eq!(ticket.status, Some(TicketStatus::Solved), "{command:?}");
    }
}

#[test]
fn comments_in_open_pending_and_on_hold_never_move_the_status_but_a_requester_reply_on_pending() {
    for status in [
        TicketStatus::Open,
        TicketStatus::Pending,
        TicketStatus::OnHold,
    ] {
        for (author, public) in [(REQUESTER, true), (REQUESTER, false), (AGENT, true)] {
            if status == TicketStatus::Pending && author == REQUESTER && public {
                continue; // the requester's public reply reopens: tested below
            }
            let (events, ticket) = status_after(status, comment("cmt_1", author, public));
            assert_eq!(events.len(), 1, "{status:?} {author} {public}");
            assert_eq!(ticket.status, Some(status));
        }
    }
}

#[test]
fn a_comment_on_a_closed_ticket_is_refused() {
    for (author, public) in [(REQUESTER, true), (AGENT, false)] {
        assert_eq!(
            state(Some(TicketStatus::Closed)).decide(comment("cmt_1", author, public)),
            Err(invalid(TicketStatus::Closed, "comment"))
        );
    }
}

#[test]
fn comment_body_is_1_to_10000_characters_and_may_span_lines() {
    let ticket = state(Some(TicketStatus::Open));
    let with = |body: &str| TicketCommand::Comment {
        comment_id: "cmt_1".to_owned(),
        author: AGENT.to_owned(),
        body: body.to_owned(),
        public: true,
        at: t(LATER),
    };
    assert!(ticket.decide(with(&"b".repeat(MAX_BODY_CHARS))).is_ok());
    assert!(ticket.decide(with("first\n\nsecond")).is_ok());
    for bad in [
        String::new(),
        " \n ".to_owned(),
        "b".repeat(MAX_BODY_CHARS + 1),
        "escape \u{1b}[31m".to_owned(),
    ] {
        assert_validation(ticket.decide(with(&bad)), "body");
    }
}

#[test]
fn comment_author_and_id_are_checked() {
    let ticket = state(Some(TicketStatus::Open));
    assert_validation(ticket.decide(comment("cmt_1", "", true)), "author");
    assert_validation(
        ticket.decide(comment("cmt_1", &"a".repeat(MAX_PRINCIPAL_CHARS + 1), true)),
        "author",
    );
    assert_validation(ticket.decide(comment("", AGENT, true)), "comment_id");
    assert_validation(ticket.decide(comment("cmt 1", AGENT, true)), "comment_id");
}

#[test]
fn a_comment_id_is_used_once_per_ticket() {
    let mut ticket = state(Some(TicketStatus::Open));
    run(&mut ticket, comment("cmt_1", AGENT, true)).unwrap();
    assert_validation(ticket.decide(comment("cmt_1", AGENT, true)), "comment_id");
    assert!(ticket.decide(comment("cmt_2", AGENT, true)).is_ok());
}

#[test]
fn a_ticket_has_at_most_1000_comments() {
    let mut ticket = state(Some(TicketStatus::Open));
    for i in 0..MAX_COMMENTS {
        run(&mut ticket, comment(&format!("cmt_{i}"), AGENT, false)).unwrap();
    }
    assert_eq!(ticket.comments.len(), 1_000);
    assert_validation(ticket.decide(comment("cmt_last", AGENT, false)), "comments");
}

// ---------------------------------------------------------------------------
// Attach
// ---------------------------------------------------------------------------

#[test]
fn an_attachment_is_recorded_with_every_field() {
    let (events, ticket) = status_after(TicketStatus::New, attach("att_1"));
    let attachment = Attachment {
        id: "att_1".to_owned(),
        file_name: "invoice.pdf".to_owned(),
        content_type: "application/pdf".to_owned(),
        size_bytes: 1_234,
        storage_key: "tickets/tkt_1/att_1".to_owned(),
        created_at: t(LATER),
    };
    assert_eq!(
        events,
        vec![TicketEvent::AttachmentAdded {
            attachment: attachment.clone()
        }]
    );
    assert_eq!(ticket.attachments, vec![attachment]);
    assert_eq!(ticket.status, Some(TicketStatus::New));
    assert_eq!(ticket.updated_at, Some(t(LATER)));
}

#[test]
fn an_attachment_is_1_byte_to_25_mib() {
    let ticket = state(Some(TicketStatus::Open));
    assert_eq!(MAX_ATTACHMENT_BYTES, 26_214_400);
    assert!(ticket
        .decide(attach_sized("att_1", "image/png", MAX_ATTACHMENT_BYTES))
        .is_ok());
    assert!(ticket.decide(attach_sized("att_1", "image/png", 1)).is_ok());
    for bad in [0, MAX_ATTACHMENT_BYTES + 1, u64::MAX] {
        assert_validation(
            ticket.decide(attach_sized("att_1", "image/png", bad)),
            "size_bytes",
        );
    }
}

#[test]
fn only_the_listed_content_types_are_accepted() {
    let ticket = state(Some(TicketStatus::Open));
    assert_eq!(ALLOWED_CONTENT_TYPES.len(), 9);
    for content_type in ALLOWED_CONTENT_TYPES {
        assert!(
            ticket
                .decide(attach_sized("att_1", content_type, 10))
                .is_ok(),
            "{content_type}"
        );
    }
    for bad in [
        "text/html",
        "image/svg+xml",
        "application/x-msdownload",
        "IMAGE/PNG",
        "text/plain; charset=utf-8",
        "",
    ] {
        assert_validation(
            ticket.decide(attach_sized("att_1", bad, 10)),
            "content_type",
        );
    }
}

#[test]
fn the_21st_attachment_is_refused() {
    let mut ticket = state(Some(TicketStatus::Open));
    for i in 0..MAX_ATTACHMENTS {
        run(&mut ticket, attach(&format!("att_{i}"))).unwrap();
    }
    assert_eq!(ticket.attachments.len(), 20);
    assert_validation(ticket.decide(attach("att_20")), "attachments");
}

#[test]
fn file_name_storage_key_and_attachment_id_are_checked() {
    let ticket = state(Some(TicketStatus::Open));
    let with = |file_name: &str, storage_key: &str| TicketCommand::Attach {
        attachment_id: "att_1".to_owned(),
        file_name: file_name.to_owned(),
        content_type: "text/csv".to_owned(),
        size_bytes: 10,
        storage_key: storage_key.to_owned(),
        at: t(LATER),
    };
    assert!(ticket
        .decide(with(
            &"f".repeat(MAX_FILE_NAME_CHARS),
            &"k".repeat(MAX_STORAGE_KEY_CHARS)
        ))
        .is_ok());
    assert_eq!((MAX_FILE_NAME_CHARS, MAX_STORAGE_KEY_CHARS), (255, 1_024));
    for bad in [
        String::new(),
        " ".to_owned(),
        "f".repeat(256),
        "a\nb".to_owned(),
    ] {
        assert_validation(ticket.decide(with(&bad, "key")), "file_name");
    }
    for bad in [String::new(), "k".repeat(1_025), "k\u{0}".to_owned()] {
        assert_validation(ticket.decide(with("a.csv", &bad)), "storage_key");
    }
    assert_validation(ticket.decide(attach("")), "attachment_id");
    let mut ticket = ticket;
    run(&mut ticket, attach("att_1")).unwrap();
    assert_validation(ticket.decide(attach("att_1")), "attachment_id");
}

// ---------------------------------------------------------------------------
// What the events carry
// ---------------------------------------------------------------------------

/// A life of a ticket that touches every event and both kinds of status change.
fn a_long_life() -> Vec<TicketCommand> {
    use TicketStatus::{Closed, OnHold, Open, Pending, Solved};
    vec![
        create_command(),
        comment("cmt_1", REQUESTER, true),
        comment("cmt_2", AGENT, false),
        attach("att_1"),
        assign(OTHER_AGENT),
        transition(Pending),
        comment("cmt_3", REQUESTER, true),
        transition(OnHold),
        transition(Open),
        assign(AGENT),
        transition(Solved),
        comment("cmt_4", REQUESTER, true),
        transition(Solved),
        comment("cmt_5", REQUESTER, false),
        transition(Closed),
    ]
}

#[test]
fn every_event_after_creation_carries_requester_subject_and_the_resulting_assignee() {
    let mut ticket = Ticket::default();
    let mut names = BTreeSet::new();
    for command in a_long_life() {
        let context = format!("{command:?}");
        let events = ticket.decide(command).expect(&context);
        for event in &events {
            ticket.evolve(event);
            names.insert(event.name());
            match event {
                TicketEvent::TicketCreated { .. } | TicketEvent::AttachmentAdded { .. } => {}
                TicketEvent::TicketAssigned {
                    assignee,
                    requester,
                    subject,
                    ..
                } => {
                    assert_eq!(Some(assignee), ticket.assignee.as_ref(), "{context}");
                    assert_eq!((requester.as_str(), subject.as_str()), (REQUESTER, SUBJECT));
                }
                TicketEvent::CommentAdded {
                    requester,
                    assignee,
                    subject,
                    ..
                }
                | TicketEvent::TicketStatusChanged {
                    requester,
                    assignee,
                    subject,
                    ..
                } => {
                    assert_eq!(assignee, &ticket.assignee, "{context}");
                    assert_eq!((requester.as_str(), subject.as_str()), (REQUESTER, SUBJECT));
                }
            }
        }
    }
    assert_eq!(ticket.status, Some(TicketStatus::Closed));
    assert_eq!(names.len(), 5, "{names:?}");
    assert_eq!(ticket.comments.len(), 5);
}

#[test]
fn a_status_change_caused_by_a_comment_names_its_author_and_others_do_not() {
    let mut ticket = Ticket::default();
    let mut by_comment = 0;
    for command in a_long_life() {
        let caused_by_comment = match &command {
            TicketCommand::Comment { author, .. } => Some(author.clone()),
            TicketCommand::Create { .. }
            | TicketCommand::Assign { .. }
            | TicketCommand::Attach { .. }
            | TicketCommand::Transition { .. } => None,
        };
        for event in run(&mut ticket, command).unwrap() {
            if let TicketEvent::TicketStatusChanged { by, .. } = event {
                assert_eq!(by, caused_by_comment);
                by_comment += usize::from(by.is_some());
            }
        }
    }
    // The agent's first comment on the new ticket, the requester's public
    // reply to the pending one, and to the solved one.
    assert_eq!(by_comment, 3);
}

// ---------------------------------------------------------------------------
// Wire form and adapters
// ---------------------------------------------------------------------------

fn every_event() -> Vec<TicketEvent> {
    let mut ticket = Ticket::default();
    let mut events = Vec::new();
    for command in a_long_life() {
        events.extend(run(&mut ticket, command).unwrap());
    }
    events
}

#[test]
fn every_event_round_trips_through_json_externally_tagged() {
    let events = every_event();
    let names: BTreeSet<&str> = events.iter().map(|e| e.name()).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "TicketCreated",
            "TicketAssigned",
            "CommentAdded",
            "AttachmentAdded",
            "TicketStatusChanged"
        ])
    );
    for event in events {
        let json = serde_json::to_value(&event).unwrap();
        let object = json.as_object().expect("an object");
        assert_eq!(object.len(), 1, "{json}");
        assert!(object.contains_key(event.name()), "{json}");
        let back: TicketEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
        assert_eq!(event.event_type(), event.name());
        assert_eq!(event.event_version(), EVENT_VERSION);
    }
}

#[test]
fn the_wire_form_of_a_status_change_is_snake_case() {
    let json = serde_json::to_value(TicketEvent::TicketStatusChanged {
        from: TicketStatus::OnHold,
        to: TicketStatus::Solved,
        requester: REQUESTER.to_owned(),
        assignee: None,
        subject: "s".to_owned(),
        changed_at: t(LATER),
        by: None,
    })
    .unwrap();
    assert_eq!(
        json,
        serde_json::json!({"TicketStatusChanged": {
            "from": "on_hold",
            "to": "solved",
            "requester": "cus_1",
            "assignee": null,
            "subject": "s",
            "changed_at": "2025-03-02T10:00:00Z",
            "by": null,
        }})
    );
    assert_eq!(
        serde_json::to_value(Priority::Urgent).unwrap(),
        serde_json::json!("urgent")
    );
}

#[test]
fn names_parse_and_print() {
    for status in TicketStatus::ALL {
        assert_eq!(TicketStatus::parse(status.as_str()), Some(status));
        assert_eq!(
            serde_json::to_value(status).unwrap(),
            serde_json::json!(status.as_str())
        );
    }
    assert_eq!(TicketStatus::OnHold.as_str(), "on_hold");
    assert_eq!(TicketStatus::parse("OnHold"), None);
    assert_eq!(TicketStatus::parse(""), None);
    for priority in Priority::ALL {
        assert_eq!(Priority::parse(priority.as_str()), Some(priority));
    }
    let names: Vec<&str> = sample_commands().iter().map(|c| c.name()).collect();
    assert_eq!(names, COMMAND_NAMES);
}

#[test]
fn the_state_snapshot_round_trips() {
    let ticket = given(&every_event());
    let json = serde_json::to_string(&ticket).unwrap();
    assert_eq!(serde_json::from_str::<Ticket>(&json).unwrap(), ticket);
}

#[test]
fn the_cqrs_adapter_forwards_to_decide_and_evolve() {
    TestFramework::<Ticket>::with(())
        .given_no_previous_events()
        .when(create_command())
        .then_expect_events(vec![created()]);
    TestFramework::<Ticket>::with(())
        .given(history(Some(TicketStatus::New)))
        .when(assign(AGENT))
        .then_expect_events(
            state(Some(TicketStatus::New))
                .decide(assign(AGENT))
                .unwrap(),
        );
    TestFramework::<Ticket>::with(())
        .given(history(Some(TicketStatus::Closed)))
        .when(transition(TicketStatus::Open))
        .then_expect_error(invalid(TicketStatus::Closed, "transition"));
    TestFramework::<Ticket>::with(())
        .given(history(Some(TicketStatus::Open)))
        .when(assign(AGENT))
        .then_expect_events(vec![]);
    assert_eq!(<Ticket as cqrs_es::Aggregate>::TYPE, "ticket");
}

#[test]
#[should_panic(expected = "TicketStatusChanged from Solved on a ticket in status Some(Open)")]
fn an_impossible_status_change_is_a_bug() {
    let mut ticket = state(Some(TicketStatus::Open));
    ticket.evolve(&TicketEvent::TicketStatusChanged {
        from: TicketStatus::Solved,
        to: TicketStatus::Closed,
        requester: REQUESTER.to_owned(),
        assignee: None,
        subject: SUBJECT.to_owned(),
        changed_at: t(LATER),
        by: None,
    });
}

#[test]
#[should_panic(expected = "CommentAdded on a ticket in status Some(Closed)")]
fn a_comment_event_on_a_closed_ticket_is_a_bug() {
    let mut ticket = state(Some(TicketStatus::Closed));
    ticket.evolve(&TicketEvent::CommentAdded {
        comment: Comment {
            id: "cmt_1".to_owned(),
            author: AGENT.to_owned(),
            body: "late".to_owned(),
            public: true,
            created_at: t(LATER),
        },
        requester: REQUESTER.to_owned(),
        assignee: None,
        subject: SUBJECT.to_owned(),
    });
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

/// One step of a random sequence. The numbers pick among valid and invalid
/// values, so that both accepted and refused commands occur often.
#[derive(Debug, Clone)]
struct Step {
    kind: u8,
    who: usize,
    public: bool,
    status: usize,
    size: usize,
    content_type: usize,
    id: u8,
    advance_seconds: i64,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        (
            0u8..5,
            0usize..4,
            any::<bool>(),
            0usize..6,
            0usize..4,
            0usize..11,
            0u8..40,
            0i64..86_400,
        )
            .prop_map(
                |(kind, who, public, status, size, content_type, id, advance_seconds)| Step {
                    kind,
                    who,
                    public,
                    status,
                    size,
                    content_type,
                    id,
                    advance_seconds,
                },
            ),
        1..60,
    )
}

fn step_command(step: &Step, at: DateTime<Utc>) -> TicketCommand {
    let who = [REQUESTER, AGENT, OTHER_AGENT, " "][step.who].to_owned();
    let sizes = [0, 1, MAX_ATTACHMENT_BYTES, MAX_ATTACHMENT_BYTES + 1];
    let content_type = ALLOWED_CONTENT_TYPES
        .get(step.content_type)
        .copied()
        .unwrap_or("text/html");
    match step.kind {
        0 => TicketCommand::Create {
            ticket_id: "tkt_p".to_owned(),
            subject: "Help".to_owned(),
            description: String::new(),
            requester: REQUESTER.to_owned(),
            priority: Priority::ALL[step.status % 4],
            subscription_id: None,
            at,
        },
        1 => TicketCommand::Assign { assignee: who, at },
        2 => TicketCommand::Comment {
            comment_id: format!("cmt_{}", step.id),
            author: who,
            body: "text".to_owned(),
            public: step.public,
            at,
        },
        3 => TicketCommand::Attach {
            attachment_id: format!("att_{}", step.id),
            file_name: "f.bin".to_owned(),
            content_type: content_type.to_owned(),
            size_bytes: sizes[step.size],
            storage_key: "k".to_owned(),
            at,
        },
        _ => TicketCommand::Transition {
            to: TicketStatus::ALL[step.status],
            at,
        },
    }
}

/// The status as a fold of the events: created → new, then each status change
/// must start where the previous one ended.
fn folded_status(events: &[TicketEvent]) -> Option<TicketStatus> {
    let mut status = None;
    for event in events {
        match event {
            TicketEvent::TicketCreated { .. } => {
                assert_eq!(status, None, "created twice");
                status = Some(TicketStatus::New);
            }
            TicketEvent::TicketStatusChanged { from, to, .. } => {
                assert_eq!(status, Some(*from), "a change from a status it was not in");
                assert!(can_transition(*from, *to), "{from:?} → {to:?} is no row");
                status = Some(*to);
            }
            TicketEvent::TicketAssigned { .. }
            | TicketEvent::CommentAdded { .. }
            | TicketEvent::AttachmentAdded { .. } => {}
        }
    }
    status
}

fn check_invariants(ticket: &Ticket) {
    assert!(ticket.attachments.len() <= MAX_ATTACHMENTS);
    for attachment in &ticket.attachments {
        assert!((1..=MAX_ATTACHMENT_BYTES).contains(&attachment.size_bytes));
        assert!(ALLOWED_CONTENT_TYPES.contains(&attachment.content_type.as_str()));
    }
    let comment_ids: BTreeSet<&str> = ticket.comments.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(
        comment_ids.len(),
        ticket.comments.len(),
        "duplicate comment ids"
    );
    let attachment_ids: BTreeSet<&str> = ticket.attachments.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(attachment_ids.len(), ticket.attachments.len());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn status_is_the_fold_of_the_status_changes_and_closed_never_changes(
        steps in steps(),
        start in prop::option::of(0usize..6),
    ) {
        let mut history = history(start.map(|i| TicketStatus::ALL[i]));
        let mut ticket = given(&history);
        let mut at = t(LATER);
        for step in &steps {
            at += Duration::seconds(step.advance_seconds);
            let command = step_command(step, at);
            let before = ticket.clone();
            let was_closed = before.status == Some(TicketStatus::Closed);
            match run(&mut ticket, command.clone()) {
                Ok(events) => {
                    prop_assert!(
                        !was_closed || events.is_empty(),
                        "a closed ticket accepted {command:?}: {events:?}"
                    );
                    for event in &events {
                        let json = serde_json::to_string(event).unwrap();
                        prop_assert_eq!(&serde_json::from_str::<TicketEvent>(&json).unwrap(), event);
                    }
                    history.extend(events);
                }
                Err(_) => prop_assert_eq!(&ticket, &before),
            }
            if was_closed {
                prop_assert_eq!(&ticket, &before);
            }
            prop_assert_eq!(ticket.status, folded_status(&history));
            check_invariants(&ticket);
        }
        // Replaying the accepted events rebuilds the same state.
        prop_assert_eq!(given(&history), ticket);
    }

    #[test]
    fn a_closed_ticket_accepts_nothing(steps in steps()) {
        let closed = state(Some(TicketStatus::Closed));
        let mut at = t(LATER);
        for step in &steps {
            at += Duration::seconds(step.advance_seconds);
            let command = step_command(step, at);
            prop_assert!(closed.decide(command.clone()).is_err(), "{command:?}");
        }
    }
}

/// Issue 5's sequence: a pending ticket waits on the requester; their public
/// reply reopens it, an internal note of theirs does not.
#[test]
fn a_public_reply_of_the_requester_reopens_a_pending_ticket() {
    let (events, ticket) = status_after(TicketStatus::Pending, comment("cmt_1", REQUESTER, true));
    assert_eq!(events.len(), 2);
    assert_eq!(ticket.status, Some(TicketStatus::Open));
    let (events, ticket) = status_after(TicketStatus::Pending, comment("cmt_1", REQUESTER, false));
    assert_eq!(events.len(), 1);
    assert_eq!(ticket.status, Some(TicketStatus::Pending));
}
