//! Typed resource ids: `PlanId`, `SubscriptionId`, `InvoiceId`, … one type per
//! prefix, so an id that exists has the shape of its kind and a plan's id
//! cannot be passed where a subscription's is wanted.
//!
//! Every id of ours is `<prefix>_` and then ASCII letters, digits or `_`, at
//! most [`MAX_ID_CHARS`] bytes in all (a UUIDv7 in simple form, or 32 hex
//! digits of a hash for derived ids). [`TypedId::parse`] is the one check of
//! that shape: the HTTP edge parses path and body ids with it, so a malformed
//! id never reaches the store. Making ids is not done here (the domain is pure
//! and never generates one): `tally_commands::ids` generates and derives them,
//! through `parse` as well.
//!
//! Events and read models keep ids as plain strings (their stored shape); the
//! types live at the edge and in the commands that take them.

use std::fmt;

/// The longest id we accept, in bytes.
pub const MAX_ID_CHARS: usize = 64;

/// A text that is not an id of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a `{prefix}_` id")]
pub struct IdError {
    /// The prefix that was expected.
    pub prefix: &'static str,
}

/// What every typed id shares; implemented by [`typed_id!`] only.
pub trait TypedId: Sized + Clone + fmt::Display {
    /// The text before the first `_`.
    const PREFIX: &'static str;

    /// The id if `s` has this kind's shape (see the module documentation).
    fn parse(s: &str) -> Result<Self, IdError>;

    /// The id as text, as stored.
    fn as_str(&self) -> &str;
}

