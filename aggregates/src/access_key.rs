//! `AccessKey`: an API key's life as the log records it. Keys are created and
//! checked outside the log (only their hash is stored, in `api_keys`), but a
//! revocation is a security fact an auditor must find, with who did it and
//! when: it is an event on the key's stream (`<tenant>:<key id>`, type
//! `api_key`). Revoking is idempotent, so a revocation whose event was lost
//! (a crash after the key row was marked) is completed by revoking again.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::plan::validate_id;
use crate::DomainError;

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessKey {
    pub key_id: Option<String>,
    /// admin | writer | reader | auditor, as it was when revoked.
    pub role: Option<String>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AccessKeyCommand {
    /// The key stops authenticating.
    Revoke {
        key_id: String,
        role: String,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AccessKeyEvent {
    KeyRevoked {
        key_id: String,
        role: String,
        revoked_at: DateTime<Utc>,
    },
}

impl AccessKeyEvent {
    pub fn name(&self) -> &'static str {
        match self {
            AccessKeyEvent::KeyRevoked { .. } => "KeyRevoked",
        }
    }
}

impl AccessKey {
    pub fn decide(&self, command: AccessKeyCommand) -> Result<Vec<AccessKeyEvent>, DomainError> {
        match (&self.revoked_at, command) {
            (None, AccessKeyCommand::Revoke { key_id, role, at }) => {
                validate_id("key_id", &key_id)?;
                Ok(vec![AccessKeyEvent::KeyRevoked {
                    key_id,
                    role,
                    revoked_at: at,
                }])
            }
            // Already revoked: the first revocation stands.
            (Some(_), AccessKeyCommand::Revoke { .. }) => Ok(vec![]),
        }
    }

    pub fn evolve(&mut self, event: &AccessKeyEvent) {
        match event {
            AccessKeyEvent::KeyRevoked {
                key_id,
                role,
                revoked_at,
            } => {
                self.key_id = Some(key_id.clone());
                self.role = Some(role.clone());
                self.revoked_at = Some(*revoked_at);
            }
        }
    }
}

crate::cqrs_adapter!(AccessKey, AccessKey, AccessKeyCommand, AccessKeyEvent);

#[cfg(test)]
mod tests {
    use super::*;

    fn revoke(at: &str) -> AccessKeyCommand {
        AccessKeyCommand::Revoke {
            key_id: "key_1".into(),
            role: "writer".into(),
            at: at.parse().unwrap(),
        }
    }

    #[test]
    fn a_key_is_revoked_once_and_a_repeat_changes_nothing() {
        let mut key = AccessKey::default();
        let events = key.decide(revoke("2026-01-01T00:00:00Z")).unwrap();
        assert_eq!(
            events,
            vec![AccessKeyEvent::KeyRevoked {
                key_id: "key_1".into(),
                role: "writer".into(),
                revoked_at: "2026-01-01T00:00:00Z".parse().unwrap(),
            }]
        );
        events.iter().for_each(|e| key.evolve(e));
        assert_eq!(key.decide(revoke("2026-02-01T00:00:00Z")).unwrap(), vec![]);
        assert_eq!(
            key.revoked_at,
            Some("2026-01-01T00:00:00Z".parse().unwrap())
        );
    }

    #[test]
    fn a_malformed_key_id_is_refused() {
        let err = AccessKey::default()
            .decide(AccessKeyCommand::Revoke {
                key_id: "".into(),
                role: "admin".into(),
                at: "2026-01-01T00:00:00Z".parse().unwrap(),
            })
            .unwrap_err();
        assert!(matches!(err, DomainError::Validation { ref field, .. } if field == "key_id"));
    }
}
