//! Making resource ids: a type prefix and a UUIDv7, so ids sort by creation
//! time (lists page by id) and say what they name; or, for resources that
//! must be found again from what they stand for, a hash of that.
//!
//! The id types and their one shape check ([`TypedId::parse`]) live in
//! `tally_aggregates::id`, which is pure; generating one reads the clock and
//! randomness, so it lives here. Both ways of making an id go through `parse`,
//! so a made id is well formed by the same rule as a parsed one.

use sha2::{Digest, Sha256};
pub use tally_aggregates::id::{
    AttachmentId, CommentId, CouponId, CreditNoteId, IdError, InvoiceId, KeyId, PaymentId, PlanId,
    SubscriptionId, TaxRateId, TicketId, TypedId, UsageRecordId, WebhookDeliveryId,
    WebhookEndpointId,
};

/// A new id of any kind: `<prefix>_` and a UUIDv7 in simple form.
pub trait Generate: TypedId {
    fn generate() -> Self {
        Self::parse(&format!(
            "{}_{}",
            Self::PREFIX,
            uuid::Uuid::now_v7().simple()
        ))
        .expect("a prefix and 32 hex digits is an id")
    }
}

impl<I: TypedId> Generate for I {}

/// An id derived from what it stands for (`parts`), so that whoever derives
/// it again gets the same resource: `<prefix>_` and 32 hex digits of the
/// SHA-256 of the parts (each length-prefixed, so no two lists collide).
pub fn derived_id<I: TypedId>(parts: &[&str]) -> I {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    I::parse(&format!(
        "{}_{}",
        I::PREFIX,
        &hex::encode(h.finalize())[..32]
    ))
    .expect("a prefix and 32 hex digits is an id")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_and_sort_by_time() {
        let a = SubscriptionId::generate();
        let b = SubscriptionId::generate();
        assert!(a.as_str().starts_with("sub_"));
        assert_eq!(a.as_str().len(), 4 + 32);
        assert_eq!(SubscriptionId::parse(a.as_str()).unwrap(), a);
        assert!(a < b, "UUIDv7 ids sort by creation");
        assert_eq!(CreditNoteId::generate().as_str().len(), 3 + 32);
    }

    /// Derived ids are stored (invoice and coupon ids): the derivation must
    /// never change. The figures are the SHA-256 of the length-prefixed
    /// parts, computed apart from this code.
    #[test]
    fn derived_ids_are_stable() {
        let coupon: CouponId = derived_id(&["coupon", "SPRING"]);
        assert_eq!(coupon.as_str(), "cpn_6f8e9b2ca25cdcb234246e01722b4de4");
        let invoice: InvoiceId = derived_id(&["activation", "sub_1", "2026-01-01T00:00:00Z"]);
        assert_eq!(invoice.as_str(), "inv_6adfc90823ff2de74dad42450e9af134");
        let again: CouponId = derived_id(&["coupon", "SPRING"]);
        assert_eq!(coupon, again);
        let split: CouponId = derived_id(&["coupon", "SPR", "ING"]);
        assert_ne!(coupon, split);
        let other: InvoiceId = derived_id(&["coupon", "SPRING"]);
        assert_eq!(&other.as_str()[4..], &coupon.as_str()[4..]);
    }
}
