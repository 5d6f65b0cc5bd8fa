//! Redeeming coupons: a subscription takes a coupon by its code, and the
//! subscription's `DiscountApplied` and the coupon's `CouponRedeemed` are
//! appended in one transaction (`Dispatcher::execute_pair`). Writers of the
//! coupon stream take turns in this process and meet on its sequence across
//! processes, so `max_redemptions` holds however many redeem at once.
//!
//! A coupon's id is derived from its code (case-insensitively), so a code
//! finds its coupon without a read model, and two coupons never share a code.

use tally_aggregates::coupon::{canonical_code, validate_code, Coupon, CouponCommand, CouponRef};
use tally_aggregates::subscription::{Subscription, SubscriptionCommand};
use tally_aggregates::{AggregateKind, DomainError};

use crate::dispatch::{CommandError, CommandMeta, Dispatcher, Executed};
use crate::ids::{derived_id, CouponId};

/// The id of the tenant's coupon with this code.
pub fn coupon_id(code: &str) -> CouponId {
    derived_id(&["coupon", &canonical_code(code)])
}

/// Redeems the coupon `code` for subscription `subscription_id`, after
/// running `first` on it when given (the subscription's `Create`), all in one
/// append. `expected_version` (If-Match) applies to the subscription.
pub async fn redeem(
    d: &Dispatcher,
    meta: &CommandMeta,
    subscription_id: &str,
    expected_version: Option<i64>,
    code: &str,
    first: Option<SubscriptionCommand>,
) -> Result<(Executed<Subscription>, Executed<Coupon>), CommandError> {
    // A code that cannot name a coupon names none.
    validate_code("coupon_code", code)
        .map_err(|_| DomainError::CouponInvalid("no coupon has this code".into()))?;
    let coupon_id = coupon_id(code);
    d.execute_pair::<Subscription, Coupon, _>(
        meta,
        subscription_id,
        &coupon_id,
        expected_version,
        |subscription, coupon| {
            let at = d.clock().now();
            let mut sub_events = match &first {
                Some(command) => subscription.decide(command.clone())?,
                None => Vec::new(),
            };
            let mut sub = subscription.clone();
            for e in &sub_events {
                sub.evolve(e);
            }
            if sub.status.is_none() {
                return Err(DomainError::NotFound(AggregateKind::Subscription));
            }
            // The subscription first (a canceled one takes no coupon), then
            // the coupon (unknown, archived, expired, not for this plan,
            // exhausted).
            if let Some(terms) = &coupon.terms {
                sub_events.extend(sub.decide(SubscriptionCommand::ApplyDiscount {
                    coupon: CouponRef {
                        coupon_id: coupon_id.clone().into_string(),
                        terms: terms.clone(),
                    },
                    at,
                })?);
            }
            let currency = sub.terms().currency;
            let coupon_events = coupon.decide(CouponCommand::Redeem {
                subscription_id: subscription_id.to_string(),
                plan_id: sub.plan_id.clone(),
                currency,
                at,
            })?;
            Ok((sub_events, coupon_events))
        },
    )
    .await
}