/// True when `id` is `<prefix>_` followed by at least one ASCII letter, digit
/// or `_`, and at most [`MAX_ID_CHARS`] bytes long.
pub fn well_formed(id: &str, prefix: &str) -> bool {
    id.len() > prefix.len() + 1
        && id.len() <= MAX_ID_CHARS
        && id.starts_with(prefix)
        && id.as_bytes()[prefix.len()] == b'_'
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Defines an id type with its prefix: private field, `parse`, `as_str`,
/// `Display`, and serde as the plain string (deserializing parses).
macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The text before the first `_`.
            pub const PREFIX: &'static str = $prefix;

            /// The id if `s` has this kind's shape.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                if well_formed(s, $prefix) {
                    Ok($name(s.to_owned()))
                } else {
                    Err(IdError { prefix: $prefix })
                }
            }

            /// The id as text, as stored.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The id as an owned string (for events, which keep strings).
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl TypedId for $name {
            const PREFIX: &'static str = $prefix;

            fn parse(s: &str) -> Result<Self, IdError> {
                $name::parse(s)
            }

            fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        /// Read as text wherever a `&str` is taken (the store, SQL binds):
        /// an id is a valid string, the converse needs `parse`.
        impl std::ops::Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
                $name::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

typed_id!(
    /// A plan (`plan_…`).
    PlanId,
    "plan"
);
typed_id!(
    /// A subscription (`sub_…`).
    SubscriptionId,
    "sub"
);
typed_id!(
    /// An invoice (`inv_…`); renewal and activation invoices have derived ids.
    InvoiceId,
    "inv"
);
typed_id!(
    /// A tax rate (`txr_…`).
    TaxRateId,
    "txr"
);
typed_id!(
    /// A coupon (`cpn_…`), derived from its code.
    CouponId,
    "cpn"
);
typed_id!(
    /// A usage record (`use_…`), derived from the client's transaction id.
    UsageRecordId,
    "use"
);
typed_id!(
    /// A support ticket (`tkt_…`).
    TicketId,
    "tkt"
);
typed_id!(
    /// A comment on a ticket (`cmt_…`).
    CommentId,
    "cmt"
);
typed_id!(
    /// An attachment of a ticket (`att_…`).
    AttachmentId,
    "att"
);
typed_id!(
    /// An API key (`key_…`).
    KeyId,
    "key"
);
typed_id!(
    /// A webhook endpoint (`whk_…`).
    WebhookEndpointId,
    "whk"
);
typed_id!(
    /// A webhook delivery (`whd_…`).
    WebhookDeliveryId,
    "whd"
);
typed_id!(
    /// A payment recorded on an invoice (`pay_…`).
    PaymentId,
    "pay"
);
typed_id!(
    /// A credit note (`cn_…`).
    CreditNoteId,
    "cn"
);

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule as it stood in `tally_commands::ids::has_prefix` before the
    /// types existed, kept here to pin that `parse` accepts exactly the same.
    fn has_prefix_before(id: &str, prefix: &str) -> bool {
        id.len() > prefix.len() + 1
            && id.len() <= 64
            && id.starts_with(prefix)
            && id.as_bytes()[prefix.len()] == b'_'
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    }

    const SAMPLES: &[&str] = &[
        "",
        "sub",
        "sub_",
        "sub_1",
        "sub__",
        "sub_0190f0a1b2c37d4e8f9a0b1c2d3e4f50",
        "SUB_1",
        "subx_1",
        "sub-1",
        "sub_1-2",
        "sub_1 ",
        " sub_1",
        "sub_1\0",
        "sub_é",
        "sub_%41",
        "plan_1",
        "plan_",
        "plan_abc_DEF_123",
        "inv_1",
        "cn_1",
        "c_1",
        "cpn_1",
        "use_1",
        "tkt_1",
        "key_1",
        "whk_1",
        "whd_1",
        "pay_1",
        "txr_1",
        "cmt_1",
        "att_1",
    ];

    fn agrees<I: TypedId + fmt::Debug>() {
        let long_ok = format!("{}_{}", I::PREFIX, "a".repeat(64 - I::PREFIX.len() - 1));
        let long_bad = format!("{long_ok}a");
        let mut samples: Vec<String> = SAMPLES.iter().map(|s| (*s).to_owned()).collect();
        samples.push(long_ok.clone());
        samples.push(long_bad.clone());
        for s in &samples {
            let got = I::parse(s);
            assert_eq!(
                got.is_ok(),
                has_prefix_before(s, I::PREFIX),
                "{:?} {s:?}",
                I::PREFIX
            );
            if let Ok(id) = got {
                assert_eq!(id.as_str(), s);
                assert_eq!(id.to_string(), *s);
            } else {
                assert_eq!(got.unwrap_err(), IdError { prefix: I::PREFIX });
            }
        }
        assert!(I::parse(&long_ok).is_ok());
        assert!(I::parse(&long_bad).is_err());
    }

    #[test]
    fn parse_accepts_exactly_what_has_prefix_did() {
        agrees::<PlanId>();
        agrees::<SubscriptionId>();
        agrees::<InvoiceId>();
        agrees::<TaxRateId>();
        agrees::<CouponId>();
        agrees::<UsageRecordId>();
        agrees::<TicketId>();
        agrees::<CommentId>();
        agrees::<AttachmentId>();
        agrees::<KeyId>();
        agrees::<WebhookEndpointId>();
        agrees::<WebhookDeliveryId>();
        agrees::<PaymentId>();
        agrees::<CreditNoteId>();
    }

    /// Each type's prefix, written out: the stored ids begin with these.
    #[test]
    fn prefixes_are_fixed() {
        assert_eq!(
            [
                PlanId::PREFIX,
                SubscriptionId::PREFIX,
                InvoiceId::PREFIX,
                TaxRateId::PREFIX,
                CouponId::PREFIX,
                UsageRecordId::PREFIX,
                TicketId::PREFIX,
                CommentId::PREFIX,
                AttachmentId::PREFIX,
                KeyId::PREFIX,
                WebhookEndpointId::PREFIX,
                WebhookDeliveryId::PREFIX,
                PaymentId::PREFIX,
                CreditNoteId::PREFIX,
            ],
            [
                "plan", "sub", "inv", "txr", "cpn", "use", "tkt", "cmt", "att", "key", "whk",
                "whd", "pay", "cn"
            ]
        );
    }

    #[test]
    fn a_kind_refuses_another_kinds_id() {
        assert!(PlanId::parse("sub_1").is_err());
        assert!(SubscriptionId::parse("plan_1").is_err());
        // `c` is not `cn`, and `cn` is not a prefix of `cnx_1`'s kind.
        assert!(CreditNoteId::parse("cnx_1").is_err());
        assert!(CreditNoteId::parse("cn_1").is_ok());
    }

    #[test]
    fn serde_is_the_plain_string_and_deserializing_parses() {
        let id = SubscriptionId::parse("sub_0190f0a1b2c37d4e").unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"sub_0190f0a1b2c37d4e\"");
        let back: SubscriptionId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, id);
        // Escaped text is decoded before the check.
        let escaped: SubscriptionId = serde_json::from_str("\"sub\\u005f1\"").unwrap();
        assert_eq!(escaped.as_str(), "sub_1");
        for bad in [
            "\"plan_1\"",
            "\"sub_\"",
            "\"sub_1-2\"",
            "1",
            "null",
            "[\"sub_1\"]",
        ] {
            assert!(
                serde_json::from_str::<SubscriptionId>(bad).is_err(),
                "{bad}"
            );
        }
        let in_struct: Vec<PlanId> = serde_json::from_str("[\"plan_a\",\"plan_b\"]").unwrap();
        assert_eq!(
            in_struct.iter().map(PlanId::as_str).collect::<Vec<_>>(),
            ["plan_a", "plan_b"]
        );
    }

    #[test]
    fn strings_round_trip() {
        let id = InvoiceId::parse("inv_abc").unwrap();
        assert_eq!(InvoiceId::parse(id.as_str()).unwrap(), id);
        assert_eq!(String::from(id.clone()), "inv_abc");
        assert_eq!(id.as_ref(), "inv_abc");
        assert_eq!(id.into_string(), "inv_abc");
    }
}
